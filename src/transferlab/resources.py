"""The package's own files: the shipped study configs and the notebook template.

They live inside the package (src/transferlab/configs, src/transferlab/notebooks) so that an
installed wheel carries them; this module is the one place that finds them, through
importlib.resources, and the one place that turns a config argument (a path, or the name of a
shipped config) into a file.
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from .errors import UserError

NOTEBOOK_NAME = "cifar10_transfer_learning.ipynb"


def package_dir() -> Path:
    """The installed package's folder (a regular directory: pip never installs it zipped)."""
    root = files("transferlab")
    if not isinstance(root, Path):
        raise UserError(f"transferlab is imported from {root}, not a folder; its configs and "
                        "notebook cannot be read there: pip install transferlab")
    return root


def shipped_configs() -> dict[str, Path]:
    """Shipped study configs by name (the file's stem), in name order."""
    return {p.stem: p for p in sorted((package_dir() / "configs").glob("*.toml"),
                                      key=lambda p: p.stem)}


def notebook_template() -> Path:
    """The study notebook that `transferlab notebook` executes."""
    path = package_dir() / "notebooks" / NOTEBOOK_NAME
    if not path.is_file():
        raise UserError(f"the notebook template {path} is missing from the installed package; "
                        "reinstall it: pip install --force-reinstall transferlab")
    return path


def is_shipped(arg) -> bool:
    """True if `arg` is the bare name of a shipped config and no file of that name exists here
    (a file wins)."""
    name = str(arg)
    return (Path(name).name == name and not Path(name).exists()
            and name.removesuffix(".toml") in shipped_configs())


def study_config(arg) -> Path:
    """The config file that `arg` means: an existing file, else a shipped config by name
    (`cifar10-quick` or `cifar10-quick.toml`). A relative path is the current folder's."""
    path = Path(arg)
    if path.is_file():
        return path
    shipped = shipped_configs()
    if is_shipped(arg):
        return shipped[str(arg).removesuffix(".toml")]
    hint = ""
    if path.stem in shipped:  # e.g. configs/cifar10-quick.toml from an older checkout
        hint = f"; the shipped config of that name is `{path.stem}`"
    raise UserError(f"config {arg} not found: no such file, and no shipped config of that name"
                    f"{hint}. Shipped: {', '.join(shipped)} (transferlab configs lists them; "
                    "transferlab init NAME copies one to edit)")


def checkout_root(start: Path) -> Path | None:
    """The repository checkout that folder `start` lies in, if any."""
    for folder in [start, *start.parents]:
        if (folder / "pyproject.toml").is_file() and (folder / "src" / "transferlab").is_dir():
            return folder
    return None


def default_workdir(start: Path | None = None) -> Path:
    """Where a notebook opened by hand resolves relative paths (runs/, the store, reports): the
    checkout's root when it is opened inside one (as `make run` does), else its own folder."""
    start = (start or Path.cwd()).resolve()
    return checkout_root(start) or start
