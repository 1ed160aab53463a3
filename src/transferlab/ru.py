"""Russian labels for the notebook's tables and best-model block (the CLI stays English).

A small translation layer: column headers, regime and status names, field labels, and the
best/final-model block built from the stored details and result. Values that are records
(model names, optimiser parameters, the initialisation text) are shown as recorded.
"""
from __future__ import annotations

from . import regimes
from .conclusions import half_width, pct

HEADERS = {
    "experiment": "эксперимент", "status": "статус", "model": "модель", "regime": "режим",
    "key parameters": "ключевые параметры", "val acc": "точность (валидация)",
    "test acc": "точность (тест)", "time": "время", "class": "класс", "train": "обучающая",
    "val": "валидационная", "test": "тестовая", "total": "всего",
    "trained groups": "обучаемые группы", "frozen groups": "замороженные группы",
    "trained params": "обучаемых параметров", "frozen params": "замороженных параметров",
    "new head": "новая голова", "resolution": "разрешение",
}

EXTERNAL = "внешний результат"

STATUS = {"done": "готов", "failed": "ошибка", "skipped": "пропущен", "running": "выполняется",
          "pending": "в очереди", "external": "внешний", "unknown": "нет в хранилище"}


def header(names: list[str]) -> list[str]:
    return [HEADERS.get(n, n) for n in names]


def regime(name: str) -> str:
    """A regime's name in the tables: the registry's (regimes.py)."""
    return EXTERNAL if name == "external" else regimes.ru_name(name)


def status(name: str) -> str:
    return STATUS.get(name, name)


def key_params(cfg: dict) -> str:
    o = cfg["optimizer"]
    parts = [f"{cfg['resolution']} px" if cfg["resolution"] else "исходный размер",
             f"{o['name']} lr={o['lr']:g}", f"{cfg['epochs']} эп."]
    if cfg["head"]["kind"] == "mlp":
        parts.insert(0, "MLP " + "x".join(str(h) for h in cfg["head"]["hidden"]))
    return ", ".join(parts)


def acc_pm(p: float | None, n: int) -> str:
    """An accuracy and its 95 % half-width in points: '78.50 % ± 2.84'."""
    if p is None:
        return "—"
    return f"{pct(p)} ± {half_width(p, n) * 100:.2f}" if n else pct(p)


def results_table(rows, configs: dict, sizes: dict) -> tuple[list[str], list[list], set[int]]:
    """(header, rows, right-aligned columns) of the study's results table."""
    head = ["эксперимент", "статус", "модель", "режим", "ключевые параметры",
            f"валидация (n = {sizes.get('val', 0)})", f"тест (n = {sizes.get('test', 0)})", "время"]
    body = []
    for r in rows:
        key = key_params(configs[r.name]) if r.name in configs else r.key
        val = acc_pm(r.val_acc, sizes.get("val", 0)) if not r.external else pct(r.val_acc)
        test = acc_pm(r.test_acc, sizes.get("test", 0)) if not r.external else pct(r.test_acc)
        body.append([r.name, status(r.status), r.model, regime(r.regime), key, val, test,
                     f"{r.seconds:.0f} с" if r.seconds else "—"])
    return head, body, {5, 6, 7}


def regime_text(d: dict) -> str:
    """What the regime trained, in Russian, from the stored details."""
    r = d.get("regime", "?")
    trained = [g["group"] for g in d.get("groups", []) if g["trained"]]
    frozen = [g["group"] for g in d.get("groups", []) if not g["trained"]]
    if r == "linear":
        how = ("голова обучена на закэшированных признаках основы"
               if str(d.get("fit", "")).startswith("cached") else
               "голова обучена через замороженную основу с аугментацией")
        return f"извлечение признаков: основа заморожена (и статистики BN), {how}"
    if r.startswith("last:"):
        return (f"дообучение последних групп слоёв и головы: обучаются {', '.join(trained)}; "
                f"заморожены {', '.join(frozen) or 'ничего'}")
    if r == "full":
        ld = (d.get("schedule") or {}).get("layer_decay", 1)
        start = "от случайной инициализации" if d.get("weights") == "none" else "от предобученных весов"
        return f"полное дообучение {start}" + (f", послойное затухание LR {ld}" if ld < 1 else "")
    if r == "scratch":
        return "обучение с нуля: случайная инициализация, обучаются все слои"
    if r == "gradual":
        g = d.get("gradual") or {}
        return (f"постепенное размораживание: {g.get('head_epochs', '?')} эп. только голова, затем "
                f"все слои с LR x{g.get('lr_scale', '?')}")
    return r


def schedule_text(s: dict) -> str:
    names = {"cosine": "косинусное", "onecycle": "one-cycle (линейный спад)",
             "constant": "постоянный LR"}
    out = f"{names.get(s.get('name'), s.get('name', '?'))}, разогрев {s.get('warmup_epochs', 0):g} эп."
    if s.get("layer_decay", 1) < 1:
        out += f", послойное затухание LR {s['layer_decay']}"
    return out


