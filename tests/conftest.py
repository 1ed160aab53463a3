"""Shared fixtures: isolated data roots and stores, configs written on the fly, the CLI."""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


HOME_CACHE = Path.home() / ".cache" / "transferlab"  # the user's real caches: no test may touch them


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` with its size and modification time."""
    if not root.is_dir():
        return {}
    return {str(p.relative_to(root)): (st.st_size, st.st_mtime_ns)
            for p in root.rglob("*") if (st := p.stat()) and p.is_file()}


@pytest.fixture(scope="session")
def _home_cache_seen() -> dict:
    return {"files": _files(HOME_CACHE)}


@pytest.fixture(autouse=True)
def home_cache_untouched(_home_cache_seen):
    """Fail a test after which ~/.cache/transferlab differs from what the session found there
    (a module fixture's write fails the first test that used it)."""
    yield
    now = _files(HOME_CACHE)
    before, _home_cache_seen["files"] = _home_cache_seen["files"], now
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if changed:
        pytest.fail(f"{len(changed)} file(s) changed in {HOME_CACHE} during this test "
                    f"({', '.join(changed[:5])}): tests must write only into their temporary "
                    "folders (pass a data root, or set TRANSFERLAB_DATA)", pytrace=False)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """One decode cache for the whole session (the CIFAR JPEG archive decodes once)."""
    return tmp_path_factory.mktemp("data-root")


@pytest.fixture
def workdir(tmp_path, monkeypatch, data_root) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRANSFERLAB_DATA", str(data_root))
    return tmp_path


def write_config(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def cli(workdir, capsys):
    """Run `transferlab ARGS` in-process; returns (exit code, stdout, stderr)."""
    from transferlab.cli import main

    def run(*args: str):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


SMOKE = """
[study]
name = "smoke"
data = "synthetic"

[defaults]
epochs = 2
batch_size = 32
resolution = 32
optimizer = { name = "sgd", lr = 0.05 }

[[experiment]]
name = "base"
model = "baseline"
regime = "scratch"

[[experiment]]
name = "lite0-linear"
model = "efficientnet_lite0"
regime = "linear"
optimizer = { name = "adamw", lr = 0.003 }
probe_wd = [0.0, 0.01]

[[external]]
name = "practical-1"
test_acc = 0.5
note = "from elsewhere"
"""


@pytest.fixture
def smoke_config(workdir) -> Path:
    return write_config(workdir / "smoke.toml", SMOKE)


@pytest.fixture(scope="session")
def cifar_jpeg() -> str:
    if not SHARED_CIFAR.exists():
        pytest.skip(f"shared CIFAR JPEG archive not found at {SHARED_CIFAR}")
    return f"imagefolder:{SHARED_CIFAR}"
