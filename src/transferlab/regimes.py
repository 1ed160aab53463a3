"""Transfer regimes: one registry entry each says everything about a regime.

An entry declares its phases (which layer groups train in each, for how many epochs, at which
LR scale, and whether a head-only phase may be fitted on cached backbone features), whether
the network starts from pretrained weights, whether layer-wise LR decay applies, the checks a
config must pass, and its plain-words description. Config checks, the trainer, the probe, the
architecture view, the figures and the time estimate ask the registry; none compares regime
names. A new regime is one `register(...)` call below.

This module is a leaf: it imports nothing from the package (config validates regime names
against it), and reaches a network only through its attributes (`backbone`, `head`,
`info.groups`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from .util import train_mode_except_frozen

HEAD, ALL = "head", "all"  # what a phase trains; or "last" (the regime's last K groups + head)


@dataclass(frozen=True)
class Phase:
    name: str  # the label of its epoch rows in the store
    trains: str  # HEAD, ALL or "last"
    epochs: Callable  # spec -> epochs of this phase
    lr_scale: Callable = lambda spec: 1.0  # spec -> multiplier of the LR in this phase
    cached: bool = False  # a head-only phase fitted on cached features when the spec allows

    def on_features(self, spec) -> bool:
        """Fitted on cached features: head only, fit = auto|features, a backbone to cache."""
        return (self.cached and self.trains == HEAD and spec.fit in ("auto", "features")
                and spec.model != "baseline")


@dataclass(frozen=True)
class Regime:
    name: str  # as written in a config; a pattern's name shows its form ("last:K")
    phases: Callable  # spec -> tuple[Phase, ...], in training order
    description: Callable  # (spec, frozen group names) -> plain words for the report
    legend: str  # short legend text of the accuracy chart (the report is in Russian)
    ru: str = ""  # its name in the report's tables ({k}: last_k)
    ru_long: str = ""  # its name in the conclusions, where it names a group of experiments
    pretrained: bool = True  # starts from the model's weights (unless weights = "none")
    layer_decay: bool = False  # spec.layer_decay scales the LR of deeper-to-shallower groups
    pattern: str | None = None  # a regex for parameterised names (last:K)
    checks: tuple = ()  # (spec -> bool, message) pairs a config must pass
    summary: Callable | None = None  # spec -> dict of its own settings for the description

    def matches(self, name: str) -> bool:
        return name == self.name if self.pattern is None else re.fullmatch(self.pattern, name) is not None


REGISTRY: dict[str, Regime] = {}


def register(regime: Regime) -> Regime:
    REGISTRY[regime.name] = regime
    return regime


def get(name: str) -> Regime:
    """The entry for a regime name as written in a config (KeyError if there is none)."""
    for r in REGISTRY.values():
        if r.matches(name):
            return r
    raise KeyError(name)


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def phases(spec) -> tuple[Phase, ...]:
    return tuple(get(spec.regime).phases(spec))


def last_k(name: str) -> int | None:
    m = re.fullmatch(r"last:([1-9][0-9]*)", name)
    return int(m.group(1)) if m else None


# ------------------------------------------------------------------ the registry

def _all_epochs(spec) -> int:
    return spec.epochs


def _linear_text(spec, frozen) -> str:
    how = ("fitted on cached backbone features" if phases(spec)[0].on_features(spec)
           else "trained through the frozen backbone with augmentation")
    return f"feature extraction: backbone frozen (BN statistics too), only the head trains, {how}"


register(Regime(
    "linear", lambda s: (Phase(HEAD, HEAD, _all_epochs, cached=True),), _linear_text,
    legend="linear: только новая голова", ru="линейная проба",
    ru_long="линейная проба (основа заморожена)"))

register(Regime(
    "last:K", lambda s: (Phase(f"last {last_k(s.regime)}", "last", _all_epochs),),
    lambda s, frozen: (f"fine-tune the last {last_k(s.regime)} layer group(s) and the head; "
                       f"frozen: {', '.join(frozen) or 'nothing'}"),
    legend="{name}: последние {k} гр. + голова", pattern=r"last:[1-9][0-9]*",
    ru="последние {k} гр. + голова", ru_long="дообучение последних {k} групп слоёв"))


def _full_text(spec, frozen) -> str:
    ld = f", layer-wise LR decay {spec.layer_decay}" if spec.layer_decay < 1 else ""
    start = "random init (weights = \"none\")" if spec.weights == "none" else "pretrained weights"
    return f"full fine-tuning from {start}{ld}"


register(Regime(
    "full", lambda s: (Phase(ALL, ALL, _all_epochs),), _full_text,
    legend="full: дообучение всей сети", layer_decay=True, ru="полное дообучение"))

register(Regime(
    "scratch", lambda s: (Phase(ALL, ALL, _all_epochs),),
    lambda s, frozen: "training from scratch: random init, every layer trains",
    legend="scratch: с нуля", pretrained=False, ru="с нуля", ru_long="обучение с нуля"))

def _gradual_text(spec, frozen) -> str:
    if spec.gradual_head_epochs == 0:  # what --epochs 1 leaves of it: no room for a head phase
        return (f"gradual unfreezing cut to its second phase (gradual_head_epochs = 0): every "
                f"layer at {spec.gradual_lr_scale}x the learning rate from the first epoch")
    return (f"gradual unfreezing: head only for {spec.gradual_head_epochs} epoch(s), then every "
            f"layer at {spec.gradual_lr_scale}x the learning rate")


register(Regime(
    "gradual",
    lambda s: (Phase(HEAD, HEAD, lambda s: s.gradual_head_epochs),
               Phase(ALL, ALL, lambda s: s.epochs - s.gradual_head_epochs,
                     lr_scale=lambda s: s.gradual_lr_scale)),
    _gradual_text, legend="gradual: постепенная разморозка", ru="постепенное размораживание",
    checks=((lambda s: 0 <= s.gradual_head_epochs < s.epochs,
             "gradual_head_epochs must be smaller than epochs (and not negative)"),),
    summary=lambda s: {"head_epochs": s.gradual_head_epochs, "lr_scale": s.gradual_lr_scale}))


def _lpft_text(spec, frozen) -> str:
    how = ("a head fitted on cached backbone features, weight decay chosen on validation"
           if phases(spec)[0].on_features(spec) else "the head alone trained through the frozen backbone")
    return (f"LP-FT (Kumar et al., ICLR 2022): linear probe first ({how}, {spec.epochs} epoch(s)), "
            f"then full fine-tuning of every layer from that probed head for {spec.epochs} "
            "epoch(s), so the pretrained features are not distorted by a random head")


register(Regime(
    "lp-ft",
    lambda s: (Phase("probe", HEAD, _all_epochs, cached=True), Phase(ALL, ALL, _all_epochs)),
    _lpft_text, legend="lp-ft: зонд, затем вся сеть", layer_decay=True,
    ru="проба, затем полное дообучение (LP-FT)"))


# ------------------------------------------------------------------ questions about a spec

def check(spec) -> str | None:
    """The first config problem of `spec`'s regime, or None."""
    for ok, message in get(spec.regime).checks:
        if not ok(spec):
            return message
    return None


