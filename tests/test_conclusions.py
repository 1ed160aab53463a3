"""Conclusions drawn from made-up rows and configs: every number comes from the inputs."""
import pytest

from transferlab.report.conclusions import (comparison, conclusions, confound_section, cost_section,
                                     final_section, paired_test, winner_section)
from transferlab.record import Result
from transferlab.report.tables import Row


def row(name, model, regime, val, test, seconds, status="done", result=None):
    return Row(name, f"id-{name}", status, model, regime, "", val, test, seconds, result=result)


def cfg(resolution, opt, lr, epochs, batch=64, augment="crop_flip"):
    return {"resolution": resolution, "optimizer": {"name": opt, "lr": lr}, "epochs": epochs,
            "batch_size": batch, "augment": augment, "schedule": "cosine", "tta": True}


ROWS = [row("lite0-linear", "lite0", "linear", 0.74, 0.73, 60.0),
        row("lite0-full", "lite0", "full", 0.79, 0.785, 300.0),
        row("lite1-full", "lite1", "full", 0.78, 0.80, 420.0),
        row("base", "baseline", "scratch", 0.70, 0.69, 100.0),
        Row("practical-1", None, "external", "external", "external", "my CNN", None, 0.71, None,
            external=True)]
CONFIGS = {"lite0-linear": cfg(112, "adamw", 1e-3, 30, batch=256, augment="flip"),
           "lite0-full": cfg(64, "sgd", 0.02, 5), "lite1-full": cfg(64, "sgd", 0.02, 5),
           "base": cfg(32, "sgd", 0.1, 10, batch=256)}


def predicted(right: list[bool], split="val") -> Result:
    """A result whose predictions on 20 images (all of class 0) are right where `right` says."""
    labels = [0] * len(right)
    preds = [0 if ok else 1 for ok in right]
    return Result(test_acc=0.5, **{f"{split}_predictions": preds, f"{split}_labels": labels})


def test_intervals_are_wilson_by_hand():
    text = "\n".join(winner_section(ROWS, {"val": 800, "test": 1600}))
    # Wilson, z = 1.96: 0.79 on 800 -> centre 0.7886, half-width 0.0282 -> 76.0-81.7 %
    assert "79.00 % (95 % ДИ 76.0–81.7 %, n = 800)" in text
    assert "78.50 % (95 % ДИ 76.4–80.4 %, n = 1600)" in text
    assert "±" not in text and "полуширина" not in text


def test_paired_test_decides_inside_the_noise_from_stored_predictions():
    # 20 validation images: 12 both right, 6 only the winner, 1 only the runner-up, 1 neither
    a = predicted([True] * 12 + [True] * 6 + [False] + [False])
    b = predicted([True] * 12 + [False] * 6 + [True] + [False])
    best, second = row("a", "m", "full", 0.90, None, 1.0, result=a), \
        row("b", "m", "linear", 0.65, None, 1.0, result=b)
    t = paired_test(best, second, "val")
    assert (t.n, t.only_a, t.only_b) == (20, 6, 1) and t.p == pytest.approx(0.125)  # 2 * 8/128
    text, inside = comparison(best, second, "val", 20, 20)
    assert inside and text.startswith("+25.00 п.п., в пределах шума (тест Макнемара")
    assert "верно только у первой 6, только у второй 1, p = 0.125" in text
    # 10 to 0: p = 2 / 2^10, beyond the noise although both intervals overlap
    a = predicted([True] * 10 + [True] * 10)
    b = predicted([True] * 10 + [False] * 10)
    text, inside = comparison(row("a", "m", "full", 1.0, None, 1.0, result=a),
                              row("b", "m", "full", 0.5, None, 1.0, result=b), "val", 20, 20)
    assert not inside and "больше шума" in text and "p = 0.00195" in text
    lines = winner_section([best, second], {"val": 20, "test": 0})
    assert any("не различимы" in line for line in lines)


def test_other_images_or_no_predictions_state_the_intervals():
    a = predicted([True] * 20)
    b = Result(test_acc=0.5, val_predictions=[0] * 10, val_labels=[1] * 10)  # other images
    assert paired_test(row("a", "m", "full", 1.0, None, 1.0, result=a),
                       row("b", "m", "full", 0.0, None, 1.0, result=b), "val") is None
    text, inside = comparison(ROWS[1], ROWS[2], "val", 800, 800)  # no predictions stored
    assert inside and "интервалы перекрываются" in text and "парный тест невозможен" in text
    assert "76.0–81.7 %" in text and "75.0–80.7 %" in text
    text, inside = comparison(ROWS[1], ROWS[3], "test", 1600, 1600)
    assert not inside and "интервалы не перекрываются" in text


def test_winner_gap_and_noise_come_from_the_rows_and_sizes():
    text = "\n".join(winner_section(ROWS, {"val": 800, "test": 1600}))
    assert "Победитель по валидации — `lite0-full`" in text
    assert "79.00 %" in text and "78.50 %" in text and "n = 800" in text and "n = 1600" in text
    assert "Второе место по валидации — `lite1-full`" in text
    assert "+1.00 п.п., в пределах шума" in text and "не различимы" in text
    # the best test belongs to another model: said, and that choosing by it is not allowed
    assert "Лучший тест среди всех экспериментов — у `lite1-full`: 80.00 %" in text
    assert "выбирать по тесту нельзя" in text
    assert "Против базовой CNN `base`" in text and "+9.50 п.п., больше шума" in text
    assert "Против внешнего результата `practical-1`" in text and "+7.50 п.п." in text


