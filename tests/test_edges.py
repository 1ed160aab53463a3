"""Where users' own data, files and machines come in: every bad input is a clear error (exit 2,
no traceback, nothing in the store lost), and what we can make again is made again.

Bad-input tests run `transferlab` in-process against a store that already holds a finished
study (the `prior` fixture of test_reliability); unwritable places are made with a path below
a regular file (nothing can be created there, root or not) or, in a subprocess, a read-only
bind mount where the machine allows one (as root), else a read-only folder (chmod).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from test_reliability import (SRC, by_name, image_folder, main_in, prior, prior_runs,  # noqa: F401
                              quick_config, run_cli)
from transferlab.models import _offline_weights_file

needs_lite0 = pytest.mark.skipif(_offline_weights_file("efficientnet_lite0") is None,
                                 reason="efficientnet_lite0 offline weights package not installed")


def no_traceback(out: str, err: str) -> None:
    assert "Traceback" not in out + err, out + err


# ------------------------------------------------------------------ the data path

@pytest.mark.parametrize("what", ["text file", "truncated tar.gz", "zip"])
def test_a_data_path_that_is_no_readable_archive(tmp_path, monkeypatch, capsys, prior, what):
    path = tmp_path / "data.tar.gz"
    if what == "text file":
        path.write_text("not an archive\n" * 100)
    elif what == "zip":
        import zipfile
        path = tmp_path / "data.zip"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("train/cat/0.png", b"x")
    else:
        folder = image_folder(tmp_path / "imgs")
        with tarfile.open(path, "w:gz") as t:
            t.add(folder, arcname="imgs")
        blob = path.read_bytes()
        path.write_bytes(blob[: len(blob) // 2])
    quick_config(tmp_path / "bad.toml", data=f"imagefolder:{path}")
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "bad.toml")
    assert rc == 2, out + err
    assert f"{path} is not a readable tar archive" in err and "re-create it" in err
    no_traceback(out, err)
    assert by_name(tmp_path / "runs" / "transferlab.db")["main"]["status"] == "pending"
    prior()


def test_a_single_class_is_refused(tmp_path, monkeypatch, capsys, prior):
    folder = image_folder(tmp_path / "imgs", classes=("cat",))
    quick_config(tmp_path / "bad.toml", data=f"imagefolder:{folder}")
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "bad.toml")
    assert rc == 2, out + err
    assert "found 1 class folder (cat)" in err and "at least two classes" in err
    no_traceback(out, err)
    prior()


def test_a_class_left_without_training_images_is_named(tmp_path, monkeypatch, capsys, prior):
    folder = image_folder(tmp_path / "imgs", classes=("cat", "dog"), n_train=6)
    for f in sorted((folder / "train" / "dog").iterdir())[1:]:
        f.unlink()  # dog keeps one training image: validation would take it
    quick_config(tmp_path / "bad.toml", data=f"imagefolder:{folder}")
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "bad.toml")
    assert rc == 2, out + err
    assert "val_fraction 0.1 leaves no training images in class dog (1 image)" in err
    assert "cat" not in err.split("in class", 1)[1].split(";")[0]
    no_traceback(out, err)
    prior()


# ------------------------------------------------------------------ malformed config values

HEAD = '[study]\nname = "rel"\ndata = "synthetic:16"\n'
EXP = '\n[[experiment]]\nname = "x"\nmodel = "baseline"\nregime = "scratch"\n'


@pytest.mark.parametrize("toml, needles", [
    ('experiment = "x"\n' + HEAD, ["experiment must be an array of tables", "[[experiment]]"]),
    (HEAD + '\n[[grid]]\nname = "a{seed"\nseed = [1, 2]\nmodel = "baseline"\nregime = "scratch"\n',
     ["[[grid]] #1", "name template 'a{seed' is not valid", "lite0-{seed}"]),
    (HEAD + EXP.replace('"baseline"\nregime = "scratch"', '"efficientnet_lite0"') + "probe_wd = []\n",
     ["probe_wd must list at least one weight decay"]),
    (HEAD + EXP.replace('"baseline"\nregime = "scratch"', '"efficientnet_lite0"') + 'probe_wd = ["x"]\n',
     ["probe_wd must hold weight decays", "['x']"]),
    (HEAD + EXP.replace('"baseline"\nregime = "scratch"', '"efficientnet_lite0"') + "probe_wd = [-1.0]\n",
     ["probe_wd must hold weight decays", "[-1.0]"]),
    (HEAD + EXP + "warmup_epochs = -3\n", ["warmup_epochs must be 0 or more, got -3"]),
    (HEAD + EXP + "head = { kind = \"mlp\", hidden = [\"wide\"] }\n",
     ["head.hidden must hold layer widths"]),
    ("defaults = 3\n" + HEAD + EXP, ["defaults must be a table"]),
], ids=["experiment-string", "template", "probe-wd-empty", "probe-wd-text", "probe-wd-negative",
        "warmup-negative", "hidden-text", "defaults-number"])
def test_malformed_values_are_clear_errors(tmp_path, monkeypatch, capsys, prior, toml, needles):
    (tmp_path / "bad.toml").write_text(toml)
    for cmd in ("run", "status"):
        rc, out, err = main_in(tmp_path, monkeypatch, capsys, cmd, "bad.toml")
        assert rc == 2, out + err
        assert "bad.toml" in err
        for n in needles:
            assert n in err, err
        no_traceback(out, err)
    prior()


# ------------------------------------------------------------------ unwritable places

def test_an_unwritable_store_or_runs_folder_is_a_clear_error(tmp_path, monkeypatch, capsys,
                                                             prior):
    blocker = tmp_path / "a-file"  # nothing can be created below a regular file
    blocker.write_text("x")
    quick_config(tmp_path / "s.toml")
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "s.toml", "--store",
                           blocker / "store.db")
    assert rc == 2, out + err
    assert f"cannot open the SQLite store {blocker / 'store.db'}" in err
    assert "--store PATH in a writable folder" in err
    no_traceback(out, err)
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "s.toml", "--runs-dir",
                           blocker / "runs")
    assert rc == 2, out + err
    assert f"cannot write the runs folder {blocker / 'runs' / 'rel'}" in err and "--runs-dir DIR" in err
    no_traceback(out, err)
    assert "main" not in by_name(tmp_path / "runs" / "transferlab.db")  # nothing registered
    prior()


def _read_only_runner(path: Path) -> list[str]:
    """An argv prefix under which `path` is read-only for the command, even as root."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        return []
    wrap = ["unshare", "-m", "sh", "-c", f'mount --bind "{path}" "{path}" && mount -o '
            f'remount,bind,ro "{path}" && exec "$@"', "sh"]
    probe = subprocess.run([*wrap, "sh", "-c", f'! touch "{path}/.probe" 2>/dev/null'],
                           capture_output=True)
    if shutil.which("unshare") is None or probe.returncode != 0:
        pytest.skip("root here, and no read-only bind mount allowed (unshare -m): cannot make a "
                    "folder read-only for root")
    return wrap


