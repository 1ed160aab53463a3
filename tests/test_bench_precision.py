"""Smoke test of bench/cpu_precision.py at its --quick size: every candidate way of running a
model that `precision = "auto"` chooses between, training and extraction, in one table."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_cpu_precision_quick_times_training_and_inference_side_by_side():
    proc = subprocess.run([sys.executable, str(ROOT / "bench/cpu_precision.py"), "--quick",
                           "--weights", "none"],
                          capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [line.split("|")[1:3] for line in proc.stdout.splitlines() if line.startswith("| ")]
    ways = {(k.strip(), w.strip()) for k, w in rows[1:]}  # rows[0] is the header
    for kind, way in [("train", "fp32"), ("train", "fp32 + depthwise kernel"),
                      ("train", "bf16 autocast"), ("extract", "fp32"),
                      ("extract", "fp32 + frozen trace"), ("extract", "bf16 autocast")]:
        assert (kind, way) in ways, proc.stdout
    assert "native bf16:" in proc.stdout
