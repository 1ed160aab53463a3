"""Frozen-backbone probes: extract features once, cache them, fit the head on tensors.

The classic tutorial forwards the frozen backbone on every batch of every epoch. Here the
backbone runs once per (model, weights, resolution, normalisation, data, split, view); the
head is then fitted on the cached features in seconds. As in the CLIP and DINOv2 linear-probe
protocols, the weight decay is chosen on the validation split; the test split is only scored.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .augment import Pipeline
from .config import ExperimentSpec
from .models import Net, make_head
from .train import autocast, lr_factor, make_optimizer
from .util import atomic_save, eval_batch, progress, safe_load


def feature_key(spec: ExperimentSpec, net: Net, split: str, view: str) -> str:
    d = spec.data
    blob = json.dumps({"arch": net.info.arch, "weights": spec.weights, "init": net.info.init,
                       "res": spec.resolution, "mean": net.info.mean, "std": net.info.std,
                       "data": [d.fingerprint or d.source, d.subset, d.val_fraction, d.cache_size],
                       "split": split, "view": view, "v": 1}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@torch.inference_mode()
def extract(backbone: nn.Module, pipe: Pipeline, x: torch.Tensor, batch: int, amp,
            flip: bool = False) -> torch.Tensor:
    backbone.eval()
    out = []
    with progress((len(x) + batch - 1) // batch, "features") as bar:
        for i in range(0, len(x), batch):
            with amp():
                out.append(backbone(pipe.eval(x[i:i + batch], flip=flip)).float().cpu())
            bar.update(1)
    return torch.cat(out)


@dataclass
class FeatureSet:
    feats: dict  # (split, view) -> tensor
    seconds: float  # time spent extracting in this call (0 when all came from the cache)
    extracted: int  # images pushed through the backbone in this call


def cached_features(spec: ExperimentSpec, net: Net, pipe: Pipeline, x: dict, cache_dir: Path,
                    amp, views: dict[str, list[str]], say) -> FeatureSet:
    feats, seconds, count = {}, 0.0, 0
    for split, split_views in views.items():
        for view in split_views:
            path = cache_dir / f"{feature_key(spec, net, split, view)}.pt"
            if path.exists():
                feats[split, view] = safe_load(path)
                continue
            t0 = time.perf_counter()
            batch = eval_batch(spec.batch_size, pipe.device)
            f = extract(net.backbone, pipe, x[split], batch, amp,
                        flip=view == "flip")
            dt = time.perf_counter() - t0
            seconds += dt
            count += len(f)
            say(f"  extracted {split}/{view} features {tuple(f.shape)} in {dt:.1f}s "
                f"({len(f) / max(dt, 1e-9):.0f} img/s), cached at {path.name}")
            atomic_save(f, path)
            feats[split, view] = f
    return FeatureSet(feats, seconds, count)


def probe_views(spec: ExperimentSpec) -> dict[str, list[str]]:
    """Flipped training features double the data (the one augmentation that caches);
    flipped val/test features give flip TTA."""
    train = ["plain", "flip"] if spec.augment != "none" else ["plain"]
    evalv = ["plain", "flip"] if spec.tta else ["plain"]
    return {"train": train, "val": evalv, "test": evalv}


def _logits(head: nn.Module, feats: list[torch.Tensor]) -> torch.Tensor:
    return sum(head(f) for f in feats) / len(feats)


@torch.no_grad()
def _accuracy(head, feats, y) -> float:
    head.eval()
    return float((_logits(head, feats).argmax(1) == y).float().mean()) if len(y) else float("nan")


def fit_head(spec: ExperimentSpec, in_dim: int, num_classes: int, train_f: torch.Tensor,
             train_y: torch.Tensor, val_f: list, val_y: torch.Tensor, wd: float, on_epoch=None):
    """Minibatch training of a fresh head on standardised features; returns (head, history)."""
    torch.manual_seed(spec.seed)
    head = make_head(spec.head, in_dim, num_classes)
    params = [{"params": [p for p in head.parameters() if p.ndim > 1], "weight_decay": wd,
               "lr_scale": 1.0},
              {"params": [p for p in head.parameters() if p.ndim <= 1], "weight_decay": 0.0,
               "lr_scale": 1.0}]
    opt = make_optimizer(params, spec)
    n, bs = len(train_f), spec.batch_size
    steps = (n + bs - 1) // bs
    gen = torch.Generator().manual_seed(spec.seed)
    history = []
    for epoch in range(spec.epochs):
        t0 = time.perf_counter()
        head.train()
        perm = torch.randperm(n, generator=gen)
        loss_sum = correct = 0.0
        for i in range(steps):
            for g in opt.param_groups:
                g["lr"] = spec.optimizer.lr * lr_factor(spec, epoch * steps + i, spec.epochs * steps, steps)
            idx = perm[i * bs:(i + 1) * bs]
            out = head(train_f[idx])
            loss = F.cross_entropy(out, train_y[idx], label_smoothing=spec.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += float((out.argmax(1) == train_y[idx]).sum())
        row = {"epoch": epoch + 1, "phase": f"head wd={wd:g}", "train_loss": loss_sum / n,
               "train_acc": correct / n, "lr": opt.param_groups[0]["lr"],
               "seconds": time.perf_counter() - t0, "img_per_s": n / (time.perf_counter() - t0)}
        if len(val_y):
            row["val_acc"] = _accuracy(head, val_f, val_y)
        history.append(row)
        if on_epoch:
            on_epoch(row)
    return head, history


def fold_standardisation(head: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Make head(features) equal the fitted head((features - mean) / std)."""
    first = head if isinstance(head, nn.Linear) else next(m for m in head if isinstance(m, nn.Linear))
    with torch.no_grad():
        w = first.weight / std
        first.bias -= (w * mean).sum(1)
        first.weight.copy_(w)
