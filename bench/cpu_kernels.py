"""The two CPU fast paths of transferlab against plain PyTorch, side by side in one run.

  1. depthwise weight gradient: oneDNN (torch.ops.aten.convolution_backward) vs
     transferlab.fit.kernels.depthwise_weight_grad, per layer shape of EfficientNet-Lite at 64 px;
  2. one fp32 channels_last training step of a whole model (forward, backward, SGD), with
     PyTorch's depthwise convolutions vs transferlab.fit.kernels.use_fast_depthwise;
  3. frozen-backbone feature extraction: eager vs transferlab's frozen TorchScript trace.

Rounds alternate the two sides of each comparison; the table gives the median.

    PYTHONPATH=src .venv/bin/python bench/cpu_kernels.py --model efficientnet_lite0 --resolution 64
    PYTHONPATH=src .venv/bin/python bench/cpu_kernels.py --quick      # smoke size (seconds)
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from transferlab.fit import kernels  # noqa: E402
from transferlab.models import _timm_backbone  # noqa: E402

# (channels, kernel, stride, input side): depthwise layers of Lite0 at 64 px
LITE_SHAPES = [(32, 3, 1, 32), (96, 3, 2, 32), (144, 5, 2, 16), (240, 5, 1, 8), (480, 3, 1, 4),
               (480, 5, 1, 4), (672, 5, 1, 4), (672, 5, 2, 4), (1152, 5, 1, 2), (1152, 3, 1, 2)]


def timed(fn, reps: int) -> float:
    """Seconds per call, after one warm-up call."""
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def median_pair(a, b, rounds: int) -> tuple[float, float]:
    ra, rb = [], []
    for _ in range(rounds):
        ra.append(a())
        rb.append(b())
    return statistics.median(ra), statistics.median(rb)


def part_depthwise(batch: int, rounds: int) -> None:
    print(f"1. depthwise weight gradient, batch {batch}, channels_last (ms per call, median)")
    print(f"{'C':>5} {'k':>2} {'s':>2} {'map':>4} {'slow case':>9} {'PyTorch':>8} {'direct':>8} {'speedup':>8}")
    for c, k, s, side in LITE_SHAPES:
        x = torch.randn(batch, c, side, side).to(memory_format=torch.channels_last)
        w = torch.randn(c, 1, k, k)
        go = torch.randn_like(F.conv2d(x, w, None, s, k // 2, 1, c))
        conv = nn.Conv2d(c, c, k, s, k // 2, groups=c, bias=False)
        native = lambda: torch.ops.aten.convolution_backward(  # noqa: E731
            go, x, w, None, [s, s], [k // 2] * 2, [1, 1], False, [0, 0], c, [False, True, False])
        direct = lambda: kernels.depthwise_weight_grad(x, go, (k, k), (s, s), (k // 2,) * 2)  # noqa: E731
        a, b = median_pair(lambda: timed(native, 5), lambda: timed(direct, 5), rounds)
        print(f"{c:>5} {k:>2} {s:>2} {side:>4} {str(kernels.slow_in_onednn(x, conv)):>9} "
              f"{a * 1e3:>8.2f} {b * 1e3:>8.2f} {a / b:>7.2f}x")


def part_train_step(model: str, res: int, batch: int, rounds: int) -> None:
    bb, info = _timm_backbone(model, "imagenet")
    plain = nn.Sequential(bb, nn.Linear(info.num_features, 10)).to(memory_format=torch.channels_last)
    fast = copy.deepcopy(plain)
    n = kernels.use_fast_depthwise(fast)
    x = torch.randn(batch, 3, res, res).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def stepper(net):
        opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)
        net.train()

        def step():
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step
    a, b = median_pair(lambda: timed(stepper(plain), 8), lambda: timed(stepper(fast), 8), rounds)
    print(f"\n2. training step, {model} {res}px batch {batch}, fp32 channels_last "
          f"({n} depthwise convs switched)")
    print(f"   PyTorch depthwise   {batch / a:7.1f} img/s\n   transferlab kernels {batch / b:7.1f} "
          f"img/s   ({a / b:.2f}x)")


def part_extract(model: str, res: int, batch: int, rounds: int) -> None:
    bb, _ = _timm_backbone(model, "imagenet")
    bb = bb.eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, res, res).to(memory_format=torch.channels_last)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        frozen = torch.jit.freeze(torch.jit.trace(bb, x[:2], check_trace=False))
        trace_s = time.perf_counter() - t
        frozen(x), frozen(x)  # TorchScript's profiling executor specialises on the first calls
        a, b = median_pair(lambda: timed(lambda: bb(x), 6), lambda: timed(lambda: frozen(x), 6),
                           rounds)
        diff = float((frozen(x) - bb(x)).abs().max() / bb(x).abs().max())
    print(f"\n3. feature extraction, {model} {res}px batch {batch}, fp32 channels_last, "
          "inference_mode")
    print(f"   eager                {batch / a:7.1f} img/s\n   frozen trace         {batch / b:7.1f} "
          f"img/s   ({a / b:.2f}x; trace + freeze {trace_s:.2f}s once; max rel diff {diff:.1e})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32, help="training batch (extraction uses 2x)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="smoke size for CI: batch 4, 32 px, 1 round")
    a = ap.parse_args(argv)
    if a.quick:
        a.batch, a.resolution, a.rounds = 4, 32, 1
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} threads, load "
          f"{Path('/proc/loadavg').read_text().split()[:3]}\n")
    part_depthwise(a.batch, a.rounds)
    part_train_step(a.model, a.resolution, a.batch, a.rounds)
    part_extract(a.model, a.resolution, 2 * a.batch, a.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
