"""Every experiment of the GPU studies can run: a config that cannot fails here, not on a GPU.

For each experiment of the shipped cifar10 and cifar10-t4 configs the model is built as
the engine builds it (random weights: no internet here), its regime applied, and one real
training step taken through the engine's own code (the Trainer's step with its optimiser and
parameter groups; for probes, feature extraction and the head fit), then one evaluation, on 2
synthetic images on CPU in fp32. Experiments that share an architecture, regime and head share
one run, so the test stays fast; convnets run at a reduced side (any side the network's
stride allows exercises the same layers), ViT at its native size (its position embeddings are
fixed).
"""
from __future__ import annotations

import dataclasses
import math
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

from transferlab import models, regimes
from transferlab.fit.augment import Pipeline
from transferlab.fit.context import FitContext
from transferlab.config import load_study
from transferlab.fit.features import cached_features, probe_views
from transferlab.fit.probe import fit_heads, fold_standardisation, standardisation
from transferlab.fit.hardware import FP32
from transferlab.models import make_head
from transferlab.fit.evaluate import on_images
from transferlab.resources import shipped_configs
from transferlab.fit.train import Shards, Trainer

GPU_CONFIGS = ("cifar10.toml", "cifar10-t4.toml")
CONFIGS = shipped_configs()  # the package's own, by name
NUM_CLASSES, BATCH, CONVNET_SIDE = 10, 2, 32
CPU = torch.device("cpu")


def _specs(config: str):
    try:
        return load_study(CONFIGS[config.removesuffix(".toml")], fingerprint=None).experiments
    except Exception:  # noqa: BLE001  test_gpu_configs_load reports it
        return []


EXPERIMENTS = [pytest.param(config, spec, id=f"{config.removesuffix('.toml')}:{spec.name}")
               for config in GPU_CONFIGS for spec in _specs(config)]


@pytest.mark.parametrize("config", GPU_CONFIGS)
def test_gpu_configs_load(config):
    """They parse without reading data; 4 source models, each fine-tuned two ways."""
    study = load_study(CONFIGS[config.removesuffix(".toml")], fingerprint=None)
    assert study.data.source == "cifar10"
    pretrained = [s for s in study.experiments if s.model != "baseline" and s.weights != "none"]
    configurations = {}
    for s in pretrained:
        if not s.uses_features:
            configurations.setdefault(s.model, set()).add((s.regime, s.head.kind))
    assert len(configurations) == 4, configurations
    for model, kinds in configurations.items():
        assert ("full", "linear") in kinds and ("last:1", "mlp") in kinds, (model, kinds)
    assert any(s.model == "baseline" for s in study.experiments)
    assert {s.model for s in study.experiments if s.uses_features} == set(configurations)


def _test_side(spec) -> int:
    side = spec.resolution or 32
    return side if models.resolve_name(spec.model)[1].startswith("vit") else min(side, CONVNET_SIDE)


