"""The training loop over in-memory tensors, evaluation with flip TTA, checkpoint and resume.

One epoch: a seeded permutation of the training images, batches augmented on the device,
autocast where it pays off, the LR set per step from the schedule, then validation and an
atomic checkpoint. Everything random is seeded per epoch, so a run resumed from a checkpoint
takes the same path as one that was never interrupted.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import dist, hardware, regimes
from .augment import Pipeline
from .config import ExperimentSpec
from .errors import ClaimLost, ExperimentFailed
from .hardware import Numerics
from .util import atomic_save, eval_batch, progress, safe_load


# ------------------------------------------------------------------ schedule and optimiser

def lr_factor(spec: ExperimentSpec, step: int, total: int, steps_per_epoch: int) -> float:
    warm = int(spec.warmup_epochs * steps_per_epoch)
    if spec.schedule == "onecycle":
        warm = warm or max(1, int(0.15 * total))
    if warm and step < warm:
        return (step + 1) / warm
    if spec.schedule == "constant":
        return 1.0
    progress = (step - warm) / max(1, total - warm)
    if spec.schedule == "onecycle":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(groups: list[dict], spec: ExperimentSpec) -> torch.optim.Optimizer:
    o = spec.optimizer
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum,
                               nesterov=o.nesterov and o.momentum > 0)
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps)


def describe_optimizer(spec: ExperimentSpec) -> dict:
    o = spec.optimizer
    d = {"name": o.name, "lr": o.lr, "weight_decay": o.weight_decay,
         "weight_decay_on_norms_and_biases": False}
    if o.name == "sgd":
        d.update(momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0)
    else:
        d.update(betas=list(o.betas), eps=o.eps)
    return d


# ------------------------------------------------------------------ evaluation

@dataclass
class Evaluation:
    acc: float
    loss: float
    preds: torch.Tensor
    targets: torch.Tensor

    def per_class(self, num_classes: int) -> list[float]:
        out = []
        for c in range(num_classes):
            m = self.targets == c
            out.append(float((self.preds[m] == c).float().mean()) if m.any() else float("nan"))
        return out

    def confusion(self, num_classes: int) -> list[list[int]]:
        idx = self.targets * num_classes + self.preds
        return torch.bincount(idx, minlength=num_classes ** 2).view(num_classes, num_classes).tolist()


def _evaluation(logits: torch.Tensor, y: torch.Tensor) -> Evaluation:
    loss = float(F.cross_entropy(logits, y)) if len(y) else float("nan")
    preds = logits.argmax(1)
    acc = float((preds == y).float().mean()) if len(y) else float("nan")
    return Evaluation(acc, loss, preds, y)


@torch.inference_mode()
def evaluate_views(net: nn.Module, pipe: Pipeline, x: torch.Tensor, y: torch.Tensor,
                   batch: int, amp, tta: bool) -> tuple[Evaluation, Evaluation]:
    """(plain, flip-TTA) scores from one pass over the images; TTA equals plain if off."""
    net.eval()
    plain, both = [], []
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        with amp():
            out = net(pipe.eval(xb)).float()
            plain.append(out.cpu())
            if tta:
                both.append(((out + net(pipe.eval(xb, flip=True)).float()) / 2).cpu())
    plain_logits = torch.cat(plain) if plain else torch.empty(0, 1)
    ev_plain = _evaluation(plain_logits, y)
    return ev_plain, (_evaluation(torch.cat(both), y) if tta and both else ev_plain)


def evaluate(net: nn.Module, pipe: Pipeline, x: torch.Tensor, y: torch.Tensor, batch: int,
             amp, tta: bool) -> Evaluation:
    return evaluate_views(net, pipe, x, y, batch, amp, tta)[1]


# ------------------------------------------------------------------ the loop

@dataclass
class FitResult:
    best_epoch: int
    best_val: float | None
    state: dict  # weights chosen on validation (the last epoch if there is no validation)
    train_seconds: float
    history: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class Shards:
    """How one epoch splits over the ranks: every rank takes the same number of steps with the
    same number of images in each (DDP all-reduces in backward: a rank that skipped a step
    would leave the others waiting forever). Under DDP the last step is padded to a full batch
    with images repeated from the start of the epoch's permutation, as torch's
    DistributedSampler pads (a tail of one image per rank would also break BatchNorm).
    A single process keeps its short last batch: nothing to pad."""
    per_rank: int  # images per rank per step
    steps: int
    padded: int  # images repeated to fill the last step

    @staticmethod
    def plan(n: int, batch_size: int, world: int) -> "Shards":
        if batch_size < world:
            raise ExperimentFailed(f"batch_size {batch_size} is smaller than the {world} "
                                   f"processes: each needs at least one image per step; set "
                                   f"batch_size >= {world} (it is split across the processes)")
        per_rank = batch_size // world
        padded = (-n) % (per_rank * world) if world > 1 else 0
        return Shards(per_rank, math.ceil((n + padded) / (per_rank * world)), padded)

    def indices(self, perm: torch.Tensor, step: int, rank: int, world: int) -> torch.Tensor:
        if self.padded:
            perm = torch.cat([perm, perm[:self.padded]])
        return perm[step * self.per_rank * world:(step + 1) * self.per_rank * world][rank::world]


class Trainer:
    """Trains `net` on in-memory splits; `on_epoch(row)` records each epoch in the store."""

    def __init__(self, net: nn.Module, spec: ExperimentSpec, pipe: Pipeline, device,
                 numerics: Numerics, checkpoint: Path, on_epoch: Callable[[dict], None],
                 say: Callable[[str], None], eval_numerics: Numerics | None = None):
        self.net, self.spec, self.pipe, self.device = net, spec, pipe, device
        self.numerics, self.eval_numerics = numerics, eval_numerics or numerics
        self.amp = lambda: numerics.autocast(device)
        self.eval_amp = lambda: self.eval_numerics.autocast(device)
        self.scaler = hardware.grad_scaler(device, numerics)
        self.checkpoint, self.on_epoch, self.say = checkpoint, on_epoch, say
        self.model = dist.wrap(net, device)
        self.phase = 0 if spec.regime == "gradual" else 1
        self.opt = make_optimizer(regimes.param_groups(net, spec), spec)
        self.history: list[dict] = []  # every epoch row so far, resumed ones included

    def _phase_scale(self) -> float:
        return self.spec.gradual_lr_scale if self.spec.regime == "gradual" and self.phase == 1 else 1.0

    def _maybe_unfreeze(self, epoch: int) -> None:
        if self.spec.regime == "gradual" and self.phase == 0 and epoch >= self.spec.gradual_head_epochs:
            self.phase = 1
            regimes.apply(self.net, self.spec, phase=1)
            self.model = dist.wrap(self.net, self.device)  # DDP must see the new trainable set
            self.say(f"  epoch {epoch + 1}: unfreezing every layer at "
                     f"{self.spec.gradual_lr_scale}x the learning rate")

    def _resume(self) -> tuple[int, dict]:
        if not self.checkpoint.exists():
            return 0, {"best_val": -1.0, "best_epoch": -1, "best_state": None, "seconds": 0.0}
        ck = safe_load(self.checkpoint)
        self.phase = ck.get("phase", self.phase)
        if self.phase == 1 and self.spec.regime == "gradual":
            regimes.apply(self.net, self.spec, phase=1)
            self.model = dist.wrap(self.net, self.device)
        self.net.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        if self.scaler is not None and ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        torch.set_rng_state(ck["rng"])
        self.history = list(ck.get("history", []))
        for row in self.history:  # the store may lack the last row (killed between the two writes)
            self.on_epoch(row)
        self.say(f"  resuming from checkpoint after epoch {ck['epoch']}")
        return ck["epoch"], ck["track"]

    def fit(self, x: dict, y: dict) -> FitResult:
        spec = self.spec
        world, rank = dist.world(), dist.rank()
        shards = Shards.plan(len(x["train"]), spec.batch_size, world)
        if shards.padded:
            self.say(f"  {world} processes: each epoch's last step is padded with "
                     f"{shards.padded} repeated image(s) so every process takes {shards.steps} steps")
        total = shards.steps * spec.epochs
        start, track = self._resume()
        history = []
        for epoch in range(start, spec.epochs):
            self._maybe_unfreeze(epoch)
            t0 = time.perf_counter()
            loss_sum, correct, seen = self._train_epoch(x["train"], y["train"], epoch, shards,
                                                        total, world, rank)
            seconds = time.perf_counter() - t0
            row = {"epoch": epoch + 1, "phase": "head" if self.phase == 0 else "all",
                   "train_loss": loss_sum / max(1, seen), "train_acc": correct / max(1, seen),
                   "lr": self.opt.param_groups[-1]["lr"], "seconds": seconds,
                   "img_per_s": seen * world / seconds}
            if len(y["val"]):
                ev = evaluate(self.net, self.pipe, x["val"], y["val"],
                              eval_batch(spec.batch_size, self.device),
                              self.eval_amp, tta=False)
                row.update(val_acc=ev.acc, val_loss=ev.loss)
                if ev.acc > track["best_val"]:
                    track.update(best_val=ev.acc, best_epoch=epoch + 1,
                                 best_state=_cpu_state(self.net))
            track["seconds"] += seconds
            history.append(row)
            self.history.append(row)
            lost = None
            if rank == 0:
                # checkpoint first: an epoch the store shows is always one a rerun resumes after
                self._save(epoch + 1, track)
                try:
                    self.on_epoch(row)
                except ClaimLost as e:
                    lost = str(e)
            if world > 1:  # every rank stops together, or the others wait in DDP forever
                lost = dist.broadcast(lost)
            if lost:
                raise ClaimLost(lost)
            self.say(format_epoch(row, spec.epochs))
        if track["best_state"] is None:
            track.update(best_state=_cpu_state(self.net), best_epoch=spec.epochs)
        best_val = track["best_val"] if track["best_val"] >= 0 else None
        return FitResult(track["best_epoch"], best_val, track["best_state"], track["seconds"],
                         history)

    def _train_epoch(self, xtr, ytr, epoch, shards: Shards, total, world, rank):
        spec, net = self.spec, self.net
        gen = torch.Generator().manual_seed(spec.seed * 100003 + epoch)
        perm = torch.randperm(len(xtr), generator=gen)
        regimes.set_train_mode(net)
        loss_sum, correct, seen = 0.0, 0, 0
        steps = shards.steps
        bar = progress(steps, f"epoch {epoch + 1}/{spec.epochs}") if rank == 0 else None
        for i in range(steps):
            if bar is not None:
                bar.update(1)
            idx = shards.indices(perm, i, rank, world)
            factor = lr_factor(spec, epoch * steps + i, total, steps) * self._phase_scale()
            for g in self.opt.param_groups:
                g["lr"] = spec.optimizer.lr * factor * g["lr_scale"]
            xb = self.pipe.train(xtr[idx], gen)
            yb = ytr[idx].to(self.device, non_blocking=True)
            with self.amp():
                out = self.model(xb)
                loss = F.cross_entropy(out.float(), yb, label_smoothing=spec.label_smoothing)
            if not torch.isfinite(loss):
                raise ExperimentFailed(f"loss became {loss.item()} at epoch {epoch + 1}, step "
                                       f"{i + 1}: lower optimizer.lr (now {spec.optimizer.lr}) or "
                                       "use precision = \"fp32\"")
            self.opt.zero_grad(set_to_none=True)
            if self.scaler is None:
                loss.backward()
                self.opt.step()
            else:  # fp16: scaled loss; steps whose gradients overflow are skipped
                self.scaler.scale(loss).backward()
                self.scaler.step(self.opt)
                self.scaler.update()
            loss_sum += loss.item() * len(idx)
            correct += int((out.argmax(1) == yb).sum())
            seen += len(idx)
        if bar is not None:
            bar.close()
        return loss_sum, correct, seen

    def _save(self, epoch: int, track: dict) -> None:
        atomic_save({"epoch": epoch, "phase": self.phase, "model": self.net.state_dict(),
                     "optimizer": self.opt.state_dict(), "rng": torch.get_rng_state(),
                     "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                     "numerics": {"train": self.numerics.name, "eval": self.eval_numerics.name},
                     "track": track, "history": self.history}, self.checkpoint)


def _cpu_state(net: nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


def format_epoch(row: dict, epochs: int) -> str:
    val = f"  val acc {row['val_acc']:.2%}" if row.get("val_acc") is not None else ""
    return (f"  epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f}  "
            f"train acc {row['train_acc']:.2%}{val}  lr {row['lr']:.2e}  "
            f"{row['seconds']:.1f}s  {row['img_per_s']:.0f} img/s")
