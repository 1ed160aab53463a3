"""Stratified cross-validation folds over the training pool (train + validation).

Every class is dealt over the folds in a seeded order, so each fold holds about 1/k of every
class and the same pool always gives the same folds: every candidate of a study is scored on
the same held-out images, which is what makes a paired test between them possible. The test
split never enters the pool.
"""
from __future__ import annotations

import torch

from .errors import UserError

FOLD_SEED = 3  # the holdout split uses seeds 0-2; the folds their own, fixed


def stratified_folds(y: torch.Tensor, k: int, seed: int = FOLD_SEED) -> list[torch.Tensor]:
    """k disjoint, sorted index tensors that together cover range(len(y)).

    Within each class a seeded permutation is dealt round robin; each class starts where the
    previous one stopped, so fold sizes differ by at most one image."""
    if k < 2:
        raise ValueError(f"k-fold needs at least 2 folds, got {k}")
    counts = torch.bincount(y) if len(y) else torch.zeros(0, dtype=torch.long)
    short = [c for c, n in enumerate(counts.tolist()) if 0 < n < k]
    if short:
        raise UserError(f"folds = {k} needs at least {k} training images in every class; class "
                        f"index {short[0]} has {int(counts[short[0]])}: lower [study] folds or "
                        "use more images (--subset)")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    folds: list[list[torch.Tensor]] = [[] for _ in range(k)]
    start = 0
    for c in range(len(counts)):
        members = perm[y[perm] == c]
        for j in range(k):
            folds[(start + j) % k].append(members[j::k])
        start = (start + len(members)) % k
    return [torch.sort(torch.cat(f)).values if f else torch.empty(0, dtype=torch.long)
            for f in folds]


def fold_split(y: torch.Tensor, k: int, fold: int,
               seed: int = FOLD_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """(training indices, held-out indices) of fold `fold` of k."""
    if not 0 <= fold < k:
        raise ValueError(f"fold {fold} is not one of 0..{k - 1}")
    held = stratified_folds(y, k, seed)[fold]
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[held] = False
    return torch.nonzero(mask).flatten(), held
