"""Small shared helpers: safe file IO, hardware facts, seeding, environment record."""
from __future__ import annotations

import logging
import os
import pickle
import platform
import random
import subprocess
import tempfile
import threading
import weakref
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .errors import DamagedFile, UserError


def atomic_save(obj, path: Path) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it.

    A crash or a full disk part-way leaves the previous file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def safe_load(path: Path, map_location="cpu"):
    """torch.load with weights_only=True: a pickle that would run code is refused; a file that
    is not a readable tensor file at all raises DamagedFile."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        if not any("Unsupported operand" in line for line in first):  # not just random bytes
            raise UserError(f"refusing to load {path}: it is not a plain tensor file and loading "
                            f"it could run code ({first[0] if first else e!r}). Only load files "
                            "you trust, saved as a state dict of tensors.") from None
        raise DamagedFile(f"{path} is damaged: not a tensor file ({_why(e)}); delete it and "
                          "run again") from None
    except (IsADirectoryError, PermissionError, FileNotFoundError) as e:
        raise UserError(f"cannot read {path} ({type(e).__name__}: {e})") from None
    except Exception as e:  # noqa: BLE001  torch reports damage as EOFError, KeyError, ...
        raise DamagedFile(f"{path} is damaged or truncated ({_why(e)}); delete it and run "
                          "again") from None


def _why(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__


def set_aside(path: Path) -> Path:
    """Rename a damaged file out of the way, keeping it for a look: NAME.damaged-TIME."""
    import time
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, aside)
    return aside


def load_or_set_aside(path: Path, say=None):
    """safe_load of a file we wrote and can make again (a cache, a checkpoint): None, with the
    damaged file set aside and a line saying so, when it cannot be read back."""
    try:
        return safe_load(path)
    except DamagedFile as e:
        try:
            where = f"kept as {set_aside(path).name}"
        except OSError as err:  # another runner moved it first, or the folder is read-only
            where = f"could not be set aside ({err})"
        (say or logging.getLogger(__name__).warning)(
            f"{str(e).split('; delete it')[0]}: {where}; making it again")
        return None


STALE_TEMP_SECONDS = 3600  # a temporary file this old in a shared folder is no write in progress


def remove_stale_temps(folder: Path, older_than: float = STALE_TEMP_SECONDS) -> int:
    """Delete the temporary files (.NAME.*.tmp) that writes killed part-way left in `folder`;
    only those older than `older_than` seconds, so another runner's write in progress stays."""
    import time
    removed = 0
    now = time.time()
    for tmp in Path(folder).glob(".*.tmp") if Path(folder).is_dir() else ():
        try:
            if now - tmp.stat().st_mtime >= older_than:
                tmp.unlink()
                removed += 1
        except OSError:  # gone already, or not ours to remove
            continue
    return removed


def default_data_root() -> Path:
    """Where downloads, decoded images and numerics decisions are cached."""
    return Path(os.environ.get("TRANSFERLAB_DATA", Path.home() / ".cache" / "transferlab"))


def pick_device(prefer: str = "auto") -> torch.device:
    if prefer != "auto":
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def progress(total: int, desc: str):
    """A progress bar in an interactive terminal; silent in notebooks, CI and logs
    (they get one plain line per epoch instead)."""
    import sys

    from tqdm import tqdm
    quiet = not sys.stderr.isatty() or bool(os.environ.get("CI"))
    return tqdm(total=total, desc=desc, leave=False, disable=quiet, unit="batch")


CPU_EVAL_BATCH = 64  # on a CPU larger inference batches buy no speed, only memory:
# one Lite2 forward at 112 px peaked at 1.8 GB RSS with batch 256 against 1.1 GB with 64


def eval_batch(batch_size: int, device: torch.device) -> int:
    """Batch for inference passes (features, validation, test)."""
    return 2 * batch_size if device.type == "cuda" else min(2 * batch_size, CPU_EVAL_BATCH)


