"""LP-FT (Kumar et al., ICLR 2022): a linear probe on cached features, then full fine-tuning
from that probed head. One registry entry in regimes.py; everything else is generic."""
import json
import math
import re
import shutil

import pytest
import torch

from transferlab.fit import probe
from transferlab import regimes
from transferlab.config import parse_study
from transferlab.errors import UserError
from transferlab.store import Store
from transferlab.fit.train import Trainer

from test_reliability import _state, by_name, main_in, q

LPFT = """
[study]
name = "lpft"
data = "synthetic:8"

[defaults]
epochs = 2
batch_size = 8
resolution = 32
precision = "fp32"

[[experiment]]
name = "lpft"
model = "efficientnet_lite0"
regime = "lp-ft"
optimizer = { name = "adamw", lr = 0.002 }
probe_wd = [0.0, 0.001, 0.01]
"""


def _spec(**kw):
    exp = {"name": "x", "model": "efficientnet_lite0", "regime": "lp-ft", **kw}
    return parse_study({"study": {"data": "synthetic"}, "experiment": [exp]}).experiments[0]


def test_registry_entry_probe_then_everything():
    spec = _spec(epochs=3)
    first, second = regimes.phases(spec)
    assert first.trains == regimes.HEAD and first.on_features(spec) and first.epochs(spec) == 3
    assert second.trains == regimes.ALL and not second.on_features(spec) and second.epochs(spec) == 3
    assert not spec.uses_features  # the fine-tuning phase backprops through the network
    assert regimes.pretrained(spec) and "LP-FT" in regimes.description(spec, [])
    assert regimes.trained_groups(spec, ["stem", "stage1", "head"], 0) == ["head"]
    assert regimes.trained_groups(spec, ["stem", "stage1", "head"], 1) == ["stem", "stage1", "head"]
    # fit = "backprop": the probe phase trains the head through the frozen backbone instead
    assert not regimes.phases(_spec(fit="backprop"))[0].on_features(_spec(fit="backprop"))


def test_baseline_has_nothing_to_probe():
    with pytest.raises(UserError, match="no pretrained weights"):
        _spec(model="baseline")


def test_lp_ft_end_to_end_fine_tunes_from_the_probed_head(tmp_path, monkeypatch, capsys):
    (tmp_path / "s.toml").write_text(LPFT)
    seen = {}
    real_probe, real_fit = probe.fit, Trainer.fit

    def spy_probe(ctx, *a, **k):
        out = real_probe(ctx, *a, **k)
        seen["probed"] = {k: v.clone() for k, v in ctx.net.head.state_dict().items()}
        return out

    def spy_fit(self, x, y):
        seen["start"] = {k: v.clone() for k, v in self.net.head.state_dict().items()}
        seen["trainable"] = all(p.requires_grad for p in self.net.backbone.parameters()
                                if p.ndim > 1)
        return real_fit(self, x, y)

    monkeypatch.setattr(probe, "fit", spy_probe)
    monkeypatch.setattr(Trainer, "fit", spy_fit)
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "s.toml")
    assert rc == 0, out + err
    assert all(torch.equal(seen["probed"][k], seen["start"][k]) for k in seen["probed"])
    assert seen["trainable"]  # the fine-tuning phase trains the backbone too
    db = tmp_path / "runs" / "transferlab.db"
    rows = q(db, "SELECT epoch, phase FROM epochs ORDER BY epoch")
    assert [r[0] for r in rows] == [1, 2, 3, 4]
    assert rows[0][1].startswith("head wd=") and [r[1] for r in rows[2:]] == ["all", "all"]
    store = Store(db, create=False)
    exp_id = by_name(db)["lpft"]["id"]
    res = store.result_record(exp_id)
    assert res.fit == "backprop" and res.chosen_wd is not None  # the probe phase's choice
    assert res.probe.epoch_choice.startswith("the last epoch") and res.best_epoch in (3, 4)
    assert "linear probe first" in out and "then backprop through the network" in out
    assert "phases         : probe: head for 2 epoch(s) on cached features; then all:" in out
    store.close()


