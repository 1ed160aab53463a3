"""Every registry entry is whole: the config accepts it, the views and the plan can say
it, and its phases are ones the fits can run (cached-feature phases first, head only)."""
import pytest

from transferlab.report import figures
from transferlab import plan, regimes
from transferlab.config import parse_study
from transferlab.errors import UserError

NAMES = [n.replace(":K", ":2") for n in regimes.names()]


def _spec(regime, **kw):
    exp = {"name": "x", "model": "efficientnet_lite0", "regime": regime, "epochs": 3, **kw}
    return parse_study({"study": {"data": "synthetic"}, "experiment": [exp]}).experiments[0]


@pytest.mark.parametrize("name", NAMES)
def test_entry_is_complete(name):
    spec = _spec(name)
    phases = regimes.phases(spec)
    assert phases and sum(p.epochs(spec) for p in phases) >= spec.epochs
    cached = [p.on_features(spec) for p in phases]
    assert cached == sorted(cached, reverse=True), "cached-feature phases must come first"
    assert all(p.trains == regimes.HEAD for p in phases if p.cached)
    assert regimes.description(spec, []) and regimes.legend(name) != name
    assert figures.regime_text(name) == regimes.legend(name)
    assert regimes.ru_name(name) != name and regimes.ru_name(name, long=True) != name
    assert "{" not in regimes.ru_name(name) + regimes.ru_name(name, long=True)
    rates = {k: plan.Rate(100.0, "measured") for k in ("train", "eval", "extract")}
    seconds, what = plan.seconds_of(spec, {"train": 100, "val": 10, "test": 10}, rates, 0.9)
    assert seconds > 0 and what  # the plan can cost every regime


def test_unknown_regime_lists_the_registry():
    with pytest.raises(UserError, match="regime = 'partial' is not valid") as e:
        _spec("partial")
    assert all(n in str(e.value) for n in regimes.names())


@pytest.mark.parametrize("name", ["last:0", "last:x", "lp_ft"])
def test_near_misses_are_refused(name):
    with pytest.raises(UserError, match="is not valid"):
        _spec(name)


def test_checks_come_from_the_entry():
    with pytest.raises(UserError, match="gradual_head_epochs must be smaller than epochs"):
        _spec("gradual", gradual_head_epochs=3)
    with pytest.raises(UserError, match="baseline CNN has no pretrained weights"):
        _spec("full", model="baseline")
    assert _spec("scratch", model="baseline").regime == "scratch"


GROUPS = ["stem", "stage1", "stage2", "stage3", "stage4", "head"]


def _recorded(spec, en: str) -> "Description":
    """The description an experiment of `spec` records (its first phase), read back."""
    from transferlab.experiment import _phase_rows
    from transferlab.record import Description
    trained = regimes.trained_groups(spec, GROUPS, 0)
    summary = regimes.get(spec.regime).summary
    return Description.from_dict({
        "regime": spec.regime, "regime_description": en, "weights": spec.weights,
        "groups": [{"group": g, "params": 1000, "trained": g in trained} for g in GROUPS],
        "schedule": {"name": "cosine", "warmup_epochs": 0, "layer_decay": spec.layer_decay},
        "regime_settings": summary(spec) if summary else None, "epochs": spec.epochs,
        "phases": _phase_rows(spec, GROUPS), "arch": "timm:m", "family": "f", "init": "i",
        "normalization": {"mean": [0.5], "std": [0.5]}, "modified_layers": "head",
        "trained_params": 1, "frozen_params": 1, "optimizer": {"name": "sgd", "lr": 0.1},
        "batch_size": 8, "resolution": 32, "augment": "flip", "label_smoothing": 0.0,
        "fit": "f", "precision": "fp32", "channels_last": False, "compile": False, "tta": False,
        "seed": 0, "device": "cpu", "data": "synthetic", "split_sizes": {"train": 1}})


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("settings", [{}, {"layer_decay": 0.7, "weights": "none"}])
def test_cli_report_and_russian_text_describe_each_regime_from_its_entry(name, settings):
    """`transferlab show` (the recorded English line), the CLI report and the Russian
    notebook all say what the registry entry says, for every registered regime."""
    from transferlab.report import ru, tables
    if name == "scratch" or (settings.get("weights") and not regimes.get(name).pretrained):
        settings = {}
    spec = _spec(name, **({"gradual_head_epochs": 1} if name == "gradual" else {}), **settings)
    trained = regimes.trained_groups(spec, GROUPS, 0)
    frozen = [g for g in GROUPS if g not in trained]
    facts = regimes.facts(spec, frozen, trained)
    en, russian = regimes.text(facts, "en"), regimes.text(facts, "ru")
    assert en == regimes.description(spec, frozen, trained)  # what an experiment records
    d = _recorded(spec, en)
    assert f"  regime         : {name}: {en}" in d.lines()  # `transferlab show`
    assert tables.regime_text(d) == en  # `transferlab report`'s best-model block
    assert ru.regime_text(d) == russian  # the notebook's best/final-model block
    assert "?" not in russian and "{" not in russian and name not in russian
    assert ru.regime(name) == regimes.ru_name(name) != name  # the tables' name, never the raw one
    if spec.layer_decay < 1 and regimes.get(name).layer_decay:
        assert "послойное затухание LR 0.7" in russian and "layer-wise LR decay 0.7" in en


def test_an_old_gradual_record_reads_its_settings_from_the_old_key():
    """Records written before regime_settings kept gradual's under `gradual`: the Russian
    block still gives the head epochs and the LR scale, not '?'."""
    from transferlab.report import ru
    from transferlab.record import Description
    d = Description.from_dict({"regime": "gradual", "gradual": {"head_epochs": 2, "lr_scale": 0.1},
                               "groups": [{"group": "head", "trained": True}], "epochs": 5})
    assert ru.regime_text(d) == ("постепенное размораживание: 2 эп. только голова, затем все слои "
                                 "с LR x0.1")
