"""The one scoring path: views (flip TTA), accuracy, loss, per-class accuracy, confusion.

Every fit scores through here: the trainer on images (`on_images`), the probe on cached
features (`on_features`). Both average the logits of their views (plain, and the horizontal
flip when TTA is on), so a probe and a fine-tuned network are scored alike.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Evaluation:
    acc: float
    loss: float
    preds: torch.Tensor
    targets: torch.Tensor

    @property
    def n(self) -> int:
        return len(self.targets)

    def per_class(self, num_classes: int) -> list[float]:
        out = []
        for c in range(num_classes):
            m = self.targets == c
            out.append(float((self.preds[m] == c).float().mean()) if m.any() else float("nan"))
        return out

    def confusion(self, num_classes: int) -> list[list[int]]:
        idx = self.targets * num_classes + self.preds
        return torch.bincount(idx, minlength=num_classes ** 2).view(num_classes, num_classes).tolist()


def score(logits: torch.Tensor, y: torch.Tensor) -> Evaluation:
    """Accuracy and cross-entropy of logits against labels (NaN for an empty split)."""
    loss = float(F.cross_entropy(logits, y)) if len(y) else float("nan")
    preds = logits.argmax(1)
    acc = float((preds == y).float().mean()) if len(y) else float("nan")
    return Evaluation(acc, loss, preds, y)


def mean_logits(views: list[torch.Tensor]) -> torch.Tensor:
    """The TTA average: the mean of the views' logits."""
    return sum(views) / len(views)


@torch.inference_mode()
def on_images(net: nn.Module, pipe, x: torch.Tensor, y: torch.Tensor, batch: int, amp,
              tta: bool) -> tuple[Evaluation, Evaluation]:
    """(plain, flip-TTA) scores of a network from one pass over the images; TTA equals plain
    if off."""
    net.eval()
    plain, both = [], []
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        with amp():
            out = net(pipe.eval(xb)).float()
            plain.append(out.cpu())
            if tta:
                both.append(mean_logits([out, net(pipe.eval(xb, flip=True)).float()]).cpu())
    plain_logits = torch.cat(plain) if plain else torch.empty(0, 1)
    ev_plain = score(plain_logits, y)
    return ev_plain, (score(torch.cat(both), y) if tta and both else ev_plain)


@torch.no_grad()
def on_features(head: nn.Module, views: list[torch.Tensor], y: torch.Tensor) -> Evaluation:
    """A head scored on cached features, one tensor per view (plain, flip)."""
    head.eval()
    return score(mean_logits([head(f) for f in views]), y)


def scores(ev: Evaluation, ev_plain: Evaluation, num_classes: int) -> dict:
    """The test scores a result keeps."""
    return {"test_acc": ev.acc, "test_acc_no_tta": ev_plain.acc,
            "per_class": ev.per_class(num_classes), "confusion": ev.confusion(num_classes),
            "test_predictions": ev.preds.tolist()}


def val_scores(ev_plain: Evaluation, ev: Evaluation) -> dict:
    """Validation as the final choice compares it: the views the test figure uses, its loss
    (the tie-break), its size (for the interval) and its predictions per image (for the
    paired test between two models)."""
    return {"val_acc": ev.acc, "val_acc_no_tta": ev_plain.acc, "val_loss": ev.loss,
            "val_n": len(ev.targets), "val_predictions": ev.preds.tolist()}
