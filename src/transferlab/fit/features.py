"""Frozen-backbone features: extract them once, cache them on disk.

The classic tutorial forwards the frozen backbone on every batch of every epoch. Here the
backbone runs once per (model, weights, resolution, normalisation, data, split, view); the
probe (probe.py) then fits the head on the cached features in seconds.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .augment import Pipeline
from ..config import ExperimentSpec
from .hardware import Numerics
from .kernels import frozen_for_inference
from ..net import Net
from .optim import autocast
from ..util import atomic_save, eval_batch, load_or_set_aside, progress


def feature_key(spec: ExperimentSpec, net: Net, split: str, view: str, number_format: str,
                decoded_side: int) -> str:
    """What the features depend on: the backbone and its weights, the input pipeline (the side
    the images were decoded at, which a later high-resolution experiment can change for
    native-resolution ones), the data and split, and the number format of the extraction."""
    d = spec.data
    what = {"arch": net.info.arch, "weights": spec.weights, "init": net.info.init,
            "res": spec.resolution, "mean": net.info.mean, "std": net.info.std,
            "data": [d.fingerprint or d.source, d.subset, d.val_fraction, d.cache_size],
            "decoded_side": decoded_side, "format": number_format,
            "split": split, "view": view, "v": 2}
    if spec.weights_sha256:  # a weights file: its content, not only its path
        what["weights_sha256"] = spec.weights_sha256
    blob = json.dumps(what, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class Extractor:
    """Runs the frozen backbone over image tensors; on CPU in fp32 through a frozen trace."""

    def __init__(self, backbone: nn.Module, pipe: Pipeline, batch: int, amp, allow_trace: bool):
        self.backbone, self.pipe, self.batch, self.amp = backbone, pipe, batch, amp
        self.allow_trace = allow_trace and pipe.device.type == "cpu"
        self.traced = None
        self.mode = "eager"

    def _forward(self, xb: torch.Tensor) -> torch.Tensor:
        if self.traced is not None and len(xb) == self.batch:
            return self.traced(xb).float()
        with self.amp():
            out = self.backbone(xb).float()
        if self.allow_trace and len(xb) == self.batch:  # first full batch: try a frozen trace
            self.allow_trace = False
            self.traced, why = frozen_for_inference(self.backbone, xb, out)
            self.mode = "TorchScript, frozen" if self.traced is not None else f"eager (trace failed: {why})"
        return out

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, flip: bool = False) -> torch.Tensor:
        self.backbone.eval()
        out = []
        with progress((len(x) + self.batch - 1) // self.batch, "features") as bar:
            for i in range(0, len(x), self.batch):
                out.append(self._forward(self.pipe.eval(x[i:i + self.batch], flip=flip)).cpu())
                bar.update(1)
        return torch.cat(out)


def extract(backbone: nn.Module, pipe: Pipeline, x: torch.Tensor, batch: int, amp,
            flip: bool = False) -> torch.Tensor:
    """Features of every image in `x` (eager; see Extractor for the traced path)."""
    return Extractor(backbone, pipe, batch, amp, allow_trace=False)(x, flip)


@dataclass
class FeatureSet:
    feats: dict  # (split, view) -> tensor
    seconds: float  # time spent extracting in this call (0 when all came from the cache)
    extracted: int  # images pushed through the backbone in this call
    mode: str  # how they were pushed: "eager", "TorchScript, frozen", or "cache" if none were


def cached_features(spec: ExperimentSpec, net: Net, pipe: Pipeline, x: dict, cache_dir: Path,
                    numerics: Numerics, views: dict[str, list[str]], say) -> FeatureSet:
    feats, seconds, count = {}, 0.0, 0
    extractor = Extractor(net.backbone, pipe, eval_batch(spec.batch_size, pipe.device),
                          autocast(numerics, pipe.device), allow_trace=numerics.fast_path)
    number_format = "fp32" if numerics.dtype is None else str(numerics.dtype).split(".")[-1]
    for split, split_views in views.items():
        for view in split_views:
            key = feature_key(spec, net, split, view, number_format, int(x[split].shape[1]))
            path = cache_dir / f"{key}.pt"
            cached = load_or_set_aside(path, lambda m: say("  " + m)) if path.exists() else None
            if cached is not None:
                feats[split, view] = cached
                continue
            t0 = time.perf_counter()
            f = extractor(x[split], flip=view == "flip")
            dt = time.perf_counter() - t0
            seconds += dt
            count += len(f)
            say(f"  extracted {split}/{view} features {tuple(f.shape)} in {dt:.1f}s "
                f"({len(f) / max(dt, 1e-9):.0f} img/s, {extractor.mode}), cached at {path.name}")
            atomic_save(f, path)
            feats[split, view] = f
    return FeatureSet(feats, seconds, count, extractor.mode if count else "cache")


def probe_views(spec: ExperimentSpec) -> dict[str, list[str]]:
    """Flipped training features double the data (the one augmentation that caches);
    flipped val/test features give flip TTA."""
    train = ["plain", "flip"] if spec.augment != "none" else ["plain"]
    evalv = ["plain", "flip"] if spec.tta else ["plain"]
    return {"train": train, "val": evalv, "test": evalv}
