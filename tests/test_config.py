"""Config loading: strict keys and types, grids, overrides, stable ids."""
import pytest

from transferlab.config import load_study, parse_study
from transferlab.data import fingerprint
from transferlab.errors import UserError

from conftest import write_config

BASE = {"study": {"name": "s", "data": "synthetic"},
        "experiment": [{"name": "a", "model": "baseline", "regime": "scratch"}]}


def _parse(**extra):
    raw = {**BASE, **extra}
    return parse_study(raw, "study.toml")


def test_unknown_key_names_key_file_and_suggestion(workdir):
    path = write_config(workdir / "bad.toml", """
        [study]
        data = "synthetic"
        [[experiment]]
        model = "baseline"
        regime = "scratch"
        optimiser = { name = "sgd" }
    """)
    with pytest.raises(UserError) as e:
        load_study(path, fingerprint=fingerprint)
    msg = str(e.value)
    assert "bad.toml" in msg and "'optimiser'" in msg and "optimizer" in msg


def test_bad_choice_lists_valid_choices():
    with pytest.raises(UserError, match=r"regime = 'lienar' is not valid; choose one of linear"):
        _parse(experiment=[{"model": "baseline", "regime": "lienar"}])


def test_nested_key_and_type_errors():
    with pytest.raises(UserError, match=r"unknown key 'lr_max'.*Valid keys:.*lr"):
        _parse(defaults={"optimizer": {"lr_max": 1.0}})
    with pytest.raises(UserError, match=r"epochs must be int, got '3'"):
        _parse(defaults={"epochs": "3"})
    with pytest.raises(UserError, match=r"optimizer.name = 'adam' is not valid; choose one of sgd, adamw"):
        _parse(defaults={"optimizer": {"name": "adam"}})


def test_unknown_top_level_and_study_keys():
    with pytest.raises(UserError, match=r"unknown key 'experiments'.*Did you mean experiment"):
        parse_study({"experiments": []}, "x.toml")
    with pytest.raises(UserError, match=r"\[study\].*unknown key 'subsets'"):
        parse_study({"study": {"subsets": 3}}, "x.toml")


def test_grid_expands_and_names_from_template():
    st = parse_study({"study": {"data": "synthetic"}, "grid": [{
        "name": "{model}-{regime}", "model": ["efficientnet_lite0", "efficientnet_lite1"],
        "regime": ["linear", "last:2"]}]}, "g.toml")
    names = [e.name for e in st.experiments]
    assert names == ["efficientnet_lite0-linear", "efficientnet_lite0-last2",
                     "efficientnet_lite1-linear", "efficientnet_lite1-last2"]
    assert st.experiments[1].last_k == 2


def test_ids_are_stable_ignore_name_and_follow_overrides():
    a = _parse().experiments[0]
    b = parse_study({**BASE, "experiment": [{**BASE["experiment"][0], "name": "renamed"}]},
                    "s.toml").experiments[0]
    assert a.id == b.id and len(a.id) == 16
    c = parse_study(BASE, "s.toml", epochs=1, subset=5, data="synthetic:10").experiments[0]
    assert (c.epochs, c.data.subset, c.data.source) == (1, 5, "synthetic:10")
    assert c.id != a.id


def test_duplicates_and_unsafe_names_are_refused():
    with pytest.raises(UserError, match="two experiments are named 'a'"):
        _parse(experiment=[{"name": "a", "model": "baseline", "regime": "scratch"},
                           {"name": "a", "model": "baseline", "regime": "scratch", "seed": 1}])
    with pytest.raises(UserError, match="identical settings"):
        _parse(experiment=[{"name": "a", "model": "baseline", "regime": "scratch"},
                           {"name": "b", "model": "baseline", "regime": "scratch"}])
    with pytest.raises(UserError, match="not allowed"):
        _parse(experiment=[{"name": "../escape", "model": "baseline", "regime": "scratch"}])


def test_values_are_checked():
    with pytest.raises(UserError, match="epochs must be at least 1"):
        _parse(defaults={"epochs": 0})
    with pytest.raises(UserError, match="baseline CNN has no pretrained weights"):
        _parse(experiment=[{"model": "baseline", "regime": "linear"}])
    with pytest.raises(UserError, match="val_fraction must be in"):
        parse_study({**BASE, "study": {"val_fraction": 1.5}}, "s.toml")


def test_external_results_parse():
    st = _parse(external=[{"name": "paper", "test_acc": 0.9, "note": "n"}])
    assert st.externals[0].test_acc == 0.9
    with pytest.raises(UserError, match="test_acc must be a fraction"):
        _parse(external=[{"name": "paper", "test_acc": 90}])


def test_shipped_configs_load():
    full = load_study("cifar10", fingerprint=None)  # shipped configs, by name
    quick = load_study("cifar10-quick", fingerprint=None)
    assert full.data.source == "cifar10" and quick.data.source == "cifar10"
    source_models = {e.model for e in full.experiments if e.model != "baseline"}
    assert len(source_models) == 4
    assert any(e.model == "baseline" for e in quick.experiments)
    # the quick study: 4 source models x 2 configurations (a frozen backbone, then fine-tuning:
    # the last layers, or for Lite0 the whole network), a from-scratch Lite0, a final stage
    pretrained = [e for e in quick.experiments if e.model != "baseline" and e.weights != "none"]
    configs = {}
    for e in pretrained:
        configs.setdefault(e.model, set()).add("frozen" if e.uses_features else e.regime)
    assert len(configs) == 4 and all(len(c) == 2 and "frozen" in c for c in configs.values())
    assert configs["tf_efficientnet_lite0"] == {"frozen", "full"}, configs
    assert {"last:2"} < configs["tf_efficientnet_lite1"], configs
    assert any(e.weights == "none" and e.model == "tf_efficientnet_lite0" for e in quick.experiments)
    assert quick.final is not None and full.final is not None