def pretrained(spec) -> bool:
    return get(spec.regime).pretrained and spec.weights != "none"


def on_features(spec) -> bool:
    """The whole fit is on cached features (every phase is a head-only cached phase)."""
    return all(p.on_features(spec) for p in phases(spec))


def layer_decay(spec) -> float:
    return spec.layer_decay if get(spec.regime).layer_decay else 1.0


def description(spec, frozen: list[str]) -> str:
    return get(spec.regime).description(spec, frozen)


def legend(name: str) -> str:
    """Short chart legend for a regime name as stored; the name itself if it is unknown."""
    try:
        r = get(name)
    except KeyError:
        return name
    return r.legend.format(name=name, k=last_k(name))


def ru_name(name: str, long: bool = False) -> str:
    """The report's Russian name of a regime as stored; the name itself if it is unknown."""
    try:
        r = get(name)
    except KeyError:
        return name
    text = (r.ru_long if long else "") or r.ru or name
    return text.format(k=last_k(name))


def trained_groups(spec, names: list[str], phase: int | None = None) -> list[str]:
    """The groups (of `names`, the head last) that train in `phase` (None: the last phase)."""
    ph = phase_at(spec, phase)
    if ph.trains == HEAD:
        return ["head"]
    if ph.trains == "last":
        backbone = [n for n in names if n != "head"]
        return backbone[-last_k(spec.regime):] + ["head"]
    return names


def phase_at(spec, phase: int | None) -> Phase:
    ps = phases(spec)
    return ps[-1] if phase is None else ps[min(phase, len(ps) - 1)]


# ------------------------------------------------------------------ applying to a network

@dataclass
class RegimePlan:
    regime: str
    trained: list[str]  # group names that train (the head included)
    frozen: list[str]
    trained_params: int
    frozen_params: int
    modified_layers: str
    description: str
    phase: str = ""

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def group_map(net) -> list[tuple[str, list]]:
    """Ordered (group, params) for the backbone groups, then the head."""
    params = dict(net.backbone.named_parameters())
    groups, seen = [], set()
    for gname, names_ in net.info.groups:
        ps = [params[n] for n in names_ if n in params]
        seen.update(n for n in names_ if n in params)
        groups.append((gname, ps))
    leftover = [p for n, p in params.items() if n not in seen]
    if leftover:  # anything a family's matcher missed belongs with the deepest stage
        if groups:
            groups[-1][1].extend(leftover)
        else:
            groups.append(("backbone", leftover))
    groups.append(("head", list(net.head.parameters())))
    return groups


def apply(net, spec, phase: int | None = None) -> RegimePlan:
    """Set requires_grad per group for `phase` (an index into the regime's phases; None or an
    index past the end: the last phase)."""
    groups = group_map(net)
    gnames = [g for g, _ in groups]
    train = set(trained_groups(spec, gnames, phase))
    for gname, ps in groups:
        for p in ps:
            p.requires_grad_(gname in train)
    if hasattr(net.backbone, "fixed_parameters"):  # e.g. the baseline's whitening filters
        for p in net.backbone.fixed_parameters():
            p.requires_grad_(False)
    n_train = sum(p.numel() for p in net.parameters() if p.requires_grad)
    n_frozen = sum(p.numel() for p in net.parameters() if not p.requires_grad)
    frozen = [g for g in gnames if g not in train]
    return RegimePlan(spec.regime, [g for g in gnames if g in train], frozen, n_train, n_frozen,
                      modified_layers(spec, net), describe(spec, frozen), phase_at(spec, phase).name)


def modified_layers(spec, net) -> str:
    return f"classifier replaced: {net.info.old_head} -> new head {net.info.new_head}"


def describe(spec, frozen: list[str]) -> str:
    return description(spec, frozen)


def set_train_mode(net) -> None:
    """Train mode, except modules with no trainable parameter: frozen BN keeps its statistics."""
    train_mode_except_frozen(net)
