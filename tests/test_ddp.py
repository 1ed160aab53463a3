"""torchrun with two CPU processes (gloo): one experiment trained data-parallel, one voice."""
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from conftest import write_config


def test_torchrun_two_ranks_trains_once(workdir, data_root):
    cfg = write_config(workdir / "d.toml", """
        [study]
        name = "ddp"
        data = "synthetic"
        [[experiment]]
        name = "base"
        model = "baseline"
        regime = "scratch"
        epochs = 2
        batch_size = 32
    """)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFERLAB_DATA": str(data_root)}
    p = subprocess.run([str(torchrun), "--nproc_per_node=2", "-m", "transferlab", "run", str(cfg)],
                       cwd=workdir, env=env, capture_output=True, text=True,
                       timeout=1800)  # a hang guard, not a speed test (shared 2-core box)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("done: 1 ran") == 1  # rank 0 alone reports
    con = sqlite3.connect(workdir / "runs" / "transferlab.db")
    assert con.execute("SELECT status, attempts FROM experiments").fetchall() == [("done", 1)]
    assert con.execute("SELECT COUNT(*) FROM epochs").fetchone()[0] == 2
