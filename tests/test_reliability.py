"""Reliability: interruptions, parallel runners, bad input, hostile files; nothing done is lost.

Most tests inject a fault through the real command line, either in a subprocess (kill -9,
parallel runners, offline hub) or in-process through `transferlab.cli.main`. Everything runs
on tiny synthetic data or a generated image folder with the baseline CNN at 16 px.
"""
from __future__ import annotations

import errno
import os
import pickle
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from transferlab import cli, store as store_mod, util
from transferlab.store import SCHEMA_VERSION, Store

SRC = Path(__file__).resolve().parents[1] / "src" / "transferlab"

QUICK = """
[study]
name = "{name}"
data = "{data}"

[defaults]
model = "baseline"
regime = "scratch"
epochs = {epochs}
batch_size = 16
resolution = 16
optimizer = {{ name = "sgd", lr = 0.05 }}
"""


def quick_config(path: Path, name="rel", data="synthetic:16", epochs=1, body="",
                 exp="main") -> Path:
    """A study of the baseline CNN at 16 px; one experiment named `exp` unless `body` has some."""
    body = body or f'\n[[experiment]]\nname = "{exp}"\n'
    path.write_text(QUICK.format(name=name, data=data, epochs=epochs) + body)
    return path


def grid(names: str, seeds) -> str:
    return f'\n[[grid]]\nname = "{names}-{{seed}}"\nseed = {list(seeds)}\n'


def env_for(tmp: Path) -> dict:
    env = dict(os.environ)
    env.update(TRANSFERLAB_DATA=str(tmp / "data"), HF_HUB_OFFLINE="1", HF_HOME=str(tmp / "hf"),
               TORCH_HOME=str(tmp / "torch"), PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS="1")  # on a busy 2-core box, 2 spinning threads run ~20x slower
    src = str(SRC.parent)
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def popen(tmp: Path, *args, out: Path) -> subprocess.Popen:
    f = open(out, "w")
    return subprocess.Popen([sys.executable, "-m", "transferlab", *map(str, args)], cwd=tmp,
                            env=env_for(tmp), stdout=f, stderr=subprocess.STDOUT)


def run_cli(tmp: Path, *args, timeout=1800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "transferlab", *map(str, args)], cwd=tmp,
                          env=env_for(tmp), capture_output=True, text=True, timeout=timeout)


