"""Figures of a study, drawn from store rows: every function returns a matplotlib Figure.

Nothing here trains or reads files; the notebook and the tests pass in what the store holds.
Long tick labels are wrapped onto several lines and the figure grows with the number of bars
until no two labels overlap (checked with the renderer, not guessed).
"""
from __future__ import annotations

import html
import json
import statistics
from collections import OrderedDict
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from .. import regimes

EXTERNAL_COLOUR = "#8c8c8c"
EXTERNAL_TEXT = "внешний результат"  # legend of results obtained elsewhere


# ------------------------------------------------------------------ labels

def short_model(model: str) -> str:
    """A short model name for labels.

    'timm:efficientnet_lite0' -> 'effnet_lite0', 'convnext_tiny.in12k_ft_in1k' -> 'convnext_tiny'.
    """
    name = model.split(":", 1)[-1].split(".", 1)[0]
    return name.replace("efficientnet_", "effnet_")


def wrap_label(text: str, width: int = 14) -> str:
    """Wrap between words only: a word longer than `width` (a model name) keeps a line of its
    own, whole; the chart widens to fit its longest line."""
    lines: list[str] = []
    for para in text.split("\n"):
        line = ""
        for word in para.split(" "):
            if not line:
                line = word
            elif len(line) + 1 + len(word) <= width:
                line += " " + word
            else:
                lines.append(line)
                line = word
        lines.append(line)
    return "\n".join(x for x in lines if x != "" or len(lines) == 1)


def regime_text(regime: str) -> str:
    """Legend text: the registry's short line for the regime (regimes.py)."""
    return EXTERNAL_TEXT if regime == "external" else regimes.legend(regime)


# ------------------------------------------------------------------ the bar chart

@dataclass
class Bar:
    label: str
    regime: str
    mean: float  # percent
    err: float | None  # std over seeds, percent
    n: int
    baseline: bool = False
    external: bool = False
    skipped: bool = False  # no weights here: drawn as an empty slot that says so
    final: bool = False  # the final stage's model (trained on every training image)


def _config_key(cfg: dict | None) -> str | None:
    if cfg is None:
        return None
    d = {k: v for k, v in cfg.items() if k not in ("name", "seed")}
    return json.dumps(d, sort_keys=True, default=list)


def bars_from_rows(rows, configs: dict | None = None, width: int = 14) -> list[Bar]:
    """One bar per configuration: runs that differ only in seed share a bar (mean, std).

    `rows` are report.Row objects; `configs` maps an experiment name to its stored config
    (without it every experiment is its own bar).
    """
    configs = configs or {}
    groups: OrderedDict[str, list] = OrderedDict()
    for r in rows:
        if r.test_acc is None and r.status != "skipped":
            continue
        key = None if r.external or r.final else _config_key(configs.get(r.name))
        groups.setdefault(key or f"__{r.name}", []).append(r)
    bars = []
    for members in groups.values():
        r = members[0]
        accs = [(m.test_acc or 0.0) * 100 for m in members]
        if r.external:
            text = f"{r.name} (внешний) {r.key}".strip()
        else:
            text = f"{short_model(r.model)} {r.regime} {r.key.replace(', ', ' ')}"
        if r.final:
            text = "ФИНАЛ: " + text + " все обуч. изобр."
        if len(members) > 1:
            text += f" ({len(members)} seeds)"
        bars.append(Bar(label=wrap_label(text, width), regime=r.regime,
                        mean=statistics.fmean(accs),
                        err=statistics.stdev(accs) if len(accs) > 1 else None, n=len(accs),
                        baseline=r.model == "baseline", external=r.external,
                        skipped=r.status == "skipped", final=r.final))
    return bars


def _regime_colours(regimes: list[str]) -> dict[str, str]:
    palette = plt.get_cmap("tab10").colors
    out, i = {}, 0
    for reg in regimes:
        if reg in out:
            continue
        if reg == "external":
            out[reg] = EXTERNAL_COLOUR
            continue
        if palette[i % 10] == (0.4980392156862745, 0.4980392156862745, 0.4980392156862745):
            i += 1  # tab10 grey is kept for external results
        out[reg] = palette[i % 10]
        i += 1
    return out


def _overlaps(boxes) -> bool:
    boxes = sorted(boxes, key=lambda b: b.x0)
    return any(a.x1 > b.x0 + 0.5 and a.y1 > b.y0 and b.y1 > a.y0 for a, b in zip(boxes, boxes[1:]))


