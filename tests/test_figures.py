"""Figures drawn from store rows: readable, non-overlapping labels and the seed error bars."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from transferlab.report import figures  # noqa: E402
from transferlab.report.tables import Row  # noqa: E402

LONG_MODELS = [
    ("timm:efficientnet_lite0", "linear"), ("efficientnet_lite2", "last:2"),
    ("convnext_tiny.in12k_ft_in1k", "full"),
    ("vit_base_patch16_224.augreg2_in21k_ft_in1k", "gradual"),
    ("tv:resnet50", "scratch"), ("baseline", "scratch"), ("efficientnet_b3.ra2_in1k", "last:1"),
    ("efficientnet_lite1", "linear"), ("resnet50.a1_in1k", "full"),
]


def _rows(n_seeds_last: int = 1):
    rows = [Row(f"experiment-with-a-rather-long-name-{i}", f"id{i}", "done", m, reg,
                "mlp512x256, 224px, adamw lr=0.0003, 30ep", 0.5 + i * 0.03, 0.5 + i * 0.04, 100.0)
            for i, (m, reg) in enumerate(LONG_MODELS)]
    rows.append(Row("published-reference", None, "external", "external", "external",
                    "He et al. 2016, table 3 (ResNet-110)", None, 0.935, None, external=True))
    return rows


def _overlapping_pairs(boxes):
    out = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            if a.x0 < b.x1 - 0.5 and b.x0 < a.x1 - 0.5 and a.y0 < b.y1 and b.y0 < a.y1:
                out.append((a, b))
    return out


@pytest.mark.parametrize("n", [3, 10])
def test_bar_chart_tick_labels_do_not_overlap(n):
    rows = _rows()[:n]
    fig = figures.accuracy_bar_chart(rows)
    ax = fig.axes[0]
    boxes = figures.tick_label_boxes(ax)
    assert len(boxes) == n
    assert not _overlapping_pairs(boxes)
    # every label lies inside the figure, none cut off at an edge
    width, height = fig.canvas.get_width_height()
    for b in boxes:
        assert b.x0 >= 0 and b.x1 <= width and b.y0 >= 0
    # a value label on every bar
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == n and all(t.replace(".", "").isdigit() for t in texts)
    if n == 10:
        assert "93.5" in texts  # the external result is drawn too


def test_bar_chart_grows_with_bars():
    small = figures.accuracy_bar_chart(_rows()[:3]).get_size_inches()[0]
    large = figures.accuracy_bar_chart(_rows()).get_size_inches()[0]
    assert large > small


def test_bar_chart_seeds_share_a_bar_with_error():
    rows = [Row(f"s{seed}", f"id{seed}", "done", "efficientnet_lite0", "linear", "32px", 0.5,
                acc, 10.0) for seed, acc in enumerate([0.60, 0.70, 0.80])]
    rows.append(Row("other", "idx", "done", "baseline", "scratch", "32px", 0.4, 0.5, 5.0))
    configs = {f"s{i}": {"name": f"s{i}", "model": "efficientnet_lite0", "seed": i, "lr": 0.1}
               for i in range(3)}
    configs["other"] = {"name": "other", "model": "baseline", "seed": 0, "lr": 0.1}
    bars = figures.bars_from_rows(rows, configs)
    assert len(bars) == 2
    assert bars[0].n == 3 and bars[0].mean == pytest.approx(70.0)
    assert bars[0].err == pytest.approx(10.0)
    assert bars[1].baseline and bars[1].err is None
    fig = figures.accuracy_bar_chart(rows, configs)
    assert any("±" in t.get_text() for t in fig.axes[0].texts)


def test_failed_experiments_have_no_bar():
    rows = _rows()[:2] + [Row("broken", "idb", "failed", "baseline", "scratch", "", None, None,
                              None, reason="boom")]
    assert len(figures.bars_from_rows(rows)) == 2


def test_wrap_label_breaks_between_words_only():
    text = figures.wrap_label("vit_base_patch16_224 gradual 224px", 14)
    assert text.split("\n") == ["vit_base_patch16_224", "gradual 224px"]
    text = figures.wrap_label("tf_effnet_lite0 linear 224px sgd lr=0.05 10ep", 14)
    assert text.split("\n") == ["tf_effnet_lite0", "linear 224px", "sgd lr=0.05", "10ep"]
    rows = [Row("l0", "id0", "done", "tf_efficientnet_lite0", "linear", "112px, adamw lr=0.001, "
                "30ep", 0.7, 0.7, 10.0)]
    label = figures.bars_from_rows(rows)[0].label
    assert label.split("\n")[0] == "tf_effnet_lite0"  # the model name is never cut
    assert all(w in "tf_effnet_lite0 linear 112px adamw lr=0.001 30ep".split()
               for line in label.split("\n") for w in line.split())


def test_short_model():
    assert figures.short_model("timm:efficientnet_lite0") == "effnet_lite0"
    assert figures.short_model("convnext_tiny.in12k_ft_in1k") == "convnext_tiny"
    assert figures.short_model("baseline") == "baseline"


def test_other_figures():
    classes = [f"class{i}" for i in range(10)]
    conf = np.eye(10, dtype=int) * 8 + 1
    for fig in (figures.confusion_matrix(conf.tolist(), classes),
                figures.per_class([0.5] * 10, classes),
                figures.training_curves({"a": [{"epoch": 1, "val_acc": 0.3, "train_acc": 0.2},
                                               {"epoch": 2, "val_acc": 0.5, "train_acc": 0.4}],
                                         "b": []}),
                figures.sample_grid(np.zeros((40, 8, 8, 3), np.uint8), np.arange(40) % 10,
                                    classes, per_class=3)):
        assert isinstance(fig, Figure)
        fig.canvas.draw()
    cm = figures.confusion_matrix(conf.tolist(), classes)
    assert not _overlapping_pairs(figures.tick_label_boxes(cm.axes[0], "x"))


def test_html_table_escapes():
    out = figures.html_table(["a", "b"], [["<x>", 1]], align_right={1})
    assert "&lt;x&gt;" in out and "text-align:right" in out


def test_skipped_model_keeps_its_slot_and_the_final_bar_is_marked():
    rows = _rows()[:2] + [
        Row("hub-linear", "idh", "skipped", "mobilenetv3_large_100", "linear", "64px", None,
            None, None, reason="no ImageNet weights"),
        Row("final-x", "idf", "done", "tf_efficientnet_lite0", "full", "96px", None, 0.9, 9.0,
            final=True)]
    bars = figures.bars_from_rows(rows)
    skipped = [b for b in bars if b.skipped]
    final = [b for b in bars if b.final]
    assert len(bars) == 4 and len(skipped) == 1 and skipped[0].mean == 0
    assert len(final) == 1 and final[0].label.startswith("ФИНАЛ") and final[0].mean == 90.0
    fig = figures.accuracy_bar_chart(rows)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert any("нет весов" in t for t in texts) and "90.0" in texts
    legend = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
    assert any(t.startswith("ФИНАЛ") for t in legend)
    final_rect = fig.axes[0].patches[-1]
    assert final_rect.get_linewidth() > fig.axes[0].patches[0].get_linewidth()
