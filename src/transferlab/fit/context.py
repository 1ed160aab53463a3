"""What every fit of one experiment works with, in one object instead of ten parameters.

The experiment builds it once (experiment.run); the probe and the trainer read it. It holds
the things all fits share (the spec, the network, the input pipeline, the device, where epoch
rows and log lines go); what differs between fits (numerics, checkpoint, budget) stays a
parameter of each.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class FitContext:
    spec: object  # config.ExperimentSpec
    net: object  # models.Net
    pipe: object  # augment.Pipeline: batched augmentation and normalisation on the device
    device: object  # torch.device
    record_epoch: Callable[[dict], None] = lambda row: None  # the store's epoch row writer
    say: Callable[[str], None] = lambda line: None  # the log
