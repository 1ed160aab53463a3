"""Ship a trained model: one self-contained TorchScript or ONNX file plus a model card.

The exported model takes float32 RGB images in [0, 1], shape (N, 3, R, R) at the model's
input resolution R, and returns logits (N, classes). Normalisation and, where the study
scored with it, flip TTA are inside the file; what remains outside is decoding and resizing
to R, which the card spells out step by step.

Nothing is written unless it passed: the file is exported to a temporary name, loaded back
(TorchScript through torch.jit, ONNX through onnxruntime) and run on real test images of the
study, and its logits must equal the PyTorch model's, scored the way evaluation scores them
(`augment.Pipeline.eval`, flip TTA), within `TOLERANCE` times the largest logit.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .fit.augment import Pipeline
from .config import Study
from .data import make_splits
from .errors import UserError
from .trained import Trained
from .util import git_revision

FORMATS = {"torchscript": ".torchscript.pt", "onnx": ".onnx"}
TOLERANCE = 1e-3  # |exported - PyTorch| <= TOLERANCE * max(1, max |PyTorch logit|), every logit
CHECK_IMAGES = 64
OPSET = 18


class Exportable(nn.Module):
    """The trained network with its normalisation and flip TTA folded in."""

    def __init__(self, net: nn.Module, mean, std, tta: bool):
        super().__init__()
        self.net, self.tta = net, tta
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.mean) / self.std
        logits = self.net(x)
        if self.tta:
            logits = (logits + self.net(x.flip(3))) / 2
        return logits


@dataclass
class Check:
    images: int
    max_abs_diff: float
    allowed: float
    top1_agree: int

    def passed(self) -> bool:
        return self.max_abs_diff <= self.allowed

    def as_dict(self) -> dict:
        return {"images": self.images, "max_abs_diff": self.max_abs_diff,
                "allowed": self.allowed, "tolerance": f"{TOLERANCE:g} x max(1, max |logit|)",
                "top1_agree": self.top1_agree, "passed": self.passed()}


def build_exportable(trained: Trained) -> Exportable:
    net = trained.load_net(torch.device("cpu")).to(memory_format=torch.contiguous_format)
    p = trained.prep
    return Exportable(net, p.mean, p.std, p.tta).eval()


def check_images(study: Study, trained: Trained, data_root: Path) -> torch.Tensor:
    """Up to CHECK_IMAGES test images of the study, spread over the split (uint8 NHWC, at the
    decoded side the model was trained on)."""
    max_res = max((e.resolution for e in study.experiments), default=0)
    try:
        splits = make_splits(study.data, data_root, True, max_res)
    except UserError as e:
        raise UserError(f"the export check runs on the study's test images, which cannot be "
                        f"loaded: {e}") from None
    x = splits.x["test"]
    if x.shape[1] != trained.prep.decoded_side:
        raise UserError(f"the study's data now decodes at {x.shape[1]} px, but {trained.name} "
                        f"was trained at {trained.prep.decoded_side} px; run the study again "
                        "before exporting")
    idx = torch.linspace(0, len(x) - 1, min(CHECK_IMAGES, len(x))).long().unique()
    return x[idx]


def reference_inputs(trained: Trained, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the exported model's input, PyTorch's logits): both from evaluation's own pipeline,
    one without normalisation (the file normalises), one with it."""
    p, cpu = trained.prep, torch.device("cpu")
    raw = Pipeline((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), p.resolution, "none", cpu, False).eval(x)
    net = trained.load_net(cpu)
    pipe = p.pipeline(cpu)
    with torch.inference_mode():
        ref = net(pipe.eval(x)).float()
        if p.tta:
            ref = (ref + net(pipe.eval(x, flip=True)).float()) / 2
    return raw.contiguous(), ref


def compare(got: np.ndarray, ref: torch.Tensor) -> Check:
    got_t = torch.from_numpy(np.asarray(got, dtype=np.float32))
    if got_t.shape != ref.shape:
        return Check(len(ref), float("inf"), 0.0, 0)
    diff = float((got_t - ref).abs().max())
    allowed = TOLERANCE * max(1.0, float(ref.abs().max()))
    agree = int((got_t.argmax(1) == ref.argmax(1)).sum())
    return Check(len(ref), diff, allowed, agree)


