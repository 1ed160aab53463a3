"""Shared fixtures: isolated data roots and stores, configs written on the fly, the CLI."""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


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
