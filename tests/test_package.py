"""The shipped configs and the notebook as a user meets them: by name, listed, copied, and the
notebook opened by hand resolving its relative paths the same way wherever it is opened."""
from __future__ import annotations

import textwrap
from pathlib import Path

import nbformat
import pytest
from PIL import Image

from transferlab.report import notebook
from transferlab import resources
from transferlab.config import load_study
from transferlab.errors import UserError
from transferlab.resources import shipped_configs

from conftest import SMOKE


def test_the_shipped_configs_are_in_the_package():
    shipped = shipped_configs()
    assert {"cifar10", "cifar10-quick", "cifar10-t4"} <= set(shipped)
    for path in shipped.values():
        assert path.parent == resources.package_dir() / "configs"
        assert load_study(path, fingerprint=None).experiments
    assert resources.notebook_template().is_file()


def test_a_shipped_config_by_name_keeps_its_runs_in_the_current_folder(workdir):
    study = load_study("cifar10-quick", fingerprint=None)
    assert study.path == shipped_configs()["cifar10-quick"]
    assert Path(study.store) == workdir / "runs" / "transferlab.db"  # not inside the package
    assert study.runs_dir == workdir / "runs"
    assert load_study("cifar10-quick.toml", fingerprint=None).name == "cifar10-quick"


def test_a_file_wins_over_a_shipped_name(workdir):
    (workdir / "cifar10-quick.toml").write_text(textwrap.dedent(SMOKE))
    assert load_study("cifar10-quick.toml", fingerprint=None).name == "smoke"  # the file here
    assert load_study("cifar10-quick", fingerprint=None).name == "cifar10-quick"  # the shipped one
    with pytest.raises(UserError, match="no such file"):
        load_study("elsewhere/cifar10-t4", fingerprint=None)  # a path is never a name


def test_an_unknown_config_names_the_shipped_ones(cli):
    code, _, err = cli("run", "cifar10-quik", "--data", "synthetic")
    assert code == 2
    assert "config cifar10-quik not found" in err
    assert all(name in err for name in shipped_configs()) and "transferlab configs" in err
    code, _, err = cli("status", "configs/cifar10-quick.toml")  # the path before the move
    assert code == 2 and "the shipped config of that name is `cifar10-quick`" in err


def test_configs_lists_each_shipped_config_on_one_line(cli):
    code, out, _ = cli("configs")
    assert code == 0
    lines = [line for line in out.splitlines() if " | models: " in line]
    assert [line.split()[0] for line in lines] == list(shipped_configs())
    for line in lines:
        name = line.split()[0]
        study = load_study(name, fingerprint=None)
        assert f"{len(study.experiments)} experiments" in line and " | size: " in line
        assert all(e.model.split(".")[0] in line for e in study.experiments)
    t4 = next(line for line in lines if line.startswith("cifar10-t4 "))
    assert "T4" in t4 and "resnet50" in t4
    assert "transferlab init NAME" in out


def test_init_writes_a_copy_that_runs(cli, workdir):
    code, out, _ = cli("init", "cifar10-t4", "my.toml")
    assert code == 0 and "transferlab run my.toml" in out
    assert (workdir / "my.toml").read_text() == shipped_configs()["cifar10-t4"].read_text()
    code, _, err = cli("init", "cifar10-t4", "my.toml")
    assert code == 2 and "my.toml exists" in err  # never overwrites an edited copy
    (workdir / "mine").mkdir()
    assert cli("init", "cifar10-quick", "mine")[0] == 0
    assert load_study("mine/cifar10-quick.toml", fingerprint=None).name == "cifar10-quick"
    code, _, err = cli("init", "cifar10-t5")
    assert code == 2 and "cifar10-t4" in err

    tiny = ("--data", "synthetic", "--subset", "4", "--epochs", "1")
    code, out, _ = cli("run", "my.toml", *tiny, "--only", "baseline-cnn")
    assert code == 0 and "store runs/transferlab.db" in out  # as the user would type it
    # the copy is the shipped study until edited: predict by the shipped name finds the model
    img = workdir / "photo.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(img)
    code, out, err = cli("predict", "cifar10-t4", str(img), "--model", "baseline-cnn", *tiny)
    assert code == 0, err
    assert "model baseline-cnn" in out and "1 images predicted" in out


def test_default_workdir_is_the_checkout_root_or_the_folder(tmp_path):
    clone = tmp_path / "clone"
    (clone / "src" / "transferlab" / "notebooks").mkdir(parents=True)
    (clone / "pyproject.toml").write_text("[project]\nname = 'transferlab'\n")
    assert resources.default_workdir(clone / "src" / "transferlab" / "notebooks") == clone
    assert resources.default_workdir(clone) == clone
    (tmp_path / "plain").mkdir()
    assert resources.default_workdir(tmp_path / "plain") == tmp_path / "plain"


# ------------------------------------------------------------------ the notebook by hand

def _open_by_hand(cwd: Path, params: dict) -> str:
    """The template's cells up to the one that settles the working folder, run in a kernel
    started in `cwd` as Jupyter would, with `params` typed into the parameters; their output."""
    from nbclient import NotebookClient
    nb = nbformat.read(resources.notebook_template(), as_version=4)
    last = next(i for i, c in enumerate(nb.cells) if "StudyView.open(" in c.source)
    nb.cells = nb.cells[:last + 1]
    nb = notebook.inject(nb, params)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(cwd)}}).execute()
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))


def test_notebook_opened_by_hand_resolves_paths_from_the_workdir(tmp_path, data_root):
    """Opened inside a checkout (here from its notebooks folder), relative paths are the
    checkout root's, as for `make run`; with `workdir` set (a persistent disk: Google Drive,
    /kaggle/working) they are that folder's, wherever the notebook itself lies."""
    clone = tmp_path / "clone"
    opened_in = clone / "src" / "transferlab" / "notebooks"
    opened_in.mkdir(parents=True)
    (clone / "pyproject.toml").write_text("[project]\nname = 'transferlab'\n")
    (clone / "smoke.toml").write_text(textwrap.dedent(SMOKE))
    out = _open_by_hand(opened_in, {"config": "smoke.toml", "data_root": str(data_root)})
    assert f"рабочий каталог: {clone}\n" in out
    assert "хранилище    : runs/transferlab.db\n" in out  # as typed: relative to the workdir
    assert (clone / "runs" / "transferlab.db").is_file() and not (opened_in / "runs").exists()

    drive, here = tmp_path / "drive" / "transferlab", tmp_path / "colab"
    here.mkdir()
    out = _open_by_hand(here, {"config": "cifar10-quick", "data": "synthetic",
                               "workdir": str(drive), "data_root": str(data_root)})
    assert f"рабочий каталог: {drive}\n" in out and "исследование : cifar10-quick" in out
    assert (drive / "runs" / "transferlab.db").is_file() and not any(here.iterdir())


def test_the_report_shows_a_shipped_configs_own_external_example(workdir):
    """The notebook tells the user how to add their practical-1 result from the config's own
    commented example, for a shipped config named as well as for a file."""
    by_name = notebook.external_example("cifar10-quick")
    assert by_name == notebook.external_example(shipped_configs()["cifar10-quick"])
    assert by_name != notebook.EXTERNAL_EXAMPLE and by_name.startswith("[[external]]")
