"""Rough time estimates for `transferlab run --dry-run`.

Measured throughput from finished experiments in the store wins; otherwise a crude CPU
figure (EfficientNet-Lite0, fp32, channels_last, 2 cores: ~45 img/s inference and ~15 img/s
training at 224 px, scaling with pixel count), which is only a guide.
"""
from __future__ import annotations

from types import SimpleNamespace

from . import regimes

INFER_224, TRAIN_224, BASELINE_TRAIN = 45.0, 15.0, 400.0


def _speed(base: float, res: int) -> float:
    return base * min((224 / max(res, 1)) ** 2, 12.0)


def _cost_key(spec) -> tuple:
    """What a training step's cost depends on: the model, its input, and (the registry says)
    whether the backbone gets gradients in the regime's main phase."""
    return spec.model, spec.resolution, regimes.phase_at(spec, None).trains == regimes.HEAD


def _measured(store, spec) -> float | None:
    for cfg, speed in store.throughputs():
        if speed and _cost_key(SimpleNamespace(**cfg)) == _cost_key(spec):
            return float(speed)
    return None


def estimate_seconds(spec, sizes: dict, store) -> float:
    res = spec.resolution or 32
    n_train, n_eval = sizes["train"], sizes["val"] + sizes["test"]
    if spec.model == "baseline":
        return spec.epochs * n_train / BASELINE_TRAIN + n_eval / (3 * BASELINE_TRAIN)
    if spec.uses_features:
        views = 2 if spec.augment != "none" else 1
        return (views * n_train + (2 if spec.tta else 1) * n_eval) / _speed(INFER_224, res)
    speed = _measured(store, spec) or _speed(TRAIN_224, res)
    return spec.epochs * (n_train / speed + sizes["val"] / _speed(INFER_224, res)) + \
        2 * sizes["test"] / _speed(INFER_224, res)


def dry_run(runner, specs, again: set = frozenset()) -> str:
    """What would run; `again`: names --rerun would forget (shown as pending, not reset)."""
    try:
        sizes = {k: len(v) for k, v in runner.splits().y.items()}
    except Exception as e:  # no data yet (e.g. no network): still list the work
        sizes, note = None, f" (no time estimate: {e})"
    lines, total = [], 0.0
    for s in specs:
        row = runner.store.get(s.id)
        status = row["status"] if row else "pending"
        if s.name in again:
            status = "rerun"
        est = ""
        if sizes and status != "done":
            sec = estimate_seconds(s, sizes, runner.store)
            total += sec
            est = f"~{sec / 60:.1f} min"
        lines.append(f"  {s.name:<28} {status:<8} {s.model:<22} {s.regime:<8} {est}")
    head = f"study {runner.study.name}: {len(specs)} experiments"
    if sizes and runner.study.final is not None:
        sec, line = _final_line(runner, specs, sizes)
        total += sec
        lines.append(line)
    tail = f"rough total for what would run: ~{total / 60:.0f} min" if sizes else note
    return "\n".join([head, *lines, tail])


def _final_line(runner, specs, sizes: dict) -> tuple[float, str]:
    """The final stage retrains whichever configuration validation chooses: until the grid
    has chosen, count the dearest candidate."""
    import dataclasses
    from .final import final_spec, plan
    chosen = plan(runner.study, runner.store).spec
    data = dataclasses.replace(runner.study.data, subset=runner.study.final.subset, val_fraction=0.0)
    full = {k: len(v) for k, v in runner.splits(data).y.items()}
    n_all = full["train"]
    if chosen is not None:
        row = runner.store.get(chosen.id)
        status = row["status"] if row else "pending"
        sec = 0.0 if status == "done" else estimate_seconds(chosen, full, runner.store)
        return sec, f"  {chosen.name:<28} {status:<8} final stage   ~{sec / 60:.1f} min"
    cands = [final_spec(s, runner.study.final, None) for s in specs]
    sec = max((estimate_seconds(c, full, runner.store) for c in cands), default=0.0)
    return sec, (f"  {'final (after the grid)':<28} {'pending':<8} the validation choice on "
                 f"{n_all} images: up to ~{sec / 60:.1f} min")
