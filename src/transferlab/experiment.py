"""One experiment end to end: build, describe, fit (cached features or training loop), score.

The test split is touched once, at the end, with the weights (epoch or weight decay) that the
validation split chose.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from . import dist, hardware, kernels, models, regimes
from .augment import Pipeline
from .config import ExperimentSpec
from .data import Splits, stratified_sample
from .errors import ExperimentFailed, UserError
from .features import cached_features, fit_heads, fold_standardisation, probe_views
from .hardware import Choice
from .train import Evaluation, Shards, Trainer, describe_optimizer, evaluate_views
from .util import PeakMemory, atomic_save, environment, eval_batch, safe_load, seed_everything


def describe(spec: ExperimentSpec, net: models.Net, plan: regimes.RegimePlan,
             choices: dict[str, Choice], resolution: int, splits: Splits, device) -> dict:
    groups = regimes.group_map(net)
    optimizer = describe_optimizer(spec)
    if spec.uses_features:
        optimizer["weight_decay"] = f"chosen on validation from {list(spec.probe_wd)}"
    return {
        "name": spec.name, "model": spec.model, "arch": net.info.arch, "family": net.info.family,
        "init": net.info.init, "weights": spec.weights,
        "normalization": {"mean": list(net.info.mean), "std": list(net.info.std)},
        "old_head": net.info.old_head, "new_head": net.info.new_head,
        "modified_layers": plan.modified_layers, "regime": spec.regime,
        "regime_description": plan.description,
        "groups": [{"group": g, "params": sum(p.numel() for p in ps),
                    "trained": g in plan.trained} for g, ps in groups],
        "trained_params": plan.trained_params, "frozen_params": plan.frozen_params,
        "optimizer": optimizer,
        "schedule": {"name": spec.schedule, "warmup_epochs": spec.warmup_epochs,
                     "layer_decay": spec.layer_decay},
        "epochs": spec.epochs, "batch_size": spec.batch_size, "resolution": resolution,
        "decoded_side": splits.image_size,  # the uint8 cache's side: `predict` resizes new images to it
        "augment": spec.augment, "label_smoothing": spec.label_smoothing,
        "precision": precision_text(spec.precision, choices),
        "numerics": {k: c.record() for k, c in choices.items()},
        "channels_last": spec.channels_last,
        "compile": spec.compile, "tta": spec.tta, "seed": spec.seed,
        "fit": ("cached features, weight decay chosen on validation from "
                f"{list(spec.probe_wd)}" if spec.uses_features else "backprop through the network"),
        "head": {"kind": spec.head.kind, "hidden": list(spec.head.hidden),
                 "dropout": spec.head.dropout},
        "gradual": ({"head_epochs": spec.gradual_head_epochs, "lr_scale": spec.gradual_lr_scale}
                    if spec.regime == "gradual" else None),
        "data": splits.description, "classes": splits.classes,
        "split_sizes": {k: len(v) for k, v in splits.y.items()}, "device": str(device),
    }


def run(spec: ExperimentSpec, splits: Splits, exp_dir: Path, feature_dir: Path, device,
        record_epoch, record_details, say) -> dict:
    """Run one experiment; returns the result dict the store keeps."""
    t_start = time.perf_counter()
    if not spec.uses_features:  # a batch too small for the processes fails before any work
        Shards.plan(len(splits.y["train"]), spec.batch_size, dist.world())
    peak = PeakMemory(device)  # this experiment's own peak, not the process's so far
    seed_everything(spec.seed)
    net = models.build(spec, splits.num_classes)
    plan = regimes.apply(net, spec, phase=0 if spec.regime == "gradual" else 1)
    net = net.to(device)
    if spec.channels_last:
        net = net.to(memory_format=torch.channels_last)
    resolution = spec.resolution or splits.image_size
    pipe = Pipeline(net.info.mean, net.info.std, resolution, spec.augment, device,
                    spec.channels_last)
    choices = choose_numerics(spec, net, resolution, device, exp_dir / "checkpoint.pt")
    details = describe(spec, net, plan, choices, resolution, splits, device)
    record_details(details)
    from .report import format_details
    for line in format_details(details):
        say(line)
    for c in choices.values():
        say(f"  numerics       : {c.line()}")
    if spec.uses_features:
        result = _probe(spec, net, pipe, splits, feature_dir, choices["extract"].numerics,
                        record_epoch, say)
    else:
        result = _train(spec, net, pipe, splits, exp_dir, device, choices, record_epoch, say)
    result.update(classes=splits.classes, total_seconds=time.perf_counter() - t_start,
                  peak_mem_mb=peak.stop())
    # per test image, in split order: what `transferlab predict` is checked against
    result["extra"]["test_predictions"] = result.pop("test_predictions", None)
    for key in ("val_acc_no_tta", "val_loss", "val_n"):  # the store keeps them with the extras
        if key in result:
            result["extra"][key] = result.pop(key)
    if spec.uses_features:  # the weight decay actually used is the one validation chose
        details["optimizer"]["weight_decay"] = result["extra"]["chosen_wd"]
        details["optimizer"]["weight_decay_candidates"] = list(spec.probe_wd)
        record_details(details)
    if dist.rank() == 0:
        atomic_save(net.state_dict(), exp_dir / "model.pt")  # the checkpoint goes once the store has the result
    say(f"  test accuracy {result['test_acc']:.2%}"
        + (f" (validation {result['val_acc']:.2%})" if result.get("val_acc") is not None else ""))
    return result


def choose_numerics(spec: ExperimentSpec, net: models.Net, resolution: int, device,
                    checkpoint: Path) -> dict[str, Choice]:
    """Precision and fast paths per kind of work, decided on rank 0 and shared with the others.
    A resumed run keeps what its checkpoint ran with, so it stays bit-identical."""
    kinds = {"extract": net.backbone} if spec.uses_features else {"train": net, "eval": net}
    batches = {"train": spec.batch_size}
    model_key = f"{spec.model}|{spec.regime}|{spec.head.kind}"  # what the step's cost depends on
    choices: dict | str = {}
    if dist.rank() == 0:
        try:
            ran_with = _checkpoint_numerics(checkpoint)
            for kind, module in kinds.items():
                if kind in ran_with:
                    choices[kind] = Choice(kind, hardware.by_name(ran_with[kind]),
                                           "as in the checkpoint")
                elif spec.compile and kind == "train" and device.type == "cpu" \
                        and spec.precision in ("auto", "fp32"):
                    choices[kind] = Choice(kind, hardware.FP32, "compiled: no fast paths")
                else:
                    choices[kind] = hardware.decide(
                        spec.precision, device, kind, module, model_key,
                        batches.get(kind, eval_batch(spec.batch_size, device)), resolution,
                        spec.channels_last)
        except Exception as e:  # noqa: BLE001  every rank must learn of it, or the others hang
            choices = f"choosing the numerics failed: {type(e).__name__}: {e}"
    choices = dist.broadcast(choices)
    if isinstance(choices, str):
        raise ExperimentFailed(choices)
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


def _scores(ev: Evaluation, ev_plain: Evaluation, ncls: int) -> dict:
    return {"test_acc": ev.acc, "test_acc_no_tta": ev_plain.acc,
            "per_class": ev.per_class(ncls), "confusion": ev.confusion(ncls),
            "test_predictions": ev.preds.tolist()}


def _train(spec, net, pipe, splits, exp_dir, device, choices, record_epoch, say) -> dict:
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
    trainer = Trainer(net, spec, pipe, device, choices["train"].numerics, ckpt, record_epoch, say,
                      eval_numerics=choices["eval"].numerics)
    fit = trainer.fit(splits.x, splits.y)
    net.load_state_dict(fit.state)
    amp = lambda: choices["eval"].numerics.autocast(device)  # noqa: E731
    batch = eval_batch(spec.batch_size, device)
    x, y = splits.x["test"], splits.y["test"]
    ev_plain, ev = evaluate_views(net, pipe, x, y, batch, amp, spec.tta)
    out = _scores(ev, ev_plain, splits.num_classes)
    if len(splits.y["val"]):  # scored as the test split is (and as probes are): like for like
        out.update(_val_scores(*evaluate_views(net, pipe, splits.x["val"], splits.y["val"],
                                               batch, amp, spec.tta)))
    out.update(best_epoch=fit.best_epoch, train_seconds=fit.train_seconds,
               extra={"fit": "backprop", "epoch_choice": "the validation-best epoch"
                      if len(splits.y["val"]) else "the last epoch (no validation split)"})
    return out


def _val_scores(ev_plain: Evaluation, ev: Evaluation) -> dict:
    """Validation as the final choice compares it: the views the test figure uses, its loss
    (the tie-break) and its size (for the interval)."""
    return {"val_acc": ev.acc, "val_acc_no_tta": ev_plain.acc, "val_loss": ev.loss,
            "val_n": len(ev.targets)}


def _probe(spec, net, pipe, splits, feature_dir, numerics, record_epoch, say) -> dict:
    views = probe_views(spec)
    if not len(splits.y["val"]):
        views.pop("val")
    if dist.rank() != 0:  # rank 0 extracts and caches the features; the others read them
        dist.barrier()
    fs = cached_features(spec, net, pipe, splits.x, feature_dir, numerics, views, say)
    if dist.rank() == 0 and dist.world() > 1:
        dist.barrier()
    if fs.extracted == 0:
        say("  features: all read from the cache (no backbone forward needed)")
    train_f = torch.cat([fs.feats["train", v] for v in views["train"]])
    train_y = splits.y["train"].repeat(len(views["train"]))
    mean, std = train_f.mean(0), train_f.std(0) + 1e-6
    norm = lambda f: (f - mean) / std  # noqa: E731
    val_f = [norm(fs.feats["val", v]) for v in views.get("val", [])]
    val_y = splits.y["val"]
    t0 = time.perf_counter()
    wds = list(spec.probe_wd) if len(val_y) else [spec.optimizer.weight_decay]
    sweep, best = [], None
    fits = fit_heads(spec, train_f.shape[1], splits.num_classes, norm(train_f), train_y, val_f,
                     val_y, wds)
    for wd, (head, hist) in zip(wds, fits):
        acc = hist[-1].get("val_acc")
        sweep.append({"weight_decay": wd, "val_acc": acc})
        say(f"  probe weight decay {wd:g}: val acc "
            + (f"{acc:.2%}" if acc is not None else "n/a (no validation split)"))
        if best is None or (acc is not None and acc > best[0]):
            best = (acc if acc is not None else -1.0, wd, head, hist)
    best_acc, best_wd, head, hist = best
    for row in hist:
        record_epoch(row)
    from .train import format_epoch
    say(f"  chosen on validation: weight decay {best_wd:g}; its epochs:")
    for row in hist:
        say(format_epoch(row, spec.epochs))
    fold_standardisation(head, mean, std)
    net.head.load_state_dict(head.state_dict())
    test = {v: fs.feats["test", v] for v in views["test"]}
    y = splits.y["test"]
    ev_plain = _probe_eval(net.head, [test["plain"]], y)
    ev = _probe_eval(net.head, list(test.values()), y) if spec.tta else ev_plain
    out = _scores(ev, ev_plain, splits.num_classes)
    if len(val_y):  # the chosen head on validation, scored as backprop runs are
        val = [fs.feats["val", v] for v in views["val"]]
        out.update(_val_scores(_probe_eval(net.head, val[:1], val_y),
                               _probe_eval(net.head, val, val_y)))
    out.update(best_epoch=spec.epochs,
               train_seconds=fs.seconds + time.perf_counter() - t0,
               extra={"fit": "cached features", "probe_sweep": sweep, "chosen_wd": best_wd,
                      "feature_seconds": fs.seconds, "features_extracted": fs.extracted,
                      "feature_extraction": fs.mode})
    return out


@torch.no_grad()
def _probe_eval(head, feats: list, y) -> Evaluation:
    head.eval()
    logits = sum(head(f) for f in feats) / len(feats)
    preds = logits.argmax(1)
    loss = float(torch.nn.functional.cross_entropy(logits, y))
    return Evaluation(float((preds == y).float().mean()), loss, preds, y)


def env_record(device) -> dict:
    return {**environment(), "device_type": device.type}
