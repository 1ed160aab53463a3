"""One way to write a figure: percentages, intervals, gaps, key parameters, schedules."""
from transferlab import fmt


def test_an_accuracy_reads_with_its_wilson_interval_in_both_languages():
    # lite1-full's 74.40 % on 500 validation images, by hand with z = 1.96: centre
    # (0.744 + 0.00384) / 1.00768 = 0.74214, half-width 0.03815 -> 70.4-78.0 %
    assert fmt.ci(0.744, 500) == "74.40 % (95 % ДИ 70.4–78.0 %, n = 500)"
    assert fmt.ci(0.744, 500, "en") == "74.40 % (95 % CI 70.4–78.0 %, n = 500)"
    assert fmt.ci(0.744, 0) == "74.40 %" and fmt.ci(None, 500) == "—"
    lo, hi = fmt.interval(0.744, 500)
    assert round(lo, 3) == 0.704 and round(hi, 3) == 0.780 and fmt.interval(0.5, None) is None


def test_gaps_settings_and_schedules():
    assert fmt.pp(0.0125) == "+1.25 п.п." and fmt.pp(-0.02, "en") == "-2.00 pts"
    cfg = {"resolution": 64, "optimizer": {"name": "sgd", "lr": 0.02}, "epochs": 5,
           "head": {"kind": "mlp", "hidden": [512, 256]}}
    assert fmt.key_params(cfg) == "MLP 512x256, 64 px, sgd lr=0.02, 5 эп."
    assert fmt.key_params({**cfg, "resolution": 0, "head": {"kind": "linear"}}, "en") == \
        "native size, sgd lr=0.02, 5 ep"
    s = {"name": "cosine", "warmup_epochs": 0.3, "layer_decay": 0.7}
    assert fmt.schedule_text(s) == "косинусное, разогрев 0.3 эп., послойное затухание LR 0.7"
    assert fmt.schedule_text(s, "en") == "cosine, warmup 0.3 epoch(s), layer-wise LR decay 0.7"
    assert fmt.optimizer_text({"name": "sgd", "lr": 0.02, "momentum": 0.9}) == \
        "sgd (lr=0.02, momentum=0.9)"
