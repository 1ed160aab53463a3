"""A study sized by a time budget: the plan's arithmetic, a synthetic study that ends on time,
a budgeted final killed and resumed on a machine of another speed, the grid that cannot fit,
and ids that do not follow measured speed."""
from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from transferlab import cli, plan
from transferlab.config import parse_study
from transferlab.durations import duration_text, parse_budget
from transferlab.errors import UserError
from transferlab.fit import probe
from transferlab.record import BudgetPlan

SRC = Path(__file__).resolve().parents[1] / "src"

STUDY = """
[study]
name = "{name}"
data = "synthetic:24"
{budget}

[study.final]

[defaults]
epochs = 2
batch_size = 16
resolution = 16
optimizer = {{ name = "sgd", lr = 0.05 }}

[[experiment]]
name = "base"
model = "baseline"
regime = "scratch"

[[experiment]]
name = "base-lr"
model = "baseline"
regime = "scratch"
optimizer = {{ name = "sgd", lr = 0.02 }}
"""


def study_file(tmp: Path, name="bud", budget: str | None = '"40s"') -> Path:
    path = tmp / f"{name}.toml"
    path.write_text(STUDY.format(name=name, budget=f"budget = {budget}" if budget else ""))
    return path


def env(tmp: Path, data: str = "data", threads: int = 1) -> dict:
    e = dict(os.environ)
    e.update(TRANSFERLAB_DATA=str(tmp / data), PYTHONUNBUFFERED="1",
             OMP_NUM_THREADS=str(threads), PYTHONPATH=str(SRC) + os.pathsep + e.get("PYTHONPATH", ""))
    return e


def run_cli(tmp: Path, *args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "transferlab", *map(str, args)], cwd=tmp,
                          env=env(tmp, **kw), capture_output=True, text=True, timeout=900)


def final_row(db: Path) -> tuple[str, dict | None, str]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        r = con.execute("SELECT id, details, status FROM experiments WHERE name LIKE 'final-%'"
                        ).fetchone()
    finally:
        con.close()
    if r is None:
        return "", None, ""
    return r[0], json.loads(r[1]) if r[1] else None, r[2]