# ------------------------------------------------------------------ the two formats

def _torchscript(module: Exportable, sample: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation notices
        traced = torch.jit.trace(module, sample[:2], check_trace=False)
    traced.save(str(path))


def _run_torchscript(path: Path, x: torch.Tensor) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates TorchScript
        m = torch.jit.load(str(path), map_location="cpu").eval()
    with torch.inference_mode():
        return m(x).float().numpy()


def _onnx(module: Exportable, sample: torch.Tensor, path: Path) -> None:
    try:
        import onnx  # noqa: F401  (the exporter needs it; fail early with the fix)
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise UserError(f"ONNX export needs the 'export' extra ({e.name} is missing): "
                        "pip install 'transferlab[export]'") from None
    batch = torch.export.Dim("batch", min=1, max=65536)
    logging.disable(logging.INFO)  # the graph optimiser logs every rewrite at INFO
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (sample[:2],), str(path), dynamo=True,
                              external_data=False, input_names=["images"],
                              output_names=["logits"], dynamic_shapes=({0: batch},),
                              opset_version=OPSET, verbose=False)
    finally:
        logging.disable(logging.NOTSET)


def _run_onnx(path: Path, x: torch.Tensor) -> np.ndarray:
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("the ONNX check runs the file through onnxruntime, which is missing: "
                        "pip install 'transferlab[export]'") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"images": x.numpy()})[0]


WRITERS = {"torchscript": (_torchscript, _run_torchscript), "onnx": (_onnx, _run_onnx)}


# ------------------------------------------------------------------ the command