def main_in(tmp: Path, monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """`transferlab ARGS` in this process, with cwd = tmp and the data cache under tmp."""
    monkeypatch.chdir(tmp)
    monkeypatch.setenv("TRANSFERLAB_DATA", str(tmp / "data"))
    rc = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def q(db: Path, sql: str, *params):
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def by_name(db: Path) -> dict:
    rows = q(db, "SELECT name, id, status, reason, attempts, updated FROM experiments")
    return {r[0]: dict(zip(("name", "id", "status", "reason", "attempts", "updated"), r))
            for r in rows}


def save_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def image_folder(root: Path, classes=("cat", "dog"), n_train=6, n_test=3, size=16) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for c, cls in enumerate(classes):
            for i in range(n):
                arr = np.full((size, size, 3), 60 + 120 * c, np.uint8)
                arr = (arr + rng.integers(0, 40, arr.shape)).astype(np.uint8)
                save_png(root / split / cls / f"{i}.png", arr)
    return root


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on a shared machine: one intra-op thread is much faster than several."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ a store with finished work

@pytest.fixture(scope="module")
def prior_runs(tmp_path_factory) -> tuple[Path, dict]:
    """runs/ holding one finished experiment of another study (copied into each test)."""
    base = tmp_path_factory.mktemp("prior")
    quick_config(base / "prior.toml", name="prior", data="synthetic:8",
                 body='\n[[experiment]]\nname = "prior-exp"\nseed = 99\n')
    old = os.getcwd()
    os.chdir(base)
    try:
        assert cli.main(["run", "prior.toml", "--data-root", str(base / "data")]) == 0
    finally:
        os.chdir(old)
    db = base / "runs" / "transferlab.db"
    return base / "runs", _snapshot(db)


def _snapshot(db: Path) -> dict:
    exps = by_name(db)
    return {"exps": exps, "results": q(db, "SELECT * FROM results"),
            "epochs": q(db, "SELECT * FROM epochs")}


@pytest.fixture
def prior(tmp_path, prior_runs):
    """Put the finished study into tmp_path/runs; returns a check that it is still intact."""
    runs, snap = prior_runs
    shutil.copytree(runs, tmp_path / "runs")
    db = tmp_path / "runs" / "transferlab.db"

    def intact():
        now = _snapshot(db)
        assert now["exps"]["prior-exp"] == snap["exps"]["prior-exp"]
        assert now["exps"]["prior-exp"]["status"] == "done"
        assert set(snap["results"]) <= set(now["results"])
        assert set(snap["epochs"]) <= set(now["epochs"])
        assert q(db, "PRAGMA integrity_check")[0][0] == "ok"
    return intact


# ------------------------------------------------------------------ interruption

def _max_epoch(db: Path, name: str) -> int:
    try:
        r = q(db, "SELECT max(e.epoch) FROM epochs e JOIN experiments x ON e.exp_id = x.id "
                  "WHERE x.name = ?", name)
    except sqlite3.Error:  # not created yet
        return 0
    return r[0][0] or 0


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_kill9_mid_epoch_resumes_to_the_same_result(tmp_path):
    cfg = quick_config(tmp_path / "kill.toml", name="kill", epochs=5, body=grid("k", [0, 1]))
    db = tmp_path / "runs" / "transferlab.db"
    proc = popen(tmp_path, "run", cfg, out=tmp_path / "first.log")
    deadline = time.time() + 1800  # a hang guard: the loop waits for the event itself
    while _max_epoch(db, "k-1") < 1:
        assert proc.poll() is None, (tmp_path / "first.log").read_text()
        assert time.time() < deadline, "k-1 never reached epoch 1"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    first = by_name(db)
    assert first["k-0"]["status"] == "done" and first["k-1"]["status"] == "running"
    k0_result = q(db, "SELECT * FROM results WHERE exp_id = ?", first["k-0"]["id"])
    exp_dir = tmp_path / "runs" / "kill" / first["k-1"]["id"]  # files are keyed by id
    assert (exp_dir / "checkpoint.pt").exists()

    again = run_cli(tmp_path, "run", cfg)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "k-0: done, skipped" in again.stdout
    assert "resuming from checkpoint after epoch" in again.stdout
    resumed_after = int(re.search(r"resuming from checkpoint after epoch (\d+)", again.stdout)[1])
    assert resumed_after >= 1
    assert f"epoch   1/5" not in again.stdout  # epochs before the checkpoint are not redone
    after = by_name(db)
    assert after["k-0"] == first["k-0"]  # untouched
    assert q(db, "SELECT * FROM results WHERE exp_id = ?", first["k-0"]["id"]) == k0_result
    assert after["k-1"]["status"] == "done" and after["k-1"]["attempts"] == 2
    assert not (exp_dir / "checkpoint.pt").exists()
    assert q(db, "PRAGMA integrity_check")[0][0] == "ok"

    # the same experiment, never interrupted, in a fresh folder
    ref = tmp_path / "ref"
    (ref / "data").mkdir(parents=True)
    shutil.copy(cfg, ref / "kill.toml")
    # the same machine: the same measured numerics (precision "auto" is timed once per machine)
    shutil.copy(tmp_path / "data" / "numerics.json", ref / "data" / "numerics.json")
    plain = run_cli(ref, "run", "kill.toml", "--only", "k-1")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    ref_db = ref / "runs" / "transferlab.db"
    kid = after["k-1"]["id"]
    cols = "val_acc, test_acc, test_acc_no_tta, confusion, best_epoch"
    got = q(db, f"SELECT {cols} FROM results WHERE exp_id = ?", kid)
    want = q(ref_db, f"SELECT {cols} FROM results WHERE exp_id = ?", kid)
    assert got == want and got
    losses = "SELECT epoch, train_loss, train_acc, val_acc, val_loss, lr FROM epochs WHERE exp_id = ? ORDER BY epoch"
    assert q(db, losses, kid) == q(ref_db, losses, kid)
    assert len(q(db, losses, kid)) == 5
    a, b = _state(exp_dir / "model.pt"), _state(ref / "runs" / "kill" / kid / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


GRADUAL = """
[[experiment]]
name = "g"
model = "efficientnet_lite0"
regime = "gradual"
gradual_head_epochs = 2
resolution = 32
batch_size = 8
head = { kind = "mlp", hidden = [32], dropout = 0.5 }
optimizer = { name = "adamw", lr = 0.002 }
"""


@pytest.mark.parametrize("stop_after", [1, 2])
def test_interrupted_gradual_run_with_dropout_resumes_bitwise(tmp_path, monkeypatch, capsys,
                                                             stop_after):
    """Ctrl-C after epoch 1 (head phase) or 2 (just before unfreezing): the resumed run draws
    the same dropout masks, augmentations and batches as one that never stopped."""
    runs = {}
    for which in ("interrupted", "plain"):
        d = tmp_path / which
        d.mkdir()
        quick_config(d / "g.toml", name="grad", data="synthetic:8", epochs=4, body=GRADUAL)
        runs[which] = d
    real_add = Store.add_epoch

    def ctrl_c_after(self, exp_id, row):
        real_add(self, exp_id, row)
        if row["epoch"] == stop_after:
            raise KeyboardInterrupt

    monkeypatch.setattr(Store, "add_epoch", ctrl_c_after)
    with pytest.raises(KeyboardInterrupt):
        main_in(runs["interrupted"], monkeypatch, capsys, "run", "g.toml")
    capsys.readouterr()
    db = runs["interrupted"] / "runs" / "transferlab.db"
    e = by_name(db)["g"]
    assert e["status"] == "pending" and "interrupted" in e["reason"]
    monkeypatch.setattr(Store, "add_epoch", real_add)
    rc, out, err = main_in(runs["interrupted"], monkeypatch, capsys, "run", "g.toml")
    assert rc == 0, out + err
    assert f"resuming from checkpoint after epoch {stop_after}" in out
    (runs["plain"] / "data").mkdir(exist_ok=True)  # the same machine: the same measured numerics
    shutil.copy(runs["interrupted"] / "data" / "numerics.json", runs["plain"] / "data")
    rc, out, err = main_in(runs["plain"], monkeypatch, capsys, "run", "g.toml")
    assert rc == 0, out + err
    ref_db = runs["plain"] / "runs" / "transferlab.db"
    cols = "SELECT val_acc, test_acc, test_acc_no_tta, confusion, best_epoch FROM results"
    assert q(db, cols) == q(ref_db, cols)
    rows = "SELECT epoch, phase, train_loss, train_acc, val_acc, val_loss, lr FROM epochs ORDER BY epoch"
    assert q(db, rows) == q(ref_db, rows) and len(q(db, rows)) == 4
    gid = by_name(db)["g"]["id"]
    a = _state(runs["interrupted"] / "runs" / "grad" / gid / "model.pt")
    b = _state(runs["plain"] / "runs" / "grad" / gid / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_interrupted_before_the_result_is_stored_does_not_retrain(tmp_path, monkeypatch, capsys):
    quick_config(tmp_path / "f.toml", epochs=2)

    def stop(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(Store, "finish", stop)
    with pytest.raises(KeyboardInterrupt):
        main_in(tmp_path, monkeypatch, capsys, "run", "f.toml")
    capsys.readouterr()
    monkeypatch.undo()
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "f.toml")
    assert rc == 0, out + err
    assert "resuming from checkpoint after epoch 2" in out and "epoch   1/2" not in out
    e = by_name(tmp_path / "runs" / "transferlab.db")["main"]
    assert e["status"] == "done" and e["attempts"] == 2
    assert not list((tmp_path / "runs").rglob("checkpoint.pt"))


def test_checkpoint_write_that_dies_leaves_previous_intact(tmp_path, monkeypatch):
    path = tmp_path / "run" / "checkpoint.pt"
    util.atomic_save({"epoch": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def half_then_enospc(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_enospc)
    with pytest.raises(OSError) as e:
        util.atomic_save({"epoch": 2, "w": torch.zeros(3)}, path)
    assert e.value.errno == errno.ENOSPC
    monkeypatch.setattr(torch, "save", real_save)

    def no_rename(src, dst):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError):
        util.atomic_save({"epoch": 3, "w": torch.zeros(3)}, path)
    monkeypatch.undo()

    ck = util.safe_load(path)
    assert ck["epoch"] == 1 and torch.equal(ck["w"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]  # no temp files left


# ------------------------------------------------------------------ parallel runners

def test_parallel_runners_share_the_grid(tmp_path):
    cfg = quick_config(tmp_path / "par.toml", name="par", epochs=2, body=grid("p", range(4)))
    procs = [popen(tmp_path, "run", cfg, out=tmp_path / f"r{i}.log") for i in range(2)]
    codes = [p.wait(timeout=1800) for p in procs]
    logs = [(tmp_path / f"r{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], "\n".join(logs)
    db = tmp_path / "runs" / "transferlab.db"
    exps = by_name(db)
    assert sorted(exps) == [f"p-{s}" for s in range(4)]
    for name, e in exps.items():
        assert e["status"] == "done" and e["attempts"] == 1, e
        starts = sum(len(re.findall(rf"^\[\d+/4\] {name}  \(id", log, re.M)) for log in logs)
        assert starts == 1, f"{name} started {starts} times"
    text = "".join(logs)
    assert len(re.findall(r"epoch   1/2", text)) == 4 and len(re.findall(r"epoch   2/2", text)) == 4
    assert q(db, "SELECT count(*) FROM epochs")[0][0] == 8
    assert q(db, "PRAGMA integrity_check")[0][0] == "ok"


def test_claim_of_a_dead_runner_is_taken_over(tmp_path):
    st = Store(tmp_path / "s.db")
    host = socket.gethostname()
    for i in range(5):
        st.register(f"e{i}", f"e{i}", {})

    def held_by(exp_id, owner, heartbeat):
        st.db.execute("UPDATE experiments SET status='running', owner=?, heartbeat=?, attempts=1 "
                      "WHERE id=?", (owner, heartbeat, exp_id))

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    held_by("e0", f"{host}:{gone.pid}", time.time())  # process gone
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        held_by("e1", f"{host}:{alive.pid}", time.time())  # a live runner
        deadline = time.time() + 30
        while "Z" not in Path(f"/proc/{zombie.pid}/stat").read_text().rpartition(")")[2][:3]:
            assert time.time() < deadline
            time.sleep(0.05)
        held_by("e2", f"{host}:{zombie.pid}", time.time())  # killed, not yet reaped
        held_by("e3", "elsewhere:123", time.time() - 10 * store_mod.LEASE_SECONDS)  # stale lease
        held_by("e4", "elsewhere:123", time.time())  # another machine, fresh heartbeat
        me = f"{host}:{os.getpid()}"
        assert st.claim("e0", me) and st.get("e0")["attempts"] == 2
        assert not st.claim("e1", me)
        assert st.claim("e2", me)
        assert st.claim("e3", me)
        assert not st.claim("e4", me)
        assert st.get("e0")["owner"] == me
    finally:
        alive.kill()
        alive.wait()
        zombie.wait()
        st.close()


# ------------------------------------------------------------------ bad input

def test_unknown_model_suggests_close_names(tmp_path, monkeypatch, capsys, prior):
    quick_config(tmp_path / "bad.toml", body='\n[[experiment]]\nname = "x"\nmodel = "efficientnet_lite"\n'
                 'regime = "full"\n')
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "bad.toml")
    assert rc != 0
    assert "unknown model 'efficientnet_lite'" in err and "efficientnet_lite0" in err
    assert "bad.toml" in err and "transferlab models" in err
    prior()


@pytest.mark.parametrize("body, needles", [
    ('\n[[experiment]]\nname = "x"\nepochz = 3\n', ["unknown key 'epochz'", "Did you mean epochs",
                                                     "Valid keys:", "[[experiment]] #1"]),
    ('\n[[experiment]]\nname = "x"\nepochs = "three"\n', ["epochs must be int", "'three'"]),
    ('\n[[experiment]]\nname = "x"\nregime = "partial"\n', ["regime = 'partial' is not valid",
                                                          "linear, last:K, full, scratch, gradual"]),
    ('\n[[experiment]]\nname = "x"\noptimizer = { name = "adam" }\n',
     ["optimizer.name = 'adam' is not valid", "sgd, adamw"]),
    ('\n[trainer]\nlr = 1\n', ["top level", "unknown key 'trainer'", "Valid keys:"]),
], ids=["misspelt-key", "ill-typed", "bad-regime", "bad-optimizer", "unknown-table"])
def test_bad_config_keys_name_key_file_and_choices(tmp_path, monkeypatch, capsys, prior, body,
                                                   needles):
    quick_config(tmp_path / "bad.toml", body=body)
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "bad.toml")
    assert rc == 2
    assert "bad.toml" in err
    for n in needles:
        assert n in err, err
    prior()


def test_missing_data_path(tmp_path, monkeypatch, capsys, prior):
    quick_config(tmp_path / "bad.toml", data="imagefolder:no/such/folder")
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "bad.toml")
    assert rc == 2
    assert "no/such/folder does not exist" in err and "train/<class>/" in err
    prior()


def test_train_and_test_classes_differ(tmp_path, monkeypatch, capsys, prior):
    folder = image_folder(tmp_path / "imgs")
    shutil.move(folder / "test" / "dog", folder / "test" / "wolf")
    quick_config(tmp_path / "bad.toml", data=f"imagefolder:{folder}")
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "bad.toml")
    assert rc == 2
    assert "class folders differ" in err and "only in train: ['dog']" in err
    assert "only in test: ['wolf']" in err and "same class folders" in err
    # not marked failed by a data problem (fixing the data is enough), and the claim is released
    assert by_name(tmp_path / "runs" / "transferlab.db")["main"]["status"] == "pending"
    prior()


def test_empty_class_folder(tmp_path, monkeypatch, capsys, prior):
    folder = image_folder(tmp_path / "imgs")
    for f in (folder / "train" / "dog").iterdir():
        f.unlink()
    (folder / "train" / "dog" / "notes.txt").write_text("not an image")
    quick_config(tmp_path / "bad.toml", data=f"imagefolder:{folder}")
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "bad.toml")
    assert rc == 2
    assert "train/dog holds no images" in err and "add images or remove the folder" in err
    prior()


def test_corrupt_and_truncated_images_named_or_skipped(tmp_path, monkeypatch, capsys, prior):
    folder = image_folder(tmp_path / "imgs")
    good = (folder / "train" / "cat" / "0.png").read_bytes()
    (folder / "train" / "cat" / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "test" / "dog" / "garbage.jpg").write_bytes(b"\x00not a jpeg at all" * 10)
    quick_config(tmp_path / "bad.toml", data=f"imagefolder:{folder}")
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "bad.toml")
    assert rc == 2
    assert "cannot decode image" in err and "truncated.png" in err and "--skip-bad-images" in err
    prior()
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "bad.toml", "--skip-bad-images")
    assert rc == 0, out + err
    assert "2 unreadable images skipped" in out
    assert "train 10, val 2, test 6" in out  # 13 + 7 files, one bad in each split
    prior()