def report(tmp: Path, cfg: Path) -> dict:
    p = run_cli(tmp, "report", cfg, "--json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


# ------------------------------------------------------------------ durations and config

@pytest.mark.parametrize("text, seconds", [("25m", 1500), ("1h30m", 5400), ("90s", 90),
                                           ("1h 5m 30s", 3930), ("2.5m", 150), ("45min", 2700)])
def test_budget_durations(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["25", "abc", "0m", "", "5 minutes", "m"])
def test_bad_budgets_are_refused(text):
    with pytest.raises(ValueError, match="budget"):
        parse_budget(text)


def test_duration_text():
    assert duration_text(45) == "45 s" and duration_text(750) == "12.5 min"
    assert duration_text(5430) == "1 h 30 min"


def _study(in_file, final=True, **kw):
    raw = {"study": {"data": "synthetic", **({"budget": in_file} if in_file else {}),
                     **({"final": {}} if final else {})},
           "experiment": [{"name": "b", "model": "baseline", "regime": "scratch"}]}
    return parse_study(raw, **kw)


def test_budget_config_errors_name_the_fix():
    with pytest.raises(UserError, match=r"\[study\] budget.*not a duration.*\"25m\""):
        _study("25")
    with pytest.raises(UserError, match=r"sizes the final stage.*add a \[study.final\]"):
        _study("25m", final=False)
    with pytest.raises(UserError, match="--budget"):
        _study(None, budget="soon")


def test_which_setting_wins():
    s = _study("25m")
    assert s.budget == "25m" and not s.notes
    s = _study("25m", epochs=1)  # a quick trial's fixed shape: no budget
    assert s.budget is None and "--epochs 1" in s.notes[0]
    raw = {"study": {"data": "synthetic", "budget": "25m", "final": {"epochs": 2}},
           "experiment": [{"name": "b", "model": "baseline", "regime": "scratch"}]}
    s = parse_study(raw)
    assert s.budget == "25m" and "epochs = 2 is not used" in s.notes[0]
    assert _study(None, budget="1h").budget == "1h"  # --budget without [study] budget


def test_ids_hold_the_budget_not_the_machine():
    from transferlab.final import final_spec
    plain, budgeted = _study(None), _study("25m")
    grid = plain.experiments[0]
    assert grid.id == budgeted.experiments[0].id  # the grid does not move with the budget
    a = final_spec(grid, budgeted.final, None, "25m")
    b = final_spec(grid, budgeted.final, None, "40m")
    assert a.id != b.id != final_spec(grid, plain.final, None).id
    assert a.id == final_spec(grid, budgeted.final, None, "25m").id
    assert "budget" not in json.dumps(grid.to_dict()).replace('"budget": ""', "")


# ------------------------------------------------------------------ the plan's arithmetic

def _part(name, seconds, status="pending"):
    return plan.Part(name, status, seconds, rates={"train": plan.Rate(100.0, "measured now")})


def test_plan_leaves_the_final_what_the_grid_does_not_use():
    eff = plan.Efficiency(0.9, "estimated")
    p = plan.StudyPlan("s", "cpu", [_part("a", 300), _part("b", 100, "done")],
                       _part("final (after the grid)", 400), "dearest", spent_s=50,
                       efficiency=eff, budget="25m", budget_s=1500)
    assert p.grid_left_s == 300  # a finished part costs nothing more
    assert p.margin_s == pytest.approx(0.03 * 1500 + 5)
    assert p.final_left_s == pytest.approx(1500 - 50 - 300 - 50)
    p.check()  # 1100 s left >= the final's 400 s minimum
    tight = plan.StudyPlan("s", "cpu", [_part("a", 1200)], _part("final", 400), "dearest",
                           spent_s=0, efficiency=eff, budget="25m", budget_s=1500)
    with pytest.raises(UserError) as e:
        tight.check()
    msg = str(e.value)
    assert "does not fit" in msg and "a 20.0 min" in msg and "Nothing was run" in msg
    need = 1200 + 50 + 400
    assert f"--budget {math.ceil(need / 60)}m" in msg
    done = plan.StudyPlan("s", "cpu", [_part("a", 1200, "done")], _part("final", 400), "dearest",
                          spent_s=1200, efficiency=eff, budget="25m", budget_s=1500)
    done.check()  # the grid is done: the final runs its minimum rather than lose the grid's time
    assert any("overruns the budget" in line for line in done.lines())


def test_seconds_of_counts_training_scoring_and_features():
    s = parse_study({"study": {"data": "synthetic"}, "experiment": [
        {"name": "f", "model": "baseline", "regime": "scratch", "epochs": 3, "tta": True},
        {"name": "p", "model": "efficientnet_lite0", "regime": "linear", "epochs": 30,
         "probe_wd": [0.0, 0.1], "augment": "flip", "tta": True}]}).experiments
    rates = {"train": plan.Rate(100.0, "measured"), "eval": plan.Rate(1000.0, "measured"),
             "extract": plan.Rate(500.0, "measured")}
    sizes = {"train": 900, "val": 100, "test": 200}
    sec, what = plan.seconds_of(s[0], sizes, rates, eff=0.9)
    # 3 epochs of 900 at 90 img/s, validation each epoch and val + test at the end, 2 views
    assert sec == pytest.approx(3 * 900 / 90 + (3 * 100 + 300) * 2 / 1000)
    assert "3 epoch(s) x 900 images at 90 img/s" in what
    sec, what = plan.seconds_of(s[1], sizes, rates, eff=0.9)
    images = 900 * 2 + 300 * 2
    # 30 head epochs of 1,800 views for each of 2 decays and the one extension often tried
    assert sec == pytest.approx(images / 500 + 30 * 1800 * 3 / plan.HEAD_SAMPLES_PER_S)
    assert f"features of {images:,} images" in what
    rates["head"] = plan.Rate(2000.0, "measured")  # a timed head loop replaces the estimate
    sec, _ = plan.seconds_of(s[1], sizes, rates, eff=0.9)
    assert sec == pytest.approx(images / 500 + 30 * 1800 * 3 / 2000)
    at = plan.scaled(rates, 64, 80)["train"]
    assert at.img_per_s == pytest.approx(64.0) and not at.measured


def test_final_steps_from_the_time_left_and_one_replan():
    fb = plan.FinalBudget("10m", grid_s=200.0, started=time.time(),
                          efficiency=plan.Efficiency(0.9, "measured"))
    fit = plan.FitBudget(fb, img_per_s=90.0, rate_how="timed", reserve_s=10.0,
                         train_images=4500, record=lambda p: None)
    p = fit.plan(steps_per_epoch=71, batch=64)
    left = 600 - 200 - (0.03 * 600 + 5) - 10
    assert p.train_s == pytest.approx(left, abs=0.5)
    assert p.total_steps == pytest.approx(left * 90 / 64, abs=2)
    assert p.epochs == pytest.approx(p.total_steps / 71)
    assert fit.check_step(p) == max(plan.REPLAN_MIN_STEPS, math.ceil(0.03 * p.total_steps))
    assert fit.replan(p, 20, 90.0 * 1.1) is None  # inside the tolerance: the plan stands
    again = fit.replan(p, 20, 60.0)  # a third slower: fewer steps, both figures kept
    assert again.total_steps == pytest.approx(20 + left * 60 / 64, abs=3)
    assert again.replanned["planned_img_per_s"] == 90.0 and again.img_per_s == 60.0
    assert again.replanned["total_steps_before"] == p.total_steps
    assert BudgetPlan.from_dict(json.loads(json.dumps(again.as_dict()))) == again


def test_a_machine_that_slows_down_late_is_replanned_there_once():
    """Later checks catch a loop that slows mid-final: they shorten it when the steps left
    would overrun the time left by more than half the margin, and never lengthen it."""
    fb = plan.FinalBudget("20m", grid_s=200.0, started=time.time(),
                          efficiency=plan.Efficiency(0.9, "measured"))
    fit = plan.FitBudget(fb, img_per_s=100.0, rate_how="timed", reserve_s=10.0,
                         train_images=50000, record=lambda p: None)
    p = fit.plan(steps_per_epoch=391, batch=128)
    checks = fit.check_steps(p)
    assert checks[0] == fit.check_step(p) and checks[1:] == [
        math.ceil(f * p.total_steps) for f in plan.LATE_CHECKS]
    half = p.total_steps // 2
    fit.planned_at -= p.train_s / 2  # half the time gone, half the steps done
    assert fit.replan(p, half, 100.0, late=True) is None  # on time
    assert fit.replan(p, half, 120.0, late=True) is None  # ahead: it ends early, not longer
    assert fit.replan(p, half, 97.0, late=True) is None  # behind by less than half the margin
    slow = fit.replan(p, half, 85.0, late=True)  # 15 % slower for the rest: shortened
    assert slow is not None and slow.total_steps < p.total_steps
    assert slow.total_steps == pytest.approx(half + (p.train_s / 2) * 85 / 128, abs=2)
    assert fit.replan(p, half, 90.0) is None  # the early rule: 10 % off is within its 15 %


def test_an_overrun_grid_still_leaves_the_stated_minimum():
    fb = plan.FinalBudget("1m", grid_s=120.0, started=time.time(),
                          efficiency=plan.Efficiency(0.9, "measured"))
    fit = plan.FitBudget(fb, 90.0, "timed", 1.0, 4500, lambda p: None)
    p = fit.plan(steps_per_epoch=71, batch=64)
    assert plan.MIN_FINAL_EPOCHS == 0.5
    assert p.total_steps == 36 and "overruns its budget" in p.rate_how


# ------------------------------------------------------------------ whole studies

def test_a_one_minute_study_ends_on_time(tmp_path):
    cfg = study_file(tmp_path, budget='"1m"')
    t0 = time.monotonic()
    p = run_cli(tmp_path, "run", cfg)
    wall = time.monotonic() - t0
    assert p.returncode == 0, p.stdout + p.stderr
    assert wall <= 60 * 1.10, f"{wall:.1f}s for a 60 s budget\n{p.stdout}"
    assert wall >= 60 * 0.6, f"the budget was not filled: {wall:.1f}s\n{p.stdout}"
    b = report(tmp_path, cfg)["budget"]
    assert b["budget"] == "1m" and b["actual_steps"] == b["planned_steps"] > 0
    assert b["actual_epochs"] == pytest.approx(b["planned_epochs"], abs=1e-3)
    assert b["grid_seconds"] > 0 and b["final_seconds"] > 0
    assert "budget 1m: the grid took" in p.stdout  # the plan is logged when the final starts
    _, details, status = final_row(tmp_path / "runs" / "transferlab.db")
    assert status == "done" and details["budget_plan"]["total_steps"] == b["planned_steps"]
    con = sqlite3.connect(tmp_path / "runs" / "transferlab.db")
    lr = con.execute("SELECT lr FROM epochs e JOIN experiments x ON e.exp_id = x.id WHERE "
                     "x.name LIKE 'final-%' ORDER BY epoch DESC LIMIT 1").fetchone()[0]
    con.close()
    assert lr < 0.05 * 0.01  # the schedule ended with the planned steps
    _the_views_state_the_budget(tmp_path, cfg, details, b)


def _the_views_state_the_budget(tmp: Path, cfg: Path, details: dict, b: dict) -> None:
    """`show`, the Russian final block and the conclusions give the budget's figures."""
    from transferlab.report import conclusions, ru
    from transferlab.record import Description, Result
    from transferlab.report.tables import Row
    p = run_cli(tmp, "show", details["name"], cfg)
    n = math.ceil(b["planned_steps"] / details["budget_plan"]["steps_per_epoch"])
    assert f"epoch {n:>3}/{n}" in p.stdout and "budget 1m: the grid took" in p.stdout
    res = Result(test_acc=1.0, test_acc_no_tta=1.0, steps=b["actual_steps"])
    row = Row(details["name"], None, "done", "baseline", "scratch", "", None, 1.0, 1.0)
    block = "\n".join(ru.best_block(row, Description.from_dict(details), res,
                                    {"val": 0, "test": 80}))
    assert "бюджет времени" in block and f"{b['planned_steps']} шагов" in block
    final = {"name": details["name"], "parent": "base", "val_acc": None, "test_acc": 1.0,
             "epochs": b["actual_epochs"], "resolution": 16, "train_size": 96, "budget": b}
    text = "\n".join(conclusions.final_section(final, [], {}, {"test": 80}))
    assert "Бюджет времени 1m" in text and f"выполнено {b['actual_steps']}" in text


def test_kill9_during_a_budgeted_final_keeps_the_first_plan(tmp_path):
    cfg = study_file(tmp_path, budget='"40s"')
    db = tmp_path / "runs" / "transferlab.db"
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "transferlab", "run", str(cfg)],
                            cwd=tmp_path, env=env(tmp_path), stdout=log,
                            stderr=subprocess.STDOUT)
    deadline, first = time.time() + 600, None
    while True:
        assert proc.poll() is None, (tmp_path / "first.log").read_text()
        assert time.time() < deadline, "the final never checkpointed an epoch"
        exp_id, details, _ = final_row(db) if db.exists() else ("", None, "")
        ckpt = tmp_path / "runs" / "bud" / exp_id / "checkpoint.pt"
        if details and details.get("budget_plan") and ckpt.exists():
            first = details["budget_plan"]
            break
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    # "another machine": two threads instead of one and its own, empty numerics cache, so
    # everything it measures (if it measured the final's rate) differs from the first run's
    p = run_cli(tmp_path, "run", cfg, data="other-machine", threads=2)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "(kept from the checkpoint)" in p.stdout
    _, details, status = final_row(db)
    b = report(tmp_path, cfg)["budget"]
    assert status == "done"
    assert details["budget_plan"]["total_steps"] == first["total_steps"] == b["actual_steps"]
    assert details["budget_plan"]["created"] == first["created"]
    con = sqlite3.connect(db)
    rows = con.execute("SELECT epoch, lr FROM epochs e JOIN experiments x ON e.exp_id = x.id "
                       "WHERE x.name LIKE 'final-%' ORDER BY epoch").fetchall()
    con.close()
    assert len(rows) == math.ceil(first["total_steps"] / first["steps_per_epoch"])
    assert rows[-1][1] < 0.05 * 0.01


