"""The backprop fit: the training loop over in-memory tensors, checkpoint and resume.

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

import torch
import torch.nn.functional as F
from torch import nn

from . import dist, evaluate, hardware, optim
from .. import regimes
from ..config import ExperimentSpec
from .context import FitContext
from ..errors import ClaimLost, ExperimentFailed
from .hardware import Numerics
from .optim import make_optimizer
from ..record import BudgetPlan, EpochRow, format_epoch
from ..util import atomic_save, eval_batch, progress, safe_load


# ------------------------------------------------------------------ the loop

@dataclass
class Best:
    """The validation-best epoch so far (the trainer's state between epochs, checkpointed)."""
    val: float = -1.0  # its validation accuracy (-1: no epoch scored yet)
    epoch: int = -1
    state: dict | None = None  # its weights, on the CPU
    seconds: float = 0.0  # training time so far, every epoch counted

    def as_dict(self) -> dict:
        return {"best_val": self.val, "best_epoch": self.epoch, "best_state": self.state,
                "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: dict) -> "Best":
        """What a checkpoint holds (under `track`, as every version wrote it)."""
        return cls(d["best_val"], d["best_epoch"], d["best_state"], d["seconds"])


@dataclass
class FitResult:
    best_epoch: int
    best_val: float | None
    state: dict  # weights chosen on validation (the last epoch if there is no validation)
    train_seconds: float
    history: list[dict] = field(default_factory=list)
    steps: int = 0  # optimizer steps taken in all
    plan: BudgetPlan | None = None  # a budgeted fit's plan (its length came from it)


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
    """Trains the context's network on in-memory splits; each epoch row goes to
    `ctx.record_epoch` (the store)."""

    def __init__(self, ctx: FitContext, numerics: Numerics, checkpoint: Path,
                 eval_numerics: Numerics | None = None, budget=None):
        net, spec, device = ctx.net, ctx.spec, ctx.device
        self.net, self.spec, self.pipe, self.device = net, spec, ctx.pipe, device
        self.numerics, self.eval_numerics = numerics, eval_numerics or numerics
        self.amp = optim.autocast(numerics, device)
        self.eval_amp = optim.autocast(self.eval_numerics, device)
        self.scaler = hardware.grad_scaler(device, numerics)
        self.checkpoint, self.on_epoch, self.say = checkpoint, ctx.record_epoch, ctx.say
        # the regime's backprop phases run here, one after another (a cached-feature phase
        # before them, e.g. lp-ft's probe, was fitted by the probe; its rows come first)
        phases = regimes.phases(spec)
        self.stages = [(i, p) for i, p in enumerate(phases) if not p.on_features(spec)]
        self.epochs = sum(p.epochs(spec) for _, p in self.stages)
        self.offset = sum(p.epochs(spec) for p in phases if p.on_features(spec))
        self.phase = self._phase_at(0)
        regimes.apply(net, spec, self.phase)
        self.model = dist.wrap(net, device)
        self.opt = make_optimizer(optim.param_groups(net, spec), spec)
        self.history: list[dict] = []  # every epoch row so far, resumed ones included
        # a budgeted final's planner (plan.py): it fixes the total steps when the fit starts
        self.budget, self.plan = budget, None
        self.total = 0  # optimizer steps the fit takes, all epochs together
        self._checks: list[int] = []  # the steps at which a new plan's rate is checked
        self._timing: list[float] = [0.0, 0.0]  # wall time and images since the first step

    def _phase_at(self, epoch: int) -> int:
        """The regime phase index that trains in this (trainer-local) epoch."""
        end = 0
        for i, p in self.stages:
            end += p.epochs(self.spec)
            if epoch < end:
                return i
        return self.stages[-1][0]

    def _phase_scale(self) -> float:
        return regimes.phases(self.spec)[self.phase].lr_scale(self.spec)

    def _maybe_unfreeze(self, epoch: int) -> None:
        target = self._phase_at(epoch)
        if target != self.phase:
            self.phase = target
            plan = regimes.apply(self.net, self.spec, phase=target)
            self.model = dist.wrap(self.net, self.device)  # DDP must see the new trainable set
            what = "every layer" if not plan.frozen else ", ".join(plan.trained)
            self.say(f"  epoch {self.offset + epoch + 1}: unfreezing {what} at "
                     f"{self._phase_scale()}x the learning rate")

    def _resume(self) -> tuple[int, Best]:
        if not self.checkpoint.exists():
            return 0, Best()
        ck = safe_load(self.checkpoint)
        phase = ck.get("phase", self.phase)
        if phase != self.phase:
            self.phase = phase
            regimes.apply(self.net, self.spec, phase=phase)
            self.model = dist.wrap(self.net, self.device)
        self.net.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        if self.scaler is not None and ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        torch.set_rng_state(ck["rng"])
        if ck.get("budget_plan"):  # the plan it started with, whatever this machine measures
            self.plan = BudgetPlan.from_dict(ck["budget_plan"])
        if self.device.type == "cuda" and ck.get("cuda_rng") is not None:  # dropout on the GPU
            torch.cuda.set_rng_state(ck["cuda_rng"], self.device)
        self.history = list(ck.get("history", []))
        for row in self.history:  # the store may lack the last row (killed between the two writes)
            self.on_epoch(row)
        self.say(f"  resuming from checkpoint after epoch {self.offset + ck['epoch']}")
        return ck["epoch"], Best.from_dict(ck["track"])

    def fit(self, x: dict, y: dict) -> FitResult:
        spec = self.spec
        world, rank = dist.world(), dist.rank()
        shards = Shards.plan(len(x["train"]), spec.batch_size, world)
        if shards.padded:
            self.say(f"  {world} processes: each epoch's last step is padded with "
                     f"{shards.padded} repeated image(s) so every process takes {shards.steps} steps")
        start, best = self._resume()
        self._fix_plan(shards, resumed=start > 0)
        self.total = self.plan.total_steps if self.plan else shards.steps * self.epochs
        history, epoch = [], start
        while epoch < self._epochs(shards):
            self._maybe_unfreeze(epoch)
            t0 = time.perf_counter()
            loss_sum, correct, seen = self._train_epoch(x["train"], y["train"], epoch, shards,
                                                        world, rank)
            seconds = time.perf_counter() - t0
            row = EpochRow(self.offset + epoch + 1, regimes.phases(spec)[self.phase].name,
                           train_loss=loss_sum / max(1, seen), train_acc=correct / max(1, seen),
                           lr=self.opt.param_groups[-1]["lr"], seconds=seconds,
                           img_per_s=seen * world / seconds)
            if len(y["val"]):  # scored as the ranking and the test are: flip views if tta
                _, ev = evaluate.on_images(self.net, self.pipe, x["val"], y["val"],
                                           eval_batch(spec.batch_size, self.device),
                                           self.eval_amp, tta=spec.tta)
                row.val_acc, row.val_loss = ev.acc, ev.loss
                if ev.acc > best.val:
                    best.val, best.epoch = ev.acc, self.offset + epoch + 1
                    best.state = _cpu_state(self.net)
            best.seconds += seconds
            row = row.as_dict()
            history.append(row)
            self.history.append(row)
            lost = None
            if rank == 0:
                # checkpoint first: an epoch the store shows is always one a rerun resumes after
                self._save(epoch + 1, best)
                try:
                    self.on_epoch(row)
                except ClaimLost as e:
                    lost = str(e)
            if world > 1:  # every rank stops together, or the others wait in DDP forever
                lost = dist.broadcast(lost)
            if lost:
                raise ClaimLost(lost)
            epoch += 1
            self.say(format_epoch(row, self.offset + self._epochs(shards)))
        if best.state is None:  # no validation split: the last epoch's weights
            best.state, best.epoch = _cpu_state(self.net), self.offset + epoch
        return FitResult(best.epoch, best.val if best.val >= 0 else None, best.state,
                         best.seconds, history, steps=self.total, plan=self.plan)

    def _epochs(self, shards: Shards) -> int:
        """Epochs the fit runs: a budgeted plan's steps end inside the last one (which the
        regime's last phase stretches to take)."""
        return math.ceil(self.total / shards.steps)

    def _fix_plan(self, shards: Shards, resumed: bool) -> None:
        """A budgeted fit's length, fixed once: the checkpoint's plan when resuming (on any
        machine), else the one recorded when this final first started, else a new one from
        the time left now, whose rate is then checked once. Rank 0 (the only one holding the
        budget) decides; every rank takes the same steps."""
        if not dist.broadcast(self.budget is not None):
            return
        plan, checks = self.plan, []
        kept = " (kept from the checkpoint)" if resumed else ""
        if dist.rank() == 0:
            if plan is None and self.budget.existing is not None:
                plan, kept = self.budget.existing, " (kept from its first start)"
            elif plan is None:
                plan = self.budget.plan(shards.steps, shards.per_rank * dist.world())
                checks = self.budget.check_steps(plan)
            self.budget.record(plan)
        self.plan, self._checks = dist.broadcast((plan, checks))
        self.say(f"  {self.plan.text()}{kept}")

    def _clock(self, done: int, images: int) -> None:
        """Wall time and images from the end of the first step (which warms the allocator and
        kernels up) on: epoch ends (checkpoint, store) count, as they count against the budget."""
        if done == 1:
            self._timing = [time.perf_counter(), 0.0]
        elif done > 1:
            self._timing[1] += images

    def _check_rate(self, done: int) -> None:
        """At most once in a budgeted fit planned by this process: early, a loop more than the
        tolerance off the planned rate, or later, one that would overrun the time left, has its
        total steps re-planned from the time left (logged, both figures recorded). A fit that
        kept an earlier plan never re-plans."""
        if self.plan is None or done not in self._checks:
            return
        plan, late = None, done != self._checks[0]
        if dist.rank() == 0:  # the others follow its decision
            since, images = self._timing
            rate = images / max(time.perf_counter() - since, 1e-9)
            plan = self.budget.replan(self.plan, done, rate, late=late)
        plan = dist.broadcast(plan)
        if plan is not None:
            self._checks = []  # once in all: the schedule moves no more than that
            self.plan, self.total = plan, plan.total_steps
            self.say(f"  re-planned: {plan.text()}")
            if dist.rank() == 0:
                self.budget.record(plan)

    def _train_epoch(self, xtr, ytr, epoch, shards: Shards, world, rank):
        spec, net = self.spec, self.net
        gen = torch.Generator().manual_seed(spec.seed * 100003 + epoch)
        perm = torch.randperm(len(xtr), generator=gen)
        regimes.set_train_mode(net)
        loss_sum, correct, seen = 0.0, 0, 0
        steps = shards.steps
        bar = progress(min(steps, self.total - epoch * steps),
                       f"epoch {self.offset + epoch + 1}/{self.offset + self._epochs(shards)}") \
            if rank == 0 else None
        i = 0
        while i < min(steps, self.total - epoch * steps):  # a re-plan may move the end
            if bar is not None:
                bar.update(1)
            idx = shards.indices(perm, i, rank, world)
            optim.set_lr(self.opt, spec, epoch * steps + i, self.total, steps, self._phase_scale())
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
            i += 1
            done = epoch * steps + i
            self._clock(done, len(idx) * world)
            self._check_rate(done)
        if bar is not None:
            bar.close()
        return loss_sum, correct, seen

    def _save(self, epoch: int, best: Best) -> None:
        atomic_save({"epoch": epoch, "phase": self.phase, "model": self.net.state_dict(),
                     "optimizer": self.opt.state_dict(), "rng": torch.get_rng_state(),
                     "cuda_rng": torch.cuda.get_rng_state(self.device)
                     if self.device.type == "cuda" else None,
                     "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                     "numerics": {"train": self.numerics.name, "eval": self.eval_numerics.name},
                     "track": best.as_dict(), "history": self.history,
                     "budget_plan": self.plan.as_dict() if self.plan else None}, self.checkpoint)


def _cpu_state(net: nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
