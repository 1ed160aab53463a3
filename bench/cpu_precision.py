"""Every way transferlab can run a model on this CPU, side by side: training steps and
inference (feature extraction), fp32 / fp32 fast paths / bf16 autocast, images per second.

These are the candidates `precision = "auto"` chooses between (hardware.decide), timed by the
same function (hardware.measure) on the real ImageNet weights. Rounds alternate between the
settings so that load from other users hits all of them alike; the median round is reported.

    PYTHONPATH=src .venv/bin/python bench/cpu_precision.py --resolution 64 --rounds 3
    PYTHONPATH=src .venv/bin/python bench/cpu_precision.py --quick    # smoke size (seconds)
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per round (fastest kept)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--weights", default="imagenet", help="imagenet | none")
    ap.add_argument("--quick", action="store_true", help="smoke size: batch 4, 32 px, 1 round")
    a = ap.parse_args(argv)
    if a.quick:
        a.batch, a.resolution, a.rounds, a.steps = 4, 32, 1, 1
    import torch
    from transferlab.fit import hardware
    from transferlab.models import _timm_backbone
    from transferlab.util import cpu_name
    torch.set_num_threads(a.threads)
    backbone, _ = _timm_backbone(a.model, a.weights)
    net = torch.nn.Sequential(backbone, torch.nn.LazyLinear(10))
    net(torch.randn(2, 3, a.resolution, a.resolution))  # materialise the head
    net = net.to(memory_format=torch.channels_last)
    plans = {"train": [hardware.FP32, hardware.FAST["train"], hardware.BF16],
             "extract": [hardware.FP32, hardware.FAST["extract"], hardware.BF16]}
    print(f"{cpu_name()}, {a.threads} threads, torch {torch.__version__}, native bf16: "
          f"{hardware.native_bf16_cpu()}")
    print(f"{a.model} ({a.weights}) {a.resolution}px batch {a.batch} channels_last, "
          f"median of {a.rounds} rounds (each the fastest of {a.steps} steps)\n")
    print(f"| {'kind':<8} | {'way of running':<26} | {'img/s':>7} | vs fp32 | rounds")
    print(f"|{'-' * 10}|{'-' * 28}|{'-' * 9}|---------|-------")
    for kind, cands in plans.items():
        module = net if kind == "train" else backbone.to(memory_format=torch.channels_last)
        rounds: dict[str, list[float]] = {c.name: [] for c in cands}
        for _ in range(a.rounds):
            for name, v in hardware.measure(module, kind, cands, a.batch, a.resolution, True,
                                            steps=a.steps).items():
                rounds[name].append(v)
        base = statistics.median(rounds[hardware.FP32.name])
        for name, vals in rounds.items():
            if not vals:
                print(f"| {kind:<8} | {name:<26} | {'n/a':>7} |         | (does not apply)")
                continue
            med = statistics.median(vals)
            print(f"| {kind:<8} | {name:<26} | {med:7.1f} | {med / base:6.2f}x | "
                  + ", ".join(f"{v:.0f}" for v in vals))
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"\nload average after: {load}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
