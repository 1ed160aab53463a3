"""Data sources decoded once into uint8 tensors, and the train / val / test splits.

Sources:
    cifar10              the real CIFAR-10, through torchvision's download
    imagefolder:PATH     a folder or .tar.gz with train/<class>/* and test/<class>/* (or val/)
    synthetic[:N]        generated, learnable images for tests (N train images per class)

Whatever the source, images are decoded once into an (N, H, W, 3) uint8 tensor cached on
disk under a content key; later runs and epochs never touch PIL again.
"""
from __future__ import annotations

import hashlib
import io
import logging
import lzma
import math
import os
import tarfile
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import DataSpec
from .errors import UserError
from .util import atomic_save, load_or_set_aside, remove_stale_temps

log = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
TEST_SPLIT_NAMES = ("test", "val")
CACHE_VERSION = 1
AUTO_CACHE_SIDE = 256


@dataclass
class Splits:
    """Tensors of one study's data: uint8 NHWC images and int64 labels per split."""
    classes: list[str]
    x: dict[str, torch.Tensor]
    y: dict[str, torch.Tensor]
    description: str
    skipped: list[str] = field(default_factory=list)  # bad images skipped on decode
    pool: "FoldPool | None" = None  # a cross-validation fold's view: where its images come from

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return int(self.x["train"].shape[1])

    def counts(self) -> dict[str, list[int]]:
        return {s: torch.bincount(y, minlength=self.num_classes).tolist() for s, y in self.y.items()}


@dataclass
class FoldPool:
    """A fold's train and val are drawn from the pool: the holdout split's train images, then
    its val images (so features cached for the holdout split serve every fold)."""
    holdout: DataSpec  # the data spec the pool's two parts were split by
    parts: dict[str, torch.Tensor]  # "train", "val": the holdout split's images
    index: dict[str, torch.Tensor]  # "train", "val": this fold's indices into the pool
    k: int
    fold: int

    @property
    def size(self) -> int:
        return sum(len(p) for p in self.parts.values())


# ------------------------------------------------------------------ source parsing

def parse_source(source: str) -> tuple[str, str]:
    kind, _, arg = source.partition(":")
    if kind not in ("cifar10", "imagefolder", "synthetic"):
        raise UserError(f"unknown data source {source!r}: use cifar10, imagefolder:PATH "
                        "(a folder or .tar.gz with train/ and test/), or synthetic")
    if kind == "imagefolder":
        if not arg:
            raise UserError("imagefolder needs a path: imagefolder:/path/to/folder-or.tar.gz")
        path = Path(arg).expanduser()
        if not path.exists():
            raise UserError(f"data path {path} does not exist; pass an existing folder or .tar.gz "
                            "holding train/<class>/ and test/<class>/ (e.g. "
                            "--data imagefolder:../shared/data/cifar10-jpeg.tar.gz)")
        arg = str(path.resolve())
    return kind, arg


def fingerprint(source: str) -> str:
    """A cheap content key: it changes when the data changes, not when it is moved.

    An archive is hashed whole. A folder is keyed by each file's relative name, size and
    modification time (ns): reading every byte of a large photo folder on each run would cost
    minutes, and an edit that keeps the size still moves the mtime (`mv` keeps it; a copy that
    does not preserve times gets a new key, which recomputes but never reuses stale data)."""
    kind, arg = parse_source(source)
    if kind == "cifar10":
        return "cifar10-torchvision"
    if kind == "synthetic":
        return f"synthetic-{arg or 'default'}"
    path = Path(arg)
    h = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    else:
        for p in sorted(path.rglob("*")):  # hidden files (.DS_Store, ...) are no data
            if p.is_file() and not is_hidden(p.relative_to(path)):
                st = p.stat()
                h.update(f"{p.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return f"folder-{h.hexdigest()[:16]}"


# ------------------------------------------------------------------ decoding

def decode_image(raw: bytes, name: str) -> np.ndarray:
    """Any mode (L, RGBA, P, I;16, CMYK) to an HWC uint8 RGB array."""
    from PIL import Image
    with Image.open(io.BytesIO(raw)) as img:
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float64)
            peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
            gray = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
            return np.repeat(gray[..., None], 3, axis=2)
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        if img.mode in ("RGBA", "LA"):
            rgba = img.convert("RGBA")
            canvas = Image.new("RGB", rgba.size, (255, 255, 255))
            canvas.paste(rgba, mask=rgba.split()[3])
            return np.asarray(canvas)
        return np.asarray(img.convert("RGB"))


