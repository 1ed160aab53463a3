"""Conclusions at the end of the report, computed from the store's rows and configs (Russian).

Pure functions: rows (report.Row), configs (experiment name -> its stored config dict) and the
split sizes in, Markdown out. Nothing here trains or reads files, so every sentence is a
function of the numbers the tables show, and the tests check them against made-up rows.

Noise (stats.py): an accuracy is stated with its 95 % Wilson interval, the same interval the
tables and the CLI print for it. Two models scored on the same images are compared by
McNemar's exact test on the images where exactly one of them is right; a gap is "inside the
noise" when that test does not reject equal accuracy at 5 %. Where a result holds no
predictions per image (stores written before they were kept) both intervals are stated
instead, and a gap counts as inside the noise while they overlap.
"""
from __future__ import annotations

from collections import defaultdict

from .. import regimes, stats
from ..fmt import ci, pct, pp, seconds, span
from .tables import Row, best_row

# the settings that change what a regime comparison measures, in the order they are named
SETTINGS = [("resolution", "разрешение"), ("optimizer", "оптимизатор"), ("epochs", "число эпох"),
            ("batch_size", "размер батча"), ("augment", "аугментация"),
            ("schedule", "расписание"), ("tta", "flip TTA")]

BASELINE_GROUP = "базовая CNN (с нуля)"  # the baseline CNN is a group of its own


def with_interval(p: float | None, n: int) -> str:
    return ci(p, n)


def predictions(row: Row | None, split: str) -> tuple[list, list] | None:
    """(predictions, labels) per image of `split` ("val" or "test") that a row's stored
    result holds; None where it holds none (an old store, an external result)."""
    res = getattr(row, "result", None)
    if res is None:
        return None
    preds, labels = getattr(res, f"{split}_predictions"), getattr(res, f"{split}_labels")
    return (preds, labels) if preds and labels and len(preds) == len(labels) else None


def paired_test(a: Row, b: Row, split: str) -> stats.Paired | None:
    """McNemar's test of two rows on `split`, where both hold predictions of the same images."""
    pa, pb = predictions(a, split), predictions(b, split)
    if pa is None or pb is None or pa[1] != pb[1]:  # other images (another split): not paired
        return None
    return stats.paired(pa[0], pb[0], pa[1])


def _overlap(a: float, na: int, b: float, nb: int) -> bool:
    (alo, ahi), (blo, bhi) = stats.wilson(a, na), stats.wilson(b, nb)
    return alo <= bhi and blo <= ahi


def comparison(a: Row, b: Row, split: str, na: int, nb: int,
               acc=lambda r, split: getattr(r, f"{split}_acc")) -> tuple[str, bool | None]:
    """(the gap of a over b on `split` with its verdict in words, inside the noise or not:
    None where it cannot be told)."""
    x, y = acc(a, split), acc(b, split)
    test = paired_test(a, b, split)
    if test is not None:
        inside = not test.significant
        return (f"{pp(x - y)}, {'в пределах шума' if inside else 'больше шума'} (тест Макнемара "
                f"на тех же {test.n} изображениях: верно только у первой {test.only_a}, только у "
                f"второй {test.only_b}, p = {test.p:.3g})"), inside
    if not na or not nb:
        return f"{pp(x - y)}, размер выборки неизвестен, шум оценить нельзя", None
    inside = _overlap(x, na, y, nb)
    verdict = "в пределах шума: интервалы перекрываются" if inside else \
        "больше шума: интервалы не перекрываются"
    return (f"{pp(x - y)}, {verdict} (95 % ДИ {span(*stats.wilson(x, na))} и "
            f"{span(*stats.wilson(y, nb))}; предсказаний по изображениям в хранилище нет, "
            "парный тест невозможен)"), inside


def group_of(row: Row) -> str:
    """The comparison group of an experiment: its regime, the baseline CNN apart."""
    return "baseline" if row.model == "baseline" else row.regime


def group_name(group: str) -> str:
    """A group's name: the registry's long Russian name of its regime (regimes.py)."""
    return BASELINE_GROUP if group == "baseline" else regimes.ru_name(group, long=True)


