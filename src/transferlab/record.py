"""Typed records of an experiment: its description, its epoch rows, its result.

Each record knows its fields (the store's columns come from here) and its text form (the
block printed before an experiment trains and by `transferlab show`, the epoch line). The
store keeps them as rows and JSON; `from_dict` reads what older versions wrote too.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields

from . import fmt, regimes


def _known(cls, d: dict) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


# ------------------------------------------------------------------ epoch rows

@dataclass
class EpochRow:
    """One epoch of a fit (a probe head's or the trainer's)."""
    epoch: int
    phase: str | None = None  # the regime phase (or the probe head's weight decay)
    train_loss: float | None = None
    train_acc: float | None = None
    val_acc: float | None = None
    val_loss: float | None = None
    lr: float | None = None
    seconds: float | None = None
    img_per_s: float | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "EpochRow":
        return cls(**_known(cls, d))

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def text(self, epochs: int) -> str:
        val = f"  val acc {self.val_acc:.2%}" if self.val_acc is not None else ""
        return (f"  epoch {self.epoch:>3}/{epochs}  train loss {self.train_loss:.4f}  "
                f"train acc {self.train_acc:.2%}{val}  lr {self.lr:.2e}  "
                f"{self.seconds:.1f}s  {self.img_per_s:.0f} img/s")


EPOCH_COLUMNS = [f.name for f in fields(EpochRow)]


def format_epoch(row: dict, epochs: int) -> str:
    """The log line of an epoch row (a dict as the store returns it)."""
    return EpochRow.from_dict(row).text(epochs)


# ------------------------------------------------------------------ results

BACKPROP, FEATURES = "backprop", "cached features"  # the two ways a result was fitted


@dataclass(frozen=True)
class ProbeChoice:
    """What a cached-feature probe chose on validation: its weight decay, from which sweep."""
    weight_decay: float | None
    sweep: list = field(default_factory=list)  # [{weight_decay, val_acc, added}]
    grid_extended: list = field(default_factory=list)  # decays added beyond the grid's edge
    constant_features: int = 0  # dead channels given zero weight
    epoch_choice: str = ""
    val_acc: float | None = None  # lp-ft: the probe phase's own scores, before fine-tuning
    test_acc: float | None = None

    KEYS = {"chosen_wd": "weight_decay", "probe_sweep": "sweep",
            "wd_grid_extended": "grid_extended", "constant_features": "constant_features",
            "epoch_choice": "epoch_choice", "val_acc": "val_acc", "test_acc": "test_acc"}

    @classmethod
    def from_stored(cls, d: dict) -> "ProbeChoice":
        return cls(**{mine: d[key] for key, mine in cls.KEYS.items()
                      if d.get(key) is not None})

    def stored(self, scores: bool) -> dict:
        out = {key: getattr(self, mine) for key, mine in self.KEYS.items()}
        if not scores:
            out.pop("val_acc"), out.pop("test_acc")
        return out


@dataclass(frozen=True)
class FeatureRun:
    """How a probe's backbone features were had: extracted (how) or read from the cache."""
    seconds: float = 0.0
    extracted: int = 0
    mode: str = ""


