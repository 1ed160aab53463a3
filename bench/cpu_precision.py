"""fp32 vs bf16 autocast on this CPU: EfficientNet-Lite0 inference images/s, side by side.

Rounds alternate between the settings so that load from other users hits all of them alike;
the median round is reported with the load average.

    .venv/bin/python bench/cpu_precision.py --resolution 64 --rounds 3
"""
from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=4, help="timed batches per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import torch
    from transferlab.models import _timm_backbone
    from transferlab.util import cpu_has_fast_bf16, cpu_name
    torch.set_num_threads(a.threads)
    net, _ = _timm_backbone("efficientnet_lite0", "imagenet")
    net.eval()
    x = torch.randn(a.batch, 3, a.resolution, a.resolution)
    settings = {
        "fp32 contiguous": (torch.contiguous_format, None),
        "fp32 channels_last": (torch.channels_last, None),
        "bf16 autocast channels_last": (torch.channels_last, torch.bfloat16),
    }
    speeds = {k: [] for k in settings}
    for _ in range(a.rounds):
        for name, (fmt, dtype) in settings.items():
            m = net.to(memory_format=fmt)
            xi = x.contiguous(memory_format=fmt)
            ctx = (lambda: torch.autocast("cpu", dtype=dtype)) if dtype else nullcontext
            with torch.inference_mode(), ctx():
                m(xi)  # warm-up
                t0 = time.perf_counter()
                for _ in range(a.batches):
                    m(xi)
                dt = time.perf_counter() - t0
            speeds[name].append(a.batches * a.batch / dt)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"{cpu_name()}, {a.threads} threads, torch {torch.__version__}, native bf16: "
          f"{cpu_has_fast_bf16()}, load after {load}")
    print(f"Lite0 inference {a.resolution}px batch {a.batch}, median of {a.rounds} rounds")
    base = statistics.median(speeds["fp32 channels_last"])
    for name, s in speeds.items():
        med = statistics.median(s)
        print(f"  {name:<30} {med:8.1f} img/s  ({med / base:.2f}x fp32 channels_last; "
              f"rounds {', '.join(f'{v:.0f}' for v in s)})")


if __name__ == "__main__":
    main()
