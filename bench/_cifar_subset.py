"""Extract a small, deterministic ImageFolder copy of the shared CIFAR-10 JPEG archive.

The archive is sorted by name, so "the first N files of each class folder" is stable across
machines. Used by the benchmarks in this folder; not part of the transferlab package.
"""
from __future__ import annotations

import tarfile
from pathlib import Path

SHARED_ARCHIVE = Path("/work/shared/data/cifar10-jpeg.tar.gz")


def find_archive(explicit: str | None = None) -> Path:
    """The shared archive, or a clear error naming where it was looked for."""
    candidates = [Path(explicit)] if explicit else []
    here = Path(__file__).resolve().parent
    candidates += [SHARED_ARCHIVE, here.parent.parent / "shared/data/cifar10-jpeg.tar.gz",
                   here.parent / "shared/data/cifar10-jpeg.tar.gz"]
    for c in candidates:
        if c.is_file():
            return c
    raise SystemExit("cifar10-jpeg.tar.gz not found; looked in: "
                     + ", ".join(str(c) for c in candidates) + " (pass --archive PATH)")


def extract_subset(archive: Path, dest: Path, train_per_class: int, test_per_class: int) -> dict:
    """Write dest/train/<class>/*.jpg and dest/test/<class>/*.jpg; return counts per split."""
    want = {"train": train_per_class, "test": test_per_class}
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:  # streaming: one pass over the gzip stream
            if not member.isfile():
                continue
            parts = Path(member.name).parts
            if len(parts) != 3 or parts[0] not in want:
                continue
            split, cls, fname = parts
            key = (split, cls)
            if taken.get(key, 0) >= want[split]:
                continue
            out = dest / split / cls / fname
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(tar.extractfile(member).read())
            taken[key] = taken.get(key, 0) + 1
    counts = {s: sum(v for (sp, _), v in taken.items() if sp == s) for s in want}
    if any(counts[s] == 0 for s in want):
        raise SystemExit(f"{archive}: no images extracted for some split ({counts}); "
                         "expected train/<class>/ and test/<class>/")
    return counts
