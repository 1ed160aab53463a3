"""Conclusions drawn from made-up rows and configs: every number comes from the inputs."""
import math

import pytest

from transferlab.conclusions import (conclusions, confound_section, cost_section,
                                     final_section, gap_half_width, half_width, interval,
                                     winner_section, within_noise)
from transferlab.report import Row


def row(name, model, regime, val, test, seconds, status="done"):
    return Row(name, f"id-{name}", status, model, regime, "", val, test, seconds)


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


def test_normal_approximation_of_a_proportion():
    assert half_width(0.5, 100) == pytest.approx(1.96 * 0.05)
    assert interval(0.9, 400) == pytest.approx((0.9 - 1.96 * 0.015, 0.9 + 1.96 * 0.015))
    assert gap_half_width(0.8, 800, 0.7, 800) == pytest.approx(
        1.96 * math.sqrt(0.8 * 0.2 / 800 + 0.7 * 0.3 / 800))
    assert within_noise(0.79, 800, 0.78, 800) and not within_noise(0.79, 800, 0.60, 800)
    assert math.isnan(half_width(0.5, 0))


def test_winner_gap_and_noise_come_from_the_rows_and_sizes():
    text = "\n".join(winner_section(ROWS, {"val": 800, "test": 1600}))
    assert "Победитель по валидации — `lite0-full`" in text
    assert "79.00 %" in text and "78.50 %" in text and "n = 800" in text and "n = 1600" in text
    lo, hi = interval(0.79, 800)
    assert f"{lo * 100:.1f}–{hi * 100:.1f} %" in text
    assert "Второе место по валидации — `lite1-full`" in text
    assert f"±{gap_half_width(0.79, 800, 0.78, 800) * 100:.2f} п.п." in text
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
    assert "88.50 %" in text and "n = 10000" in text and "против 78.50 % у `lite0-full`" in text
    assert f"+10.00 п.п., больше шума (95 % полуширина разницы ±{gap_half_width(0.885, 10000, 0.785, 10000) * 100:.2f}" in text
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