def test_a_clear_winner_is_beyond_noise_and_the_text_follows_the_numbers():
    rows = [row("a", "m", "full", 0.90, 0.89, 10.0), row("b", "m", "linear", 0.70, 0.71, 5.0)]
    text = "\n".join(winner_section(rows, {"val": 5000, "test": 10000}))
    assert "`a`" in text.split("Второе")[0] and "+20.00 п.п., больше шума" in text
    assert "не различимы" not in text
    swapped = [row("a", "m", "full", 0.70, 0.89, 10.0), row("b", "m", "linear", 0.90, 0.71, 5.0)]
    assert "Победитель по валидации — `b`" in "\n".join(winner_section(swapped, {"val": 5000,
                                                                                 "test": 10000}))


def test_no_finished_experiment():
    text = conclusions([row("a", "m", "full", None, None, None, status="failed")], {}, {})
    assert "выбирать не из чего" in text and "не запускалась" in text


def test_cost_per_regime_and_per_model():
    text = "\n".join(cost_section(ROWS))
    assert "полное дообучение: 2 эксп., 300–420 с на эксперимент; лучший тест 80.00 %" in text
    assert "линейная проба (основа заморожена): 1 эксп., 60 с" in text
    assert "`lite0-full` (полное дообучение) в 5.0 раза дольше, чем `lite0-linear`" in text
    assert "разница на тесте +5.50 п.п." in text


def test_confounded_comparison_names_the_settings_concretely():
    text = "\n".join(confound_section(ROWS, CONFIGS))
    assert "разрешение, оптимизатор, число эпох, размер батча, аугментация:" in text
    assert ("- линейная проба (основа заморожена): разрешение 112 px; оптимизатор adamw lr "
            "0.001; число эпох 30; размер батча 256; аугментация flip.") in text
    assert "- полное дообучение: разрешение 64 px; оптимизатор sgd lr 0.02; число эпох 5" in text
    assert "не чистый эффект режима" in text
    same = {k: cfg(64, "sgd", 0.02, 5) for k in CONFIGS}
    text = "\n".join(confound_section(ROWS, same))
    assert "одинаковыми" in text and "не чистый" not in text


def test_final_stage_hook():
    sizes = {"train": 7200, "val": 800, "test": 10000}
    assert "не запускалась" in final_section(None, ROWS, CONFIGS, sizes)[0]
    final = {"name": "final", "parent": "lite0-full", "val_acc": None, "test_acc": 0.885,
             "epochs": 3, "resolution": 96, "train_size": 50000, "test_acc_no_tta": 0.88,
             "seconds": 900.0}
    text = "\n".join(final_section(final, ROWS, CONFIGS, sizes))
    assert "`lite0-full` (выбрана по валидации) обучена заново как `final`" in text
    assert "эпох 3 (в сетке 5)" in text and "96 px (в сетке 64 px)" in text
    assert "обучающих изображений 50000 (в сетке 7200)" in text
    assert "88.50 % (95 % ДИ 87.9–89.1 %, n = 10000)" in text
    assert "против 78.50 % у `lite0-full`" in text
    assert "+10.00 п.п., больше шума: интервалы не перекрываются (95 % ДИ 87.9–89.1 % и 77.7–79.3 %" in text
    assert "Без flip TTA: 88.00 %" in text and "валидационная выборка вошла" in text.lower()
    assert "900 с" in text
    final["val_acc"] = 0.9
    assert "валидации финальной модели: 90.00 %" in "\n".join(
        final_section(final, ROWS, CONFIGS, sizes))
    del final["parent"]
    with pytest.raises(ValueError, match="parent"):
        final_section(final, ROWS, CONFIGS, sizes)


def test_conclusions_markdown_has_every_part():
    text = conclusions(ROWS, CONFIGS, {"train": 7200, "val": 800, "test": 1600})
    for part in ("Победитель по валидации", "Цена каждого режима", "Где сравнение смешано",
                 "Финальная стадия"):
        assert part in text
    assert ":\n\n- " in text and ".\n- " in text  # a list after its paragraph, items line by line


def test_the_final_section_says_whether_the_study_kept_its_budget():
    from transferlab.report.conclusions import _budget_kept
    b = {"budget": "25m", "budget_seconds": 1500.0, "grid_seconds": 229.0, "final_seconds": 1379.0,
         "study_seconds": 1608.0, "planned_steps": 1665, "actual_steps": 1665,
         "planned_img_per_s": 180.0, "measured_img_per_s": 158.5}
    final = {"name": "final-x", "parent": "x", "val_acc": None, "test_acc": 0.9098,
             "epochs": 4.258, "resolution": 80, "train_size": 50000, "budget": b}
    text = "\n".join(final_section(final, [], {}, {"test": 10000}))
    assert "эпох 4.26 (задано бюджетом времени 25m" in text
    assert ("всё исследование 26.8 мин; запланировано 1665 шагов оптимизатора, выполнено 1665 "
            "(скорость по плану 180 изобр./с, в цикле 158). Исследование вышло за бюджет на "
            "108 с: цикл финала шёл медленнее плана.") in text
    assert _budget_kept({**b, "study_seconds": 1497.0}) == "Исследование уложилось в бюджет."