def test_a_grid_that_cannot_fit_fails_before_training(tmp_path, monkeypatch, capsys):
    cfg = study_file(tmp_path, budget=None)
    p = run_cli(tmp_path, "run", cfg, "--only", "base")  # some finished work to keep
    assert p.returncode == 0, p.stderr
    db = tmp_path / "runs" / "transferlab.db"
    con = sqlite3.connect(db)
    before = list(con.iterdump())
    con.close()
    p = run_cli(tmp_path, "run", cfg, "--budget", "4s")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "budget 4s does not fit" in p.stderr and "base-lr" in p.stderr
    assert "the grid still needs" in p.stderr and "--budget" in p.stderr
    con = sqlite3.connect(db)
    assert list(con.iterdump()) == before  # nothing registered, reset or trained
    con.close()


def test_dry_run_prints_the_budgeted_plan(tmp_path):
    cfg = study_file(tmp_path, budget='"10m"')
    p = run_cli(tmp_path, "run", cfg, "--dry-run")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "budget 10m (600 s)" in out and "loop efficiency: estimated" in out
    assert "planned at the dearest of 2 candidate(s)" in out
    assert "optimizer steps" in out and "(m) measured" in out and "(e) estimated" in out
    assert not (tmp_path / "runs" / "bud").exists()  # nothing trained


