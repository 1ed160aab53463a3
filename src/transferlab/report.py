"""Tables, the best model and the experiment descriptions, read from the store (never trains)."""
from __future__ import annotations

from dataclasses import dataclass

from .store import Store


def format_details(d: dict) -> list[str]:
    """The block printed before an experiment trains and by `transferlab show`."""
    o = d["optimizer"]
    opt = ", ".join(f"{k}={v}" for k, v in o.items() if k != "name")
    groups = ", ".join(f"{g['group']}({g['params'] / 1e6:.2f}M {'train' if g['trained'] else 'frozen'})"
                       for g in d["groups"])
    s = d["schedule"]
    sched = f"{s['name']}, warmup {s['warmup_epochs']} epoch(s)"
    if s.get("layer_decay", 1) < 1:
        sched += f", layer-wise LR decay {s['layer_decay']}"
    lines = [
        f"  model          : {d['arch']} ({d['family']})",
        f"  initialisation : {d['init']}",
        f"  normalisation  : mean {d['normalization']['mean']}, std {d['normalization']['std']}",
        f"  modified layers: {d['modified_layers']}",
        f"  regime         : {d['regime']}: {d['regime_description']}",
        f"  layer groups   : {groups}",
        f"  parameters     : {d['trained_params']:,} trained, {d['frozen_params']:,} frozen",
        f"  optimiser      : {o['name']} ({opt})",
        f"  schedule       : {sched}",
        f"  training       : {d['epochs']} epochs, batch {d['batch_size']}, resolution "
        f"{d['resolution']}px, augmentation {d['augment']}, label smoothing {d['label_smoothing']}",
        f"  fit            : {d['fit']}",
        f"  numerics       : {d['precision']}, channels_last {d['channels_last']}, compile "
        f"{d['compile']}, flip TTA {d['tta']}, seed {d['seed']}, device {d['device']}",
        f"  data           : {d['data']}; " + ", ".join(f"{k} {v}" for k, v in d["split_sizes"].items()),
    ]
    if d.get("gradual"):
        lines.insert(5, f"  gradual        : head only for {d['gradual']['head_epochs']} epoch(s), "
                        f"then all layers at {d['gradual']['lr_scale']}x LR")
    return lines


@dataclass
class Row:
    name: str
    exp_id: str | None
    status: str
    model: str
    regime: str
    key: str  # key parameters, short
    val_acc: float | None
    test_acc: float | None
    seconds: float | None
    reason: str | None = None
    external: bool = False


def key_params(cfg: dict) -> str:
    o = cfg["optimizer"]
    res = f"{cfg['resolution']}px" if cfg["resolution"] else "native px"
    parts = [res, f"{o['name']} lr={o['lr']:g}", f"{cfg['epochs']}ep"]
    if cfg["head"]["kind"] == "mlp":
        parts.insert(0, "mlp" + "x".join(str(h) for h in cfg["head"]["hidden"]))
    return ", ".join(parts)


def study_rows(store: Store, members: list, externals: list) -> list[Row]:
    import json
    rows = []
    for name, exp_id in members:
        e = store.get(exp_id)
        if e is None:
            rows.append(Row(name, exp_id, "unknown", "?", "?", "", None, None, None))
            continue
        cfg = json.loads(e["config"])
        res = store.result(exp_id) if e["status"] == "done" else None
        rows.append(Row(name, exp_id, e["status"], cfg["model"], cfg["regime"], key_params(cfg),
                        res and res["val_acc"], res and res["test_acc"],
                        res and res["total_seconds"], e["reason"]))
    for x in externals:
        rows.append(Row(x["name"], None, "external", "external", "external", x.get("note", ""),
                        x.get("val_acc"), x["test_acc"], None, external=True))
    return rows


def best_row(rows: list[Row]) -> Row | None:
    """Chosen on validation accuracy: the test split plays no part in the choice."""
    done = [r for r in rows if r.status == "done" and not r.external and r.val_acc is not None]
    return max(done, key=lambda r: (r.val_acc, -(r.seconds or 0)), default=None)


def _pct(x) -> str:
    return f"{x:.2%}" if x is not None else "-"


def format_table(rows: list[Row], with_acc: bool = True) -> str:
    head = ["experiment", "status", "model", "regime", "key parameters"]
    if with_acc:
        head += ["val acc", "test acc", "time"]
    table = [head]
    for r in rows:
        line = [r.name, r.status, r.model, r.regime, r.key]
        if with_acc:
            line += [_pct(r.val_acc), _pct(r.test_acc), f"{r.seconds:.0f}s" if r.seconds else "-"]
        table.append(line)
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    out.insert(1, "  ".join("-" * w for w in widths))
    failed = [r for r in rows if r.status == "failed" and r.reason]
    out += [f"  {r.name} failed: {r.reason}" for r in failed]
    return "\n".join(out)


def best_summary(store: Store, row: Row) -> list[str]:
    import json
    e = store.get(row.exp_id)
    d = json.loads(e["details"]) if e["details"] else {}
    o = d.get("optimizer", {})
    return [
        f"best model (chosen on validation accuracy): {row.name}",
        f"  source model      : {d.get('arch', row.model)}",
        f"  modified layers   : {d.get('modified_layers', '?')}",
        f"  transfer type     : {row.regime}: {d.get('regime_description', '')}",
        f"  optimiser         : {o.get('name', '?')} ("
        + ", ".join(f"{k}={v}" for k, v in o.items() if k != "name") + ")",
        f"  initialisation    : {d.get('init', '?')}",
        *training_lines(d, store.result(row.exp_id) or {}),
        f"  validation acc    : {_pct(row.val_acc)}",
        f"  test accuracy     : {_pct(row.test_acc)}" + tta_note(d, store.result(row.exp_id) or {}),
    ]


def training_lines(d: dict, res: dict) -> list[str]:
    """Epochs (and which one validation chose), batch size and LR schedule of a model."""
    extra = res.get("extra") or {}
    if extra.get("fit") == "cached features":
        chosen = f"the last epoch; weight decay {extra.get('chosen_wd')} chosen on validation"
    elif res.get("val_acc") is None:
        chosen = "the last epoch: no validation split to choose one"
    else:
        chosen = f"weights of epoch {res.get('best_epoch', '?')}, chosen on validation"
    s = d.get("schedule") or {}
    sched = f"{s.get('name', '?')}, warmup {s.get('warmup_epochs', 0)} epoch(s)"
    if s.get("layer_decay", 1) < 1:
        sched += f", layer-wise LR decay {s['layer_decay']}"
    return [f"  epochs            : {d.get('epochs', '?')} ({chosen})",
            f"  batch size        : {d.get('batch_size', '?')}",
            f"  LR schedule       : {sched}"]


def tta_note(d: dict, res: dict) -> str:
    """Whether the test figure averages flip views, and the figure without them."""
    if not d.get("tta"):
        return " (no flip TTA)"
    return f" (with flip TTA; without {_pct(res.get('test_acc_no_tta'))})"
