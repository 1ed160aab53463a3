"""Typed records of an experiment: its description, its epoch rows, its result.

Each record knows its fields (the store's columns come from here) and its text form (the
block printed before an experiment trains and by `transferlab show`, the epoch line). The
store keeps them as rows and JSON; `from_dict` reads what older versions wrote too.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields


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

@dataclass
class Result:
    """What an experiment ends with; per_class, confusion, classes and extra travel as JSON."""
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
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> "Result":
        return cls(**_known(cls, d))

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

    @classmethod
    def from_dict(cls, d: dict) -> "Description":
        d = dict(d)
        if d.get("regime_settings") is None and d.get("gradual"):
            d["regime_settings"] = d["gradual"]
        defaults = {f.name: None for f in fields(cls) if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING}
        return cls(**{**defaults, **_known(cls, d)})

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def lines(self) -> list[str]:
        """The block printed before an experiment trains and by `transferlab show`."""
        o = self.optimizer
        opt = ", ".join(f"{k}={v}" for k, v in o.items() if k != "name")
        groups = ", ".join(f"{g['group']}({g['params'] / 1e6:.2f}M "
                           f"{'train' if g['trained'] else 'frozen'})" for g in self.groups)
        s = self.schedule
        sched = f"{s['name']}, warmup {s['warmup_epochs']} epoch(s)"
        if s.get("layer_decay", 1) < 1:
            sched += f", layer-wise LR decay {s['layer_decay']}"
        lines = [
            f"  model          : {self.arch} ({self.family})",
            f"  initialisation : {self.init}",
            f"  normalisation  : mean {self.normalization['mean']}, std {self.normalization['std']}",
            f"  modified layers: {self.modified_layers}",
            f"  regime         : {self.regime}: {self.regime_description}",
            f"  layer groups   : {groups}",
            f"  parameters     : {self.trained_params:,} trained, {self.frozen_params:,} frozen",
            f"  optimiser      : {o['name']} ({opt})",
            f"  schedule       : {sched}",
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