def _env(home: Path, data_root: Path | None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRANSFERLAB_DATA", "HF_HOME", "TORCH_HOME", "XDG_CACHE_HOME")}
    env.update(HOME=str(home), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=str(SRC.parent) + os.pathsep + env.get("PYTHONPATH", ""))
    if data_root is not None:
        env["TRANSFERLAB_DATA"] = str(data_root)
    return env


@needs_lite0
def test_a_read_only_home_does_not_stop_a_cpu_study(tmp_path):
    """Measured numerics are cached in the data root (--data-root), not in the home; with no
    writable data root at all the cache is a warning and the study still runs."""
    home = tmp_path / "home"
    home.mkdir()
    quick_config(tmp_path / "s.toml", data="synthetic:8", body=(
        '\n[[experiment]]\nname = "probe"\nmodel = "efficientnet_lite0"\nregime = "linear"\n'
        'resolution = 32\nprecision = "auto"\n'))
    wrap = _read_only_runner(home)
    cmd = [*wrap, sys.executable, "-m", "transferlab", "run", "s.toml"]
    p = subprocess.run([*cmd, "--data-root", str(tmp_path / "data")], cwd=tmp_path,
                       env=_env(home, None), capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "extract -> " in p.stdout and (tmp_path / "data" / "numerics.json").is_file()
    assert "cannot write" not in p.stderr
    shutil.rmtree(tmp_path / "runs")  # measure again, now with the home's default data root
    p = subprocess.run(cmd, cwd=tmp_path, env=_env(home, None), capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "cannot write the numerics cache" in p.stderr and "--data-root DIR" in p.stderr
    assert "done: 1 ran" in p.stdout
    assert not any(home.rglob("*"))


def test_a_store_in_a_read_only_folder_is_a_clear_error(tmp_path):
    quick_config(tmp_path / "s.toml")
    ro = tmp_path / "ro"
    first = run_cli(tmp_path, "run", "s.toml", "--store", ro / "store.db")
    assert first.returncode == 0, first.stdout + first.stderr
    wrap = _read_only_runner(ro)
    p = subprocess.run([*wrap, sys.executable, "-m", "transferlab", "run", "s.toml", "--store",
                        str(ro / "store.db"), "--runs-dir", str(tmp_path / "runs2"), "--rerun",
                        "main"], cwd=tmp_path, env=_env(tmp_path, tmp_path / "data"),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stdout + p.stderr
    assert f"cannot open the SQLite store {ro / 'store.db'} for writing" in p.stderr
    assert "--store PATH in a writable folder" in p.stderr
    no_traceback(p.stdout, p.stderr)
    ro.chmod(0o755)
    assert by_name(ro / "store.db")["main"]["status"] == "done"


# ------------------------------------------------------------------ damaged files

GARBAGE = b"hello, this is not a tensor file\n" * 40  # torch.load raised KeyError: 101 on it


def test_a_damaged_decode_cache_is_set_aside_and_decoded_again(tmp_path, monkeypatch, capsys,
                                                               caplog, prior):
    folder = image_folder(tmp_path / "imgs")
    quick_config(tmp_path / "s.toml", data=f"imagefolder:{folder}")
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "s.toml")
    assert rc == 0, out + err
    (cache,) = (tmp_path / "data" / "cache").glob("*.pt")
    cache.write_bytes(GARBAGE)
    caplog.set_level("WARNING")
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "s.toml", "--rerun", "main")
    assert rc == 0, out + err
    said = " ".join(r.getMessage() for r in caplog.records)
    assert f"{cache} is damaged or truncated (KeyError: 101)" in said and "making it again" in said
    (aside,) = cache.parent.glob(f"{cache.name}.damaged-*")
    assert aside.read_bytes() == GARBAGE  # kept for a look
    assert torch.load(cache, weights_only=True)["classes"] == ["cat", "dog"]  # made again
    prior()


@needs_lite0
def test_a_damaged_feature_cache_is_set_aside_and_extracted_again(tmp_path, monkeypatch, capsys):
    quick_config(tmp_path / "s.toml", data="synthetic:8", body=(
        '\n[[experiment]]\nname = "probe"\nmodel = "efficientnet_lite0"\nregime = "linear"\n'
        'resolution = 32\nprecision = "fp32"\n'))
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "s.toml")
    assert rc == 0, out + err
    first = sorted((tmp_path / "runs" / "features").glob("*.pt"))[0]
    first.write_bytes(GARBAGE)
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "s.toml", "--rerun", "probe")
    assert rc == 0, out + err
    assert f"{first} is damaged or truncated" in out and "making it again" in out
    assert len(list(first.parent.glob(f"{first.name}.damaged-*"))) == 1
    assert torch.load(first, weights_only=True).ndim == 2