@dataclass
class Result:
    """What an experiment ends with. The store keeps the scores in columns and the rest as
    one JSON field (`extra`, in the layout every version wrote); nothing outside the store
    sees that JSON: `stored_extra` writes it, `from_dict` reads it back (older stores too)."""
    test_acc: float
    val_acc: float | None = None
    test_acc_no_tta: float | None = None
    per_class: list | None = None
    confusion: list | None = None
    classes: list | None = None
    best_epoch: int | None = None
    train_seconds: float | None = None
    total_seconds: float | None = None
    peak_mem_mb: float | None = None
    fit: str | None = None  # BACKPROP or FEATURES (None: not recorded)
    epoch_choice: str | None = None  # which epoch's weights were kept, and why
    val_acc_no_tta: float | None = None
    val_loss: float | None = None  # breaks ties between equal validation accuracies
    val_n: int | None = None
    # per image, in split order, at the weights validation chose: the paired tests
    # (stats.paired) compare two models on them; `predict` is checked against the test ones
    val_predictions: list | None = None
    val_labels: list | None = None
    test_predictions: list | None = None
    test_labels: list | None = None
    probe: ProbeChoice | None = None  # a probe's choice (lp-ft: its probe phase's)
    features: FeatureRun | None = None
    steps: int | None = None  # optimizer steps taken
    budget_plan: dict | None = None  # a budgeted final's BudgetPlan (as its dict)
    fold: dict | None = None  # a cross-validation fold: its held-out pool images and predictions
    unknown: dict = field(default_factory=dict)  # keys another version wrote, kept on copy

    FLAT = ("epoch_choice", "val_acc_no_tta", "val_loss", "val_n", "val_predictions",
            "val_labels", "test_predictions", "test_labels", "steps", "budget_plan", "fold")
    FEATURE_KEYS = {"feature_seconds": "seconds", "features_extracted": "extracted",
                    "feature_extraction": "mode"}

    @property
    def on_features(self) -> bool:
        return self.fit == FEATURES

    @property
    def chosen_wd(self) -> float | None:
        """The weight decay validation chose for a probe (lp-ft: for its probe phase)."""
        return self.probe.weight_decay if self.probe else None

    @classmethod
    def from_dict(cls, d: dict) -> "Result":
        """A result as a fit returns it or the store keeps it (columns + `extra`)."""
        d = dict(d)
        extra = dict(d.pop("extra", None) or {})
        for k in cls.FLAT + ("fit",):  # a fit's dict carries some of them at the top
            if k in d and k not in extra:
                extra[k] = d.pop(k)
        kw = _known(cls, {k: v for k, v in d.items() if k not in cls.FLAT})
        kw["fit"] = extra.pop("fit", None)
        for k in cls.FLAT:
            if k in extra:
                kw[k] = extra.pop(k)
        if kw["fit"] == FEATURES:  # a probe keeps its choice flat beside its scores
            kw["probe"] = ProbeChoice.from_stored(
                {**{k: extra.pop(k) for k in list(extra) if k in ProbeChoice.KEYS},
                 "epoch_choice": kw.get("epoch_choice")})
        elif isinstance(extra.get("probe"), dict):  # lp-ft: its probe phase, nested
            kw["probe"] = ProbeChoice.from_stored(extra.pop("probe"))
        if any(k in extra for k in cls.FEATURE_KEYS):
            kw["features"] = FeatureRun(**{mine: extra.pop(k) for k, mine in
                                           cls.FEATURE_KEYS.items() if k in extra})
        kw["unknown"] = {**extra, **(kw.get("unknown") or {})}
        return cls(**kw)

    def stored_extra(self) -> dict:
        """The `extra` JSON field, in the layout earlier versions wrote and read."""
        out = dict(self.unknown)
        if self.fit is not None:
            out["fit"] = self.fit
        out.update({k: getattr(self, k) for k in self.FLAT if getattr(self, k) is not None})
        if self.probe is not None and self.on_features:
            out.update(self.probe.stored(scores=False))
        elif self.probe is not None:
            out["probe"] = self.probe.stored(scores=True)
        if self.features is not None:
            out.update({k: getattr(self.features, mine) for k, mine in self.FEATURE_KEYS.items()})
        return out

    def columns(self) -> dict:
        """The store's result columns (`extra` as its dict; the store turns it into JSON)."""
        row = {c: getattr(self, c) for c in RESULT_COLUMNS if c != "extra"}
        row["extra"] = self.stored_extra()
        return row

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


RESULT_COLUMNS = ["val_acc", "test_acc", "test_acc_no_tta", "per_class", "confusion", "classes",
                  "best_epoch", "train_seconds", "total_seconds", "peak_mem_mb", "extra"]
RESULT_JSON = ("per_class", "confusion", "classes", "extra")  # stored as JSON text


# ------------------------------------------------------------------ the final stage's plan

@dataclass
class BudgetPlan:
    """How many optimizer steps a budgeted final trains, and what that came from.

    Written to the store and the checkpoint when the final starts: a resumed final keeps it on
    any machine, so its learning-rate schedule (which ends at `total_steps`) never shifts."""
    budget: str  # as written, e.g. "25m"
    budget_s: float
    grid_s: float  # wall time the grid took (every run of it, from the store's ledger)
    margin_s: float  # kept back for safety
    reserve_s: float  # the final's own work besides training (scoring the test split)
    train_s: float  # what is left for the training steps
    img_per_s: float  # the training loop's planned throughput
    rate_how: str  # where that figure came from (measured steps, loop efficiency)
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    train_images: int
    machine: str
    created: str
    replanned: dict | None = None  # {at_step, planned/measured img/s, total_steps before}

    @property
    def epochs(self) -> float:
        return self.total_steps / max(1, self.steps_per_epoch)

    @classmethod
    def from_dict(cls, d: dict) -> "BudgetPlan":
        return cls(**_known(cls, d))

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "epochs": round(self.epochs, 3)}

    def text(self) -> str:
        line = (f"budget {self.budget}: the grid took {self.grid_s / 60:.1f} min, so the final "
                f"trains {self.total_steps:,} steps ({self.epochs:.2f} epochs of "
                f"{self.train_images:,} images) in {self.train_s / 60:.1f} min at "
                f"{self.img_per_s:.0f} img/s ({self.rate_how}); {self.reserve_s:.0f}s kept for "
                f"scoring, {self.margin_s:.0f}s margin")
        if self.replanned:
            r = self.replanned
            line += (f"; re-planned at step {r['at_step']}: the loop ran at "
                     f"{r['measured_img_per_s']:.0f} img/s, not the {r['planned_img_per_s']:.0f} "
                     f"first planned: {r['total_steps_before']:,} -> {self.total_steps:,} steps")
        return line


# ------------------------------------------------------------------ descriptions

