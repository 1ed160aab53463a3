"""An experiment's training log in Russian, for the notebook (`transferlab show` prints the
same record in English): its description, its epochs, its scores and environment.

Everything comes from the store's typed records; technical identifiers (model names, numerics
ways, optimiser parameters) stay as recorded, the words around them are Russian."""
from __future__ import annotations

import dataclasses

from .. import fmt
from ..config import DataSpec
from ..data import describe_source
from ..errors import UserError
from ..record import BudgetPlan, Description, EpochRow, Result
from ..store import Store
from . import ru
from .tables import epochs_total, log_header, test_n


def _data(config: dict, d: Description) -> str:
    """The data in words, from the experiment's registered config; the split sizes recorded."""
    known = {f.name for f in dataclasses.fields(DataSpec)}
    spec = DataSpec(**{k: v for k, v in (config.get("data") or {}).items() if k in known})
    try:
        what = describe_source(spec, lang="ru")
    except UserError:  # the folder has moved since: the record still has its own words
        what = d.data
    sizes = ", ".join(f"{ru.HEADERS.get(k, k)} {n}" for k, n in (d.split_sizes or {}).items())
    return f"{what}; {sizes}"


def _fit(d: Description) -> str:
    words = {"backprop through the network": "обратное распространение через всю сеть",
             "cached features": "голова на кэшированных признаках замороженной сети"}
    out = d.fit
    for en, ru_words in words.items():
        out = out.replace(en, ru_words)
    return (out.replace(", weight decay chosen on validation from ",
                        ", weight decay выбран по валидации из ")
            .replace(", then ", ", затем "))


def _phases(d: Description) -> str:
    return "; затем ".join(
        f"{p['phase']}: {', '.join(p['trained'])}, эпох {p['epochs']}"
        + (f", LR x{p['lr_scale']}" if p["lr_scale"] != 1 else "")
        + (" (на кэшированных признаках)" if p.get("fit") == "cached features" else "")
        for p in d.phases)


def description_lines(d: Description, config: dict, res: Result | None) -> list[str]:
    groups = ", ".join(f"{g['group']} ({g['params'] / 1e6:.2f}M, "
                       f"{'обучается' if g['trained'] else 'заморожена'})" for g in d.groups)
    epochs = (f"{BudgetPlan.from_dict(d.budget_plan).epochs:.2f} (по бюджету времени)"
              if d.budget_plan else d.epochs)
    fields = [
        ("модель", f"{(d.arch or '?').replace(' params)', ' параметров)')} ({d.family})"),
        ("инициализация", ru.init_text(d.init)),
        ("нормализация", f"mean {d.normalization.get('mean')}, std {d.normalization.get('std')}"),
        ("изменённые слои", f"классификатор заменён: {ru.old_head_text(d.old_head)} → новая голова "
                            f"{d.new_head or '?'}"),
        ("режим", f"{ru.regime(d.regime)}: {ru.regime_text(d)}"),
        *([("фазы", _phases(d))] if len(d.phases) > 1 else []),
        ("группы слоёв", groups),
        ("параметры", f"обучаемых {d.trained_params}, замороженных {d.frozen_params}"),
        ("оптимизатор", fmt.optimizer_text(d.optimizer or {})),
        ("расписание LR", ru.schedule_text(d.schedule or {})),
        *([("бюджет времени", ru.budget_text(d.budget_plan, res))] if d.budget_plan else []),
        ("обучение", f"эпох {epochs}, "
                     f"батч {d.batch_size}, разрешение {d.resolution} px, аугментация "
                     f"{d.augment}, label smoothing {d.label_smoothing}"),
        ("способ", _fit(d)),
        ("вычисления", f"{d.precision}; channels_last {d.channels_last}, compile {d.compile}, "
                       f"flip TTA {d.tta}, seed {d.seed}, устройство {d.device}"),
        ("данные", _data(config, d)),
    ]
    return [f"  {k.ljust(15)}: {v}" for k, v in fields]


def epoch_line(row: dict, epochs: int) -> str:
    r = EpochRow.from_dict(row)
    val = f"  валидация {fmt.pct(r.val_acc)}" if r.val_acc is not None else ""
    return (f"  эпоха {r.epoch:>3}/{epochs}  потери {r.train_loss:.4f}  обучающая "
            f"{fmt.pct(r.train_acc)}{val}  lr {r.lr:.2e}  {r.seconds:.1f} с  "
            f"{r.img_per_s:.0f} изобр./с")


def _environment(env: dict) -> str:
    if not env:
        return "нет записи"
    return (f"python {env.get('python')}, torch {env.get('torch')}, torchvision "
            f"{env.get('torchvision')}, timm {env.get('timm')}; "
            f"{ru.device_text(str(env.get('device')))}, потоков {env.get('threads')}; "
            f"{ru.git_text(env)}; хост {env.get('host')}")


def experiment_log(store: Store, name: str, exp_id: str, final: bool = False) -> list[str]:
    """Everything recorded about one experiment, as the notebook's training log shows it."""
    stage = "финальная стадия, " if final else ""
    e, out = log_header(store, name, exp_id, stage, "ещё нет в хранилище",
                        lambda st: f"статус: {ru.status(st)}", "причина")
    if e is None:
        return out
    d, config = store.description(exp_id), store.config(exp_id)
    res = store.result_record(exp_id)
    if d is None:
        return out + [f"  {'настройки'.ljust(15)}: "
                      + ", ".join(f"{k}={v}" for k, v in config.items())]
    out += description_lines(d, config, res)
    n_epochs = epochs_total(d.as_dict(), config.get("epochs", 0))
    out += [epoch_line(row, n_epochs) for row in store.epochs(exp_id)]
    if res is not None:
        val = fmt.ci(res.val_acc, res.val_n) if res.val_acc is not None else \
            "нет (валидационная выборка вошла в обучение)"
        out += [f"  {'точность (вал.)'.ljust(15)}: {val}",
                f"  {'точность (тест)'.ljust(15)}: {ru.test_text(d, res, test_n(res) or 0)}",
                f"  {'время'.ljust(15)}: {fmt.seconds(res.total_seconds)}, пиковая память "
                + (f"{res.peak_mem_mb:.0f} МБ" if res.peak_mem_mb is not None else "?"),
                f"  {'окружение'.ljust(15)}: {_environment(store.environment(exp_id) or {})}"]
    return out