def _done(rows: list[Row]) -> list[Row]:
    return [r for r in rows if r.status == "done" and not r.external]


# ------------------------------------------------------------------ what won

def winner_section(rows: list[Row], sizes: dict) -> list[str]:
    n_val, n_test = sizes.get("val", 0), sizes.get("test", 0)
    best = best_row(rows)
    if best is None:
        return ["Завершённых экспериментов с точностью на валидации пока нет: выбирать не из чего."]
    out = [f"**Победитель по валидации — `{best.name}`** ({best.model}, "
           f"{group_name(group_of(best))}): валидация {with_interval(best.val_acc, n_val)}, "
           f"тест {with_interval(best.test_acc, n_test)}. Модель выбрана по валидации; "
           "тестовая выборка в выборе не участвовала."]
    rest = [r for r in rows if r is not best]
    second = best_row(rest)
    if second is not None:
        gap, inside = comparison(best, second, "val", n_val, n_val)
        line = (f"Второе место по валидации — `{second.name}`: {pct(second.val_acc)}; разрыв "
                f"на валидации {gap}")
        if best.test_acc is not None and second.test_acc is not None:
            line += (f"; на тесте {pct(second.test_acc)}, разрыв "
                     f"{comparison(best, second, 'test', n_test, n_test)[0]}")
        out.append(line + ".")
        if inside:
            out.append(f"На {n_val} валидационных изображениях первое и второе места не "
                       "различимы: порядок между ними мог бы смениться при другом разбиении или "
                       "seed.")
    top_test = max((r for r in _done(rows) if r.test_acc is not None),
                   key=lambda r: r.test_acc, default=None)
    if top_test is not None and top_test is not best and best.test_acc is not None:
        out.append(f"Лучший тест среди всех экспериментов — у `{top_test.name}`: "
                   f"{pct(top_test.test_acc)}, разрыв с победителем "
                   f"{comparison(top_test, best, 'test', n_test, n_test)[0]}. Но "
                   "выбирать по тесту нельзя: это подгонка под тестовую выборку.")
    out += reference_lines(rows, best, n_test)
    return out


def reference_lines(rows: list[Row], best: Row, n_test: int) -> list[str]:
    """The winner against the baseline CNN and the external (practical-1) results."""
    if best.test_acc is None:
        return []
    out = []
    for r in _done(rows):
        if group_of(r) == "baseline" and r is not best and r.test_acc is not None:
            out.append(f"Против базовой CNN `{r.name}` ({pct(r.test_acc)} на тесте) перенос "
                       f"даёт {comparison(best, r, 'test', n_test, n_test)[0]}.")
    for r in rows:
        if r.external and r.test_acc is not None:
            out.append(f"Против внешнего результата `{r.name}` ({pct(r.test_acc)}"
                       + (f", {r.key}" if r.key else "") + f"): {pp(best.test_acc - r.test_acc)} "
                       "(его размер выборки неизвестен, шум учтён только для нашего теста: "
                       f"{with_interval(best.test_acc, n_test)}).")
    return out


# ------------------------------------------------------------------ what it cost

def _seconds(rs: list[Row]) -> str:
    secs = [r.seconds for r in rs if r.seconds]
    if not secs:
        return "время не записано"
    lo, hi = min(secs), max(secs)
    return f"{lo:.0f} с" if round(lo) == round(hi) else f"{lo:.0f}–{hi:.0f} с"


def cost_section(rows: list[Row]) -> list[str]:
    done = _done(rows)
    if not done:
        return []
    groups: dict[str, list[Row]] = defaultdict(list)
    for r in done:
        groups[group_of(r)].append(r)
    out = ["**Цена каждого режима** (полное время эксперимента из хранилища, на этом оборудовании):"]
    for g, rs in groups.items():
        accs = [r.test_acc for r in rs if r.test_acc is not None]
        best = f"; лучший тест {pct(max(accs))}" if accs else ""
        out.append(f"- {group_name(g)}: {len(rs)} эксп., {_seconds(rs)} на эксперимент{best}.")
    out += same_model_costs(done)
    return out