def export(study: Study, trained: Trained, fmt: str, out_dir: Path, data_root: Path) -> list[Path]:
    """Write the model and its cards; returns their paths. Raises UserError, leaving nothing
    behind, when the exported file's outputs stray from PyTorch's."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose {' or '.join(FORMATS)}")
    write, run = WRITERS[fmt]
    x = check_images(study, trained, data_root)
    inputs, ref = reference_inputs(trained, x)
    module = build_exportable(trained)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{trained.name}{FORMATS[fmt]}"
    tmp = out_dir / f".{final.name}.{os.getpid()}.tmp"
    try:
        try:
            write(module, inputs, tmp)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001  exporters raise many types
            raise UserError(f"{fmt} export of {trained.name} failed: {type(e).__name__}: "
                            f"{str(e)[:300]}") from None
        check = compare(run(tmp, inputs), ref)
        single = compare(run(tmp, inputs[:1]), ref[:1])  # a batch of one works too
        if not (check.passed() and single.passed()):
            worst = max(check.max_abs_diff, single.max_abs_diff)
            raise UserError(f"the {fmt} export of {trained.name} does not reproduce the PyTorch "
                            f"model: max |logit difference| {worst:.3g} on {check.images} test "
                            f"images, allowed {check.allowed:.3g}; nothing was written")
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    card = model_card(study, trained, fmt, final, check)
    paths = [final, final.with_name(final.name + ".card.json"),
             final.with_name(final.name + ".card.md")]
    _write_text(paths[1], json.dumps(card, indent=1))
    _write_text(paths[2], card_markdown(card))
    return paths


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        v = version("transferlab")
    except PackageNotFoundError:
        v = "unknown"
    return f"{v} (git {git_revision()})"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_card(study: Study, trained: Trained, fmt: str, path: Path, check: Check) -> dict:
    d, r, p = trained.details, trained.result, trained.prep
    return {
        "model": trained.name, "study": study.name, "experiment_id": trained.spec.id,
        "file": path.name, "format": fmt, "sha256": _sha256(path),
        "exported": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "transferlab": _version(), "torch": torch.__version__,
        "classes": trained.classes,
        "input": {"name": "images", "shape": ["N", 3, p.resolution, p.resolution],
                  "dtype": "float32", "range": "[0, 1]", "channels": "RGB",
                  "normalisation": "inside the model", "mean": list(p.mean), "std": list(p.std)},
        "output": {"name": "logits", "shape": ["N", len(trained.classes)],
                   "note": "softmax over dim 1 gives class probabilities"},
        "flip_tta_inside": p.tta,
        "preprocessing_before_the_model": p.steps()[:3],
        "source_model": {"arch": d.get("arch"), "model": d.get("model"),
                         "weights": d.get("weights"), "initialisation": d.get("init")},
        "regime": {"name": d.get("regime"), "description": d.get("regime_description"),
                   "head": d.get("new_head")},
        "optimizer": d.get("optimizer"), "schedule": d.get("schedule"),
        "training": {"epochs": d.get("epochs"), "best_epoch": r.get("best_epoch"),
                     "batch_size": d.get("batch_size"), "augment": d.get("augment"),
                     "label_smoothing": d.get("label_smoothing"), "seed": d.get("seed"),
                     "number_format": d.get("precision")},
        "data": {"description": d.get("data"), "fingerprint": trained.spec.data.fingerprint,
                 "split_sizes": d.get("split_sizes")},
        "accuracy": {"validation": r.get("val_acc"), "test": r.get("test_acc"),
                     "test_without_tta": r.get("test_acc_no_tta"),
                     "note": "measured in the study with its own number format; the export "
                             "runs in float32"},
        "check": {**check.as_dict(), "against": "the PyTorch model in float32, scored as in "
                  "evaluation, on test images of the study",
                  "runtime": "onnxruntime (CPU)" if fmt == "onnx" else "torch.jit (CPU)"},
    }


def card_markdown(c: dict) -> str:
    acc = c["accuracy"]
    pct = lambda v: f"{v:.2%}" if isinstance(v, (int, float)) else "-"  # noqa: E731
    i, chk = c["input"], c["check"]
    opt = c["optimizer"] or {}
    lines = [
        f"# Model card: {c['model']}",
        "",
        f"`{c['file']}` ({c['format']}, sha256 `{c['sha256'][:16]}…`), exported {c['exported']} "
        f"by transferlab {c['transferlab']}, torch {c['torch']}; study `{c['study']}`, "
        f"experiment id `{c['experiment_id']}`.",
        "",
        "## Use",
        f"- Input `{i['name']}`: float32 {i['channels']} images in {i['range']}, shape "
        f"(N, 3, {i['shape'][2]}, {i['shape'][3]}). Normalisation is inside the model "
        f"(mean {i['mean']}, std {i['std']}): do not normalise again.",
        "- Before the model, as in training: " + "; ".join(c["preprocessing_before_the_model"]) + ".",
        f"- Output `{c['output']['name']}`: shape (N, {len(c['classes'])}); "
        f"{c['output']['note']}.",
        f"- Flip TTA inside the model: {'yes' if c['flip_tta_inside'] else 'no'}.",
        f"- Classes (index order): {', '.join(c['classes'])}.",
        "",
        "## How it was made",
        f"- Source model: {c['source_model']['arch']} (weights `{c['source_model']['weights']}`: "
        f"{c['source_model']['initialisation']}).",
        f"- Regime: {c['regime']['name']}: {c['regime']['description']}; head "
        f"{c['regime']['head']}.",
        f"- Optimiser: {opt.get('name', '?')} ("
        + ", ".join(f"{k}={v}" for k, v in opt.items() if k != "name") + ").",
        f"- Training: {c['training']['epochs']} epochs (best on validation: epoch "
        f"{c['training']['best_epoch']}), batch {c['training']['batch_size']}, augmentation "
        f"{c['training']['augment']}, seed {c['training']['seed']}, numerics "
        f"{c['training']['number_format']}.",
        f"- Data: {c['data']['description']} (content key `{c['data']['fingerprint']}`); "
        + ", ".join(f"{k} {v}" for k, v in (c["data"]["split_sizes"] or {}).items()) + ".",
        "",
        "## Accuracy (from the study)",
        f"- Validation {pct(acc['validation'])}, test {pct(acc['test'])} (without TTA "
        f"{pct(acc['test_without_tta'])}); {acc['note']}.",
        "",
        "## Equivalence check (passed before the file was written)",
        f"- {chk['images']} test images through {chk['runtime']} against {chk['against']}: "
        f"max |logit difference| {chk['max_abs_diff']:.2e}, allowed {chk['allowed']:.2e} "
        f"({chk['tolerance']}); top-1 agrees on {chk['top1_agree']} of {chk['images']}.",
    ]
    return "\n".join(lines) + "\n"
