"""How numbers and settings read, in one place, for the CLI (English) and the report (Russian).

Every percentage, every interval, every gap and every "key parameters" or schedule text the
CLI, the tables, the notebook and the conclusions print comes from here, so one figure reads
the same (and carries the same interval) wherever it appears. The interval is always Wilson's
(stats.wilson).
"""
from __future__ import annotations

import math

from . import stats

MISSING = "—"


def _missing(p) -> bool:
    return p is None or (isinstance(p, float) and math.isnan(p))


def pct(p: float | None, digits: int = 2) -> str:
    """A proportion as a percentage: 0.744 -> '74.40 %'; None -> '—'."""
    return MISSING if _missing(p) else f"{p * 100:.{digits}f} %"


def span(lo: float, hi: float) -> str:
    """An interval of proportions: '70.4–78.0 %'."""
    return f"{lo * 100:.1f}–{hi * 100:.1f} %"


CI = {"en": "95 % CI", "ru": "95 % ДИ"}


def ci(p: float | None, n: int | None, lang: str = "ru") -> str:
    """An accuracy with its 95 % Wilson interval and the number of images it was measured on:
    '74.40 % (95 % ДИ 70.4–78.0 %, n = 500)'. Without n, the accuracy alone."""
    if _missing(p) or not n:
        return pct(p)
    return f"{pct(p)} ({CI[lang]} {span(*stats.wilson(p, n))}, n = {n})"


def interval(p: float | None, n: int | None) -> list[float] | None:
    """The Wilson interval as the JSON reports give it ([lo, hi]), None without n."""
    return None if _missing(p) or not n else list(stats.wilson(p, n))


def pp(d: float, lang: str = "ru") -> str:
    """A signed gap in percentage points: '+1.20 п.п.' / '+1.20 pts'."""
    return f"{d * 100:+.2f} " + ("п.п." if lang == "ru" else "pts")


def seconds(s: float | None, lang: str = "ru") -> str:
    if not s:
        return MISSING
    return f"{s:.0f} " + ("с" if lang == "ru" else "s")


def resolution(res: int | None, lang: str = "ru") -> str:
    if not res:
        return "исходный размер" if lang == "ru" else "native size"
    return f"{res} px"


def key_params(cfg: dict, lang: str = "ru") -> str:
    """The settings a results row is told apart by: head (MLP), resolution, optimiser and LR,
    epochs (from a stored config)."""
    o = cfg["optimizer"]
    parts = [resolution(cfg.get("resolution"), lang), f"{o['name']} lr={o['lr']:g}",
             f"{cfg['epochs']} " + ("эп." if lang == "ru" else "ep")]
    if (cfg.get("head") or {}).get("kind") == "mlp":
        parts.insert(0, "MLP " + "x".join(str(h) for h in cfg["head"]["hidden"]))
    return ", ".join(parts)


SCHEDULES = {"ru": {"cosine": "косинусное", "onecycle": "one-cycle (линейный спад)",
                    "constant": "постоянный LR"},
             "en": {}}


def schedule_text(s: dict, lang: str = "ru") -> str:
    """An LR schedule as recorded ({name, warmup_epochs, layer_decay})."""
    name = s.get("name", "?")
    warm = s.get("warmup_epochs", 0) or 0
    if lang == "ru":
        out = f"{SCHEDULES['ru'].get(name, name)}, разогрев {warm:g} эп."
        decay = ", послойное затухание LR {}"
    else:
        out = f"{name}, warmup {warm:g} epoch(s)"
        decay = ", layer-wise LR decay {}"
    if s.get("layer_decay", 1) < 1:
        out += decay.format(s["layer_decay"])
    return out


def optimizer_text(o: dict) -> str:
    """An optimiser with every recorded parameter: 'sgd (lr=0.02, momentum=0.9)'."""
    return f"{o.get('name', '?')} (" + ", ".join(f"{k}={v}" for k, v in o.items()
                                                 if k != "name") + ")"