def same_model_costs(done: list[Row]) -> list[str]:
    """For a model run in several regimes: each against its cheapest one, time and test."""
    by_model: dict[str, list[Row]] = defaultdict(list)
    for r in done:
        if r.seconds and group_of(r) != "baseline":
            by_model[r.model].append(r)
    out = []
    for model, rs in by_model.items():
        if len({group_of(r) for r in rs}) < 2:
            continue
        cheap = min(rs, key=lambda r: r.seconds)
        for r in sorted(rs, key=lambda r: r.seconds):
            if group_of(r) == group_of(cheap):
                continue
            acc = ""
            if r.test_acc is not None and cheap.test_acc is not None:
                acc = f"; разница на тесте {pp(r.test_acc - cheap.test_acc)}"
            out.append(f"- {model}: `{r.name}` ({group_name(group_of(r))}) в "
                       f"{r.seconds / cheap.seconds:.1f} раза дольше, чем `{cheap.name}` "
                       f"({r.seconds:.0f} с против {cheap.seconds:.0f} с){acc}")
    return out


# ------------------------------------------------------------------ what is confounded

def setting_value(cfg: dict, key: str) -> str:
    if key == "resolution":
        return f"{cfg['resolution']} px" if cfg.get("resolution") else "исходный размер"
    if key == "optimizer":
        o = cfg.get("optimizer") or {}
        lr = o.get("lr")
        return f"{o.get('name', '?')} lr {lr:g}" if isinstance(lr, (int, float)) else str(o.get("name", "?"))
    if key == "tta":
        return "да" if cfg.get("tta") else "нет"
    return str(cfg.get(key, "?"))


