"""The probe's weight-decay sweep: a choice at the edge of the grid extends it (a factor 10
beyond that edge, at most twice) and says so; the probe reports its last epoch."""
import pytest
import torch

from transferlab.fit import probe
from transferlab.config import parse_study


def _spec(wds):
    study = parse_study({"study": {"name": "t", "data": "synthetic"},
                         "defaults": {"epochs": 3, "batch_size": 32},
                         "experiment": [{"name": "p", "regime": "linear", "model": "resnet18",
                                         "weights": "none", "probe_wd": wds}]})
    return study.experiments[0]


@pytest.fixture
def fake_fits(monkeypatch):
    """fit_heads whose validation accuracy is a given function of the weight decay."""
    calls = []

    def install(acc_of):
        def fit_heads(spec, in_dim, ncls, tf, ty, vf, vy, wds, epochs=None):
            calls.append(list(wds))
            return [(torch.nn.Linear(2, 2), [{"epoch": e + 1, "val_acc": acc_of(wd)}
                                             for e in range(epochs)]) for wd in wds]
        monkeypatch.setattr(probe, "fit_heads", fit_heads)
        return calls
    return install


def _sweep(spec, lines):
    val_y = torch.zeros(4, dtype=torch.long)
    out = probe.sweep(spec, 2, 2, None, None, [], val_y, spec.epochs, lines.append)
    return out.head, out.history, out.weight_decay, out.val_acc, out.rows, out.added


def test_interior_choice_keeps_the_grid(fake_fits):
    calls = fake_fits(lambda wd: {0.0: 0.5, 1e-3: 0.9, 1e-2: 0.6}[wd])
    lines = []
    _, _, wd, acc, rows, added = _sweep(_spec([0.0, 1e-3, 1e-2]), lines)
    assert (wd, acc, added, calls) == (1e-3, 0.9, [], [[0.0, 1e-3, 1e-2]])
    assert not any("edge" in line for line in lines)


def test_upper_edge_extends_until_interior(fake_fits):
    calls = fake_fits(lambda wd: {0.0: 0.5, 1e-3: 0.6, 1e-2: 0.7, 0.1: 0.65}[wd])
    lines = []
    _, _, wd, acc, rows, added = _sweep(_spec([0.0, 1e-3, 1e-2]), lines)
    assert (wd, acc) == (1e-2, 0.7) and added == [pytest.approx(0.1)]  # now interior
    assert calls[1:] == [[pytest.approx(0.1)]]  # only the new value is fitted
    assert any("at the edge of the grid: trying 0.1" in line for line in lines)
    assert [r["added"] for r in rows] == [False, False, False, True]


def test_an_added_value_at_the_edge_extends_again(fake_fits):
    fake_fits(lambda wd: {0.0: 0.5, 1e-3: 0.6, 1e-2: 0.7, 0.1: 0.8, 1.0: 0.4}[round(wd, 6)])
    lines = []
    _, _, wd, acc, rows, added = _sweep(_spec([0.0, 1e-3, 1e-2]), lines)
    assert wd == pytest.approx(0.1) and acc == 0.8
    assert added == [pytest.approx(0.1), pytest.approx(1.0)]
    assert not any("still at the edge" in line for line in lines)


def test_at_most_two_extensions_and_it_says_so(fake_fits):
    fake_fits(lambda wd: wd)  # more decay always looks better
    lines = []
    _, _, wd, _, rows, added = _sweep(_spec([1e-4, 1e-3]), lines)
    assert added == [pytest.approx(1e-2), pytest.approx(0.1)] and wd == pytest.approx(0.1)
    assert len(rows) == 4 and any("still at the edge" in line for line in lines)


def test_lower_edge_extends_down_but_not_below_zero(fake_fits):
    fake_fits(lambda wd: 1 - wd)  # less decay always looks better
    _, _, wd, _, _, added = _sweep(_spec([1e-3, 1e-2]), [])
    assert added == [pytest.approx(1e-4), pytest.approx(1e-5)]
    _, _, wd, _, _, added = _sweep(_spec([0.0, 1e-2]), [])
    assert wd == 0.0 and added == []  # nothing lies below 0


def test_without_validation_nothing_is_swept(fake_fits):
    calls = fake_fits(lambda wd: None)
    spec = _spec([0.0, 1e-2])
    out = probe.sweep(spec, 2, 2, None, None, [], torch.zeros(0, dtype=torch.long), 3, print)
    assert out.weight_decay == spec.optimizer.weight_decay and out.added == [] and len(calls) == 1
    assert out.val_acc is None  # nothing to score it on


def test_the_probe_reports_its_last_epoch():
    assert probe.EPOCH_CHOICE.startswith("the last epoch")
    spec = _spec([0.0])
    g = torch.Generator().manual_seed(0)
    f, y = torch.randn(64, 6, generator=g), torch.randint(0, 3, (64,), generator=g)
    vf, vy = [torch.randn(16, 6, generator=g)], torch.randint(0, 3, (16,), generator=g)
    head, hist = probe.fit_head(spec, 6, 3, f, y, vf, vy, 0.0)
    assert [r["epoch"] for r in hist] == [1, 2, 3]
    # the returned head is the last epoch's: its validation accuracy is the last row's
    from transferlab.fit import evaluate
    assert evaluate.on_features(head, vf, vy).acc == hist[-1]["val_acc"]


def test_without_validation_a_single_given_decay_is_used(fake_fits):
    """A final stage trains on every image: no validation, the chosen decay given alone."""
    fake_fits(lambda wd: None)
    spec = _spec([0.03])
    out = probe.sweep(spec, 2, 2, None, None, [], torch.zeros(0, dtype=torch.long), 3, print)
    assert out.weight_decay == 0.03 != spec.optimizer.weight_decay


def test_final_stage_of_lp_ft_keeps_its_probes_decay():
    from transferlab.config import FinalSpec
    from transferlab.final import final_spec
    parent = parse_study({"study": {"data": "synthetic"}, "experiment": [
        {"name": "l", "model": "efficientnet_lite0", "regime": "lp-ft"}]}).experiments[0]
    spec = final_spec(parent, FinalSpec(), 0.01)
    assert spec.probe_wd == (0.01,) and spec.regime == "lp-ft" and spec.data.val_fraction == 0
