"""One experiment end to end: build, describe, fit (cached features or training loop), score.

The test split is touched once, at the end, with the weights (epoch or weight decay) that the
validation split chose.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from .fit import dist, evaluate, hardware, kernels, optim, probe
from . import models, regimes
from .fit.augment import Pipeline
from .config import ExperimentSpec
from .fit.context import FitContext
from .data import Splits, stratified_sample
from .errors import ExperimentFailed, UserError
from .fit.hardware import Choice
from .fit.optim import describe_optimizer
from .record import Description, Result
from .fit.train import Shards, Trainer
from .util import PeakMemory, atomic_save, environment, eval_batch, safe_load, seed_everything


def _fit_text(spec: ExperimentSpec) -> str:
    """How each phase is fitted, in order, in words."""
    words = []
    for p in regimes.phases(spec):
        w = ("cached features, weight decay chosen on validation from "
             f"{list(spec.probe_wd)}" if p.on_features(spec) else "backprop through the network")
        if not words or words[-1] != w:
            words.append(w)
    return ", then ".join(words)


def _phase_rows(spec: ExperimentSpec, names: list[str]) -> list[dict]:
    return [{"phase": p.name, "trained": regimes.trained_groups(spec, names, i),
             "epochs": p.epochs(spec), "lr_scale": p.lr_scale(spec),
             "fit": "cached features" if p.on_features(spec) else "backprop"}
            for i, p in enumerate(regimes.phases(spec))]


def describe(spec: ExperimentSpec, net: models.Net, plan: regimes.RegimePlan,
             choices: dict[str, Choice], resolution: int, splits: Splits, device) -> Description:
    groups = regimes.group_map(net)
    optimizer = describe_optimizer(spec)
    if spec.uses_features:
        optimizer["weight_decay"] = f"chosen on validation from {list(spec.probe_wd)}"
    summary = regimes.get(spec.regime).summary
    return Description(
        name=spec.name, model=spec.model, arch=net.info.arch, family=net.info.family,
        init=net.info.init, weights=spec.weights,
        normalization={"mean": list(net.info.mean), "std": list(net.info.std)},
        old_head=net.info.old_head, new_head=net.info.new_head,
        modified_layers=plan.modified_layers, regime=spec.regime,
        regime_description=plan.description,
        groups=[{"group": g, "params": sum(p.numel() for p in ps),
                 "trained": g in plan.trained} for g, ps in groups],
        trained_params=plan.trained_params, frozen_params=plan.frozen_params,
        optimizer=optimizer,
        schedule={"name": spec.schedule, "warmup_epochs": spec.warmup_epochs,
                  "layer_decay": spec.layer_decay},
        epochs=spec.epochs, batch_size=spec.batch_size, resolution=resolution,
        decoded_side=splits.image_size,  # the uint8 cache's side: `predict` resizes new images to it
        augment=spec.augment, label_smoothing=spec.label_smoothing,
        precision=precision_text(spec.precision, choices),
        numerics={k: c.record() for k, c in choices.items()},
        channels_last=spec.channels_last, compile=spec.compile, tta=spec.tta, seed=spec.seed,
        fit=_fit_text(spec),
        head={"kind": spec.head.kind, "hidden": list(spec.head.hidden), "dropout": spec.head.dropout},
        regime_settings=summary(spec) if summary else None,
        phases=_phase_rows(spec, [g for g, _ in groups]),
        data=splits.description, classes=splits.classes,
        split_sizes={k: len(v) for k, v in splits.y.items()}, device=str(device))


def run(spec: ExperimentSpec, splits: Splits, exp_dir: Path, feature_dir: Path, device,
        record_epoch, record_details, say, budget=None, data_root: Path | None = None) -> Result:
    """Run one experiment; returns the result the store keeps.

    `budget`: a budgeted final stage's account of the time left (the study runner's); its
    plan fixes how many steps the backprop fit trains. `data_root` holds the machine's cached
    numerics decisions (default: util.default_data_root())."""
    t_start = time.perf_counter()
    if not spec.uses_features:  # a batch too small for the processes fails before any work
        Shards.plan(len(splits.y["train"]), spec.batch_size, dist.world())
    peak = PeakMemory(device)  # this experiment's own peak, not the process's so far
    seed_everything(spec.seed)
    net = models.build(spec, splits.num_classes)
    plan = regimes.apply(net, spec, phase=0)  # the first phase (the trainer moves on)
    net = net.to(device)
    if spec.channels_last:
        net = net.to(memory_format=torch.channels_last)
    resolution = spec.resolution or splits.image_size
    pipe = Pipeline(net.info.mean, net.info.std, resolution, spec.augment, device,
                    spec.channels_last)
    choices = choose_numerics(spec, net, resolution, device, exp_dir / "checkpoint.pt",
                              need_rate=budget is not None, data_root=data_root)
    details = describe(spec, net, plan, choices, resolution, splits, device)
    record_details(details.as_dict())
    for line in details.lines():
        say(line)
    for c in choices.values():
        say(f"  numerics       : {c.line()}")

    def record_plan(p) -> None:  # the budget's plan joins the description once it is fixed
        details.budget_plan = p.as_dict()
        record_details(details.as_dict())
    fitter = budget.for_fit(spec, choices, splits, record_plan) if budget is not None else None
    ctx = FitContext(spec, net, pipe, device, record_epoch, say)
    fitted = _fit(ctx, splits, exp_dir, feature_dir, choices, fitter)
    _check_timings(choices, fitted, say)
    fitted.update(classes=splits.classes, total_seconds=time.perf_counter() - t_start,
                  peak_mem_mb=peak.stop(), val_labels=splits.y["val"].tolist() or None,
                  test_labels=splits.y["test"].tolist())
    if splits.pool is not None:  # a fold: its part of the out-of-fold predictions, by pool index
        fitted["fold"] = fold_record(splits, fitted.get("val_predictions"))
    result = Result.from_dict(fitted)
    if result.on_features:  # the weight decay actually used is the one validation chose
        details.optimizer["weight_decay"] = result.chosen_wd
        details.optimizer["weight_decay_candidates"] = \
            list(spec.probe_wd) + list(result.probe.grid_extended)
        record_details(details.as_dict())
    if dist.rank() == 0:
        atomic_save(net.state_dict(), exp_dir / "model.pt")  # the checkpoint goes once the store has the result
    say(f"  test accuracy {result.test_acc:.2%}"
        + (f" (validation {result.val_acc:.2%})" if result.val_acc is not None else ""))
    return result


def fold_record(splits: Splits, predictions: list[int] | None) -> dict:
    """Which pool images this fold held out, their labels and the fold's predictions of them."""
    pool = splits.pool
    return {"k": pool.k, "fold": pool.fold, "pool_size": pool.size,
            "held_out": pool.index["val"].tolist(), "labels": splits.y["val"].tolist(),
            "predictions": predictions}


