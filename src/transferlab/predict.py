"""Apply a trained model to new images: top-k classes with probabilities.

Inputs are image files, folders (searched recursively) and tar archives. Images are decoded
one batch at a time through the model's recorded input path (`trained.Preprocess`), scored
with the flip TTA of evaluation, and an undecodable file is reported and skipped: a bad image
in a folder of thousands never stops the run.
"""
from __future__ import annotations

import csv
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import fmt
from .data import IMAGE_EXTS, is_hidden
from .errors import UserError
from .trained import Trained
from .util import eval_batch, progress

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


@dataclass
class Item:
    """One input image: a display name, how to read its bytes, its parent folder's name."""
    name: str
    read: Callable[[], bytes]
    folder: str


@dataclass
class Prediction:
    path: str
    label: str | None  # the parent folder's name when it is one of the classes, else None
    top: list[tuple[str, float]]  # (class, probability), most likely first


@dataclass
class Outcome:
    predictions: list[Prediction] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)

    def accuracy(self) -> tuple[int, int]:
        """(correct, labelled) against the folder names that are class names."""
        labelled = [p for p in self.predictions if p.label is not None]
        return sum(p.top[0][0] == p.label for p in labelled), len(labelled)


# ------------------------------------------------------------------ inputs

def _is_tar(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(TAR_SUFFIXES)


def list_inputs(paths: list[Path]) -> list[Item]:
    """Every image under `paths`, in a stable order; a missing path fails before any work.
    Inside folders and archives only image extensions count; a file named on the command
    line is tried whatever its extension."""
    items: list[Item] = []
    for path in paths:
        if not path.exists():
            raise UserError(f"{path} does not exist; pass image files, folders or .tar.gz "
                            "archives of images")
        if path.is_dir():
            files = [p for p in sorted(path.rglob("*")) if p.is_file() and _image_name(p.name)
                     and not is_hidden(p.relative_to(path))]
            items += [Item(str(p), p.read_bytes, p.parent.name) for p in files]
        elif _is_tar(path):
            items += _tar_items(path)
        else:
            items.append(Item(str(path), path.read_bytes, path.parent.name))
    if not items:
        raise UserError(f"no images found in {', '.join(map(str, paths))} (accepted: "
                        f"{', '.join(sorted(IMAGE_EXTS))})")
    return items


def _image_name(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTS


def _tar_items(path: Path) -> list[Item]:
    try:
        tar = tarfile.open(path, "r:*")
        members = [m for m in tar.getmembers() if m.isfile() and _image_name(Path(m.name).name)
                   and not is_hidden(m.name)]
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserError(f"cannot read the archive {path} ({e}); pass a valid tar/.tar.gz or "
                        "a folder") from None
    return [Item(f"{path}:{m.name}", lambda m=m: tar.extractfile(m).read(),
                 Path(m.name).parent.name) for m in members]


# ------------------------------------------------------------------ scoring

class Predictor:
    """The model and its input path, ready to score batches of decoded images."""

    def __init__(self, trained: Trained, device: torch.device):
        self.trained, self.device = trained, device
        self.net = trained.load_net(device)
        self.pipe = trained.prep.pipeline(device)
        self.numerics = trained.numerics(device)

    @torch.inference_mode()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax of the logits for uint8 NHWC images at the decoded side; flip TTA averages
        the logits of both views, exactly as evaluate.on_images scores the test split."""
        net, pipe, tta = self.net, self.pipe, self.trained.prep.tta
        with self.numerics.autocast(self.device):
            out = net(pipe.eval(x)).float()
            if tta:
                out = (out + net(pipe.eval(x, flip=True)).float()) / 2
        return torch.softmax(out.cpu(), dim=1)


def predict(trained: Trained, items: list[Item], device: torch.device, topk: int = 3,
            batch: int | None = None) -> Outcome:
    predictor = Predictor(trained, device)
    classes = trained.classes
    k = max(1, min(topk, len(classes)))
    batch = batch or eval_batch(trained.spec.batch_size, device)
    out, class_set = Outcome(), set(classes)
    with progress((len(items) + batch - 1) // batch, "predict") as bar:
        for i in range(0, len(items), batch):
            kept, arrays = [], []
            for item in items[i:i + batch]:
                try:
                    arrays.append(trained.prep.decode(item.read(), item.name))
                    kept.append(item)
                except Exception as e:  # noqa: BLE001  PIL and IO raise many types
                    out.skipped.append((item.name, f"{type(e).__name__}: {e}"))
            if arrays:
                probs = predictor.probabilities(torch.from_numpy(np.stack(arrays)))
                p, idx = probs.topk(k, dim=1)
                for item, pr, ix in zip(kept, p.tolist(), idx.tolist()):
                    label = item.folder if item.folder in class_set else None
                    out.predictions.append(Prediction(
                        item.name, label, [(classes[j], q) for j, q in zip(ix, pr)]))
            bar.update(1)
    return out


# ------------------------------------------------------------------ output

def format_table(out: Outcome, limit: int = 50) -> str:
    rows = [["image", "prediction", "probability", "next"]]
    for p in out.predictions[:limit]:
        rest = ", ".join(f"{c} {q:.1%}" for c, q in p.top[1:])
        rows.append([p.path, p.top[0][0], f"{p.top[0][1]:.1%}", rest])
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join([*(c.ljust(w) for c, w in zip(r[:3], widths)), r[3]]).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  ----")
    if len(out.predictions) > limit:
        lines.append(f"... and {len(out.predictions) - limit} more (all of them: --csv / --json)")
    return "\n".join(lines)


def write_csv(out: Outcome, path: Path, k: int) -> None:
    head = ["path", "label", "prediction", "probability"]
    for j in range(2, k + 1):
        head += [f"class_{j}", f"probability_{j}"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        for p in out.predictions:
            row = [p.path, p.label or ""]
            for c, q in p.top:
                row += [c, f"{q:.6f}"]
            w.writerow(row)


def write_json(out: Outcome, path: Path, trained: Trained, device: torch.device) -> None:
    correct, labelled = out.accuracy()
    blob = {
        "model": trained.name, "classes": trained.classes, "preprocessing": trained.prep.steps(),
        "number_format": trained.numerics(device).name, "device": str(device),
        "predictions": [{"path": p.path, "label": p.label,
                         "top": [{"class": c, "probability": q} for c, q in p.top]}
                        for p in out.predictions],
        "skipped": [{"path": n, "error": why} for n, why in out.skipped],
        "accuracy_on_labelled": (correct / labelled) if labelled else None,
        "labelled": labelled,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(blob, indent=1))


# ------------------------------------------------------------------ the command

def command(study, name: str | None, paths: list[Path], device: str = "auto", topk: int = 3,
            batch: int | None = None, csv_path: Path | None = None, json_path: Path | None = None,
            show: int = 50) -> int:
    """`transferlab predict`: 0 when at least one image was scored, 1 when none could be."""
    from .trained import load
    from .util import pick_device
    if topk < 1:
        raise UserError(f"--top {topk}: ask for at least one class per image")
    if batch is not None and batch < 1:
        raise UserError(f"--batch {batch}: use a positive number of images per pass")
    items = list_inputs(paths)  # a missing path fails before the model is loaded
    trained = load(study, name)
    dev = pick_device(device)
    why = "named with --model" if name else "best on validation"
    r = trained.result
    print(f"model {trained.name} ({why}; validation {fmt.pct(r.get('val_acc'))}, test "
          f"{fmt.pct(r.get('test_acc'))}), {trained.details.get('arch')}, "
          f"{trained.numerics(dev).name} on {dev}")
    for step in trained.prep.steps():
        print(f"  {step}")
    out = predict(trained, items, dev, topk, batch)
    written = []  # files first: a closed terminal or pipe must not lose them
    if csv_path:
        write_csv(out, csv_path, max(1, min(topk, len(trained.classes))))
        written.append(csv_path)
    if json_path:
        write_json(out, json_path, trained, dev)
        written.append(json_path)
    print(format_table(out, show))
    for path, why in out.skipped:
        print(f"skipped {path}: {why}")
    correct, labelled = out.accuracy()
    print(f"\n{len(out.predictions)} images predicted, {len(out.skipped)} skipped (undecodable)"
          + (f"; accuracy against folder names {correct / labelled:.2%} ({correct}/{labelled})"
             if labelled else ""))
    for path in written:
        print(f"wrote {path}")
    return 0 if out.predictions else 1