def tick_label_boxes(ax, axis: str = "x") -> list:
    """Window extents of the visible tick labels (draws the figure first)."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()
    labels = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    return [t.get_window_extent(renderer) for t in labels if t.get_text() and t.get_visible()]


def accuracy_bar_chart(rows, configs: dict | None = None, title: str | None = None,
                       label_width: int = 14, fontsize: float = 9) -> Figure:
    """Test accuracy (%) per experiment: value on each bar, colour by regime, seeds as error bars.

    The baseline CNN is hatched; external results are grey. The figure is as wide as the
    labels need, and widens further if the renderer still finds two tick labels overlapping.
    """
    bars = bars_from_rows(rows, configs, label_width)
    n = max(len(bars), 1)
    longest = max((len(line) for b in bars for line in b.label.split("\n")), default=8)
    per_bar = max(0.75, longest * fontsize * 0.62 / 72 + 0.25)
    width = min(max(6.0, per_bar * n + 1.8), 60.0)
    lines = max((b.label.count("\n") + 1 for b in bars), default=1)
    height = 4.6 + lines * fontsize * 1.35 / 72
    fig, ax = plt.subplots(figsize=(width, height), layout="constrained")
    colours = _regime_colours([b.regime for b in bars])
    x = np.arange(len(bars))
    means = [b.mean for b in bars]
    errs = [b.err or 0 for b in bars]
    drawn = ax.bar(x, means, width=0.7, color=[colours[b.regime] for b in bars],
                   edgecolor="black", linewidth=0.6)
    with_err = [i for i, b in enumerate(bars) if b.err]
    if with_err:  # only where several seeds exist: no zero-height caps elsewhere
        ax.errorbar([x[i] for i in with_err], [means[i] for i in with_err],
                    yerr=[errs[i] for i in with_err], fmt="none", ecolor="black",
                    elinewidth=1, capsize=4)
    for rect, b in zip(drawn, bars):
        if b.baseline:
            rect.set_hatch("//")
        if b.external:
            rect.set_hatch("..")
        if b.final:
            rect.set_linewidth(2.2)
        top = b.mean + (b.err or 0)
        text = f"{b.mean:.1f}" + (f"±{b.err:.1f}" if b.err else "")
        if b.skipped:
            text = "пропущен:\nнет весов\nофлайн"
        ax.annotate(text, (rect.get_x() + rect.get_width() / 2, top), xytext=(0, 3),
                    textcoords="offset points", ha="center", va="bottom", fontsize=fontsize)
    ax.set_xticks(x, [b.label for b in bars], fontsize=fontsize)
    ax.set_ylabel("точность на тесте, %")
    ax.set_ylim(0, 108)
    ax.set_yticks(range(0, 101, 20))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_title(title or "Точность на тестовой выборке")
    handles = [Patch(facecolor=c, edgecolor="black", label=regime_text(r))
               for r, c in colours.items()]
    if any(b.baseline for b in bars):
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="//",
                             label="базовая CNN (baseline)"))
    if any(b.final for b in bars):
        handles.append(Patch(facecolor="white", edgecolor="black", linewidth=2.2,
                             label="ФИНАЛ: выбор по валидации, обучен на всех обучающих изображениях"))
    ncol = min(len(handles), max(1, int(width // 3.2)))
    fig.legend(handles=handles, loc="outside upper center", fontsize=fontsize - 0.5, ncol=ncol,
               frameon=False)
    for _ in range(6):  # grow until the renderer sees no overlap
        if not _overlaps(tick_label_boxes(ax)):
            break
        width *= 1.25
        fig.set_size_inches(width, height)
    return fig


# ------------------------------------------------------------------ curves

def training_curves(histories: dict[str, list[dict]], title: str | None = None) -> Figure:
    """Validation accuracy per epoch (solid) and train accuracy (dotted) for each experiment."""
    fig, ax = plt.subplots(figsize=(9, 4.8), layout="constrained")
    cmap = plt.get_cmap("tab10")
    max_ep = 1
    for i, (name, rows) in enumerate(histories.items()):
        rows = [r for r in rows if r.get("epoch") is not None]
        if not rows:
            continue
        ep = [r["epoch"] for r in rows]
        max_ep = max(max_ep, max(ep))
        colour = cmap(i % 10)
        val = [(e, r["val_acc"] * 100) for e, r in zip(ep, rows) if r.get("val_acc") is not None]
        if val:
            ax.plot(*zip(*val), marker="o", color=colour, label=f"{name} (val)")
        tr = [(e, r["train_acc"] * 100) for e, r in zip(ep, rows) if r.get("train_acc") is not None]
        if tr:
            ax.plot(*zip(*tr), marker=".", linestyle=":", color=colour, alpha=0.7)
    ax.set_xlabel("эпоха")
    ax.set_ylabel("точность, %")
    ax.set_xlim(0.5, max_ep + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.grid(alpha=0.3)
    ax.set_title(title or "Кривые обучения: сплошная — валидация, пунктир — обучение")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    return fig


# ------------------------------------------------------------------ best model

def confusion_matrix(matrix, classes: list[str], normalize: bool = True,
                     title: str | None = None) -> Figure:
    """Rows: true class, columns: predicted; cells show row percentages (or counts)."""
    m = np.asarray(matrix, dtype=float)
    shown = m / np.maximum(m.sum(axis=1, keepdims=True), 1) * 100 if normalize else m
    k = len(classes)
    side = min(max(4.5, 0.62 * k + 2.2), 14)
    fig, ax = plt.subplots(figsize=(side + 1, side), layout="constrained")
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=100 if normalize else None)
    fs = 9 if k <= 10 else max(5, 9 - (k - 10) // 3)
    for i in range(k):
        for j in range(k):
            v = shown[i, j]
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=fs,
                    color="white" if v > (60 if normalize else shown.max() * 0.6) else "black")
    ax.set_xticks(range(k), classes, rotation=45, ha="right", rotation_mode="anchor", fontsize=fs)
    ax.set_yticks(range(k), classes, fontsize=fs)
    ax.set_xlabel("предсказанный класс")
    ax.set_ylabel("истинный класс")
    ax.set_title(title or ("Матрица ошибок, % от истинного класса" if normalize else "Матрица ошибок"))
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def per_class(accuracies: list[float], classes: list[str], title: str | None = None) -> Figure:
    """Horizontal bars: accuracy per class (%), the mean as a dashed line."""
    acc = np.asarray(accuracies, dtype=float) * 100
    k = len(classes)
    fig, ax = plt.subplots(figsize=(7.5, max(2.5, 0.38 * k + 1.2)), layout="constrained")
    y = np.arange(k)
    ax.barh(y, acc, color=plt.get_cmap("tab10")(0), edgecolor="black", linewidth=0.5)
    for yi, a in zip(y, acc):
        ax.text(min(a + 1, 101), yi, f"{a:.1f}", va="center", fontsize=9)
    ax.axvline(acc.mean(), linestyle="--", color="black", linewidth=1,
               label=f"среднее {acc.mean():.1f}%")
    ax.set_yticks(y, classes)
    ax.invert_yaxis()
    ax.set_xlim(0, 110)
    ax.set_xlabel("точность на тесте, %")
    ax.set_title(title or "Точность по классам")
    ax.legend(loc="lower right", fontsize=8)
    return fig


# ------------------------------------------------------------------ data

def sample_grid(x, y, classes: list[str], per_class: int = 8, seed: int = 0,
                title: str | None = None) -> Figure:
    """A row of sample images per class. `x`: uint8 (N, H, W, 3) tensor or array; `y`: labels."""
    x = np.asarray(x)
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    k = len(classes)
    cell = 0.9
    fig, axes = plt.subplots(k, per_class, figsize=(per_class * cell + 1.6, k * cell + 0.5),
                             squeeze=False)
    for c in range(k):
        idx = np.flatnonzero(y == c)
        pick = rng.choice(idx, size=min(per_class, len(idx)), replace=False) if len(idx) else []
        for j in range(per_class):
            ax = axes[c, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if j < len(pick):
                ax.imshow(x[pick[j]], interpolation="nearest")
        axes[c, 0].set_ylabel(classes[c], rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(title or "Примеры изображений по классам (обучающая выборка)")
    fig.subplots_adjust(left=1.4 / (per_class * cell + 1.6), right=0.99, bottom=0.01,
                        top=1 - 0.45 / (k * cell + 0.5), wspace=0.05, hspace=0.05)
    return fig


# ------------------------------------------------------------------ tables

def html_table(header: list[str], rows: list[list], align_right: set[int] | None = None) -> str:
    """A plain HTML table (escaped), for IPython.display.HTML in the notebook."""
    align_right = align_right or set()

    def cell(tag, i, v):
        style = ' style="text-align:right"' if i in align_right else ' style="text-align:left"'
        return f"<{tag}{style}>{html.escape('' if v is None else str(v))}</{tag}>"

    out = ["<table>", "<thead><tr>" + "".join(cell("th", i, h) for i, h in enumerate(header))
           + "</tr></thead>", "<tbody>"]
    for r in rows:
        out.append("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)
