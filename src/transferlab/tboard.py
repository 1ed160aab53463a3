"""TensorBoard curves per experiment, written from the same epoch rows the store records.

    transferlab run CONFIG --tensorboard runs/tb      (or [study] tensorboard = "runs/tb")
    tensorboard --logdir runs/tb

One run folder per experiment, DIR/<study>/<experiment>-<id prefix>. A resumed experiment
replays its earlier epochs into a fresh writer that purges what the interrupted one wrote
from the first replayed epoch on, so the curves never hold an epoch twice.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .config import ExperimentSpec
from .errors import UserError

TAGS = {"train_loss": "loss/train", "val_loss": "loss/val", "train_acc": "accuracy/train",
        "val_acc": "accuracy/val", "lr": "learning_rate", "img_per_s": "speed/images_per_s",
        "seconds": "speed/epoch_seconds"}


def require() -> None:
    """Fail before the study starts, not at its first epoch."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package: pip install "
                        "'transferlab[tensorboard]' (or drop --tensorboard / the [study] "
                        "tensorboard key)") from None


def run_dir(root: Path, study_name: str, spec: ExperimentSpec) -> Path:
    return Path(root) / study_name / f"{spec.name}-{spec.id[:8]}"


class EpochCurves:
    """Wraps a record_epoch callback: each row goes to the store, then to TensorBoard."""

    def __init__(self, root: Path, study_name: str, spec: ExperimentSpec):
        self.dir = run_dir(root, study_name, spec)
        self.writer = None

    def wrap(self, record: Callable[[dict], None]) -> Callable[[dict], None]:
        def both(row: dict) -> None:
            record(row)
            self.add(row)
        return both

    def add(self, row: dict) -> None:
        step = int(row["epoch"])
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.dir), purge_step=step)
        for key, tag in TAGS.items():
            if row.get(key) is not None:
                self.writer.add_scalar(tag, float(row[key]), step)
        self.writer.flush()  # a killed run keeps every epoch it recorded

    def __enter__(self) -> "EpochCurves":
        return self

    def __exit__(self, *exc) -> bool:
        if self.writer is not None:
            self.writer.close()
        return False


class NoCurves:
    """Stands in when TensorBoard is off: the callback passes through untouched."""

    def wrap(self, record):
        return record

    def __enter__(self) -> "NoCurves":
        return self

    def __exit__(self, *exc) -> bool:
        return False
