"""The package as pip installs it: the wheel is built from the repository's files, installed
without dependencies into a temporary target, and used from an empty folder by a Python that
has no checkout on its path (a throwaway venv that sees only that target and the test
environment's third-party packages). A module, config or notebook missing from the wheel fails
here. Also: the notebook's first cell installs the package from a clone with its one %pip line.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from transferlab.resources import package_dir, shipped_configs

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--data", "synthetic", "--subset", "4", "--epochs", "1"]


def _run(cmd, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          env=env or _env(), **kw)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _python_without_checkout(venv: Path, *paths: Path) -> Path:
    """A venv whose Python sees `paths` and this environment's third-party packages, but no
    checkout: the editable install's .pth is in that site-packages, and a folder named in a
    .pth file is added without reading the .pth files inside it."""
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
                .stdout.strip())
    deps = sysconfig.get_paths()["purelib"]
    (site / "transferlab-test.pth").write_text("\n".join([*map(str, paths), deps]) + "\n")
    return python


def _env(data_root: Path | None = None, **extra) -> dict:
    """This environment without a path to the package; Jupyter's data files (nbconvert's
    templates) are found under the prefix of the environment that holds the dependencies, as
    they would be in a venv that pip installed everything into."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRANSFERLAB_STORE")}
    env["JUPYTER_PATH"] = os.pathsep.join(
        [str(Path(sys.prefix) / "share" / "jupyter"), *filter(None, [env.get("JUPYTER_PATH")])])
    if data_root is not None:
        env["TRANSFERLAB_DATA"] = str(data_root)
    env["OMP_NUM_THREADS"] = "1"  # tiny models on a busy 2-core box: a second thread spins
    return {**env, **extra}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The repository's package sources copied (a build writes build/ and *.egg-info beside
    them) and the wheel built from them offline."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    (source / "src").mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "src" / "transferlab", source / "src" / "transferlab",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
          "-w", base / "dist", source])
    (wheel,) = (base / "dist").glob("transferlab-*.whl")
    return {"base": base, "source": source, "wheel": wheel}


@pytest.fixture(scope="module")
def installed(built):
    target = built["base"] / "target"
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", target,
          built["wheel"]])
    python = _python_without_checkout(built["base"] / "venv", target)
    return {"target": target, "python": python, "script": target / "bin" / "transferlab"}


def test_the_wheel_holds_every_module_config_and_the_notebook(built):
    names = set(zipfile.ZipFile(built["wheel"]).namelist())
    src = ROOT / "src" / "transferlab"
    want = {f"transferlab/{p.relative_to(src).as_posix()}" for p in src.rglob("*")
            if p.is_file() and p.suffix in (".py", ".toml", ".ipynb")}
    assert want and want <= names, sorted(want - names)
    assert {f"transferlab/configs/{n}.toml" for n in shipped_configs()} <= names
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "transferlab = transferlab.cli:main" in zipfile.ZipFile(built["wheel"]).read(entry).decode()


def test_the_installed_package_is_the_wheel_not_the_checkout(installed, tmp_path):
    out = _run([installed["python"], "-c", "import json, sys, transferlab; "
                "print(json.dumps([transferlab.__file__, sys.path]))"], cwd=tmp_path).stdout
    where, path = json.loads(out)
    assert Path(where).is_relative_to(installed["target"])
    assert not [p for p in path if p and Path(p).resolve().is_relative_to(ROOT / "src")]
    assert Path(package_dir()).is_relative_to(ROOT / "src")  # this process: the checkout


@pytest.fixture(scope="module")
def study(installed, tmp_path_factory, data_root):
    """From an empty folder: the quick study by name on tiny synthetic data, then its report."""
    work = tmp_path_factory.mktemp("empty-folder")

    def tl(*args):
        return _run([installed["python"], installed["script"], *args], cwd=work,
                    env=_env(data_root)).stdout
    ran = tl("run", "cifar10-quick", *TINY)
    made = tl("notebook", "cifar10-quick", *TINY)
    return {"work": work, "tl": tl, "ran": ran, "made": made}


def test_run_and_notebook_from_an_empty_folder(study):
    work = study["work"]
    assert "store runs/transferlab.db" in study["ran"] and " 0 failed" in study["ran"]
    assert study["made"].split() == ["reports/cifar10-quick.ipynb", "reports/cifar10-quick.html",
                                     "reports/cifar10-quick-accuracy.png",
                                     "reports/cifar10-quick-accuracy.svg"]
    page = (work / "reports" / "cifar10-quick.html").read_text(encoding="utf-8")
    assert "Сравнительная диаграмма" in page and page.count("data:image/png;base64,") >= 5
    # the kernel ran the installed copy: it belongs to no git checkout
    assert "код          : transferlab, коммит неизвестен" in page
    assert sorted(p.name for p in work.iterdir()) == ["reports", "runs"]


def test_status_report_predict_export_from_an_empty_folder(study):
    tl, work = study["tl"], study["work"]
    assert "lite0-full" in tl("status")  # the last study run, from the store alone
    report = json.loads(tl("report", "cifar10-quick", *TINY, "--json"))
    final = report["final"]["name"]
    assert final.startswith("final-") and report["answer_test_acc"] is not None
    Image.new("RGB", (48, 48), (20, 120, 200)).save(work / "photo.png")
    assert "1 images predicted" in tl("predict", "cifar10-quick", "photo.png", *TINY)
    out = tl("export", final, "cifar10-quick", *TINY, "--format", "torchscript")
    assert f"torchscript model of {final}: checked on" in out
    assert (work / "exports").is_dir() and any((work / "exports").iterdir())


def test_init_from_the_wheel_copies_the_shipped_config(installed, tmp_path, data_root):
    _run([installed["python"], installed["script"], "init", "cifar10-t4", "my.toml"],
         cwd=tmp_path, env=_env(data_root))
    shipped = installed["target"] / "transferlab" / "configs" / "cifar10-t4.toml"
    assert (tmp_path / "my.toml").read_text() == shipped.read_text()


def test_the_notebook_install_cell_installs_from_the_clone(built, tmp_path, data_root):
    """Its one %pip line, run by IPython where transferlab is not importable, in the notebooks
    folder of a clone: pip builds that clone and the import then succeeds. PIP_* variables keep
    it offline and in a temporary target (PIP_NO_BUILD_ISOLATION=0 turns isolation off)."""
    target = tmp_path / "target"
    target.mkdir()  # as a site-packages folder would be
    python = _python_without_checkout(tmp_path / "venv")
    script = ("import sys, nbformat\n"
              "from IPython.core.interactiveshell import InteractiveShell\n"
              "sys.path.insert(0, sys.argv[1])  # where PIP_TARGET puts the package\n"
              "cell = nbformat.read(sys.argv[2], as_version=4).cells[0]\n"
              "InteractiveShell.instance().run_cell(cell.source).raise_error()\n"
              "print('imported', sys.modules['transferlab'].__file__)\n")
    notebooks = built["source"] / "src" / "transferlab" / "notebooks"
    out = _run([python, "-c", script, target, notebooks / "cifar10_transfer_learning.ipynb"],
               cwd=notebooks, env=_env(data_root, PIP_TARGET=str(target), PIP_NO_DEPS="1",
                                       PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0")).stdout
    assert f"imported {target / 'transferlab' / '__init__.py'}" in out
    assert (target / "transferlab" / "configs" / "cifar10-quick.toml").is_file()