def test_a_damaged_checkpoint_is_set_aside_and_the_experiment_starts_again(
        tmp_path, monkeypatch, capsys, prior):
    """It used to fail the experiment on every --retry-failed until deleted by hand."""
    from transferlab.config import load_study
    from transferlab.data import fingerprint
    from transferlab.study import experiment_dir
    cfg = quick_config(tmp_path / "ck.toml", epochs=2)
    monkeypatch.chdir(tmp_path)
    study = load_study(cfg, fingerprint=fingerprint)
    exp_dir = experiment_dir(study, study.experiments[0])
    exp_dir.mkdir(parents=True)
    (exp_dir / "checkpoint.pt").write_bytes(GARBAGE)
    (exp_dir / ".checkpoint.pt.x1y2.tmp").write_bytes(b"half a checkpoint")  # a killed write
    db = tmp_path / "runs" / "transferlab.db"
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", cfg.name)
    assert rc == 0, out + err
    assert "checkpoint.pt is damaged or truncated (KeyError: 101)" in out
    assert "kept as checkpoint.pt.damaged-" in out and "starts again from epoch 0" in out
    assert by_name(db)["main"]["status"] == "done"
    (aside,) = exp_dir.glob("checkpoint.pt.damaged-*")
    assert aside.read_bytes() == GARBAGE
    assert not list(exp_dir.glob(".*.tmp"))  # the killed write's leftover is gone
    no_traceback(out, err)
    prior()


