"""How a model runs on the machine at hand: precision and CPU fast paths, chosen by measurement.

Machines differ more than flags suggest. On an AVX2-only EPYC bf16 autocast runs ~18x slower
than fp32; on a Zen 4 EPYC with avx512_bf16 it infers 2.4x faster but trains 2x slower, and
the direct depthwise kernel that gains 1.5x on the first gains nothing on the second. So on a
CPU, `precision = "auto"` times a few steps of the actual model, at the actual resolution and
batch, in each candidate way of running it, separately for training, feature extraction and
evaluation, and keeps the fastest; a way other than plain fp32 must win clearly (by
CLEAR_WIN), so near-equal ways do not swap from one fresh measurement to the next. Decisions are
cached per CPU model, torch version, thread count, model, resolution, batch and kind, so a study
measures each case once per machine.

On CUDA the choice follows the hardware: bf16 where the GPU has it natively (compute
capability 8.0 and newer), otherwise fp16 with dynamic loss scaling (a T4 emulates bf16).

An explicit "fp32", "bf16" or "fp16" fixes the number format; fp32's fast paths (the frozen
trace, the depthwise kernel) compute the same numbers by another route, so they are still
measured. The experiment id holds the setting as written; the store records what ran.
"""
from __future__ import annotations

import copy
import datetime
import json
import logging
import os
import time
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from ..util import cpu_name, default_data_root, train_mode_except_frozen

KINDS = ("train", "extract", "eval")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Numerics:
    """One way of running a model: number format, fast path, loss scaling."""
    name: str
    dtype: torch.dtype | None  # the autocast dtype; None = plain fp32
    fast_path: bool = False  # fp32 only: depthwise kernel (train) or frozen trace (extract)
    scaler: bool = False  # fp16 training: dynamic loss scaling
    frozen_bf16: bool = False  # fp32 training whose frozen layers run in bf16 (inference)

    def autocast(self, device: torch.device):
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)


FP32 = Numerics("fp32", None)
BF16 = Numerics("bf16 autocast", torch.bfloat16)
FP16 = Numerics("fp16 autocast", torch.float16)
FP16_SCALED = Numerics("fp16 autocast + loss scaling", torch.float16, scaler=True)
FAST = {"train": Numerics("fp32 + depthwise kernel", None, fast_path=True),
        "extract": Numerics("fp32 + frozen trace", None, fast_path=True)}
FROZEN_BF16 = Numerics("fp32 + depthwise kernel, frozen layers bf16", None, fast_path=True,
                       frozen_bf16=True)
_BY_NAME = {n.name: n for n in (FP32, BF16, FP16, FP16_SCALED, FROZEN_BF16, *FAST.values())}


def by_name(name: str) -> Numerics:
    return _BY_NAME[name]


@dataclass
class Choice:
    """The way chosen for one kind of work, and why (for the log and the store)."""
    kind: str
    numerics: Numerics
    how: str  # "measured", "cached measurement", "only candidate", "CUDA: ..."
    img_per_s: dict[str, float] = field(default_factory=dict)
    cached_as: tuple[Path, str] | None = field(default=None, repr=False)  # (file, key)

    def line(self) -> str:
        speeds = ", ".join(f"{k} {v:.0f} img/s" for k, v in
                           sorted(self.img_per_s.items(), key=lambda kv: -kv[1]))
        return (f"{self.kind:<8}-> {self.numerics.name} ({self.how}"
                + (f": {speeds}" if speeds else "") + ")")

    @property
    def rate(self) -> float | None:
        """Images/s of the chosen way, where it was timed."""
        return self.img_per_s.get(self.numerics.name)

    def record(self) -> dict:
        return {"numerics": self.numerics.name, "how": self.how,
                "img_per_s": {k: round(v, 1) for k, v in self.img_per_s.items()}}


# ------------------------------------------------------------------ what the hardware has