def confound_section(rows: list[Row], configs: dict) -> list[str]:
    """Name the settings that differ between regimes: a regime gap is not the regime alone."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in _done(rows):
        if r.name in configs:
            groups[group_of(r)].append(configs[r.name])
    transfer = [g for g in groups if g != "baseline"]
    if len(transfer) < 2:
        return []
    values = {g: {k: sorted({setting_value(c, k) for c in groups[g]}) for k, _ in SETTINGS}
              for g in groups}
    differ = [(k, label) for k, label in SETTINGS
              if len({tuple(values[g][k]) for g in transfer}) > 1]
    if not differ:
        return ["**Смешанные факторы.** Режимы переноса обучены с одинаковыми "
                + ", ".join(label for _, label in SETTINGS)
                + ": разница между режимами — эффект самого режима (в пределах шума выше)."]
    out = ["**Где сравнение смешано с другими настройками.** Режимы переноса различаются не только "
           "тем, какие слои обучаются, но и настройками: " + ", ".join(label for _, label in differ)
           + ":"]
    for g in groups:
        out.append(f"- {group_name(g)}: "
                   + "; ".join(f"{label} {', '.join(values[g][k])}" for k, label in differ) + ".")
    out.append("Поэтому разница в точности между этими режимами — совместный эффект режима и "
               "перечисленных настроек, а не чистый эффект режима переноса. Чистое сравнение "
               "потребовало бы запусков, где эти настройки совпадают.")
    return out


# ------------------------------------------------------------------ the final stage

FINAL_KEYS = ("name", "parent", "val_acc", "test_acc", "epochs", "resolution", "train_size")


def final_section(final: dict | None, rows: list[Row], configs: dict, sizes: dict,
                  final_row: Row | None = None) -> list[str]:
    """What the final stage changed, read from its stored record.

    `final` comes from the final stage's record: a dict with at least name, parent (the grid
    experiment it retrains), val_acc (None when validation joined the training images),
    test_acc, epochs, resolution, train_size; optional test_size, seconds, test_acc_no_tta.
    `final_row`: its results row, whose stored predictions pair it with its parent on the
    test images. Without `final` the study has no final stage and its answer is the grid's
    best model.
    """
    if final is None:
        return ["**Финальная стадия** в этом исследовании не запускалась: ответ исследования — "
                "лучшая по валидации модель сетки."]
    missing = [k for k in FINAL_KEYS if k not in final]
    if missing:
        raise ValueError(f"final stage record lacks {', '.join(missing)}")
    n_test = final.get("test_size", sizes.get("test", 0))
    parent = next((r for r in rows if r.name == final["parent"]), None)
    pcfg = configs.get(final["parent"], {})
    budget = final.get("budget")
    epochs = f"{final['epochs']:.2f}" if budget else f"{final['epochs']:g}"  # as the plan says
    changes = [f"эпох {epochs}" + (f" (задано бюджетом времени {budget['budget']}; "
                                             if budget else " (") + f"в сетке {pcfg.get('epochs', '?')})",
               f"разрешение {setting_value(final, 'resolution')} "
               f"(в сетке {setting_value(pcfg, 'resolution') if pcfg else '?'})",
               f"обучающих изображений {final['train_size']} (в сетке {sizes.get('train', '?')})"]
    out = [f"**Финальная стадия.** Конфигурация `{final['parent']}` (выбрана по валидации) "
           f"обучена заново как `{final['name']}`: " + ", ".join(changes) + "."]
    line = f"Тест финальной модели: {with_interval(final['test_acc'], n_test)}"
    if parent is not None and parent.test_acc is not None:
        mine = final_row or Row(final["name"], None, "done", "", "", "", None, final["test_acc"],
                                None)
        line += (f"; против {pct(parent.test_acc)} у `{parent.name}` в сетке: "
                 f"{comparison(mine, parent, 'test', n_test, sizes.get('test', 0))[0]}")
    out.append(line + ".")
    if final.get("test_acc_no_tta") is not None:
        out.append(f"Без flip TTA: {pct(final['test_acc_no_tta'])}.")
    if final["val_acc"] is None:
        out.append("Валидационная выборка вошла в обучение финальной модели, поэтому точности на "
                   "валидации у неё нет; тест в выборе конфигурации и числа эпох не участвовал.")
    else:
        out.append(f"Точность на валидации финальной модели: {pct(final['val_acc'])}.")
    if budget and budget.get("final_seconds"):
        out.append(f"Бюджет времени {budget['budget']} на всё исследование: сетка заняла "
                   f"{budget['grid_seconds'] / 60:.1f} мин, финальная стадия "
                   f"{budget['final_seconds'] / 60:.1f} мин, всё исследование "
                   f"{budget['study_seconds'] / 60:.1f} мин; запланировано "
                   f"{budget['planned_steps']} шагов оптимизатора, выполнено "
                   f"{budget['actual_steps']} (скорость по плану "
                   f"{budget['planned_img_per_s']:.0f} изобр./с, в цикле "
                   f"{budget['measured_img_per_s']:.0f}).")
        out[-1] += " " + _budget_kept(budget)
    elif final.get("seconds"):
        out.append(f"Финальная стадия заняла {final['seconds']:.0f} с.")
    return out


# ------------------------------------------------------------------ all of it

def conclusions(rows: list[Row], configs: dict, sizes: dict, final: dict | None = None,
                final_row: Row | None = None) -> str:
    """The conclusions as Markdown: winner and noise, cost, confounders, the final stage.

    rows: report.study_rows(...); configs: experiment name -> stored config dict; sizes: the
    split sizes {"train": n, "val": n, "test": n}; final, final_row: see final_section.
    """
    parts = [winner_section(rows, sizes), cost_section(rows), confound_section(rows, configs),
             final_section(final, rows, configs, sizes, final_row)]
    return markdown([line for p in parts for line in p])


def markdown(lines: list[str]) -> str:
    """Paragraphs apart by a blank line; the items of a list ("- ...") one under another."""
    out = ""
    for i, line in enumerate(lines):
        if i:
            out += "\n" if line.startswith("- ") and lines[i - 1].startswith("- ") else "\n\n"
        out += line
    return out


def _budget_kept(budget: dict) -> str:
    """Whether the study ended inside its budget, and if not, by how much and why."""
    over = budget["study_seconds"] - budget["budget_seconds"]
    if over <= 0:
        return "Исследование уложилось в бюджет."
    slow = (budget.get("measured_img_per_s") or 0) < budget["planned_img_per_s"]
    return (f"Исследование вышло за бюджет на {seconds(over)}"
            + (": цикл финала шёл медленнее плана." if slow else "."))