def _square_resize(arr: np.ndarray, size: int) -> np.ndarray:
    """Shorter side to `size`, then a centre crop: one fixed size for the tensor cache."""
    from PIL import Image
    h, w = arr.shape[:2]
    if (h, w) == (size, size):
        return arr
    img = Image.fromarray(arr)
    scale = size / min(h, w)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


HIDDEN_NAMES = {"__MACOSX"}  # what macOS's archiver adds beside dot-files


def is_hidden(rel) -> bool:
    """A hidden file or folder anywhere on a relative path: `.ipynb_checkpoints/` (Jupyter),
    `.DS_Store`, `._x.jpg`, `__MACOSX/`. Never a class, never an image."""
    return any((p.startswith(".") and p not in (".", "..")) or p in HIDDEN_NAMES
               for p in Path(rel).parts)


_ARCHIVE_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)


def _open_archive(path: Path):
    """(the open tar, its members), or a clear error for a file that is no readable archive."""
    try:
        tar = tarfile.open(path, "r:*")
        return tar, tar.getmembers()  # reads every header: a truncated archive fails here
    except _ARCHIVE_ERRORS as e:
        raise UserError(f"{path} is not a readable tar archive ({type(e).__name__}: {e}); pass a "
                        "folder, or a .tar / .tar.gz holding train/<class>/ and test/<class>/ "
                        "(re-create it if it was cut short)") from None


class _FolderReader:
    """Lists and reads train/test image files from a folder or a tar archive; hidden files and
    folders are left out (and counted in `hidden`)."""

    def __init__(self, path: Path):
        self.path = path
        self.tar, tar_members = _open_archive(path) if path.is_file() else (None, [])
        if self.tar is None and not path.is_dir():
            raise UserError(f"{path} is neither a folder nor a tar archive")
        self.hidden: set[str] = set()  # the hidden names met, for one line in the log
        self.members = self._list(tar_members)

    def _visible(self, rel: str) -> bool:
        if is_hidden(rel):
            self.hidden.update(p for p in Path(rel).parts if is_hidden(p))
            return False
        return True

    def _list(self, tar_members) -> dict[str, dict[str, list]]:
        entries: dict[str, dict[str, list]] = {}
        names = ([m for m in tar_members if m.isfile()] if self.tar
                 else [p for p in sorted(self.path.rglob("*")) if p.is_file()])
        for item in names:
            rel = item.name if self.tar else str(item.relative_to(self.path))
            if not self._visible(rel):
                continue
            parts = [p for p in Path(rel).parts if p not in (".",)]
            # accept an optional single top folder: top/train/<class>/file
            if len(parts) == 4 and parts[1] in ("train", *TEST_SPLIT_NAMES):
                parts = parts[1:]
            if len(parts) != 3 or parts[0] not in ("train", *TEST_SPLIT_NAMES):
                continue
            split, cls, fname = parts
            if Path(fname).suffix.lower() not in IMAGE_EXTS:
                continue  # non-image files are ignored
            entries.setdefault(split, {}).setdefault(cls, []).append(item)
        # class folders with no image files at all still count, to report them as empty
        if self.tar is None:
            for split in ("train", *TEST_SPLIT_NAMES):
                d = self.path / split
                if d.is_dir():
                    for c in d.iterdir():
                        if c.is_dir() and self._visible(str(c.relative_to(self.path))):
                            entries.setdefault(split, {}).setdefault(c.name, [])
        else:
            for m in tar_members:
                parts = Path(m.name).parts
                if m.isdir() and len(parts) >= 2 and parts[-2] in ("train", *TEST_SPLIT_NAMES) \
                        and self._visible(m.name):
                    entries.setdefault(parts[-2], {}).setdefault(parts[-1], [])
        return entries

    def read(self, item) -> bytes:
        if self.tar:
            try:
                return self.tar.extractfile(item).read()
            except _ARCHIVE_ERRORS as e:
                raise UserError(f"{self.path}: cannot read {item.name} from the archive "
                                f"({type(e).__name__}: {e}); re-create the archive") from None
        return Path(item).read_bytes()

    def name(self, item) -> str:
        return item.name if self.tar else str(item)