def budget_text(plan: dict, res: dict) -> str:
    """A budgeted final's plan and what ran, in Russian."""
    from .record import BudgetPlan
    p = BudgetPlan.from_dict(plan)
    done = (res.get("extra") or {}).get("steps")
    out = (f"{p.budget} на всё исследование: сетка заняла {p.grid_s / 60:.1f} мин, на обучение "
           f"финала осталось {p.train_s / 60:.1f} мин → {p.total_steps:,} шагов оптимизатора "
           f"({p.epochs:.2f} эпохи) при {p.img_per_s:.0f} изобр./с; LR убывает до нуля к "
           f"последнему шагу").replace(",", " ")
    if p.replanned:
        r = p.replanned
        out += (f"; после {r['at_step']} шагов скорость {r['measured_img_per_s']:.0f} изобр./с "
                f"вместо {r['planned_img_per_s']:.0f}: план пересчитан "
                f"({r['total_steps_before']} → {p.total_steps} шагов)")
    if done is not None:
        out += f"; выполнено шагов: {done}"
    return out


def epochs_text(d: dict, res: dict) -> str:
    epochs, best = d.get("epochs", "?"), res.get("best_epoch")
    if d.get("budget_plan"):
        from .record import BudgetPlan
        p = BudgetPlan.from_dict(d["budget_plan"])
        return (f"{p.epochs:.2f} (задано бюджетом времени: {p.total_steps} шагов); последняя "
                "эпоха (валидационной выборки нет)")
    if (res.get("extra") or {}).get("fit") == "cached features":
        wd = (res.get("extra") or {}).get("chosen_wd")
        return (f"{epochs}; проба сообщает последнюю эпоху, по валидации выбран weight decay "
                f"{wd:g}" if isinstance(wd, (int, float)) else f"{epochs}; последняя эпоха")
    if best is None:
        return str(epochs)
    if res.get("val_acc") is None:
        return f"{epochs}; последняя эпоха (валидационной выборки нет)"
    return f"{epochs}; по валидации выбрана эпоха {best} (её веса и оценены на тесте)"


def test_text(d: dict, res: dict, n_test: int) -> str:
    acc, plain = res.get("test_acc"), res.get("test_acc_no_tta")
    out = f"{acc_pm(acc, n_test)} (n = {n_test})"
    if d.get("tta"):
        return (f"{out}, с flip TTA (среднее предсказаний по изображению и его зеркальному "
                f"отражению); без TTA {pct(plain)}")
    return f"{out}, без flip TTA"


def best_block(row, d: dict, res: dict, sizes: dict, device: str | None = None,
               title: str = "Лучшая модель (выбрана по точности на валидации)",
               chosen: str | None = None) -> list[str]:
    """The best/final-model block: every field the assignment asks for, labels in Russian.
    `chosen`: why the final stage picked this configuration (its parent's validation score)."""
    o = d.get("optimizer", {})
    opt = ", ".join(f"{k}={v}" for k, v in o.items() if k != "name")
    val = (acc_pm(row.val_acc, sizes.get("val", 0)) + f" (n = {sizes.get('val', 0)})"
           if sizes.get("val") else "нет: обучена на всех обучающих изображениях (train + validation)")
    lines = [("выбрана", chosen)] if chosen else []
    lines += [
        ("исходная модель", f"{d.get('arch', row.model)} ({d.get('family', '?')})"),
        ("изменённые слои", f"классификатор заменён: {d.get('old_head', '?')} → новая голова "
                            f"{d.get('new_head', '?')}"),
        ("тип переноса", f"{regime(row.regime)}: {regime_text(d)}"),
        ("оптимизатор", f"{o.get('name', '?')} ({opt})"),
        ("расписание LR", schedule_text(d.get("schedule") or {})),
        ("инициализация", d.get("init", "?")),
        ("эпохи", epochs_text(d, res)),
        *([("бюджет времени", budget_text(d["budget_plan"], res))] if d.get("budget_plan") else []),
        ("размер батча", str(d.get("batch_size", "?"))),
        ("разрешение", f"{d.get('resolution', '?')} px; аугментация {d.get('augment', '?')}, "
                       f"label smoothing {d.get('label_smoothing', '?')}"),
        ("обучающих изображений", str((d.get("split_sizes") or {}).get("train", "?"))),
        ("точность (валидация)", val),
        ("точность (тест)", test_text(d, res, sizes.get("test", 0))),
        ("время", f"{res['total_seconds']:.0f} с" if res.get("total_seconds") else "—"),
    ]
    if device:
        lines.append(("оборудование", device))
    width = max(len(k) for k, _ in lines)
    return [f"{title}: {row.name}"] + [f"  {k.ljust(width)} : {v}" for k, v in lines]


def final_reason(info: dict) -> str:
    """Why the final stage chose its configuration, in Russian, from the final experiment's
    stored `final` record: the parent's validation score among the grid's candidates."""
    ranking = info.get("ranking") or []
    if not ranking:
        return info.get("reason", "?")
    best = ranking[0]
    n = int(best.get("val_n") or 0)
    out = (f"{best['name']} — лучшая точность на валидации среди {len(ranking)} экспериментов "
           f"сетки: {acc_pm(best['val_acc'], n)}" + (f" (n = {n})" if n else ""))
    if len(ranking) > 1:
        second = ranking[1]
        tie = " (равенство; выбрана меньшая функция потерь)" \
            if second["val_acc"] == best["val_acc"] else ""
        out += f"; следующая — {second['name']}, {pct(second['val_acc'])}{tie}"
    return out


def git_text(env: dict) -> str:
    """The commit and whether the checkout had local changes, from an environment record
    (records written before this field existed say "неизвестно")."""
    dirty = env.get("git_dirty", "unknown")
    changes = "есть" if dirty is True else "нет" if dirty is False else "неизвестно"
    return f"коммит {env.get('git', 'unknown')}, локальные изменения: {changes}"
