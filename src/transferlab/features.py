"""Frozen-backbone probes: extract features once, cache them, fit the head on tensors.

The classic tutorial forwards the frozen backbone on every batch of every epoch. Here the
backbone runs once per (model, weights, resolution, normalisation, data, split, view); the
head is then fitted on the cached features in seconds. As in the CLIP and DINOv2 linear-probe
protocols, the weight decay is chosen on the validation split; the test split is only scored.
"""
from __future__ import annotations

import copy
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
from .hardware import Numerics
from .kernels import frozen_for_inference
from .models import Net, make_head
from .train import lr_factor, make_optimizer
from .util import atomic_save, eval_batch, progress, safe_load


def feature_key(spec: ExperimentSpec, net: Net, split: str, view: str, number_format: str,
                decoded_side: int) -> str:
    """What the features depend on: the backbone and its weights, the input pipeline (the side
    the images were decoded at, which a later high-resolution experiment can change for
    native-resolution ones), the data and split, and the number format of the extraction."""
    d = spec.data
    blob = json.dumps({"arch": net.info.arch, "weights": spec.weights, "init": net.info.init,
                       "res": spec.resolution, "mean": net.info.mean, "std": net.info.std,
                       "data": [d.fingerprint or d.source, d.subset, d.val_fraction, d.cache_size],
                       "decoded_side": decoded_side, "format": number_format,
                       "split": split, "view": view, "v": 2}, sort_keys=True)
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
                          lambda: numerics.autocast(pipe.device), allow_trace=numerics.fast_path)
    number_format = "fp32" if numerics.dtype is None else str(numerics.dtype).split(".")[-1]
    for split, split_views in views.items():
        for view in split_views:
            key = feature_key(spec, net, split, view, number_format, int(x[split].shape[1]))
            path = cache_dir / f"{key}.pt"
            if path.exists():
                feats[split, view] = safe_load(path)
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


def _logits(head: nn.Module, feats: list[torch.Tensor]) -> torch.Tensor:
    return sum(head(f) for f in feats) / len(feats)


@torch.no_grad()
def _accuracy(head, feats, y) -> float:
    head.eval()
    return float((_logits(head, feats).argmax(1) == y).float().mean()) if len(y) else float("nan")


def fit_head(spec: ExperimentSpec, in_dim: int, num_classes: int, train_f: torch.Tensor,
             train_y: torch.Tensor, val_f: list, val_y: torch.Tensor, wd: float):
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
    return head, history


def fit_heads(spec: ExperimentSpec, in_dim: int, num_classes: int, train_f: torch.Tensor,
              train_y: torch.Tensor, val_f: list, val_y: torch.Tensor,
              wds: list[float]) -> list[tuple[nn.Module, list[dict]]]:
    """fit_head for each weight decay. Linear heads train side by side, one matmul per step for
    all of them, with the same init, batches, schedule and optimiser each would get alone."""
    if spec.head.kind != "linear" or len(wds) < 2:
        return [fit_head(spec, in_dim, num_classes, train_f, train_y, val_f, val_y, wd)
                for wd in wds]
    torch.manual_seed(spec.seed)
    first = make_head(spec.head, in_dim, num_classes)
    heads = [copy.deepcopy(first) for _ in wds]
    groups = []
    for head, wd in zip(heads, wds):
        groups += [{"params": [head.weight], "weight_decay": wd, "lr_scale": 1.0},
                   {"params": [head.bias], "weight_decay": 0.0, "lr_scale": 1.0}]
    opt = make_optimizer(groups, spec)
    n, bs, k = len(train_f), spec.batch_size, len(wds)
    steps = (n + bs - 1) // bs
    gen = torch.Generator().manual_seed(spec.seed)
    histories: list[list[dict]] = [[] for _ in wds]
    for epoch in range(spec.epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        loss_sum, correct = torch.zeros(k), torch.zeros(k)
        for i in range(steps):
            for g in opt.param_groups:
                g["lr"] = spec.optimizer.lr * lr_factor(spec, epoch * steps + i, spec.epochs * steps, steps)
            idx = perm[i * bs:(i + 1) * bs]
            y = train_y[idx]
            weight = torch.cat([h.weight for h in heads])  # (k * classes, features)
            bias = torch.cat([h.bias for h in heads])
            out = torch.addmm(bias, train_f[idx], weight.t()).view(len(idx), k, num_classes)
            losses = F.cross_entropy(out.transpose(1, 2), y[:, None].expand(-1, k),
                                     label_smoothing=spec.label_smoothing,
                                     reduction="none").mean(0)  # (k,): each head's own loss
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            opt.step()
            loss_sum += losses.detach() * len(idx)
            correct += (out.detach().argmax(2) == y[:, None]).sum(0)
        seconds = time.perf_counter() - t0
        for j, (head, wd) in enumerate(zip(heads, wds)):
            row = {"epoch": epoch + 1, "phase": f"head wd={wd:g}",
                   "train_loss": float(loss_sum[j]) / n, "train_acc": float(correct[j]) / n,
                   "lr": opt.param_groups[0]["lr"], "seconds": seconds / k,
                   "img_per_s": n * k / seconds}
            if len(val_y):
                row["val_acc"] = _accuracy(head, val_f, val_y)
            histories[j].append(row)
    return list(zip(heads, histories))


def fold_standardisation(head: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Make head(features) equal the fitted head((features - mean) / std)."""
    first = head if isinstance(head, nn.Linear) else next(m for m in head if isinstance(m, nn.Linear))
    with torch.no_grad():
        w = first.weight / std
        first.bias -= (w * mean).sum(1)
        first.weight.copy_(w)