def test_the_final_id_does_not_follow_measured_speed(tmp_path):
    ids, steps = [], []
    for threads in (1, 2):  # two "machines": their plans differ, their ids do not
        d = tmp_path / f"m{threads}"
        d.mkdir()
        cfg = study_file(d, budget='"25s"')
        p = run_cli(d, "run", cfg, threads=threads)
        assert p.returncode == 0, p.stdout + p.stderr
        ids.append(final_row(d / "runs" / "transferlab.db")[0])
        steps.append(report(d, cfg)["budget"]["planned_steps"])
    assert ids[0] and ids[0] == ids[1]


def test_a_skip_before_any_work_charges_nothing(tmp_path, monkeypatch):
    """A rerun that finds the grid done and only retries a hub model offline must not bill
    its start-up to the grid's ledger; once real work has run, every part is charged."""
    from transferlab.config import load_study
    from transferlab.study import Runner, Skip
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRANSFERLAB_DATA", str(tmp_path / "data"))
    study = load_study(study_file(tmp_path), fingerprint=None)
    runner = Runner(study, register=False, started=time.time() - 30)
    key = runner.clock.key
    runner._charge(True, Skip("no weights here"))
    assert runner.store.ledger(key) is None
    runner._charge(False, None)  # the final stage is not the grid
    assert runner.store.ledger(key) is None
    runner._charge(True, None)  # real work: charged from the process's start
    assert runner.store.ledger(key) == pytest.approx(30, abs=2)
    runner._charge(True, Skip("no weights here"))  # after real work a skip's time counts
    assert runner.store.ledger(key) == pytest.approx(30, abs=2)


def test_the_head_loop_is_timed_without_touching_the_global_rng():
    mlp, lin = parse_study({"study": {"data": "synthetic"}, "experiment": [
        {"name": "m", "model": "efficientnet_lite0", "regime": "linear", "batch_size": 32,
         "head": {"kind": "mlp", "hidden": [64]}, "probe_wd": [0.0, 0.1]},
        {"name": "l", "model": "efficientnet_lite0", "regime": "linear", "batch_size": 32,
         "probe_wd": [0.0, 0.1, 1.0]}]}).experiments
    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(5)
    for spec in (mlp, lin):
        probe.head_rate(spec, 48, 10)
    assert torch.rand(1) == expected
