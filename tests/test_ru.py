"""The notebook's Russian layer: headers, regimes, the best/final-model block from stored records."""
from transferlab import ru
from transferlab.report import Row

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


def _field(lines, label):
    return next(line.split(" : ", 1)[1] for line in lines if line.strip().startswith(label))


def test_best_block_gives_epochs_batch_schedule_and_tta():
    lines = ru.best_block(ROW, DETAILS, RESULT, {"val": 800, "test": 1600}, device="AMD EPYC")
    assert lines[0] == "Лучшая модель (выбрана по точности на валидации): lite0-full"
    assert _field(lines, "эпохи") == "5; по валидации выбрана эпоха 4 (её веса и оценены на тесте)"
    assert _field(lines, "размер батча") == "64"
    assert _field(lines, "расписание LR") == "косинусное, разогрев 0.3 эп."
    test = _field(lines, "точность (тест)")
    assert test.startswith("78.50 % ± 2.01 (n = 1600), с flip TTA") and test.endswith("без TTA 77.90 %")
    assert _field(lines, "тип переноса").startswith("полное дообучение: полное дообучение от предобученных")
    assert _field(lines, "изменённые слои") == ("классификатор заменён: Linear(1280->1000) → новая "
                                                "голова Linear(1280->10)")
    assert _field(lines, "оборудование") == "AMD EPYC" and _field(lines, "время") == "312 с"


def test_final_block_without_validation_and_probe_epochs():
    final = dict(RESULT, val_acc=None, best_epoch=5)
    row = Row("final", "y", "done", "m", "full", "", None, 0.785, 1.0)
    lines = ru.best_block(row, dict(DETAILS, tta=False), final, {"val": 0, "test": 1600},
                          title="Финальная модель", chosen="lite0-full: val acc 79.00 %")
    assert lines[0] == "Финальная модель: final"
    assert _field(lines, "выбрана") == "lite0-full: val acc 79.00 %"
    assert _field(lines, "точность (валидация)").startswith("нет: обучена на всех обучающих")
    assert _field(lines, "эпохи") == "5; последняя эпоха (валидационной выборки нет)"
    assert _field(lines, "точность (тест)").endswith(", без flip TTA")
    probe = dict(RESULT, extra={"fit": "cached features", "chosen_wd": 0.001})
    assert ru.epochs_text({"epochs": 30}, probe) == ("30; проба сообщает последнюю эпоху, по "
                                                     "валидации выбран weight decay 0.001")


def test_labels():
    assert ru.header(["experiment", "val acc", "unknown"]) == ["эксперимент", "точность (валидация)", "unknown"]
    assert ru.regime("last:2") == "последние 2 гр. + голова" and ru.regime("linear") == "линейная проба"
    assert ru.status("done") == "готов" and ru.acc_pm(0.5, 100) == "50.00 % ± 9.80"


def test_final_reason_names_the_parent_its_score_and_the_runner_up():
    info = {"parent": "lite2-full", "reason": "best validation accuracy ...",
            "ranking": [{"name": "lite2-full", "val_acc": 0.85, "val_loss": 0.6, "val_n": 500},
                        {"name": "lite1-full", "val_acc": 0.85, "val_loss": 0.7, "val_n": 500}]}
    text = ru.final_reason(info)
    assert text.startswith("lite2-full — лучшая точность на валидации среди 2 экспериментов сетки: "
                           "85.00 % ± 3.13 (n = 500)")
    assert text.endswith("следующая — lite1-full, 85.00 % (равенство; выбрана меньшая функция потерь)")
    assert ru.final_reason({"reason": "old record"}) == "old record"