def test_non_image_files_are_ignored(tmp_path, monkeypatch, capsys, prior):
    folder = image_folder(tmp_path / "imgs")
    for p in ("train/cat/.DS_Store", "train/cat/Thumbs.db", "train/dog/labels.csv",
              "test/cat/README.md", "README.txt", "train/notes.txt", "test/dog/._0.png"):
        (folder / p).write_bytes(b"\x00\x01 not an image")
    quick_config(tmp_path / "ok.toml", data=f"imagefolder:{folder}")
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "ok.toml")
    assert rc == 0, out + err
    assert "train 10, val 2, test 6" in out and "unreadable" not in out
    prior()


def test_image_modes_are_converted_to_rgb(tmp_path):
    from transferlab.data import DataSpec, make_splits
    from PIL import Image
    rng = np.random.default_rng(1)
    root = tmp_path / "imgs"
    for split, n in (("train", 4), ("test", 2)):
        for cls in ("a", "b"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                rgb = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(rgb[..., 0]).save(d / f"gray{i}.png")  # L
                Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(d / f"rgba{i}.png")
                Image.fromarray(rgb).convert("P").save(d / f"pal{i}.png")
                pt = Image.fromarray(rgb).convert("P")
                pt.info["transparency"] = 0
                pt.save(d / f"paltr{i}.png", transparency=0)
                Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(d / f"g16_{i}.png")
                Image.fromarray(rgb).convert("LA").save(d / f"la{i}.png")
                Image.fromarray(rgb).convert("CMYK").save(d / f"cmyk{i}.jpg")
                Image.fromarray(rgb).save(d / f"rgb{i}.bmp")
    spec = DataSpec(source=f"imagefolder:{root}", val_fraction=0.25)
    s = make_splits(spec, tmp_path / "data")
    for split in ("train", "val", "test"):
        assert s.x[split].dtype == torch.uint8 and s.x[split].shape[1:] == (20, 20, 3)
    assert len(s.y["train"]) + len(s.y["val"]) == 2 * 4 * 8 and len(s.y["test"]) == 2 * 2 * 8
    assert not s.skipped
    # 16-bit: full range mapped to 8 bits, not clipped at 255
    from transferlab.data import decode_image
    img16 = np.array([[0, 65535], [32896, 257]], np.uint16)
    import io
    b = io.BytesIO()
    Image.fromarray(img16).save(b, "PNG")
    arr = decode_image(b.getvalue(), "x.png")
    assert arr.shape == (2, 2, 3) and arr[0, 0, 0] == 0 and arr[0, 1, 0] == 255 and arr[1, 1, 0] == 1


def test_weights_unreachable_offline_say_where_and_how(tmp_path, prior):
    quick_config(tmp_path / "hub.toml", data="synthetic:8",
                 body='\n[[experiment]]\nname = "hub"\nmodel = "resnet18"\nregime = "linear"\n'
                      '\n[[experiment]]\nname = "after"\nseed = 5\n')
    res = run_cli(tmp_path, "run", "hub.toml", timeout=1800)
    assert res.returncode == 0  # skipped, not failed: nothing here can fetch them
    out = res.stdout
    assert "SKIPPED: no ImageNet weights for timm model 'resnet18'" in out
    assert "timm/resnet18" in out  # which hub repo
    assert 'weights = "file:PATH"' in out and "pretrained=True" in out  # how to supply them
    exps = by_name(tmp_path / "runs" / "transferlab.db")
    assert exps["hub"]["status"] == "skipped" and "timm/resnet18" in exps["hub"]["reason"]
    assert exps["after"]["status"] == "done"  # the study went on
    status = run_cli(tmp_path, "status", "hub.toml", timeout=600).stdout
    assert "hub skipped: no ImageNet weights" in status
    prior()


def test_nan_loss_fails_the_experiment_and_the_study_goes_on(tmp_path, monkeypatch, capsys, prior):
    quick_config(tmp_path / "nan.toml", epochs=2, body=(
        '\n[[experiment]]\nname = "boom"\noptimizer = { lr = 1e6 }\nlabel_smoothing = 0.0\n'
        '\n[[experiment]]\nname = "fine"\n'))
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "nan.toml")
    assert rc == 1
    exps = by_name(tmp_path / "runs" / "transferlab.db")
    assert exps["boom"]["status"] == "failed"
    assert re.search(r"loss became (nan|inf)", exps["boom"]["reason"])
    assert "lower optimizer.lr" in exps["boom"]["reason"]
    assert exps["fine"]["status"] == "done"
    assert "1 ran" in out and "1 failed" in out
    prior()