def _images(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-like uint8 NHWC images at 32 px; the pipeline resizes them as it would CIFAR."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (BATCH, 32, 32, 3), dtype=torch.uint8, generator=gen)
    return x, torch.arange(BATCH) % NUM_CLASSES


def _snapshot(net) -> tuple[dict, dict]:
    params = {n: p.detach().clone() for n, p in net.named_parameters()}
    frozen_buffers = {}  # modules with no trainable parameter keep their statistics
    for mname, m in net.named_modules():
        own = list(m.parameters(recurse=False))
        if own and not any(p.requires_grad for p in own):
            for bname, b in m.named_buffers(recurse=False):
                frozen_buffers[f"{mname}.{bname}"] = b.detach().clone()
    return params, frozen_buffers


@dataclasses.dataclass
class Outcome:
    loss: float
    logits_shape: tuple
    eval_preds_shape: tuple
    eval_loss: float
    trained: list[str]
    frozen: list[str]
    unchanged_trained: list[str]  # with a non-zero gradient, yet not moved by the step
    not_in_optimizer: list[str]
    changed_frozen: list[str]
    missing_grads: list[str]
    changed_frozen_buffers: list[str]


def _backprop_step(spec, tmp: Path) -> Outcome:
    torch.manual_seed(0)
    net = models.build(spec, NUM_CLASSES)
    regimes.apply(net, spec, phase=0 if spec.regime == "gradual" else 1)
    if spec.channels_last:
        net = net.to(memory_format=torch.channels_last)
    side = _test_side(spec)
    pipe = Pipeline(net.info.mean, net.info.std, side, spec.augment, CPU, spec.channels_last)
    x, y = _images(0)
    if hasattr(net.backbone, "data_init"):  # as experiment._train does (the baseline's whitening)
        net.backbone.data_init(pipe.eval(x).float())
    params, buffers = _snapshot(net)
    trainer = Trainer(FitContext(spec, net, pipe, CPU), FP32, tmp / "checkpoint.pt")
    shards = Shards.plan(len(x), spec.batch_size, 1)
    trainer.total = shards.steps * spec.epochs
    loss_sum, _, seen = trainer._train_epoch(x, y, 0, shards, 1, 0)
    named = dict(net.named_parameters())
    trained = [n for n, p in named.items() if p.requires_grad]
    frozen = [n for n, p in named.items() if not p.requires_grad]
    state = dict(net.named_buffers())
    in_optimizer = {id(p) for g in trainer.opt.param_groups for p in g["params"]}
    shapes = []  # the logits' shape, seen from inside the engine's evaluation
    hook = net.register_forward_hook(lambda m, i, out: shapes.append(tuple(out.shape)))
    _, ev = on_images(net, pipe, x, y, BATCH, nullcontext, spec.tta)
    hook.remove()
    return Outcome(
        loss=loss_sum / seen, logits_shape=shapes[-1],
        eval_preds_shape=tuple(ev.preds.shape), eval_loss=ev.loss,
        trained=trained, frozen=frozen,
        unchanged_trained=[n for n in trained if torch.equal(params[n], named[n])
                           and named[n].grad is not None and bool(named[n].grad.any())],
        not_in_optimizer=[n for n in trained if id(named[n]) not in in_optimizer],
        changed_frozen=[n for n in frozen if not torch.equal(params[n], named[n])],
        missing_grads=[n for n in trained if named[n].grad is None
                       or not torch.isfinite(named[n].grad).all()],
        changed_frozen_buffers=[n for n, b in buffers.items() if not torch.equal(b, state[n])])


def _probe_step(spec, tmp: Path) -> Outcome:
    """The engine's probe: frozen backbone features (cached), heads fitted on them."""
    torch.manual_seed(0)
    net = models.build(spec, NUM_CLASSES)
    regimes.apply(net, spec)
    if spec.channels_last:
        net = net.to(memory_format=torch.channels_last)
    side = _test_side(spec)
    pipe = Pipeline(net.info.mean, net.info.std, side, spec.augment, CPU, spec.channels_last)
    params, buffers = _snapshot(net)
    x = {"train": _images(0)[0], "val": _images(1)[0], "test": _images(2)[0]}
    y = _images(0)[1]
    views = probe_views(spec)
    fs = cached_features(spec, net, pipe, x, tmp / "features", FP32, views, lambda line: None)
    train_f = torch.cat([fs.feats["train", v] for v in views["train"]])
    mean, std, _ = standardisation(train_f)
    train_y = y.repeat(len(views["train"]))
    val_f = [(fs.feats["val", v] - mean) / std for v in views["val"]]
    wds = list(spec.probe_wd)
    fits = fit_heads(spec, train_f.shape[1], NUM_CLASSES, (train_f - mean) / std, train_y,
                     val_f, y, wds)
    torch.manual_seed(spec.seed)  # the head every fit starts from
    start = make_head(spec.head, train_f.shape[1], NUM_CLASSES).state_dict()
    head, hist = fits[0]
    unchanged = [f"head.{k}" for _, (h, _) in zip(wds, fits)
                 for k, v in h.state_dict().items() if torch.equal(v, start[k])]
    fold_standardisation(head, mean, std)
    net.head.load_state_dict(head.state_dict())
    named = dict(net.named_parameters())
    state = dict(net.named_buffers())
    with torch.inference_mode():
        net.eval()
        logits = net(pipe.eval(x["test"]))
    frozen = [n for n, p in named.items() if not p.requires_grad]
    return Outcome(
        loss=hist[-1]["train_loss"], logits_shape=tuple(logits.shape),
        eval_preds_shape=(len(logits.argmax(1)),),
        eval_loss=float(torch.nn.functional.cross_entropy(logits, y)),
        trained=[n for n, p in named.items() if p.requires_grad], frozen=frozen,
        unchanged_trained=unchanged, not_in_optimizer=[],  # fit_heads owns its optimiser
        changed_frozen=[n for n in frozen if not torch.equal(params[n], named[n])],
        # the heads' gradients live inside fit_heads: a non-finite loss is what shows of them
        missing_grads=[] if all(math.isfinite(r["train_loss"]) for r in hist) else ["head"],
        changed_frozen_buffers=[n for n, b in buffers.items() if not torch.equal(b, state[n])])


def _key(spec) -> tuple:
    """What the run depends on; settings that change only numbers (lr, epochs) are left out."""
    return (spec.model, spec.regime, spec.head, spec.init, _test_side(spec), spec.uses_features,
            spec.optimizer.name, spec.layer_decay != 1.0, spec.augment, spec.tta)


_RESULTS: dict[tuple, Outcome] = {}


@pytest.mark.parametrize("config,spec", EXPERIMENTS)
def test_experiment_runs_one_step(config, spec, tmp_path):
    spec = dataclasses.replace(spec, weights="none")  # no internet; same architecture
    key = _key(spec)
    if key not in _RESULTS:
        step = _probe_step if spec.uses_features else _backprop_step
        _RESULTS[key] = step(spec, tmp_path)
    out = _RESULTS[key]
    assert math.isfinite(out.loss), out.loss
    assert out.logits_shape == (BATCH, NUM_CLASSES)
    assert out.eval_preds_shape == (BATCH,) and math.isfinite(out.eval_loss)
    assert out.trained, "nothing trains"
    assert not out.missing_grads, f"no finite gradient: {out.missing_grads[:5]}"
    assert not out.not_in_optimizer, f"trainable but not optimised: {out.not_in_optimizer[:5]}"
    assert not out.unchanged_trained, f"trainable but unchanged: {out.unchanged_trained[:5]}"
    assert not out.changed_frozen, f"frozen but changed: {out.changed_frozen[:5]}"
    assert not out.changed_frozen_buffers, f"frozen statistics moved: {out.changed_frozen_buffers[:5]}"
    if spec.regime == "linear" or spec.last_k:
        assert out.frozen, f"regime {spec.regime} froze nothing"
