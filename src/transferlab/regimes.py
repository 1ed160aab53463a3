"""Transfer regimes: which layer groups train, at which learning rate, and how to say so.

    linear    backbone frozen (BatchNorm statistics too); only the new head trains
    last:K    the last K layer groups and the head train; the rest is frozen
    full      everything trains from the pretrained weights (optional layer-wise LR decay)
    scratch   the same architecture from random init; everything trains
    gradual   the head alone for N epochs, then everything at a lower LR
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .config import ExperimentSpec
from .models import Net


@dataclass
class RegimePlan:
    regime: str
    trained: list[str]  # group names that train (the head included)
    frozen: list[str]
    trained_params: int
    frozen_params: int
    modified_layers: str
    description: str

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def group_map(net: Net) -> list[tuple[str, list[nn.Parameter]]]:
    """Ordered (group, params) for the backbone groups, then the head."""
    params = dict(net.backbone.named_parameters())
    groups, seen = [], set()
    for gname, names in net.info.groups:
        ps = [params[n] for n in names if n in params]
        seen.update(n for n in names if n in params)
        groups.append((gname, ps))
    leftover = [p for n, p in params.items() if n not in seen]
    if leftover:  # anything a family's matcher missed belongs with the deepest stage
        if groups:
            groups[-1][1].extend(leftover)
        else:
            groups.append(("backbone", leftover))
    groups.append(("head", list(net.head.parameters())))
    return groups


def trained_groups(spec: ExperimentSpec, names: list[str], phase: int = 1) -> list[str]:
    backbone = [n for n in names if n != "head"]
    if spec.regime == "linear" or (spec.regime == "gradual" and phase == 0):
        return ["head"]
    if spec.last_k is not None:
        return backbone[-spec.last_k:] + ["head"] if spec.last_k else ["head"]
    return names


def apply(net: Net, spec: ExperimentSpec, phase: int = 1) -> RegimePlan:
    """Set requires_grad per group (phase 0 is the head-only start of `gradual`)."""
    groups = group_map(net)
    names = [g for g, _ in groups]
    train = set(trained_groups(spec, names, phase))
    for gname, ps in groups:
        for p in ps:
            p.requires_grad_(gname in train)
    if hasattr(net.backbone, "fixed_parameters"):  # e.g. the baseline's whitening filters
        for p in net.backbone.fixed_parameters():
            p.requires_grad_(False)
    n_train = sum(p.numel() for p in net.parameters() if p.requires_grad)
    n_frozen = sum(p.numel() for p in net.parameters() if not p.requires_grad)
    frozen = [g for g in names if g not in train]
    return RegimePlan(spec.regime, [g for g in names if g in train], frozen, n_train, n_frozen,
                      modified_layers(spec, net), describe(spec, frozen))


def modified_layers(spec: ExperimentSpec, net: Net) -> str:
    return f"classifier replaced: {net.info.old_head} -> new head {net.info.new_head}"


def describe(spec: ExperimentSpec, frozen: list[str]) -> str:
    r = spec.regime
    if r == "linear":
        how = ("fitted on cached backbone features" if spec.uses_features
               else "trained through the frozen backbone with augmentation")
        return f"feature extraction: backbone frozen (BN statistics too), only the head trains, {how}"
    if spec.last_k is not None:
        return (f"fine-tune the last {spec.last_k} layer group(s) and the head; frozen: "
                f"{', '.join(frozen) or 'nothing'}")
    if r == "full":
        ld = f", layer-wise LR decay {spec.layer_decay}" if spec.layer_decay < 1 else ""
        start = "random init (weights = \"none\")" if spec.weights == "none" else "pretrained weights"
        return f"full fine-tuning from {start}{ld}"
    if r == "scratch":
        return "training from scratch: random init, every layer trains"
    return (f"gradual unfreezing: head only for {spec.gradual_head_epochs} epoch(s), then every "
            f"layer at {spec.gradual_lr_scale}x the learning rate")


def set_train_mode(net: nn.Module) -> None:
    """Train mode, except modules with no trainable parameter: frozen BN keeps its statistics."""
    net.train()
    for m in net.modules():
        own = list(m.parameters())
        if own and not any(p.requires_grad for p in own):
            m.eval()


def param_groups(net: Net, spec: ExperimentSpec) -> list[dict]:
    """Optimiser groups: no weight decay on norms and biases; layer-wise LR decay if asked.

    Every group carries `lr_scale`; the schedule multiplies the base LR by it.
    """
    groups = group_map(net)
    depth = len(groups) - 1
    out = []
    for i, (gname, ps) in enumerate(groups):
        scale = spec.layer_decay ** (depth - i) if spec.regime == "full" else 1.0
        decay = [p for p in ps if p.ndim > 1]
        no_decay = [p for p in ps if p.ndim <= 1]
        for plist, wd in ((decay, spec.optimizer.weight_decay), (no_decay, 0.0)):
            if plist:
                out.append({"params": plist, "weight_decay": wd, "lr_scale": scale,
                            "group": gname})
    return out