@lru_cache(maxsize=None)
def native_bf16_cpu() -> bool:
    """AMX or AVX512-BF16: the CPUs on which bf16 can be faster at all. Elsewhere bf16 is
    emulated (~18x slower than fp32 on an AVX2 EPYC) and not worth timing."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def native_bf16_cuda(device: torch.device) -> bool:
    """torch.cuda.is_bf16_supported() also counts emulated bf16 (T4, V100); Ampere+ has it."""
    return torch.cuda.get_device_capability(device)[0] >= 8


def cuda_candidates(precision: str, kind: str, native_bf16: bool) -> list[Numerics]:
    fp16 = FP16_SCALED if kind == "train" else FP16
    if precision == "fp32":
        return [FP32]
    if precision == "bf16":
        return [BF16]
    if precision == "fp16":
        return [fp16]
    return [BF16] if native_bf16 else [fp16]


def cpu_candidates(precision: str, kind: str, native_bf16: bool) -> list[Numerics]:
    if precision == "bf16":
        return [BF16]
    if precision == "fp16":  # slow on CPUs; here to run fp16 code paths without a GPU
        return [FP16_SCALED if kind == "train" else FP16]
    fp32 = [FP32] + ([FAST[kind]] if kind in FAST else [])
    if precision != "auto" or not native_bf16:
        return fp32
    return fp32 + ([FROZEN_BF16] if kind == "train" else []) + [BF16]


# ------------------------------------------------------------------ measuring

def _seconds(step: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    step()
    return time.perf_counter() - t0


def _time_in_turns(steps_by_name: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Fastest seconds per step of each way: one warm-up call each, then `rounds` rounds of one
    timed call per way. Taking turns puts a drift in the machine's speed (another process, the
    allocator growing) on every way alike rather than on whichever was timed first; a way
    whose warm-up takes over 3x the fastest warm-up is clearly losing and is not timed again.
    A way that raises is no candidate (if none can run, fp32 runs and the error surfaces)."""
    best: dict[str, float] = {}
    for name, step in steps_by_name.items():
        try:
            best[name] = _seconds(step)
        except Exception:  # noqa: BLE001
            pass
    cutoff = 3 * min(best.values(), default=0.0)
    racing = [n for n, t in best.items() if t <= cutoff]
    for _ in range(rounds):
        for name in racing:
            best[name] = min(best[name], _seconds(steps_by_name[name]))
    return best


def _train_step(net: nn.Module, numerics: Numerics, x: torch.Tensor, y: torch.Tensor):
    device = x.device
    scaler = torch.amp.GradScaler(device.type) if numerics.scaler else None

    def step():
        with numerics.autocast(device):
            loss = F.cross_entropy(net(x).float(), y)
        (scaler.scale(loss) if scaler else loss).backward()
        for p in net.parameters():
            p.grad = None
    return step


def _infer_step(module: nn.Module, numerics: Numerics, x: torch.Tensor):
    if numerics.fast_path:
        with torch.inference_mode():
            traced, _ = kernels.frozen_for_inference(module, x, module(x).float())
        if traced is None:
            return None  # cannot be traced: not a candidate for this model

        def step():
            with torch.inference_mode():
                traced(x)
        return step

    def step():
        with torch.inference_mode(), numerics.autocast(x.device):
            module(x)
    return step


def _synced(step: Callable[[], None]) -> Callable[[], None]:
    """A CUDA step that returns only when the device has finished it (timed honestly)."""
    def run():
        step()
        torch.cuda.synchronize()
    return run


def measure(module: nn.Module, kind: str, cands: list[Numerics], batch: int, resolution: int,
            channels_last: bool, steps: int = 3) -> dict[str, float]:
    """Images/s of each candidate, each on its own copy of `module` (the real one is left
    untouched: weights, BatchNorm statistics, the global RNG), timed in turns."""
    device = next(module.parameters()).device
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        x = torch.randn(batch, 3, resolution, resolution, device=device).contiguous(memory_format=fmt)
        y = torch.zeros(batch, dtype=torch.long, device=device)
        runs: dict[str, Callable[[], None]] = {}
        for c in cands:
            m = copy.deepcopy(module)
            if kind == "train":
                if c.fast_path and kernels.use_fast_depthwise(m) == 0:
                    continue  # nothing to switch: not a candidate for this model
                if c.frozen_bf16 and kernels.frozen_layers_in_bf16(m) == 0:
                    continue  # nothing frozen: the same as the depthwise kernel alone
                train_mode_except_frozen(m)  # as the regime trains: frozen BN in eval
                step = _train_step(m, c, x, y)
            else:
                m.eval()
                step = _infer_step(m, c, x)
                if step is None:
                    continue
            runs[c.name] = _synced(step) if device.type == "cuda" else step
        seconds = _time_in_turns(runs, steps)
    return {name: batch / t for name, t in seconds.items()}


CLEAR_WIN = 1.10  # how much faster than the ways before it a way must be to be chosen


def choose(speeds: dict[str, float], order: list[str]) -> str:
    """The first way in `order` (plain fp32, then its fast paths, then bf16) within CLEAR_WIN of
    the fastest. Timing a few steps is noisy (we saw the same case measure 200 and 249 img/s in
    two runs); without the margin two near-equal ways swap between fresh measurements, and with
    them the run's float rounding and so its result."""
    top = max(speeds.values())
    return next(n for n in order if n in speeds and speeds[n] * CLEAR_WIN >= top)


# ------------------------------------------------------------------ deciding

def cache_path(data_root: Path | None = None) -> Path:
    """numerics.json in the data root: the study's --data-root, else $TRANSFERLAB_DATA, else
    ~/.cache/transferlab."""
    return Path(data_root or default_data_root()) / "numerics.json"


def _read_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, key: str, entry: dict) -> None:
    """Read-modify-replace; two runners racing lose at most one entry (measured again later)."""
    data = _read_cache(path)
    data[key] = entry
    _save_cache(path, data)