def test_interrupted_lp_ft_resumes_bitwise(tmp_path, monkeypatch, capsys):
    """Ctrl-C after the first fine-tuning epoch: the rerun probes again (from the feature
    cache) and resumes fine-tuning from the checkpoint, as if it had never stopped."""
    runs = {}
    for which in ("interrupted", "plain"):
        runs[which] = tmp_path / which
        runs[which].mkdir()
        (runs[which] / "s.toml").write_text(LPFT)
    real_add = Store.add_epoch

    def ctrl_c_after_3(self, exp_id, row):
        real_add(self, exp_id, row)
        if row["epoch"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(Store, "add_epoch", ctrl_c_after_3)
    with pytest.raises(KeyboardInterrupt):
        main_in(runs["interrupted"], monkeypatch, capsys, "run", "s.toml")
    capsys.readouterr()
    monkeypatch.setattr(Store, "add_epoch", real_add)
    rc, out, err = main_in(runs["interrupted"], monkeypatch, capsys, "run", "s.toml")
    assert rc == 0, out + err
    assert "resuming from checkpoint after epoch 3" in out
    (runs["plain"] / "data").mkdir(exist_ok=True)  # the same machine: the same measured numerics
    shutil.copy(runs["interrupted"] / "data" / "numerics.json", runs["plain"] / "data")
    rc, out, err = main_in(runs["plain"], monkeypatch, capsys, "run", "s.toml")
    assert rc == 0, out + err
    dbs = [runs[w] / "runs" / "transferlab.db" for w in ("interrupted", "plain")]
    cols = "SELECT val_acc, test_acc, test_acc_no_tta, confusion, best_epoch FROM results"
    assert q(dbs[0], cols) == q(dbs[1], cols)
    rows = "SELECT epoch, phase, train_loss, train_acc, val_acc, lr FROM epochs ORDER BY epoch"
    assert q(dbs[0], rows) == q(dbs[1], rows) and len(q(dbs[0], rows)) == 4
    exp_id = by_name(dbs[0])["lpft"]["id"]
    a, b = (_state(runs[w] / "runs" / "lpft" / exp_id / "model.pt") for w in ("interrupted", "plain"))
    assert all(torch.equal(a[k], b[k]) for k in a)


DEAD = """
[study]
name = "dead"
data = "synthetic"

[defaults]
epochs = 2
batch_size = 32
resolution = 32
precision = "fp32"

[[experiment]]
name = "lpft-dead"
model = "tf_efficientnet_lite0"
weights = "none"
regime = "lp-ft"
"""


def test_constant_features_get_zero_weight_and_folding_stays_bounded():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(200, 6, generator=g) * torch.tensor([1.0, 0.5, 2.0, 1.0, 1.0, 1.0])
    train[:, 3] = 0.25  # a dead channel: the same value on every training image
    train[:, 4] = 0.5 + 1e-7 * torch.randn(200, generator=g)  # near-constant
    mean, std, constant = probe.standardisation(train)
    assert constant == 2 and torch.isinf(std[3]) and torch.isinf(std[4])
    assert float(std[~torch.isinf(std)].min()) >= float(train.std(0).mean()) - 1e-6
    head = torch.nn.Linear(6, 3).requires_grad_(False)
    fitted = {k: v.clone() for k, v in head.state_dict().items()}
    want = head((train - mean) / std)
    probe.fold_standardisation(head, mean, std)
    assert torch.allclose(head(train), want, atol=1e-5)
    assert torch.all(head.weight[:, 3:5] == 0)
    assert float(head.weight.abs().max()) <= float(fitted["weight"].abs().max()) / float(
        train.std(0).mean()) + 1e-4
    test = train.clone()
    test[:, 3] += 5.0  # a feature that varies at test time where it never did in training
    assert torch.allclose(head(test), head(train), atol=1e-5)


def test_lp_ft_on_a_network_with_dead_channels_finishes(tmp_path, monkeypatch, capsys):
    """A random-init Lite0 at 32 px: about 300 of its 1,280 pooled features are constant on the
    training split. Their weights used to be multiplied by 10^6 when the probed head went back
    into the network, and fine-tuning with the default optimiser ended in a NaN loss."""
    (tmp_path / "s.toml").write_text(DEAD)
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "s.toml")
    assert rc == 0, out + err
    m = re.search(r"probe: (\d+) of 1280 features are constant on the training split", out)
    assert m and int(m[1]) > 100, out
    db = tmp_path / "runs" / "transferlab.db"
    assert by_name(db)["lpft-dead"]["status"] == "done"
    (test_acc, extra), = q(db, "SELECT test_acc, extra FROM results")
    assert 0 <= test_acc <= 1 and json.loads(extra)["probe"]["constant_features"] == int(m[1])
    losses = [r[0] for r in q(db, "SELECT train_loss FROM epochs ORDER BY epoch")]
    # finite, and not blown up (folding by 10^6 gave NaN, or losses of 10^6 where it survived)
    assert len(losses) == 4 and all(math.isfinite(x) and x < 1e4 for x in losses), losses
