"""The quick study's final stage at several time budgets on this machine, side by side.

The grid runs once (under the first budget, with that budget's final); every later budget
finds the grid in the store and trains only its own final (the budget is part of the final's
id). Each final's steps come from the time the grid left and the chosen model's measured
rate, and its learning rate reaches zero at the last step. The table: the budget, the grid's
wall time, the final's planned and taken steps and epochs, its wall time, the whole study's,
and the test accuracy with its 95 % (Wilson) interval.

    python bench/budget.py --data imagefolder:../shared/data/cifar10-jpeg.tar.gz 20m 26m 32m
    python bench/budget.py --quick          # smoke size: synthetic data, budgets of seconds

Run it on a quiet machine: the budget is wall-clock time, so anything else running takes
steps away from the final.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
from transferlab.final import interval95  # noqa: E402  the report's own interval
QUICK_STUDY = """
[study]
name = "budget-smoke"
data = "synthetic:24"

[study.final]

[defaults]
epochs = 2
batch_size = 16
resolution = 16
optimizer = { name = "sgd", lr = 0.05 }

[[experiment]]
name = "base"
model = "baseline"
regime = "scratch"
"""


def transferlab(*args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "transferlab", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)


def one_budget(config: str, budget: str, data: list[str], work: Path, env: dict) -> dict:
    t0 = time.monotonic()
    p = transferlab("run", config, *data, "--budget", budget, cwd=work, env=env)
    wall = time.monotonic() - t0
    (work / f"run-{budget}.log").write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        raise SystemExit(f"transferlab run --budget {budget} failed ({p.returncode}); see "
                         f"{work / f'run-{budget}.log'}:\n{p.stderr[-1500:]}")
    rep = transferlab("report", config, *data, "--budget", budget, "--json", cwd=work, env=env)
    if rep.returncode != 0:
        raise SystemExit(rep.stderr)
    r = json.loads(rep.stdout)
    final, b = r["final"] or {}, r["budget"] or {}
    return {"budget": budget, "wall": wall, "final": final.get("name"), "b": b,
            "acc": final.get("test_acc"), "n": final.get("test_n") or 0}


def table(rows: list[dict]) -> str:
    head = ["budget", "process wall", "grid", "final", "study", "steps planned/taken",
            "epochs", "img/s plan/loop", "final model", "test acc [95% CI]"]
    out = [head]
    for r in rows:
        b = r["b"]
        lo, hi = interval95(r["acc"], r["n"])
        out.append([r["budget"], f"{r['wall'] / 60:.1f} min", f"{b['grid_seconds'] / 60:.1f} min",
                    f"{b['final_seconds'] / 60:.1f} min", f"{b['study_seconds'] / 60:.1f} min",
                    f"{b['planned_steps']}/{b['actual_steps']}", f"{b['actual_epochs']:.2f}",
                    f"{b['planned_img_per_s']:.0f}/{b['measured_img_per_s']:.0f}", r["final"],
                    f"{r['acc']:.2%} [{lo:.1%}, {hi:.1%}] n={r['n']}"])
    widths = [max(len(row[i]) for row in out) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in out]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("budgets", nargs="*", default=["20m", "26m", "32m"])
    ap.add_argument("--config", default="cifar10-quick", help="a shipped config's name or a "
                    ".toml file (default cifar10-quick)")
    ap.add_argument("--data", help="data source (default: the config's)")
    ap.add_argument("--work", type=Path, help="folder for the store and logs (default: a new "
                    "temporary one); reusing it reuses its grid")
    ap.add_argument("--quick", action="store_true", help="smoke size: a synthetic study, "
                    "budgets of seconds")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="budget-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    config, budgets = args.config, args.budgets
    if args.quick:
        config = str(work / "budget-smoke.toml")
        Path(config).write_text(QUICK_STUDY)
        budgets = ["20s", "30s"]
        env.update(TRANSFERLAB_DATA=str(work / "data"), OMP_NUM_THREADS="1")
    data = ["--data", args.data] if args.data else []
    print(f"work folder {work}; config {config}; budgets {', '.join(budgets)}", flush=True)
    rows = []
    for budget in budgets:
        rows.append(one_budget(config, budget, data, work, env))
        print(f"  {budget}: {rows[-1]['acc']:.2%} in {rows[-1]['wall'] / 60:.1f} min", flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