def _save_cache(path: Path, data: dict) -> bool:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
        return True
    except OSError as e:  # a read-only home: the run goes on, the next one measures again
        log.warning("cannot write the numerics cache %s (%s: %s); the choice is measured again "
                    "next run. Pass --data-root DIR (or set TRANSFERLAB_DATA) to a writable "
                    "folder to keep it", path, type(e).__name__, e)
        with suppress(OSError):
            tmp.unlink()
        return False


def _cache_key(device: torch.device, model_key: str, kind: str, resolution: int, batch: int,
               channels_last: bool, cands: list[Numerics]) -> str:
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return json.dumps({"cpu": where, "torch": torch.__version__,
                       "threads": torch.get_num_threads(), "model": model_key, "kind": kind,
                       "resolution": resolution, "batch": batch, "channels_last": channels_last,
                       "candidates": [c.name for c in cands]}, sort_keys=True)


def decide(precision: str, device: torch.device, kind: str, module: nn.Module, model_key: str,
           batch: int, resolution: int, channels_last: bool, need_rate: bool = False,
           data_root: Path | None = None) -> Choice:
    """How to run `module` for `kind` work ("train", "extract", "eval") on `device`; measured
    decisions are cached in `data_root` (see cache_path).

    `need_rate`: the chosen way's images/s are wanted too (a time budget plans with them),
    so a way that was not timed to be chosen (the only candidate, CUDA) is timed alone."""
    if device.type == "cuda":
        c = cuda_candidates(precision, kind, native_bf16_cuda(device))[0]
        why = ("CUDA, native bf16" if c is BF16 and native_bf16_cuda(device) else
               "CUDA, bf16 as configured (emulated on this GPU: slow)" if c is BF16 else
               "CUDA without native bf16: fp16" if c.dtype == torch.float16 else "as configured")
        choice = Choice(kind, c, why)
    else:
        cands = cpu_candidates(precision, kind, native_bf16_cpu())
        if len(cands) > 1:
            return _measured_choice(device, kind, module, model_key, batch, resolution,
                                    channels_last, cands, data_root)
        choice = Choice(kind, cands[0], "as configured")
    if not need_rate:
        return choice
    timed = _measured_choice(device, kind, module, model_key, batch, resolution, channels_last,
                             [choice.numerics], data_root)
    return Choice(kind, choice.numerics, choice.how, timed.img_per_s, timed.cached_as)


def _measured_choice(device, kind, module, model_key, batch, resolution, channels_last,
                     cands: list[Numerics], data_root: Path | None = None) -> Choice:
    """The fastest of `cands` by timed steps, or by a cached timing of the same case."""
    key = _cache_key(device, model_key, kind, resolution, batch, channels_last, cands)
    path = cache_path(data_root)
    hit = _read_cache(path).get(key)
    order = [c.name for c in cands]
    if hit and hit.get("choice") in _BY_NAME:
        cached = hit.get("img_per_s") or {}  # the rule applies to older cached speeds too
        name = choose(cached, order) if set(cached) & set(order) else hit["choice"]
        return Choice(kind, by_name(name), f"measured {hit.get('when', 'earlier')}, cached",
                      cached, (path, key))
    speeds = measure(module, kind, cands, batch, resolution, channels_last)
    best = choose(speeds, order) if speeds else FP32.name
    _write_cache(path, key, {"choice": best, "img_per_s": speeds,
                             "when": datetime.datetime.now().strftime("%Y-%m-%d %H:%M")})
    return Choice(kind, by_name(best), "measured now", speeds, (path, key))


# A loop does more than the bare steps it was timed by (augmentation, bookkeeping), so on a
# quiet machine it runs below them (0.87-0.94x measured). One this much faster shows that the
# timing is wrong: taken while something else loaded the CPU, or too short to settle (seen
# once on a quiet Zen 4: Lite0 from random init, 1.20x). Its choice and rate are suspect.
TIMED_UNDER_LOAD = 1.15


def retime_if_under_load(choice: Choice, loop_img_per_s: float | None) -> str | None:
    """Forget `choice`'s cached timing when the work it timed ran clearly faster than it, so
    the next run times the case again; what was done, in words (None: the timing stands)."""
    if not (choice.cached_as and choice.rate and loop_img_per_s):
        return None
    if loop_img_per_s < TIMED_UNDER_LOAD * choice.rate:
        return None
    path, key = choice.cached_as
    data = _read_cache(path)
    if data.pop(key, None) is None or not _save_cache(path, data):
        return None
    return (f"{choice.kind} ran at {loop_img_per_s:.0f} img/s, {loop_img_per_s / choice.rate:.2f}x "
            f"its timed {choice.rate:.0f} img/s ({choice.numerics.name}): a timing this far "
            "below the work is suspect (a busy machine, or too few steps to settle), so it is "
            "dropped from the cache and taken again next run")


def grad_scaler(device: torch.device, numerics: Numerics) -> torch.amp.GradScaler | None:
    """Dynamic loss scaling for fp16 training (its state goes into every checkpoint)."""
    return torch.amp.GradScaler(device.type) if numerics.scaler else None