def _check_layout(path: Path, entries: dict) -> tuple[str, list[str]]:
    test_name = next((s for s in TEST_SPLIT_NAMES if s in entries), None)
    if "train" not in entries or test_name is None:
        found = ", ".join(sorted(entries)) or "nothing usable"
        raise UserError(f"{path}: expected train/<class>/<image> and test/<class>/<image> "
                        f"(or val/), found {found}. Arrange the images in that layout.")
    train_classes, test_classes = sorted(entries["train"]), sorted(entries[test_name])
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise UserError(f"{path}: train and {test_name} class folders differ (only in train: "
                        f"{only_train or '-'}; only in {test_name}: {only_test or '-'}); "
                        "both splits need the same class folders")
    if len(train_classes) < 2:
        raise UserError(f"{path}: found {len(train_classes)} class folder "
                        f"({', '.join(train_classes) or 'none'}) in train/ and {test_name}/; a "
                        "classifier needs at least two classes, one folder per class "
                        "(train/<class>/<image>)")
    for split in ("train", test_name):
        for cls in train_classes:
            if not entries[split][cls]:
                raise UserError(f"{path}: class folder {split}/{cls} holds no images "
                                f"(accepted: {', '.join(sorted(IMAGE_EXTS))}); add images or "
                                "remove the folder from both splits")
    return test_name, train_classes


def _decode_folder(path: Path, cache_size: int, skip_bad: bool):
    """Decode a folder or archive split by split, each image shrunk to the cache side as it is
    decoded: peak memory is the cache's size, whatever the photos' resolution."""
    reader = _FolderReader(path)
    if reader.hidden:
        log.info("ignoring hidden files and folders in %s: %s", path,
                 ", ".join(sorted(reader.hidden)))
    test_name, classes = _check_layout(path, reader.members)
    splits, skipped = {}, []
    for split, out_name in (("train", "train"), (test_name, "test")):
        items = [(label, item) for label, cls in enumerate(classes)
                 for item in reader.members[split][cls]]
        splits[out_name] = _SplitImages(len(items), cache_size)
        for label, name, result in _decode_stream(reader, items, cache_size):
            if isinstance(result, Exception):  # PIL raises many types for broken files
                if not skip_bad:
                    raise UserError(f"cannot decode image {name}: {result}. Replace or delete it, "
                                    "or pass --skip-bad-images to skip such files")
                skipped.append(name)
                continue
            splits[out_name].add(*result, label)
    for split, images in splits.items():
        if not images.count:
            raise UserError(f"{path}: no decodable images in {split}")
    side = _cache_side(set().union(*(i.sizes for i in splits.values())), cache_size)
    return classes, {k: v.tensors(side) for k, v in splits.items()}, skipped


def decode_workers() -> int:
    """Threads decoding images at once (PIL releases the GIL while it decodes and resizes)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def _decode_stream(reader: "_FolderReader", items: list, cache_size: int):
    """(label, name, (array, native (h, w)) or the exception) per item, in order. The reader
    reads in this thread (a tar file is not thread-safe); a few threads decode, with only
    2 x threads files read ahead, so neither raw files nor full-size images pile up."""
    workers = decode_workers()
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for label, item in items:
            name = reader.name(item)
            try:
                job = pool.submit(_decode_for_cache, reader.read(item), name, cache_size)
            except UserError:
                raise
            except Exception as e:  # noqa: BLE001  an unreadable file is a bad image too
                job = _failed(e)
            pending.append((label, name, job))
            if len(pending) >= 2 * workers:
                yield _finished(*pending.popleft())
        while pending:
            yield _finished(*pending.popleft())


def _failed(e: Exception):
    from concurrent.futures import Future
    job = Future()
    job.set_exception(e)
    return job


def _finished(label, name, job):
    try:
        return label, name, job.result()
    except Exception as e:  # noqa: BLE001  reported (or skipped) by the caller
        return label, name, e


def _decode_for_cache(raw: bytes, name: str, cache_size: int) -> tuple[np.ndarray, tuple]:
    """(the image, its native (h, w)): at least `cache_size` on its shorter side, it is resized to
    the cache side at once; a smaller one stays native until the study's side is known."""
    arr = decode_image(raw, name)
    hw = arr.shape[:2]
    return (_square_resize(arr, cache_size) if min(hw) >= cache_size else arr), hw


