"""The network every experiment trains: a backbone (images -> pooled features) and a new head.

`ModelInfo` says where a backbone came from and how it is cut into layer groups; the head
factories build and describe the new classifier. Model factories (models.py, baseline.py)
produce these; everything above them reads them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .config import HeadSpec


class Net(nn.Module):
    """Backbone (images -> pooled features) followed by the new head (features -> logits)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, info: "ModelInfo"):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.info = info

    def forward(self, x):
        return self.head(self.backbone(x))


@dataclass
class ModelInfo:
    """What the report says about a model: where it came from and how it is cut."""
    arch: str
    family: str
    init: str
    mean: tuple
    std: tuple
    num_features: int
    old_head: str
    new_head: str
    native_resolution: int
    groups: list[tuple[str, list[str]]] = field(default_factory=list)  # (group, param names)


def make_head(h: HeadSpec, in_features: int, num_classes: int) -> nn.Module:
    if h.kind == "linear":
        return nn.Linear(in_features, num_classes)
    layers, width = [], in_features
    for hidden in h.hidden:
        layers += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(h.dropout)]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def describe_head(head: nn.Module) -> str:
    mods = [head] if isinstance(head, nn.Linear) else list(head)
    parts = []
    for m in mods:
        if isinstance(m, nn.Linear):
            parts.append(f"Linear({m.in_features}->{m.out_features})")
        elif isinstance(m, nn.Dropout):
            parts.append(f"Dropout({m.p})")
        else:
            parts.append(type(m).__name__)
    return " -> ".join(parts)
