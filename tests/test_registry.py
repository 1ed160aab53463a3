"""Every registry entry is whole: the config accepts it, the views and the plan can say
it, and its phases are ones the fits can run (cached-feature phases first, head only)."""
import pytest

from transferlab import figures, plan, regimes
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
