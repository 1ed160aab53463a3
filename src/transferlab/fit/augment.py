"""Batched augmentation on tensors: no PIL, no per-sample Python, no DataLoader workers.

A training batch goes uint8 NHWC -> float NCHW on the device -> one `grid_sample` that does
random crop (translation or random-resized crop), horizontal flip and resize to the model's
resolution at once -> normalisation -> channels_last.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class Pipeline:
    def __init__(self, mean, std, resolution: int, augment: str, device: torch.device,
                 channels_last: bool = True):
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.resolution, self.augment = resolution, augment
        self.device, self.channels_last = device, channels_last

    def _to_float(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
        return x

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def eval(self, x: torch.Tensor, flip: bool = False) -> torch.Tensor:
        x = self._to_float(x)
        size = self.resolution or x.shape[-1]
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=size < x.shape[-1])
        if flip:
            x = x.flip(3)
        return self._finish(x)

    def train(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.augment == "none":
            return self.eval(x)
        x = self._to_float(x)
        n, size = x.shape[0], self.resolution or x.shape[-1]
        if x.shape[-1] > size:  # shrink with antialiasing first, as eval does: no train/test gap
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=True)
        theta = random_affine(n, self.augment, x.shape[-1], gen).to(self.device)
        grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        return self._finish(x)


def random_affine(n: int, augment: str, src: int, gen: torch.Generator) -> torch.Tensor:
    """Per-sample affine maps (output -> input, normalised coords), drawn on the CPU for
    reproducibility whatever the device."""
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    if augment == "flip":
        sx = sy = torch.ones(n)
        tx = ty = torch.zeros(n)
    elif augment == "crop_flip":  # translate up to 1/8 of the side (4 px at 32 px), reflect pad
        sx = sy = torch.ones(n)
        shift = 2 * (4 / 32)
        tx = (torch.randint(-4, 5, (n,), generator=gen).float() / 4) * shift
        ty = (torch.randint(-4, 5, (n,), generator=gen).float() / 4) * shift
    elif augment == "rrc_flip":  # random resized crop: area 35-100 %, aspect 3/4 .. 4/3
        area = torch.empty(n).uniform_(0.35, 1.0, generator=gen)
        log_r = torch.empty(n).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen)
        ratio = torch.exp(log_r)
        sx = torch.sqrt(area * ratio).clamp(max=1.0)
        sy = torch.sqrt(area / ratio).clamp(max=1.0)
        tx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sx)
        ty = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sy)
    else:
        raise ValueError(augment)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = sx * flip
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = ty
    return theta