def peak_rss_mb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def environment() -> dict:
    import timm
    import torchvision
    dev = pick_device()
    return {
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "timm": timm.__version__, "python": platform.python_version(),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(), "git": git_revision(),
        "git_dirty": git_dirty(), "host": platform.node(),
    }


@lru_cache(maxsize=None)
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or 'cpu'} ({os.cpu_count()} cores)"


def _git(args: list[str], where: Path) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=5,
                              cwd=where)
    except (OSError, subprocess.SubprocessError):  # no git, or it hung
        return None


def git_state(source: Path) -> tuple[str, bool | str]:
    """(commit, local changes) of the checkout that `source` (a file of the package) belongs to.

    "unknown" for both where git is absent, or `source` is not a tracked file of a repository
    (installed into site-packages, even one inside some other checkout). Local changes: any
    tracked file modified or staged, or a file git does not ignore but does not track, except
    under reports/ (the report regenerates its own tracked files on every run)."""
    where = Path(source).resolve().parent
    tracked = _git(["ls-files", "--error-unmatch", Path(source).name], where)
    head = _git(["rev-parse", "--short", "HEAD"], where)
    if tracked is None or tracked.returncode or head is None or head.returncode:
        return "unknown", "unknown"
    top = _git(["rev-parse", "--show-toplevel"], where)
    status = _git(["status", "--porcelain", "--", ".", ":(exclude)reports"],
                  Path(top.stdout.strip()) if top and not top.returncode else where)
    if status is None or status.returncode:
        return head.stdout.strip(), "unknown"
    return head.stdout.strip(), bool(status.stdout.strip())


@lru_cache(maxsize=None)
def _package_git() -> tuple[str, bool | str]:
    return git_state(Path(__file__))  # once per process: the code that runs is what was imported


def git_revision() -> str:
    return _package_git()[0]


def git_dirty() -> bool | str:
    """True if the checkout had local changes when this process started, "unknown" if no git."""
    return _package_git()[1]


class PeakMemory:
    """One experiment's own peak memory in MB (not the process's lifetime peak, which later
    experiments of a study would inherit). CUDA: the allocator's peak, reset at the start.
    CPU: the kernel's resident-set high-water mark, reset through /proc/self/clear_refs (Linux);
    where that is not allowed, the resident set sampled every 20 ms by a side thread; without
    /proc at all, the process's peak so far (the only figure the standard library gives)."""

    def __init__(self, device):
        self.device, self.peak, self.done = device, 0.0, threading.Event()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self.mode = "cuda"
        elif _reset_rss_peak():
            self.mode = "hwm"
        elif _proc_status_mb("VmRSS") is None:
            self.mode = "lifetime"
        else:
            self.mode = "sampled"
            threading.Thread(target=_sample_rss, args=(weakref.ref(self), self.done),
                             daemon=True).start()

    def stop(self) -> float:
        self.done.set()
        if self.mode == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.mode == "hwm":
            return _proc_status_mb("VmHWM") or peak_rss_mb()
        if self.mode == "lifetime":
            return peak_rss_mb()
        return max(self.peak, _proc_status_mb("VmRSS") or 0.0)


def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # 5: reset the peak resident set size to the current one
        return _proc_status_mb("VmHWM") is not None
    except OSError:
        return False


def _proc_status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _sample_rss(ref, done: threading.Event, every: float = 0.02) -> None:
    while not done.wait(every):
        tracker = ref()
        if tracker is None:  # the experiment ended without stop() (it raised)
            return
        tracker.peak = max(tracker.peak, _proc_status_mb("VmRSS") or 0.0)
        del tracker


def train_mode_except_frozen(net: torch.nn.Module) -> None:
    """Train mode, except modules with no trainable parameter: frozen BN keeps its statistics
    (how a regime trains, and so how its steps are timed)."""
    net.train()
    for m in net.modules():
        own = list(m.parameters())
        if own and not any(p.requires_grad for p in own):
            m.eval()