class _SplitImages:
    """One split's decoded images in file order. Those already at the cache side go straight
    into one preallocated uint8 tensor (pages are touched only as rows are written); smaller
    ones wait, native, for the final side (`_cache_side` needs every image's size)."""

    def __init__(self, n: int, cache_size: int):
        self.n, self.cache_size = n, cache_size
        self.big: torch.Tensor | None = None
        self.small: dict[int, np.ndarray] = {}
        self.labels: list[int] = []
        self.sizes: set = set()

    @property
    def count(self) -> int:
        return len(self.labels)

    def add(self, arr: np.ndarray, native_hw: tuple, label: int) -> None:
        i = self.count
        if min(native_hw) >= self.cache_size:
            if self.big is None:
                self.big = torch.empty((self.n, self.cache_size, self.cache_size, 3),
                                       dtype=torch.uint8)
            self.big[i].numpy()[:] = arr
        else:
            self.small[i] = arr
        self.labels.append(label)
        self.sizes.add(tuple(native_hw))

    def tensors(self, side: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 NHWC images at `side`, int64 labels)."""
        fit = lambda a: a if a.shape[:2] == (side, side) else _square_resize(a, side)  # noqa: E731
        if self.big is None:
            x = torch.from_numpy(np.stack([fit(self.small[i]) for i in range(self.count)]))
        else:  # some image was at least the cache side on its shorter side: side is that
            assert side == self.cache_size, (side, self.cache_size)
            for i, a in self.small.items():
                self.big[i].numpy()[:] = fit(a)
            x = self.big if self.count == self.n else self.big[:self.count].clone()
        self.small, self.big = {}, None
        return x, torch.tensor(self.labels, dtype=torch.int64)


def _cache_side(sizes: set, cache_size: int) -> int:
    """Uniform square images no larger than the cache side keep their native pixels;
    others are resized to the cache side (never above the largest image's shorter side)."""
    if len(sizes) == 1:
        (h, w), = sizes
        if h == w and h <= cache_size:
            return h
    return min(cache_size, max(min(s) for s in sizes))


def _load_cifar10(root: Path):
    from torchvision.datasets import CIFAR10
    out, classes = {}, _CIFAR_CLASSES
    try:
        for split, train in (("train", True), ("test", False)):
            ds = CIFAR10(root=str(root / "cifar10"), train=train, download=True)
            out[split] = (torch.from_numpy(ds.data), torch.tensor(ds.targets, dtype=torch.int64))
            classes = list(ds.classes)
    except Exception as e:  # URLError, socket errors, HTTP errors
        raise UserError(f"could not download CIFAR-10 into {root / 'cifar10'} ({e}). Without a "
                        "network, use a local copy: --data imagefolder:PATH (a folder or .tar.gz "
                        "with train/<class>/ and test/<class>/), e.g. "
                        "--data imagefolder:../shared/data/cifar10-jpeg.tar.gz, or place "
                        "cifar-10-python.tar.gz in that folder.") from None
    return classes, out, []


_CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                  "ship", "truck"]


