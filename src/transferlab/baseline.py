"""The baseline CNN trained from scratch at native 32 px (the "first practical work").

Ideas learnt from the fast CIFAR-10 recipes (airbench and its predecessors), written anew:
- a first 2x2 convolution whose filters whiten the image patches (set once from training
  data, then fixed), so the network starts from decorrelated inputs;
- three conv groups (conv, max-pool, BN, GELU, conv, BN, GELU), widths 64/256/256;
- global max pooling and a bias-free linear classifier with a small output scale;
- label smoothing, flip + small translation, flip TTA: set in the study config.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import ExperimentSpec
from .net import ModelInfo, Net, describe_head

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
WIDTHS = (64, 256, 256)


class ConvGroup(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding="same", bias=False)
        self.pool = nn.MaxPool2d(2)
        self.bn1 = nn.BatchNorm2d(c_out, momentum=0.4)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding="same", bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, momentum=0.4)
        self.act = nn.GELU()

    def forward(self, x):
        x = self.act(self.bn1(self.pool(self.conv1(x))))
        return self.act(self.bn2(self.conv2(x)))


class BaselineBackbone(nn.Module):
    def __init__(self, widths=WIDTHS):
        super().__init__()
        self.whiten = nn.Conv2d(3, 24, kernel_size=2, padding=0, bias=True)
        self.act = nn.GELU()
        self.layer1 = ConvGroup(24, widths[0])
        self.layer2 = ConvGroup(widths[0], widths[1])
        self.layer3 = ConvGroup(widths[1], widths[2])
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.num_features = widths[2]
        self.whitened = False

    def fixed_parameters(self):
        """The whitening filters come from the data, not from gradient descent."""
        return [self.whiten.weight]

    @torch.no_grad()
    def data_init(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the whitening filters from the 2x2 patches of normalised training images."""
        patches = images.float().unfold(2, 2, 1).unfold(3, 2, 1)  # N,C,H',W',2,2
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 12)
        patches = patches - patches.mean(0)
        cov = patches.T @ patches / len(patches)
        eigval, eigvec = torch.linalg.eigh(cov.double())
        filters = (eigvec.T / torch.sqrt(eigval + eps)[:, None]).float().view(12, 3, 2, 2)
        self.whiten.weight.copy_(torch.cat([filters, -filters]))
        self.whiten.bias.zero_()
        self.whitened = True

    def forward(self, x):
        x = self.act(self.whiten(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.pool(x).flatten(1)


class ScaledLinear(nn.Linear):
    """Bias-free classifier with a small fixed output scale (keeps early logits calm)."""

    def __init__(self, in_features: int, out_features: int, scale: float = 1 / 9):
        super().__init__(in_features, out_features, bias=False)
        self.scale = scale

    def forward(self, x):
        return super().forward(x) * self.scale


def build_baseline(num_classes: int, spec: ExperimentSpec):
    backbone = BaselineBackbone()
    head = ScaledLinear(backbone.num_features, num_classes)
    n = sum(p.numel() for p in backbone.parameters()) + head.weight.numel()
    info = ModelInfo(
        arch="baseline", family="baseline CNN",
        init=("random init (PyTorch default Kaiming-uniform for conv/linear); first-layer "
              "2x2 filters set by patch whitening of the training images, then fixed"),
        mean=CIFAR_MEAN, std=CIFAR_STD, num_features=backbone.num_features,
        old_head="none (new network)", new_head=describe_head(head), native_resolution=32)
    names = [n for n, _ in backbone.named_parameters()]
    info.groups = [(g, [x for x in names if x.startswith(prefix)]) for g, prefix in
                   (("stem", "whiten"), ("stage1", "layer1"), ("stage2", "layer2"),
                    ("stage3", "layer3"))]
    info.arch = f"baseline ({n / 1e6:.2f}M params)"
    return Net(backbone, head, info)
