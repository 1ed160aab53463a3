"""Peak memory of decoding a folder of large photos into the uint8 cache.

    python bench/photo_memory.py make DIR [--n 150]   # 4000 x 3000 JPEGs, train/ and test/
    /usr/bin/time -v python bench/photo_memory.py decode DIR   # "Maximum resident set size"

The photos are smooth colour fields with noise and a few shapes (so they compress like photos,
a few MB each); 80 % go to train/, 20 % to test/, in two classes.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def make(root: Path, n: int, width: int = 4000, height: int = 3000) -> None:
    from PIL import Image
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(n):
        split = "test" if i % 5 == 4 else "train"
        cls = ("sea", "forest")[i % 2]
        path = root / split / cls / f"photo{i:04d}.jpg"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        a, b = rng.uniform(0.2, 1.0, 2)
        base = np.stack([128 + 100 * np.sin(xx / (300 * a) + c) * np.cos(yy / (400 * b) - c)
                         for c in (0.0, 1.0, 2.0)], axis=2)
        base += rng.normal(0, 12, (height, width, 1))
        Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(path, quality=90)
        print(f"{path} ({path.stat().st_size / 1e6:.1f} MB)", flush=True)


def decode(root: Path) -> None:
    from transferlab.config import DataSpec
    from transferlab.data import decoded
    spec = DataSpec(source=f"imagefolder:{root}", fingerprint="photo-memory-bench")
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        classes, splits, _ = decoded(spec, Path(cache))
        seconds = time.perf_counter() - t0
    sizes = {k: tuple(x.shape) for k, (x, _) in splits.items()}
    print(f"classes {classes}, cache tensors {sizes}, {seconds:.1f} s")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("make", "decode"))
    ap.add_argument("dir", type=Path)
    ap.add_argument("--n", type=int, default=150)
    args = ap.parse_args()
    make(args.dir, args.n) if args.what == "make" else decode(args.dir)
