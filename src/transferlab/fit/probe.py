"""The cached-feature probe: a head fitted on frozen-backbone features, beside the trainer.

The backbone runs once (features.py caches its output); the head is then fitted on tensors in
seconds. As in the CLIP and DINOv2 linear-probe protocols, the weight decay is chosen on the
validation split and the test split is only scored. A choice at the edge of the grid extends
it (a factor 10 beyond that edge, at most twice), so the grid's range does not pick the answer.
The probe reports its last epoch (`epoch_choice` in the result): validation chooses the weight
decay, not the epoch.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import dist, evaluate, optim
from ..config import ExperimentSpec
from .context import FitContext
from .features import FeatureSet, cached_features, probe_views
from ..net import make_head
from ..record import EpochRow, format_epoch

MAX_EXTENSIONS = 2  # extra weight decays tried beyond the edge of the configured grid
EPOCH_CHOICE = "the last epoch (validation chose the weight decay)"  # what a probe reports


# ------------------------------------------------------------------ the head loop

def fit_heads(spec: ExperimentSpec, in_dim: int, num_classes: int, train_f: torch.Tensor,
              train_y: torch.Tensor, val_f: list, val_y: torch.Tensor, wds: list[float],
              epochs: int | None = None) -> list[tuple[nn.Module, list[dict]]]:
    """A fresh head per weight decay, on standardised features; [(head, epoch rows)].

    Linear heads train side by side (one matmul per step for all of them) with the same
    init, batches, schedule and optimiser each would get alone. Other heads draw dropout from
    the global RNG, so each is fitted on its own to keep its draws its own."""
    if spec.head.kind != "linear":
        return [_fit(spec, in_dim, num_classes, train_f, train_y, val_f, val_y, [wd], epochs)[0]
                for wd in wds]
    return _fit(spec, in_dim, num_classes, train_f, train_y, val_f, val_y, list(wds), epochs)


def fit_head(spec: ExperimentSpec, in_dim: int, num_classes: int, train_f, train_y, val_f,
             val_y, wd: float, epochs: int | None = None):
    """One head, one weight decay: (head, epoch rows)."""
    return fit_heads(spec, in_dim, num_classes, train_f, train_y, val_f, val_y, [wd], epochs)[0]


def _fit(spec, in_dim, num_classes, train_f, train_y, val_f, val_y, wds, epochs):
    epochs = spec.epochs if epochs is None else epochs
    torch.manual_seed(spec.seed)
    first = make_head(spec.head, in_dim, num_classes)
    heads = [copy.deepcopy(first) for _ in wds] if len(wds) > 1 else [first]
    opt = optim.make_optimizer(optim.head_groups(heads, wds), spec)
    n, bs, k = len(train_f), spec.batch_size, len(wds)
    steps = (n + bs - 1) // bs
    gen = torch.Generator().manual_seed(spec.seed)
    histories: list[list[dict]] = [[] for _ in wds]
    forward = _batched(heads, num_classes, spec.label_smoothing) if k > 1 else \
        _single(heads[0], spec.label_smoothing)
    for epoch in range(epochs):
        t0 = time.perf_counter()
        for h in heads:
            h.train()
        perm = torch.randperm(n, generator=gen)
        loss_sum, correct = torch.zeros(k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)
        for i in range(steps):
            optim.set_lr(opt, spec, epoch * steps + i, epochs * steps, steps)
            idx = perm[i * bs:(i + 1) * bs]
            losses, hits = forward(train_f[idx], train_y[idx])
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            opt.step()
            loss_sum += losses.detach().double() * len(idx)
            correct += hits
        seconds = time.perf_counter() - t0
        for j, (head, wd) in enumerate(zip(heads, wds)):
            row = EpochRow(epoch + 1, f"head wd={wd:g}", train_loss=float(loss_sum[j]) / n,
                           train_acc=float(correct[j]) / n, lr=opt.param_groups[0]["lr"],
                           seconds=seconds / k, img_per_s=n * k / seconds)
            if len(val_y):
                ev = evaluate.on_features(head, val_f, val_y)
                row.val_acc, row.val_loss = ev.acc, ev.loss
            histories[j].append(row.as_dict())
    return list(zip(heads, histories))


def head_rate(spec: ExperimentSpec, in_dim: int, num_classes: int, batches: int = 4) -> float:
    """Timed head-fitting throughput on random features, in (sample x weight decay)/s as the
    epoch rows count it: the loop the sweep runs (all linear heads side by side, other heads
    one at a time), one epoch of warm-up, then two timed. The global RNG is left as it was."""
    n = batches * spec.batch_size
    wds = list(spec.probe_wd) if spec.head.kind == "linear" else list(spec.probe_wd[:1])
    with torch.random.fork_rng(devices=[]):
        f, y = torch.randn(n, in_dim), torch.randint(0, num_classes, (n,))
        no_val = torch.empty(0, dtype=torch.long)
        _fit(spec, in_dim, num_classes, f, y, [], no_val, wds, 1)
        t0 = time.perf_counter()
        _fit(spec, in_dim, num_classes, f, y, [], no_val, wds, 2)
        seconds = time.perf_counter() - t0
    return 2 * n * len(wds) / max(seconds, 1e-9)


def _single(head, smoothing):
    def forward(x, y):
        out = head(x)
        loss = F.cross_entropy(out, y, label_smoothing=smoothing)
        return loss.view(1), (out.detach().argmax(1) == y).sum().view(1).double()
    return forward


def _batched(heads, num_classes, smoothing):
    k = len(heads)

    def forward(x, y):
        weight = torch.cat([h.weight for h in heads])  # (k * classes, features)
        bias = torch.cat([h.bias for h in heads])
        out = torch.addmm(bias, x, weight.t()).view(len(x), k, num_classes)
        losses = F.cross_entropy(out.transpose(1, 2), y[:, None].expand(-1, k),
                                 label_smoothing=smoothing, reduction="none").mean(0)  # (k,)
        return losses, (out.detach().argmax(2) == y[:, None]).sum(0).double()
    return forward


CONSTANT_SPREAD = 1e-3  # below this fraction of the typical spread a feature counts as constant


def standardisation(train_f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(mean, std, how many features are constant) to standardise cached features with.

    Pretrained and random networks alike have dead channels (ReLU6 never above 0 on this data:
    hundreds of Lite0's 1,280 features at 32-64 px). Dividing by a spread near 0 multiplied a
    head weight by up to 10^6 once folded back into the network, and LP-FT's fine-tuning
    diverged from there; test features that vary where training ones did not were magnified
    alike. So a constant feature gets std = inf (it standardises to 0, its weight folds to 0),
    and no other feature is divided by less than the typical (mean) spread: folding scales
    every weight by at most 1 / typical spread. On CIFAR-10 at 64 px (Lite0, 200 per class)
    that floor left the probe's validation accuracy as it was (52.0 % against 49.5 %)."""
    mean = train_f.mean(0)
    std = torch.nan_to_num(train_f.std(0), nan=0.0)  # one image has no spread
    typical = std.mean()
    constant = std <= CONSTANT_SPREAD * typical
    std = torch.where(constant, torch.full_like(std, math.inf), std.clamp(min=float(typical)))
    return mean, std, int(constant.sum())


