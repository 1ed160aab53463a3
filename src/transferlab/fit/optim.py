"""Shared training parts: parameter groups, the optimiser, the LR schedule, autocast.

Both fits use them: the backprop trainer (train.py) and the cached-feature probe (probe.py).
Every parameter group carries `lr_scale` (layer-wise LR decay); each step sets
`lr = base LR x schedule factor x phase scale x lr_scale`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import regimes
from ..config import ExperimentSpec


# ------------------------------------------------------------------ parameter groups

def decay_groups(params, weight_decay: float, lr_scale: float = 1.0, group: str = "") -> list[dict]:
    """No weight decay on norms and biases (1-d parameters); empty groups left out."""
    params = list(params)
    out = []
    for plist, wd in (([p for p in params if p.ndim > 1], weight_decay),
                      ([p for p in params if p.ndim <= 1], 0.0)):
        if plist:
            out.append({"params": plist, "weight_decay": wd, "lr_scale": lr_scale, "group": group})
    return out


def param_groups(net, spec: ExperimentSpec) -> list[dict]:
    """Optimiser groups per layer group; layer-wise LR decay where the regime takes it."""
    groups = regimes.group_map(net)
    depth = len(groups) - 1
    decay = regimes.layer_decay(spec)
    out = []
    for i, (gname, ps) in enumerate(groups):
        out += decay_groups(ps, spec.optimizer.weight_decay, decay ** (depth - i), gname)
    return out


def head_groups(heads: list[nn.Module], wds: list[float]) -> list[dict]:
    """One pair of groups per probe head, each with its own weight decay."""
    return [g for head, wd in zip(heads, wds) for g in decay_groups(head.parameters(), wd)]


# ------------------------------------------------------------------ optimiser

def make_optimizer(groups: list[dict], spec: ExperimentSpec) -> torch.optim.Optimizer:
    o = spec.optimizer
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum,
                               nesterov=o.nesterov and o.momentum > 0)
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps)


def describe_optimizer(spec: ExperimentSpec) -> dict:
    o = spec.optimizer
    d = {"name": o.name, "lr": o.lr, "weight_decay": o.weight_decay,
         "weight_decay_on_norms_and_biases": False}
    if o.name == "sgd":
        d.update(momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0)
    else:
        d.update(betas=list(o.betas), eps=o.eps)
    return d


# ------------------------------------------------------------------ schedule

def lr_factor(spec: ExperimentSpec, step: int, total: int, steps_per_epoch: int) -> float:
    warm = int(spec.warmup_epochs * steps_per_epoch)
    if spec.schedule == "onecycle":
        warm = warm or max(1, int(0.15 * total))
    if warm and step < warm:
        return (step + 1) / warm
    if spec.schedule == "constant":
        return 1.0
    progress = (step - warm) / max(1, total - warm)
    if spec.schedule == "onecycle":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def set_lr(opt: torch.optim.Optimizer, spec: ExperimentSpec, step: int, total: int,
           steps_per_epoch: int, phase_scale: float = 1.0) -> None:
    """The per-step LR update, for every fit."""
    factor = lr_factor(spec, step, total, steps_per_epoch) * phase_scale
    for g in opt.param_groups:
        g["lr"] = spec.optimizer.lr * factor * g.get("lr_scale", 1.0)


# ------------------------------------------------------------------ autocast

def autocast(numerics, device):
    """A context factory: `with amp():` runs in the number format `numerics` chose."""
    return lambda: numerics.autocast(device)