def synthetic(per_class: int = 60, test_per_class: int = 20, num_classes: int = 4,
              size: int = 32, seed: int = 0):
    """Learnable images: each class a colour and an oriented stripe pattern, plus noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    out = {}
    for split, n in (("train", per_class), ("test", test_per_class)):
        imgs, labels = [], []
        for c in range(num_classes):
            angle = math.pi * c / num_classes
            stripes = torch.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 0.8)
            colour = torch.tensor([(c * 67) % 256, (c * 131 + 60) % 256, (c * 29 + 120) % 256])
            base = colour.view(1, 1, 3) * 0.6 + 60 * stripes[..., None]
            noise = torch.randn(n, size, size, 3, generator=g) * 40
            imgs.append((base + noise).clamp(0, 255).to(torch.uint8))
            labels.append(torch.full((n,), c, dtype=torch.int64))
        out[split] = (torch.cat(imgs), torch.cat(labels))
    return [f"class{c}" for c in range(num_classes)], out, []


# ------------------------------------------------------------------ cache and splits

def decoded(spec: DataSpec, root: Path, skip_bad: bool = False, max_resolution: int = 0):
    """Decode a source once; return (classes, {split: (x uint8 NHWC, y)}, skipped)."""
    kind, arg = parse_source(spec.source)
    if kind == "synthetic":
        return synthetic(per_class=int(arg) if arg else 60)
    key = spec.fingerprint or fingerprint(spec.source)
    # large or mixed-size photos are resized once to a side that serves the largest input
    cache_size = spec.cache_size or max(AUTO_CACHE_SIDE, max_resolution)
    cache = root / "cache" / f"{key}-{cache_size}-v{CACHE_VERSION}.pt"
    remove_stale_temps(cache.parent)  # what a killed decode left behind
    blob = load_or_set_aside(cache, log.warning) if cache.exists() else None
    if blob is not None:
        return blob["classes"], blob["splits"], blob["skipped"]
    log.info("decoding %s once into %s", spec.source, cache)
    if kind == "cifar10":
        classes, splits, skipped = _load_cifar10(root)
    else:
        classes, splits, skipped = _decode_folder(Path(arg), cache_size, skip_bad)
    try:
        atomic_save({"classes": classes, "splits": splits, "skipped": skipped}, cache)
    except OSError as e:  # an unwritable data root costs a decode per run, not the run
        log.warning("cannot write the decoded-data cache %s (%s: %s); the data is decoded "
                    "again next run. Pass --data-root DIR (or set TRANSFERLAB_DATA) to a "
                    "writable folder", cache, type(e).__name__, e)
    return classes, splits, skipped


def _stratified_take(y: torch.Tensor, per_class: dict[int, int], seed: int) -> torch.Tensor:
    """Deterministic: the first k of a seeded permutation within each class."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    picked = []
    for c, k in per_class.items():
        idx = perm[y[perm] == c]
        picked.append(idx[:k])
    return torch.sort(torch.cat(picked)).values if picked else torch.empty(0, dtype=torch.long)


