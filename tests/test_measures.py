"""What an experiment measures and from what: its own peak memory; the baseline's whitening
filters from a stratified sample of the training images, not the first ones."""
import sqlite3

import numpy as np
import pytest
import torch

from transferlab import experiment
from transferlab.baseline import BaselineBackbone
from transferlab.config import ExperimentSpec
from transferlab.data import Splits
from transferlab.util import peak_rss_mb


class _Stop(Exception):
    pass


def test_whitening_filters_come_from_every_class(tmp_path, monkeypatch):
    """Class-ordered training images (as an image folder lists them): 3 x 2500, each class one
    grey level. The 5,000 images that set the filters hold every class in proportion."""
    levels = (10, 120, 230)
    x = torch.cat([torch.full((2500, 16, 16, 3), v, dtype=torch.uint8) for v in levels])
    y = torch.arange(3).repeat_interleave(2500)
    few = torch.zeros(6, 16, 16, 3, dtype=torch.uint8), torch.arange(3).repeat(2)
    splits = Splits(["a", "b", "c"], {"train": x, "val": few[0], "test": few[0]},
                    {"train": y, "val": few[1], "test": few[1]}, "grey levels")
    seen = {}

    def capture(self, images, eps=5e-4):
        seen["images"] = images
        raise _Stop

    monkeypatch.setattr(BaselineBackbone, "data_init", capture)
    spec = ExperimentSpec(name="b", model="baseline", regime="scratch", augment="none",
                          epochs=1, batch_size=16, channels_last=False, precision="fp32")
    with pytest.raises(_Stop):
        experiment.run(spec, splits, tmp_path / "exp", tmp_path / "feat", torch.device("cpu"),
                       lambda row: None, lambda d: None, lambda msg: None,
                       data_root=tmp_path / "data")
    red = seen["images"][:, 0, 0, 0]  # one value per image: its class's normalised grey level
    values = sorted(set(red.tolist()))
    assert len(values) == 3, "the sample misses a class"
    counts = [int((red == v).sum()) for v in values]
    assert abs(sum(counts) - 5000) <= 3 and all(abs(c - 5000 / 3) <= 2 for c in counts), counts


def test_peak_memory_is_each_experiments_own(cli, smoke_config, workdir):
    big = np.ones(800 * 2**20, dtype=np.uint8)  # an earlier, larger experiment's peak
    del big
    lifetime = peak_rss_mb()
    code, out, _ = cli("run", smoke_config, "--only", "base")
    assert code == 0 and "done: 1 ran" in out
    con = sqlite3.connect(workdir / "runs" / "transferlab.db")
    (peak,), = con.execute("SELECT peak_mem_mb FROM results").fetchall()
    con.close()
    assert 0 < peak < lifetime - 400, (peak, lifetime)  # the small experiment's own peak
