"""Transfer regimes: one registry entry each says everything about a regime.

An entry declares its phases (which layer groups train in each, for how many epochs, at which
LR scale, and whether a head-only phase may be fitted on cached backbone features), whether
the network starts from pretrained weights, whether layer-wise LR decay applies, the checks a
config must pass, and its plain-words descriptions in English (the log, `transferlab show`) and
Russian (the report), both written from the same `Facts`, so the two cannot drift apart. Config
checks, the trainer, the probe, the architecture view, the figures, the time estimate and the
report ask the registry; none compares regime names. A new regime is one `register(...)` call
below.

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
class Facts:
    """What a regime's descriptions say about one experiment. Built from a spec before it
    trains (`facts`), or from its stored description afterwards (record.Description.facts):
    one input for both languages, whichever side holds the experiment."""
    regime: str
    trained: tuple = ()  # group names that train (in the first phase)
    frozen: tuple = ()
    cached: bool = False  # the first phase is a head fitted on cached backbone features
    weights: str = "imagenet"
    layer_decay: float = 1.0  # the LR decay that applies (1: off)
    head_epochs: int = 0  # gradual: head-only epochs before everything unfreezes
    lr_scale: float = 1.0  # gradual: LR multiplier once everything trains
    epochs: int = 0

    @property
    def k(self) -> int | None:
        return last_k(self.regime)


@dataclass(frozen=True)
class Regime:
    name: str  # as written in a config; a pattern's name shows its form ("last:K")
    phases: Callable  # spec -> tuple[Phase, ...], in training order
    description: Callable  # Facts -> plain English words (the log, `transferlab show`)
    ru_description: Callable  # Facts -> the same in Russian (the report, the notebook)
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


def _ld_en(f: Facts) -> str:
    return f", layer-wise LR decay {f.layer_decay}" if f.layer_decay < 1 else ""


def _ld_ru(f: Facts) -> str:
    return f", послойное затухание LR {f.layer_decay}" if f.layer_decay < 1 else ""


register(Regime(
    "linear", lambda s: (Phase(HEAD, HEAD, _all_epochs, cached=True),),
    lambda f: ("feature extraction: backbone frozen (BN statistics too), only the head trains, "
               + ("fitted on cached backbone features" if f.cached
                  else "trained through the frozen backbone with augmentation")),
    lambda f: ("извлечение признаков: основа заморожена (и статистики BN), обучается только "
               "голова — " + ("на закэшированных признаках основы" if f.cached
                              else "через замороженную основу с аугментацией")),
    legend="linear: только новая голова", ru="линейная проба",
    ru_long="линейная проба (основа заморожена)"))

register(Regime(
    "last:K", lambda s: (Phase(f"last {last_k(s.regime)}", "last", _all_epochs),),
    lambda f: (f"fine-tune the last {f.k} layer group(s) and the head; "
               f"frozen: {', '.join(f.frozen) or 'nothing'}"),
    lambda f: (f"дообучение последних {f.k} групп слоёв и головы: обучаются "
               f"{', '.join(f.trained) or '?'}; заморожены {', '.join(f.frozen) or 'ничего'}"),
    legend="{name}: последние {k} гр. + голова", pattern=r"last:[1-9][0-9]*",
    ru="последние {k} гр. + голова", ru_long="дообучение последних {k} групп слоёв"))

register(Regime(
    "full", lambda s: (Phase(ALL, ALL, _all_epochs),),
    lambda f: ("full fine-tuning from " + ('random init (weights = "none")' if f.weights == "none"
                                           else "pretrained weights") + _ld_en(f)),
    lambda f: ("полное дообучение " + ("от случайной инициализации (weights = \"none\")"
                                       if f.weights == "none" else "от предобученных весов")
               + _ld_ru(f)),
    legend="full: дообучение всей сети", layer_decay=True, ru="полное дообучение"))

register(Regime(
    "scratch", lambda s: (Phase(ALL, ALL, _all_epochs),),
    lambda f: "training from scratch: random init, every layer trains",
    lambda f: "обучение с нуля: случайная инициализация, обучаются все слои",
    legend="scratch: с нуля", pretrained=False, ru="с нуля", ru_long="обучение с нуля"))


def _gradual_en(f: Facts) -> str:
    if f.head_epochs == 0:  # what --epochs 1 leaves of it: no room for a head phase
        return (f"gradual unfreezing cut to its second phase (gradual_head_epochs = 0): every "
                f"layer at {f.lr_scale}x the learning rate from the first epoch")
    return (f"gradual unfreezing: head only for {f.head_epochs} epoch(s), then every "
            f"layer at {f.lr_scale}x the learning rate")


def _gradual_ru(f: Facts) -> str:
    if f.head_epochs == 0:
        return (f"постепенное размораживание без фазы одной головы (gradual_head_epochs = 0): "
                f"все слои с LR x{f.lr_scale} с первой эпохи")
    return (f"постепенное размораживание: {f.head_epochs} эп. только голова, затем все слои "
            f"с LR x{f.lr_scale}")


register(Regime(
    "gradual",
    lambda s: (Phase(HEAD, HEAD, lambda s: s.gradual_head_epochs),
               Phase(ALL, ALL, lambda s: s.epochs - s.gradual_head_epochs,
                     lr_scale=lambda s: s.gradual_lr_scale)),
    _gradual_en, _gradual_ru, legend="gradual: постепенная разморозка",
    ru="постепенное размораживание",
    checks=((lambda s: 0 <= s.gradual_head_epochs < s.epochs,
             "gradual_head_epochs must be smaller than epochs (and not negative)"),),
    summary=lambda s: {"head_epochs": s.gradual_head_epochs, "lr_scale": s.gradual_lr_scale}))


def _lpft_en(f: Facts) -> str:
    how = ("a head fitted on cached backbone features, weight decay chosen on validation"
           if f.cached else "the head alone trained through the frozen backbone")
    return (f"LP-FT (Kumar et al., ICLR 2022): linear probe first ({how}, {f.epochs} epoch(s)), "
            f"then full fine-tuning of every layer from that probed head for {f.epochs} "
            "epoch(s), so the pretrained features are not distorted by a random head")


def _lpft_ru(f: Facts) -> str:
    how = ("голова на закэшированных признаках, weight decay выбран по валидации" if f.cached
           else "одна голова обучается через замороженную основу")
    return (f"LP-FT (Kumar et al., ICLR 2022): сначала линейная проба ({how}, {f.epochs} эп.), "
            f"затем полное дообучение всех слоёв от этой головы ({f.epochs} эп.), чтобы "
            "случайная голова не искажала предобученные признаки" + _ld_ru(f))


register(Regime(
    "lp-ft",
    lambda s: (Phase("probe", HEAD, _all_epochs, cached=True), Phase(ALL, ALL, _all_epochs)),
    lambda f: _lpft_en(f) + _ld_en(f), _lpft_ru, legend="lp-ft: зонд, затем вся сеть",
    layer_decay=True, ru="проба, затем полное дообучение (LP-FT)"))


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


def facts(spec, frozen: list[str], trained: list[str] = ()) -> Facts:
    """What the descriptions say about `spec` (frozen / trained: group names)."""
    return Facts(spec.regime, tuple(trained), tuple(frozen), phases(spec)[0].on_features(spec),
                 spec.weights, layer_decay(spec), spec.gradual_head_epochs,
                 spec.gradual_lr_scale, spec.epochs)


def text(f: Facts, lang: str = "en") -> str:
    """A regime's description of an experiment, in English ("en") or Russian ("ru"); an
    unknown regime (a record of a removed one) is named as it is."""
    try:
        r = get(f.regime)
    except KeyError:
        return f.regime
    return (r.ru_description if lang == "ru" else r.description)(f)


def description(spec, frozen: list[str], trained: list[str] = ()) -> str:
    return text(facts(spec, frozen, trained))


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
                      modified_layers(spec, net),
                      description(spec, frozen, [g for g in gnames if g in train]),
                      phase_at(spec, phase).name)


def modified_layers(spec, net) -> str:
    return f"classifier replaced: {net.info.old_head} -> new head {net.info.new_head}"


def describe(spec, frozen: list[str]) -> str:
    return description(spec, frozen)


def set_train_mode(net) -> None:
    """Train mode, except modules with no trainable parameter: frozen BN keeps its statistics."""
    train_mode_except_frozen(net)