def stratified_sample(y: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Sorted indices of about `n` items, each class in proportion to its count, drawn with a
    seeded permutation (image folders list their files class by class: a prefix is not a
    sample)."""
    if n >= len(y):
        return torch.arange(len(y))
    counts = torch.bincount(y)
    take = {c: max(1, round(n * int(k) / len(y))) for c, k in enumerate(counts) if k}
    return _stratified_take(y, take, seed)


def make_splits(spec: DataSpec, root: Path, skip_bad: bool = False,
                max_resolution: int = 0) -> Splits:
    if spec.folds:
        return fold_splits(spec, root, skip_bad, max_resolution)
    classes, splits, skipped = decoded(spec, root, skip_bad, max_resolution)
    (xtr, ytr), (xte, yte) = splits["train"], splits["test"]
    ncls = len(classes)
    train_counts = torch.bincount(ytr, minlength=ncls)
    test_counts = torch.bincount(yte, minlength=ncls)
    if spec.subset:
        take = {c: min(spec.subset, int(train_counts[c])) for c in range(ncls)}
        idx = _stratified_take(ytr, take, seed=0)
        xtr, ytr = xtr[idx], ytr[idx]
        share = {c: min(int(test_counts[c]), max(1, math.ceil(
            take[c] * int(test_counts[c]) / max(1, int(train_counts[c]))))) for c in range(ncls)}
        idx = _stratified_take(yte, share, seed=1)
        xte, yte = xte[idx], yte[idx]
    counts = torch.bincount(ytr, minlength=ncls)
    n_val = {c: (max(1, round(spec.val_fraction * int(counts[c]))) if spec.val_fraction else 0)
             for c in range(ncls)}
    starved = [f"{classes[c]} ({int(counts[c])} image{'s' if int(counts[c]) != 1 else ''})"
               for c in range(ncls) if spec.val_fraction and n_val[c] >= int(counts[c])]
    if starved:
        raise UserError(f"val_fraction {spec.val_fraction} leaves no training images in class "
                        f"{', '.join(starved)}; use more images (--subset) or a smaller "
                        "val_fraction")
    val_idx = _stratified_take(ytr, n_val, seed=2)
    mask = torch.ones(len(ytr), dtype=torch.bool)
    mask[val_idx] = False
    x = {"train": xtr[mask], "val": xtr[val_idx], "test": xte}
    y = {"train": ytr[mask], "val": ytr[val_idx], "test": yte}
    desc = describe_source(spec)
    if skipped:
        log.warning("skipped %d images that could not be decoded", len(skipped))
    return Splits(classes, x, y, desc, skipped)


def fold_splits(spec: DataSpec, root: Path, skip_bad: bool = False,
                max_resolution: int = 0) -> Splits:
    """Fold `spec.fold` of `spec.folds` over train + val: the held-out fold is the validation
    split, the other folds train; the test split is the holdout split's, untouched."""
    from .folds import fold_split
    holdout = dataclasses.replace(spec, folds=0, fold=-1)
    base = make_splits(holdout, root, skip_bad, max_resolution)
    pool_x = torch.cat([base.x["train"], base.x["val"]])
    pool_y = torch.cat([base.y["train"], base.y["val"]])
    train_idx, val_idx = fold_split(pool_y, spec.folds, spec.fold)
    x = {"train": pool_x[train_idx], "val": pool_x[val_idx], "test": base.x["test"]}
    y = {"train": pool_y[train_idx], "val": pool_y[val_idx], "test": base.y["test"]}
    pool = FoldPool(holdout, {"train": base.x["train"], "val": base.x["val"]},
                    {"train": train_idx, "val": val_idx}, spec.folds, spec.fold)
    return Splits(base.classes, x, y, describe_source(spec), base.skipped, pool)


_WORDS = {  # the data in words: English for the CLI and the store, Russian for the report
    "en": {"cifar10": "CIFAR-10 (original, torchvision download)",
           "synthetic": "synthetic test images", "folder": "image folder {}",
           "jpeg": "CIFAR-10, JPEG q75 re-encoded copy ({})", "subset": ", subset {}/class",
           "val": ", val {:.0%} of train", "fold": "; fold {} of {} of train + val held out"},
    "ru": {"cifar10": "CIFAR-10 (оригинал, загрузка torchvision)",
           "synthetic": "синтетические тестовые изображения", "folder": "папка изображений {}",
           "jpeg": "CIFAR-10, копия, перекодированная в JPEG q75 ({})",
           "subset": ", подвыборка {} на класс", "val": ", валидация — {:.0%} обучающей",
           "fold": "; валидация — фолд {} из {} (train + val)"},
}


def describe_source(spec: DataSpec, lang: str = "en") -> str:
    """The data in words, its path as the user gave it (the report is theirs to read)."""
    w = _WORDS[lang]
    kind, _ = parse_source(spec.source)  # validates; its resolved path is for reading only
    arg = spec.source.partition(":")[2]
    what = w["jpeg" if kind == "imagefolder" and "cifar10-jpeg" in arg else
             "folder" if kind == "imagefolder" else kind].format(arg)
    sub = w["subset"].format(spec.subset) if spec.subset else ""
    fold = w["fold"].format(spec.fold + 1, spec.folds) if spec.folds else ""
    return f"{what}{sub}{w['val'].format(spec.val_fraction)}{fold}"