def test_a_damaged_model_file_is_a_clear_error_for_predict(tmp_path, monkeypatch, capsys, prior):
    folder = image_folder(tmp_path / "imgs")
    quick_config(tmp_path / "s.toml", data=f"imagefolder:{folder}")
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "s.toml")
    assert rc == 0, out + err
    (model,) = (tmp_path / "runs" / "rel").glob("*/model.pt")
    model.write_bytes(GARBAGE)
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "predict", "s.toml",
                           folder / "test", "--model", "main")
    assert rc == 2, out + err
    assert f"{model} is damaged or truncated (KeyError: 101)" in err
    assert "transferlab run CONFIG --rerun main" in err
    no_traceback(out, err)
    prior()


# ------------------------------------------------------------------ rerun paths

RERUN = """
[study]
name = "again"
data = "synthetic:16"

[study.final]
epochs = 1

[defaults]
model = "baseline"
regime = "scratch"
epochs = 1
batch_size = 16
resolution = 16

[[experiment]]
name = "base"

[[experiment]]
name = "lite-a"
seed = 1

[[experiment]]
name = "lite-b"
seed = 2
"""


def _results(db: Path) -> dict:
    from test_reliability import q
    return {r[0]: r[1] for r in q(db, "SELECT x.name, r.test_acc FROM results r JOIN "
                                      "experiments x ON x.id = r.exp_id")}


def test_rerun_applies_to_what_only_selects_and_reaches_the_final(tmp_path, monkeypatch, capsys):
    (tmp_path / "s.toml").write_text(RERUN)
    db = tmp_path / "runs" / "transferlab.db"
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "s.toml")
    assert rc == 0, out + err
    final_name = next(n for n in by_name(db) if n.startswith("final-"))
    before = by_name(db)
    # nothing --only selects matches: refused, nothing forgotten
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "s.toml", "--rerun", "lite*",
                           "--only", "base")
    assert rc == 2, out + err
    assert "--rerun 'lite*' matches lite-a, lite-b, but --only 'base' selects none" in err
    no_traceback(out, err)
    assert by_name(db) == before and set(_results(db)) == set(before)
    # the overlap only: base is trained again, the others are left as they are
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "s.toml", "--rerun", "*",
                           "--only", "base")
    assert rc == 0, out + err
    assert "left as they are (not selected by --only 'base'): lite-a, lite-b" in out
    assert "will run again: base" in out and "done: 1 ran" in out
    after = by_name(db)
    assert after["base"]["attempts"] == before["base"]["attempts"] + 1
    assert all(after[n] == before[n] for n in ("lite-a", "lite-b", final_name))
    # the final stage by name, as the README says
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "s.toml", "--rerun", "final-*",
                           "--only", "final")
    assert rc == 0, out + err
    assert f"will run again: {final_name}" in out and "done: 1 ran" in out
    assert by_name(db)[final_name]["attempts"] == before[final_name]["attempts"] + 1
    assert set(_results(db)) == set(before)


# ------------------------------------------------------------------ resume on a GPU

@needs_lite0
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_resumed_gpu_run_continues_the_cuda_generator(tmp_path, monkeypatch, capsys):
    """Dropout on CUDA draws from the GPU's generator: the checkpoint keeps it, so the resumed
    run draws the masks the uninterrupted one would have."""
    from test_reliability import GRADUAL
    from transferlab.store import Store
    from transferlab.fit.train import Trainer
    quick_config(tmp_path / "g.toml", name="grad", data="synthetic:8", epochs=3, body=GRADUAL)
    saved, resumed = {}, {}
    real_save, real_resume, real_add = Trainer._save, Trainer._resume, Store.add_epoch

    def save(self, epoch, track):
        real_save(self, epoch, track)
        saved[epoch] = torch.cuda.get_rng_state(self.device).clone()

    def resume(self):
        out = real_resume(self)
        resumed["state"] = torch.cuda.get_rng_state(self.device).clone()
        return out

    def ctrl_c_after_1(self, exp_id, row):
        real_add(self, exp_id, row)
        if row["epoch"] == 1:
            raise KeyboardInterrupt
    monkeypatch.setattr(Trainer, "_save", save)
    monkeypatch.setattr(Trainer, "_resume", resume)
    monkeypatch.setattr(Store, "add_epoch", ctrl_c_after_1)
    with pytest.raises(KeyboardInterrupt):
        main_in(tmp_path, monkeypatch, capsys, "run", "g.toml", "--device", "cuda")
    monkeypatch.setattr(Store, "add_epoch", real_add)
    torch.randn(4096, device="cuda")  # the generator moves on, as in a new process it restarts
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "g.toml", "--device", "cuda")
    assert rc == 0, out + err
    assert "resuming from checkpoint after epoch 1" in out
    assert torch.equal(resumed["state"], saved[1])
