"""The environment record names the commit and whether the checkout had local changes; without
git, or outside a repository, it says "unknown" and never fails."""
import shutil
import subprocess
from pathlib import Path

import pytest

from transferlab.report import ru
from transferlab import util

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")


def _git(repo, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                   check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    r = tmp_path / "repo"
    (r / "pkg").mkdir(parents=True)
    (r / "reports").mkdir()
    (r / "pkg" / "mod.py").write_text("x = 1\n")
    (r / "reports" / "study.html").write_text("<html></html>\n")
    (r / ".gitignore").write_text("runs/\n")
    _git(r, "init", "-q")
    _git(r, "add", "-A")
    _git(r, "commit", "-qm", "first")
    return r


@needs_git
def test_clean_then_changed_checkout(repo):
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, text=True,
                          capture_output=True).stdout.strip()
    src = repo / "pkg" / "mod.py"
    assert util.git_state(src) == (head, False)
    (repo / "reports" / "study.html").write_text("<html>regenerated</html>\n")
    (repo / "runs").mkdir()
    (repo / "runs" / "store.db").write_text("ignored")
    assert util.git_state(src) == (head, False)  # the report's own files and ignored ones
    src.write_text("x = 2\n")
    assert util.git_state(src) == (head, True)
    _git(repo, "checkout", "--", "pkg/mod.py")
    (repo / "pkg" / "new.py").write_text("y = 1\n")  # untracked code counts too
    assert util.git_state(src) == (head, True)


@needs_git
def test_outside_a_repository_or_untracked_is_unknown(tmp_path, repo):
    loose = tmp_path / "site-packages" / "transferlab" / "util.py"
    loose.parent.mkdir(parents=True)
    loose.write_text("")
    assert util.git_state(loose) == ("unknown", "unknown")
    inside = repo / ".venv" / "lib" / "transferlab" / "util.py"  # installed inside a checkout
    inside.parent.mkdir(parents=True)
    inside.write_text("")
    (repo / ".gitignore").write_text("runs/\n.venv/\n")
    assert util.git_state(inside) == ("unknown", "unknown")


def test_without_git_it_says_unknown(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on the PATH
    assert util.git_state(Path(util.__file__)) == ("unknown", "unknown")


def test_environment_record_and_its_text():
    env = util.environment()
    assert "git" in env and env["git_dirty"] in (True, False, "unknown")
    assert ru.git_text({"git": "abc1234", "git_dirty": True}) == \
        "коммит abc1234, локальные изменения: есть"
    assert ru.git_text({"git": "abc1234", "git_dirty": False}).endswith("нет")
    assert ru.git_text({}) == "коммит неизвестен, локальные изменения: неизвестно"  # older records