def choose_numerics(spec: ExperimentSpec, net: models.Net, resolution: int, device,
                    checkpoint: Path, need_rate: bool = False,
                    data_root: Path | None = None) -> dict[str, Choice]:
    """Precision and fast paths per kind of work, decided on rank 0 and shared with the others.
    A resumed run keeps what its checkpoint ran with, so it stays bit-identical."""
    choices: dict | str = {}
    if dist.rank() == 0:
        try:
            choices = decide_numerics(spec, net, resolution, device, checkpoint, need_rate,
                                      data_root)
        except Exception as e:  # noqa: BLE001  every rank must learn of it, or the others hang
            choices = f"choosing the numerics failed: {type(e).__name__}: {e}"
    choices = dist.broadcast(choices)
    if isinstance(choices, str):
        raise ExperimentFailed(choices)
    return choices


def decide_numerics(spec: ExperimentSpec, net: models.Net, resolution: int, device,
                    checkpoint: Path | None = None, need_rate: bool = False,
                    data_root: Path | None = None) -> dict[str, Choice]:
    """This process's numerics decision for each kind of work the experiment does (the time
    budget's plan asks it too, so the experiment later finds the same timings cached)."""
    kinds = {"extract": net.backbone} if any(p.on_features(spec) for p in regimes.phases(spec)) else {}
    if not spec.uses_features:
        kinds.update(train=net, eval=net)
    batches = {"train": spec.batch_size}
    model_key = f"{spec.model}|{spec.regime}|{spec.head.kind}"  # what the step's cost depends on
    ran_with = _checkpoint_numerics(checkpoint) if checkpoint else {}
    choices = {}
    for kind, module in kinds.items():
        if kind in ran_with:
            choices[kind] = Choice(kind, hardware.by_name(ran_with[kind]), "as in the checkpoint")
        elif spec.compile and kind == "train" and device.type == "cpu" \
                and spec.precision in ("auto", "fp32"):
            choices[kind] = Choice(kind, hardware.FP32, "compiled: no fast paths")
        else:
            choices[kind] = hardware.decide(
                spec.precision, device, kind, module, model_key,
                batches.get(kind, eval_batch(spec.batch_size, device)), resolution,
                spec.channels_last, need_rate=need_rate, data_root=data_root)
    return choices


