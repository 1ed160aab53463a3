"""Each regime freezes what it says: frozen parameters and BN buffers stay bit-identical."""
import pytest
import torch

from transferlab import models, regimes
from transferlab.fit import optim
from transferlab.fit.augment import Pipeline
from transferlab.fit.context import FitContext
from transferlab.config import parse_study
from transferlab.data import make_splits
from transferlab.fit.hardware import FP32
from transferlab.fit.train import Trainer


def _spec(regime, **kw):
    exp = {"name": "x", "model": "efficientnet_lite0", "regime": regime, "epochs": 1,
           "batch_size": 32, "resolution": 32, "fit": "backprop", **kw}
    return parse_study({"study": {"data": "synthetic:24"}, "experiment": [exp]}).experiments[0]


def _train(spec, tmp_path):
    splits = make_splits(spec.data, tmp_path)
    torch.manual_seed(0)
    net = models.build(spec, splits.num_classes)
    regimes.apply(net, spec, phase=0 if spec.regime == "gradual" else 1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    pipe = Pipeline(net.info.mean, net.info.std, 32, spec.augment, torch.device("cpu"))
    Trainer(FitContext(spec, net, pipe, torch.device("cpu")), FP32,
            tmp_path / "ck.pt").fit(splits.x, splits.y)
    return net, before


def _changed(net, before, prefix):
    keys = [k for k in before if k.startswith(prefix) and not k.endswith("num_batches_tracked")]
    assert keys, prefix
    return {k: not torch.equal(before[k], net.state_dict()[k]) for k in keys}


def _groups(net):
    return {g: names for g, names in net.info.groups}


def test_linear_backprop_keeps_backbone_and_bn_stats(tmp_path):
    net, before = _train(_spec("linear"), tmp_path)
    assert not any(_changed(net, before, "backbone.").values())  # weights and BN buffers
    assert all(_changed(net, before, "head.").values())


def test_last_k_trains_only_last_groups(tmp_path):
    net, before = _train(_spec("last:1"), tmp_path)
    groups = _groups(net)
    for g in ("stem", "stage1", "stage2", "stage3"):
        for name in groups[g]:
            mod = name.rsplit(".", 1)[0]
            for k, changed in _changed(net, before, f"backbone.{mod}.").items():
                assert not changed, f"{k} in frozen {g} changed"
    last = _changed(net, before, "backbone.blocks.6.")
    assert any(last.values())
    running = [k for k in last if "running_mean" in k]
    assert running and all(last[k] for k in running)  # trained BN updates its statistics


def test_full_and_scratch_train_everything(tmp_path):
    for regime in ("full", "scratch"):
        net, before = _train(_spec(regime), tmp_path)
        weights = {k: v for k, v in _changed(net, before, "backbone.").items()
                   if k.endswith("weight")}
        assert sum(weights.values()) / len(weights) > 0.95, regime


def test_scratch_is_not_pretrained():
    spec = _spec("scratch")
    pre = models.build(_spec("full"), 4)
    scratch = models.build(spec, 4)
    w = "conv_stem.weight"
    assert not torch.equal(pre.backbone.state_dict()[w], scratch.backbone.state_dict()[w])
    assert "random init" in scratch.info.init and "ImageNet" in pre.info.init


def test_gradual_unfreezes_after_head_epochs(tmp_path):
    spec = _spec("gradual", epochs=2, gradual_head_epochs=1)
    net, before = _train(spec, tmp_path)
    assert any(_changed(net, before, "backbone.blocks.0.").values())
    plan = regimes.apply(models.build(spec, 4), spec, phase=0)
    assert plan.trained == ["head"]


def test_offline_weights_are_the_package_weights():
    from transferlab.models import _offline_weights_file
    from transferlab.util import safe_load
    net = models.build(_spec("full"), 10)
    sd = safe_load(_offline_weights_file("efficientnet_lite0"))
    first = next(iter(sd.values()))
    assert torch.equal(net.backbone.conv_stem.weight, first)
    assert net.info.mean == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18", "convnext_atto",
                                  "vit_tiny_patch16_224", "tv:resnet18", "tv:vit_b_16"])
def test_every_family_has_stem_and_four_stages_covering_all_parameters(name):
    spec = parse_study({"study": {"data": "synthetic"}, "experiment": [
        {"name": "x", "model": name, "regime": "scratch", "weights": "none"}]}).experiments[0]
    net = models.build(spec, 10)
    assert [g for g, _ in net.info.groups] == ["stem", "stage1", "stage2", "stage3", "stage4"]
    grouped = [n for _, names in net.info.groups for n in names]
    assert sorted(grouped) == sorted(n for n, _ in net.backbone.named_parameters())
    plan = regimes.apply(net, spec.__class__(**{**spec.__dict__, "regime": "last:2"}))
    assert plan.trained == ["stage3", "stage4", "head"]


def test_no_weight_decay_on_norms_and_biases():
    spec = _spec("full")
    net = models.build(spec, 4)
    for g in optim.param_groups(net, spec):
        if g["weight_decay"] > 0:
            assert all(p.ndim > 1 for p in g["params"])
        else:
            assert all(p.ndim <= 1 for p in g["params"])


def test_layer_decay_scales_lr_by_depth():
    spec = _spec("full", layer_decay=0.5)
    groups = optim.param_groups(models.build(spec, 4), spec)
    scale = {g["group"]: g["lr_scale"] for g in groups}
    assert scale["head"] == 1.0 and scale["stage4"] == 0.5 and scale["stem"] == 0.5 ** 5


def test_full_from_random_init_does_not_claim_pretrained_weights():
    assert regimes.describe(_spec("full"), []) == "full fine-tuning from pretrained weights"
    assert "random init" in regimes.describe(_spec("full", weights="none"), [])