def fold_standardisation(head: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Make head(features) equal the fitted head((features - mean) / std); a feature with
    std = inf (constant on the training split) gets weight 0."""
    first = head if isinstance(head, nn.Linear) else next(m for m in head if isinstance(m, nn.Linear))
    with torch.no_grad():
        w = first.weight / std
        first.bias -= (w * mean).sum(1)
        first.weight.copy_(w)


# ------------------------------------------------------------------ the weight-decay sweep

def _edge(wds: list[float], chosen: float) -> float | None:
    """The weight decay one step beyond the grid edge `chosen` sits on, or None if interior
    (or at 0, below which there is nothing)."""
    if len(wds) < 2:
        return None
    if chosen == max(wds):
        return chosen * 10 if chosen > 0 else None
    if chosen == min(wds) and chosen > 0:
        return chosen / 10
    return None


@dataclass
class Sweep:
    """The weight-decay sweep's outcome: the head validation chose and how it was chosen."""
    head: nn.Module
    history: list[dict]  # the chosen head's epoch rows
    weight_decay: float
    val_acc: float | None
    rows: list[dict]  # every decay tried: {weight_decay, val_acc, added}
    added: list[float]  # decays tried beyond the configured grid's edge


def sweep(spec, in_dim, num_classes, train_f, train_y, val_f, val_y, epochs, say,
          fold: bool = False) -> Sweep:
    """Fit a head per weight decay and choose on validation, extending the grid past an edge.

    A cross-validation fold (`fold`) fits the configured grid only, so that every fold tries
    the same weight decays, and keeps each one's predictions on the held-out fold: the choice
    is then made on the out-of-fold predictions of all folds together."""
    if len(val_y):
        wds = list(spec.probe_wd)
    else:  # nothing to choose on: the one weight decay given (a final stage's), else the optimiser's
        wds = list(spec.probe_wd) if len(spec.probe_wd) == 1 else [spec.optimizer.weight_decay]
    fits = fit_heads(spec, in_dim, num_classes, train_f, train_y, val_f, val_y, wds, epochs)
    tried = list(zip(wds, fits))
    added: list[float] = []
    while True:
        best = None
        for wd, (head, hist) in tried:
            acc = hist[-1].get("val_acc")
            if best is None or (acc is not None and acc > best[0]):
                best = (acc if acc is not None else -1.0, wd, head, hist)
        nxt = _edge([wd for wd, _ in tried], best[1]) if len(val_y) and not fold else None
        if nxt is None or len(added) >= MAX_EXTENSIONS:
            break
        say(f"  probe weight decay {best[1]:g} is at the edge of the grid: trying {nxt:g}")
        added.append(nxt)
        tried += list(zip([nxt], fit_heads(spec, in_dim, num_classes, train_f, train_y, val_f,
                                           val_y, [nxt], epochs)))
    rows = []
    for wd, (_, hist) in tried:
        acc = hist[-1].get("val_acc")
        rows.append({"weight_decay": wd, "val_acc": acc, "added": wd in added})
        if fold:  # this fold's share of the out-of-fold predictions, per weight decay
            ev = evaluate.on_features(head_of(tried, wd), val_f, val_y)
            rows[-1].update(val_loss=ev.loss, predictions=ev.preds.tolist())
        say(f"  probe weight decay {wd:g}: val acc "
            + (f"{acc:.2%}" if acc is not None else "n/a (no validation split)")
            + (" (grid extended)" if wd in added else ""))
    if added and _edge([wd for wd, _ in tried], best[1]) is not None:
        say(f"  weight decay {best[1]:g} is still at the edge after {MAX_EXTENSIONS} extensions")
    acc, wd, head, hist = best
    return Sweep(head, hist, wd, acc if acc >= 0 else None, rows, added)


def head_of(tried: list, wd: float) -> nn.Module:
    return next(head for w, (head, _) in tried if w == wd)


# ------------------------------------------------------------------ the probe of an experiment

def features_for(spec: ExperimentSpec, net, pipe, splits, feature_dir, numerics,
                 views: dict, say) -> FeatureSet:
    """The cached features of each split and view. A cross-validation fold re-deals the
    holdout split's cached features by its indices: no image goes through the backbone twice."""
    pool = splits.pool
    if pool is None:
        return cached_features(spec, net, pipe, splits.x, feature_dir, numerics, views, say)
    parts = [p for p in ("train", "val") if len(pool.parts[p])]
    both = list(dict.fromkeys(views["train"] + views.get("val", [])))
    fs = cached_features(dataclasses.replace(spec, data=pool.holdout), net, pipe,
                         {**{p: pool.parts[p] for p in parts}, "test": splits.x["test"]},
                         feature_dir, numerics, {**{p: both for p in parts},
                                                 "test": views["test"]}, say)
    feats = {("test", v): fs.feats["test", v] for v in views["test"]}
    for split in ("train", "val"):
        for v in views.get(split, []):
            pooled = torch.cat([fs.feats[p, v] for p in parts])
            feats[split, v] = pooled[pool.index[split]]
    return FeatureSet(feats, fs.seconds, fs.extracted, fs.mode)


def fit(ctx: FitContext, splits, feature_dir, numerics, epochs: int | None = None) -> dict:
    """Fit the context's `net.head` on cached features of its `net.backbone`; the scores and
    the sweep. The fitted head (its standardisation folded in) is left in `net.head`."""
    spec, net, pipe, say = ctx.spec, ctx.net, ctx.pipe, ctx.say
    epochs = spec.epochs if epochs is None else epochs
    views = probe_views(spec)
    if not len(splits.y["val"]):
        views.pop("val")
    if dist.rank() != 0:  # rank 0 extracts and caches the features; the others read them
        dist.barrier()
    fs = features_for(spec, net, pipe, splits, feature_dir, numerics, views, say)
    if dist.rank() == 0 and dist.world() > 1:
        dist.barrier()
    if fs.extracted == 0:
        say("  features: all read from the cache (no backbone forward needed)")
    train_f = torch.cat([fs.feats["train", v] for v in views["train"]])
    train_y = splits.y["train"].repeat(len(views["train"]))
    mean, std, constant = standardisation(train_f)
    if constant:
        say(f"  probe: {constant} of {train_f.shape[1]} features are constant on the training "
            "split (dead channels): they get zero weight")
    norm = lambda f: (f - mean) / std  # noqa: E731
    val_f = [norm(fs.feats["val", v]) for v in views.get("val", [])]
    val_y = splits.y["val"]
    t0 = time.perf_counter()
    chosen = sweep(spec, train_f.shape[1], splits.num_classes, norm(train_f), train_y, val_f,
                   val_y, epochs, say, fold=splits.pool is not None)
    head, hist, best_wd = chosen.head, chosen.history, chosen.weight_decay
    for row in hist:
        ctx.record_epoch(row)
    say(f"  chosen on validation: weight decay {best_wd:g}; its epochs (the last one reported):")
    for row in hist:
        say(format_epoch(row, epochs))
    fold_standardisation(head, mean, std)
    net.head.load_state_dict(head.state_dict())
    test = [fs.feats["test", v] for v in views["test"]]
    y = splits.y["test"]
    ev_plain = evaluate.on_features(net.head, test[:1], y)
    ev = evaluate.on_features(net.head, test, y) if spec.tta else ev_plain
    out = evaluate.scores(ev, ev_plain, splits.num_classes)
    if len(val_y):  # the chosen head on validation, scored as backprop runs are
        val = [fs.feats["val", v] for v in views["val"]]
        ev_val = evaluate.on_features(net.head, val, val_y)
        out.update(evaluate.val_scores(evaluate.on_features(net.head, val[:1], val_y), ev_val),
                   val_predictions=ev_val.preds.tolist())
    out.update(best_epoch=epochs,
               train_seconds=fs.seconds + time.perf_counter() - t0,
               extra={"fit": "cached features", "probe_sweep": chosen.rows, "chosen_wd": best_wd,
                      "constant_features": constant,
                      "wd_grid_extended": chosen.added, "epoch_choice": EPOCH_CHOICE,
                      "feature_seconds": fs.seconds, "features_extracted": fs.extracted,
                      "feature_extraction": fs.mode})
    return out