def test_cuda_oom_fails_with_a_batch_size_hint_and_the_study_goes_on(tmp_path, monkeypatch,
                                                                     capsys, prior):
    from transferlab import experiment
    real_run = experiment.run

    def oom_for_big(spec, *a, **k):
        if spec.name == "big":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_run(spec, *a, **k)

    monkeypatch.setattr(experiment, "run", oom_for_big)
    quick_config(tmp_path / "oom.toml", body=(
        '\n[[experiment]]\nname = "big"\nbatch_size = 64\n\n[[experiment]]\nname = "small"\n'))
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "oom.toml")
    assert rc == 1
    exps = by_name(tmp_path / "runs" / "transferlab.db")
    assert exps["big"]["status"] == "failed"
    assert "out of memory at batch_size 64" in exps["big"]["reason"]
    assert "lower batch_size" in exps["big"]["reason"] and "--retry-failed" in exps["big"]["reason"]
    assert exps["small"]["status"] == "done"
    prior()


# ------------------------------------------------------------------ hostile files and names

def test_every_torch_load_is_weights_only():
    calls = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(", text):
            depth, i = 1, m.end()
            while depth:
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            calls.append((path.name, text[m.start():i]))
        assert not re.search(r"\bpickle\.loads?\(|\bload\(.*weights_only\s*=\s*False", text), path
    assert calls, "no torch.load found at all"
    for name, call in calls:
        assert "weights_only=True" in call, f"{name}: {call}"


class _Payload:
    """Unpickling this makes a directory: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _evil_files(tmp: Path, marker: Path) -> list[Path]:
    zipped = tmp / "evil.pt"
    torch.save({"conv1.weight": _Payload(marker)}, zipped)
    legacy = tmp / "evil.pkl"
    with open(legacy, "wb") as f:
        pickle.dump({"conv1.weight": _Payload(marker)}, f, protocol=2)
    return [zipped, legacy]


def test_malicious_weights_file_is_refused(tmp_path, monkeypatch, capsys, prior):
    marker = tmp_path / "PAYLOAD_RAN"
    for i, evil in enumerate(_evil_files(tmp_path, marker)):
        cfg = quick_config(tmp_path / "evil.toml", body=(
            f'\n[[experiment]]\nname = "evil{i}"\nmodel = "resnet18"\nregime = "full"\n'
            f'weights = "file:{evil}"\n'))
        rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", cfg.name)
        assert rc == 1
        assert f"refusing to load {evil}" in out and "could run code" in out
        assert not marker.exists()
        e = by_name(tmp_path / "runs" / "transferlab.db")[f"evil{i}"]
        assert e["status"] == "failed" and "refusing to load" in e["reason"]
    prior()


def test_malicious_checkpoint_is_refused(tmp_path, monkeypatch, capsys, prior):
    from transferlab.config import load_study
    from transferlab.study import experiment_dir
    marker = tmp_path / "PAYLOAD_RAN"
    cfg = quick_config(tmp_path / "ck.toml", epochs=2)
    monkeypatch.chdir(tmp_path)
    from transferlab.data import fingerprint
    study = load_study(cfg, fingerprint=fingerprint)
    exp_dir = experiment_dir(study, study.experiments[0])
    exp_dir.mkdir(parents=True)
    torch.save({"epoch": 1, "model": {}, "track": _Payload(marker)}, exp_dir / "checkpoint.pt")
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", cfg.name)
    assert rc == 1
    assert "refusing to load" in out and "checkpoint.pt" in out
    assert not marker.exists()
    prior()


@pytest.mark.parametrize("where, toml", [
    ("experiment", '\n[[experiment]]\nname = "../x"\n'),
    ("experiment", '\n[[experiment]]\nname = "/tmp/x"\n'),
    ("experiment", '\n[[experiment]]\nname = "a/../../b"\n'),
    ("grid", '\n[[grid]]\nname = "g-{weights}"\nweights = ["file:../../x"]\n'),
    ("auto name", '\n[[experiment]]\nmodel = "timm:../../x"\n'),
], ids=["dotdot", "absolute", "nested", "grid-template", "auto-name"])
def test_experiment_names_cannot_escape_the_runs_directory(tmp_path, monkeypatch, capsys, prior,
                                                           where, toml):
    quick_config(tmp_path / "esc.toml", body=toml)
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "esc.toml")
    assert rc == 2
    assert "is not allowed" in err and "folder name under the runs directory" in err
    assert not any(p.name == "x" or p.name == "b" for p in tmp_path.rglob("*"))
    prior()


def test_study_name_cannot_escape_the_runs_directory(tmp_path, monkeypatch, capsys, prior):
    quick_config(tmp_path / "esc.toml", name="../../outside")
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "esc.toml")
    assert rc == 2 and "name '../../outside' is not allowed" in err
    from transferlab.config import ExperimentSpec, parse_study
    from transferlab.study import experiment_dir
    study = parse_study({"study": {"name": "ok"}, "experiment": [{"model": "baseline",
                         "regime": "scratch"}]}, base_dir=tmp_path)
    sneaky = ExperimentSpec(name="../../x", model="baseline")  # built past the config checks
    root = (tmp_path / "runs" / "ok").resolve()
    assert experiment_dir(study, sneaky) == root / sneaky.id  # the folder is the id, not the name
    prior()


def test_store_from_a_newer_transferlab_is_refused(tmp_path, monkeypatch, capsys, prior):
    db = tmp_path / "runs" / "transferlab.db"
    con = sqlite3.connect(db)
    con.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    con.commit()
    con.close()
    quick_config(tmp_path / "s.toml")
    for args in (("run", "s.toml"), ("status",), ("report", "s.toml")):
        rc, out, err = main_in(tmp_path, monkeypatch, capsys, *args)
        assert rc == 2
        assert f"schema {SCHEMA_VERSION + 1}" in err and "upgrade transferlab" in err
    con = sqlite3.connect(db)
    con.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
    con.commit()
    con.close()
    prior()


def test_foreign_sqlite_and_non_database_files_are_refused(tmp_path, monkeypatch, capsys):
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE customers (id INTEGER, name TEXT)")
    con.execute("INSERT INTO customers VALUES (1, 'ada')")
    con.commit()
    con.close()
    before = other.read_bytes()
    quick_config(tmp_path / "s.toml")
    for args in (("run", "s.toml", "--store", other), ("status", "--store", other)):
        rc, out, err = main_in(tmp_path, monkeypatch, capsys, *args)
        assert rc == 2 and "is not a transferlab store" in err and "--store" in err
    assert other.read_bytes() == before  # not even switched to WAL
    assert q(other, "PRAGMA journal_mode")[0][0] == "delete"

    text = tmp_path / "notes.db"
    text.write_text("these are my notes, not a database\n" * 50)
    before = text.read_bytes()
    for args in (("run", "s.toml", "--store", text), ("status", "--store", text)):
        rc, out, err = main_in(tmp_path, monkeypatch, capsys, *args)
        assert rc == 2 and "is not a transferlab store" in err
    assert text.read_bytes() == before
