"""Architecture views for the report: torchinfo summaries, regime layer groups, torchview graphs.

Networks are built exactly as an experiment builds them (models.build + regimes.apply), so
what the notebook shows is the modified network that trains, never a separate copy.
"""
from __future__ import annotations

import dataclasses
import io
import shutil
from collections import OrderedDict

import torch

from .. import models, regimes
from ..config import ExperimentSpec, Study
from ..errors import WeightsUnavailable


def specs_by_model(study: Study) -> "OrderedDict[str, list[ExperimentSpec]]":
    """Experiments grouped by their `model` value, in study order."""
    out: OrderedDict[str, list[ExperimentSpec]] = OrderedDict()
    for e in study.experiments:
        out.setdefault(e.model, []).append(e)
    return out


def representative(specs: list[ExperimentSpec]) -> ExperimentSpec:
    """The spec to draw a model from: a pretrained one if any (its init is the one to show)."""
    return next((s for s in specs if regimes.pretrained(s)), specs[0])


def build_net(spec: ExperimentSpec, num_classes: int) -> models.Net:
    """The experiment's network. Where its pretrained weights cannot be had here (a hub model
    offline) the structure is the same without them: it is built with random weights, and its
    `info.init` says so and why, so the report still shows the architecture."""
    try:
        net = models.build(spec, num_classes)
    except WeightsUnavailable as e:
        net = models.build(dataclasses.replace(spec, weights="none"), num_classes)
        net.info = dataclasses.replace(net.info, init=(
            f"веса ImageNet здесь недоступны, поэтому структура показана со случайными весами, "
            f"а эксперименты этой модели пропущены ({e})"))  # the report's own words
    net.eval()
    return net


def summary_text(net: torch.nn.Module, resolution: int, depth: int = 2) -> str:
    """torchinfo table: layers to `depth`, output shapes, params (total, trainable, frozen)."""
    from torchinfo import summary
    stats = summary(net, input_size=(1, 3, resolution, resolution), depth=depth, device="cpu",
                    col_names=("output_size", "num_params", "trainable"),
                    row_settings=("var_names",), verbose=0)
    total = sum(p.numel() for p in net.parameters())
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    return (f"input: 1 x 3 x {resolution} x {resolution}\n{stats}\n"
            f"parameters: total {total:,}, trainable {trainable:,}, frozen {total - trainable:,}")


def summary_for(net: models.Net, spec: ExperimentSpec, resolution: int, depth: int = 3) -> str:
    """The summary with the trainable flags of `spec`'s regime (its training phase)."""
    regimes.apply(net, spec)  # its last phase
    return (f"trainable flags as in experiment {spec.name!r} (regime {spec.regime})\n"
            + summary_text(net, resolution, depth))


def regime_rows(net: models.Net, specs: list[ExperimentSpec]) -> list[dict]:
    """For each experiment of one model: which layer groups train and which stay frozen.

    A regime with several phases (gradual, lp-ft) is shown in each. The net's
    requires_grad flags are left as the last row set them.
    """
    rows = []
    sizes = {g: sum(p.numel() for p in ps) for g, ps in regimes.group_map(net)}
    for s in specs:
        phases = regimes.phases(s)
        for ph in range(len(phases)):
            plan = regimes.apply(net, s, phase=ph)
            rows.append({"experiment": s.name, "regime": s.regime,
                         "phase": ph + 1 if len(phases) > 1 else None,
                         "trained": plan.trained, "frozen": plan.frozen,
                         "trained_params": plan.trained_params,
                         "frozen_params": plan.frozen_params,
                         "description": plan.description})
    rows_sizes = ", ".join(f"{g} {n / 1e6:.2f}M" for g, n in sizes.items())
    for r in rows:
        r["group_sizes"] = rows_sizes
    return rows


def dot_available() -> bool:
    return shutil.which("dot") is not None


DOT_MISSING = ("Graphviz `dot` is not installed, so the network graph is not drawn. Install it "
               "(Debian/Ubuntu: apt-get install graphviz; conda: conda install graphviz) and run "
               "the notebook again.")


def graph_png(net: torch.nn.Module, resolution: int, depth: int = 2, dpi: int = 72) -> bytes | None:
    """A torchview drawing of `net` as PNG bytes, or None when Graphviz `dot` is missing."""
    if not dot_available():
        return None
    from torchview import draw_graph
    graph = draw_graph(net, input_size=(1, 3, resolution, resolution), depth=depth,
                       device="cpu", expand_nested=False, hide_inner_tensors=True,
                       graph_name=type(net).__name__, roll=True)
    g = graph.visual_graph
    g.attr(dpi=str(dpi), size="")  # no size cap: a deep graph is long, not shrunk to unreadable
    return g.pipe(format="png")


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of PNG bytes, read from the header."""
    bio = io.BytesIO(data)
    bio.seek(16)
    return int.from_bytes(bio.read(4), "big"), int.from_bytes(bio.read(4), "big")