@dataclass
class Description:
    """What an experiment is, as recorded before it trains (the store's `details`)."""
    name: str
    model: str
    arch: str
    family: str
    init: str
    weights: str
    normalization: dict
    old_head: str
    new_head: str
    modified_layers: str
    regime: str
    regime_description: str
    groups: list  # [{group, params, trained}]
    trained_params: int
    frozen_params: int
    optimizer: dict
    schedule: dict
    epochs: int
    batch_size: int
    resolution: int
    decoded_side: int | None
    augment: str
    label_smoothing: float
    precision: str
    numerics: dict
    channels_last: bool
    compile: bool
    tta: bool
    seed: int
    fit: str
    head: dict
    data: str
    classes: list
    split_sizes: dict
    device: str
    regime_settings: dict | None = None  # the regime's own settings (gradual: head epochs, LR scale)
    gradual: dict | None = None  # what older versions wrote for regime_settings (gradual only)
    phases: list = field(default_factory=list)  # [{phase, trained, epochs, lr_scale, fit}]
    budget_plan: dict | None = None  # a budgeted final's BudgetPlan, once it is fixed
    final: dict | None = None  # the final stage's experiment: its parent and why it was chosen

    @classmethod
    def from_dict(cls, d: dict) -> "Description":
        d = dict(d)
        if d.get("regime_settings") is None and d.get("gradual"):
            d["regime_settings"] = d["gradual"]
        defaults = {f.name: None for f in fields(cls) if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING}
        return cls(**{**defaults, **_known(cls, d)})

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["final"] is None:  # only the final stage's experiment says it is one
            del d["final"]
        return d

    def facts(self) -> regimes.Facts:
        """What the registry's descriptions need, read back from the record (older records
        included: a gradual run's settings under the old `gradual` key, no phases)."""
        groups = self.groups or []
        rs = self.regime_settings or {}
        first = (self.phases or [{}])[0]
        cached = first.get("fit") == "cached features" if self.phases else \
            str(self.fit or "").startswith("cached")
        try:
            decays = regimes.get(self.regime).layer_decay
        except KeyError:
            decays = False
        return regimes.Facts(
            self.regime, tuple(g["group"] for g in groups if g["trained"]),
            tuple(g["group"] for g in groups if not g["trained"]), cached,
            self.weights or "imagenet",
            (self.schedule or {}).get("layer_decay", 1.0) if decays else 1.0,
            int(rs.get("head_epochs", 0)), float(rs.get("lr_scale", 1.0)),
            int(self.epochs or 0))

    def lines(self) -> list[str]:
        """The block printed before an experiment trains and by `transferlab show`."""
        groups = ", ".join(f"{g['group']}({g['params'] / 1e6:.2f}M "
                           f"{'train' if g['trained'] else 'frozen'})" for g in self.groups)
        lines = [
            f"  model          : {self.arch} ({self.family})",
            f"  initialisation : {self.init}",
            f"  normalisation  : mean {self.normalization['mean']}, std {self.normalization['std']}",
            f"  modified layers: {self.modified_layers}",
            f"  regime         : {self.regime}: {self.regime_description}",
            f"  layer groups   : {groups}",
            f"  parameters     : {self.trained_params:,} trained, {self.frozen_params:,} frozen",
            f"  optimiser      : {fmt.optimizer_text(self.optimizer)}",
            f"  schedule       : {fmt.schedule_text(self.schedule, 'en')}",
            f"  training       : {self.epochs} epochs, batch {self.batch_size}, resolution "
            f"{self.resolution}px, augmentation {self.augment}, label smoothing {self.label_smoothing}",
            f"  fit            : {self.fit}",
            f"  numerics       : {self.precision}, channels_last {self.channels_last}, compile "
            f"{self.compile}, flip TTA {self.tta}, seed {self.seed}, device {self.device}",
            f"  data           : {self.data}; "
            + ", ".join(f"{k} {v}" for k, v in self.split_sizes.items()),
        ]
        if self.budget_plan:
            lines.insert(10, f"  budget         : {BudgetPlan.from_dict(self.budget_plan).text()}")
        if len(self.phases) > 1:
            steps = "; then ".join(
                f"{p['phase']}: {', '.join(p['trained'])} for {p['epochs']} epoch(s)"
                + (f" at {p['lr_scale']}x LR" if p['lr_scale'] != 1 else "")
                + (" on cached features" if p.get("fit") == "cached features" else "")
                for p in self.phases)
            lines.insert(5, f"  phases         : {steps}")
        elif self.gradual and not self.phases:  # a description written before phases were
            rs = self.gradual                      # recorded (gradual was the only two-phase one)
            lines.insert(5, f"  gradual        : head only for {rs['head_epochs']} epoch(s), "
                            f"then all layers at {rs['lr_scale']}x LR")
        return lines


def format_details(d: dict) -> list[str]:
    """The text block of a stored description (a dict as the store keeps it)."""
    return Description.from_dict(d).lines()