def _checkpoint_numerics(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    try:
        return dict(safe_load(path).get("numerics", {}))
    except UserError:
        return {}  # a damaged checkpoint is reported where it is resumed


def precision_text(setting: str, choices: dict[str, Choice]) -> str:
    ran = ", ".join(f"{k} {c.numerics.name}" for k, c in choices.items())
    return f"{ran} (precision = \"{setting}\")"


def _check_timings(choices: dict[str, Choice], fitted: dict, say) -> None:
    """Compare the timed rates the choices (and a budget) used with what the work ran at."""
    if dist.world() > 1:  # a loop's rate there counts every rank; a timing, one process
        return
    extra = fitted.get("extra") or {}
    loops = {"train": extra.get("loop_img_per_s")}
    if extra.get("features_extracted") and extra.get("feature_seconds"):
        loops["extract"] = extra["features_extracted"] / extra["feature_seconds"]
    for kind, rate in loops.items():
        if kind in choices and (msg := hardware.retime_if_under_load(choices[kind], rate)):
            say(f"  numerics       : {msg}")


def _fit(ctx: FitContext, splits: Splits, exp_dir: Path, feature_dir: Path,
         choices: dict[str, Choice], budget=None) -> dict:
    """The regime's phases in order: a head on cached features first where the regime has
    such a phase (the probe), then the backprop phases (the trainer) from that head."""
    spec = ctx.spec
    phases = regimes.phases(spec)
    cached = [p for p in phases if p.on_features(spec)]
    probed = None
    if cached:
        probed = probe.fit(ctx, splits, feature_dir, choices["extract"].numerics,
                           epochs=sum(p.epochs(spec) for p in cached))
    if len(cached) == len(phases):
        return probed
    result = _train(ctx, splits, exp_dir, choices, budget)
    if probed is not None:  # what the probe phase chose, kept beside the fine-tuned result
        keep = ("chosen_wd", "probe_sweep", "wd_grid_extended", "epoch_choice", "constant_features")
        result["extra"]["probe"] = {"val_acc": probed["val_acc"], "test_acc": probed["test_acc"],
                                    **{k: probed["extra"][k] for k in keep}}
    return result


def _train(ctx: FitContext, splits: Splits, exp_dir: Path, choices: dict[str, Choice],
           budget=None) -> dict:
    spec, net, pipe, device, say = ctx.spec, ctx.net, ctx.pipe, ctx.device, ctx.say
    exp_dir.mkdir(parents=True, exist_ok=True)
    ckpt = exp_dir / "checkpoint.pt"
    if hasattr(net.backbone, "data_init") and not ckpt.exists():
        idx = stratified_sample(splits.y["train"], 5000, seed=spec.seed)  # all classes, seeded
        net.backbone.data_init(pipe.eval(splits.x["train"][idx]).float())
    if spec.compile:
        net.forward = torch.compile(net.forward)
    elif choices["train"].numerics.fast_path and (n := kernels.use_fast_depthwise(net)):
        say(f"  cpu kernels    : direct weight gradient for the {n} depthwise convolutions "
            "(oneDNN's is slow when padding covers the map)")
    if choices["train"].numerics.frozen_bf16 and (n := kernels.frozen_layers_in_bf16(net)):
        say(f"  cpu kernels    : the {n} frozen layer unit(s) run in bf16 (inference: no "
            "gradient passes through them)")
    trainer = Trainer(ctx, choices["train"].numerics, ckpt,
                      eval_numerics=choices["eval"].numerics, budget=budget)
    x, y = splits.x, splits.y
    if splits.pool is not None:  # a fold keeps its last epoch, as the final will: the held-out
        x = {**x, "val": x["val"][:0]}  # fold only scores, it chooses nothing
        y = {**y, "val": y["val"][:0]}
    fit = trainer.fit(x, y)
    net.load_state_dict(fit.state)
    amp = optim.autocast(choices["eval"].numerics, device)
    batch = eval_batch(spec.batch_size, device)
    x, y = splits.x["test"], splits.y["test"]
    ev_plain, ev = evaluate.on_images(net, pipe, x, y, batch, amp, spec.tta)
    out = evaluate.scores(ev, ev_plain, splits.num_classes)
    if len(splits.y["val"]):  # scored as the test split is (and as probes are): like for like
        val_plain, val_ev = evaluate.on_images(net, pipe, splits.x["val"], splits.y["val"],
                                               batch, amp, spec.tta)
        out.update(evaluate.val_scores(val_plain, val_ev), val_predictions=val_ev.preds.tolist())
    out.update(best_epoch=fit.best_epoch, train_seconds=fit.train_seconds,
               extra={"fit": "backprop", "epoch_choice": _epoch_choice(spec, splits),
                      "steps": fit.steps, "loop_img_per_s": _mean_rate(fit.history)})
    if fit.plan is not None:  # what the budget planned, beside what ran
        out["extra"]["budget_plan"] = fit.plan.as_dict()
    return out


def _mean_rate(history: list[dict]) -> float | None:
    rates = [r["img_per_s"] for r in history if r.get("img_per_s")]
    return round(sum(rates) / len(rates), 1) if rates else None


def _epoch_choice(spec: ExperimentSpec, splits: Splits) -> str:
    if splits.pool is not None:
        return "the last epoch (a cross-validation fold: the held-out fold only scores)"
    if not len(splits.y["val"]):
        return "the last epoch (no validation split)"
    views = "with flip TTA" if spec.tta else "without TTA"
    return f"the validation-best epoch (validation scored {views}, as the ranking and the test)"


def env_record(device) -> dict:
    return {**environment(), "device_type": device.type}
