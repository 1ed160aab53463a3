"""The `transferlab` command."""
from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
import tomllib
from pathlib import Path

from .errors import UserError
from .places import typed_path
from .resources import is_shipped, shipped_configs

DEFAULT_STORE = Path("runs/transferlab.db")
OVERRIDES = ("data", "subset", "epochs", "budget")  # command-line settings a study run records
CONFIG_HELP = "a shipped config's name (transferlab configs) or a .toml file"


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="data source: cifar10 | imagefolder:PATH | synthetic[:N]")
    p.add_argument("--subset", type=int, help="train images per class (and a proportional test share)")
    p.add_argument("--epochs", type=int, help="epochs for every experiment (a fixed shape: the "
                   "final stage's too, so a budget is not used)")
    p.add_argument("--budget", metavar="TIME", help="wall-clock time of the whole study on this "
                   "machine, e.g. 25m, 1h30m, 90s: the final stage gets what the grid leaves "
                   "(default: [study] budget)")
    p.add_argument("--store", help="SQLite file or postgresql://user@host:port/db (default: "
                   "$TRANSFERLAB_STORE, else the config's, else runs/transferlab.db)")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="transferlab", description="Transfer-learning studies on "
                                 "CIFAR-10 or any image folder, resumable, with an honest report.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="run (or resume) every experiment of a study")
    p.add_argument("config", help=CONFIG_HELP)
    _add_overrides(p)
    p.add_argument("--data-root", type=Path, help="download / decode cache (default ~/.cache/transferlab)")
    p.add_argument("--only", metavar="GLOB", help="run only experiments whose name matches")
    p.add_argument("--rerun", metavar="GLOB", help="forget matching results and run them again")
    p.add_argument("--retry-failed", action="store_true", help="run failed experiments again")
    p.add_argument("--dry-run", action="store_true", help="print the measured plan: each part's "
                   "timed rate and time, the final stage's steps; train nothing")
    p.add_argument("--skip-bad-images", action="store_true", help="skip undecodable images")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--runs-dir", type=Path, help="checkpoints, models and feature caches (default: "
                   "the config's runs_dir; with a SQLite --store, beside it)")
    p.add_argument("--wait", action="store_true", help="after this runner's own work, wait for "
                   "experiments other runners hold and take over any whose runner died")
    p.add_argument("--tensorboard", type=Path, metavar="DIR",
                   help="TensorBoard curves per experiment under DIR (needs transferlab[tensorboard])")
    for name, text in (("status", "a table of the study"), ("report", "results and the best model")):
        p = sub.add_parser(name, help=text)
        p.add_argument("config", nargs="?", help=CONFIG_HELP + "; default: the last study run "
                       "in the store")
        if name == "report":
            p.add_argument("--json", action="store_true",
                           help="print the table and the final model as JSON (for scripts)")
        _add_overrides(p)
    p = sub.add_parser("show", help="everything recorded about one experiment")
    p.add_argument("name")
    p.add_argument("config", nargs="?", help=CONFIG_HELP)
    _add_overrides(p)
    sub.add_parser("models", help="known models and whether their weights work offline")
    sub.add_parser("configs", help="the study configs shipped with the package")
    p = sub.add_parser("init", help="copy a shipped config to edit")
    p.add_argument("name", help="a shipped config (transferlab configs)")
    p.add_argument("dest", nargs="?", type=Path, help="the file to write (default NAME.toml "
                   "here; a folder: NAME.toml in it)")
    p = sub.add_parser("notebook", help="execute the study notebook, write .ipynb and .html")
    p.add_argument("config", help=CONFIG_HELP)
    _add_overrides(p)
    p.add_argument("--data-root", type=Path)
    p.add_argument("--out", type=Path, default=Path("reports"))
    p.add_argument("--timeout", type=int, default=0, help="seconds per cell (0 = none)")
    p = sub.add_parser("store", help="manage stores").add_subparsers(dest="store_cmd", required=True)
    p = p.add_parser("copy", help="copy a study's records between stores (SQLite file <-> "
                     "postgresql:// URL, either way)")
    p.add_argument("src", help="the store to read (a SQLite file or a postgresql:// URL)")
    p.add_argument("dst", help="the store to write (created if missing)")
    p.add_argument("--study", help="copy only this study (default: every study and experiment)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace records the destination holds differently")
    _predict_parsers(sub)
    return ap


def _predict_parsers(sub) -> None:
    p = sub.add_parser("predict", help="apply the study's model to images, folders or .tar.gz")
    p.add_argument("items", nargs="+", metavar="[CONFIG] PATH",
                   help="an optional study config (.toml), then images, folders or archives")
    p.add_argument("--model", metavar="NAME", help="a finished experiment (default: the best "
                   "on validation, as `transferlab report` chooses)")
    p.add_argument("--top", type=int, default=3, help="classes per image (default 3)")
    p.add_argument("--csv", type=Path, metavar="FILE", help="write every prediction as CSV")
    p.add_argument("--json", type=Path, metavar="FILE", help="write every prediction as JSON")
    p.add_argument("--batch", type=int, help="images per forward pass")
    p.add_argument("--show", type=int, default=50, help="rows of the terminal table (default 50)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    _add_overrides(p)
    p = sub.add_parser("export", help="a TorchScript or ONNX file plus a model card, checked")
    p.add_argument("name", help="the experiment to export")
    p.add_argument("config", nargs="?", help=CONFIG_HELP + "; default: the last study run in "
                   "the store")
    p.add_argument("--format", required=True, choices=("torchscript", "onnx"))
    p.add_argument("--out", type=Path, default=Path("exports"), help="folder (default exports/)")
    p.add_argument("--data-root", type=Path, help="decode cache holding the study's test images")
    _add_overrides(p)


def _load(args):
    from .config import load_study
    from .data import fingerprint
    study = load_study(args.config, data=args.data, subset=args.subset, epochs=args.epochs,
                       fingerprint=fingerprint, budget=getattr(args, "budget", None))
    if args.store:
        study.use_store(args.store)
    if getattr(args, "runs_dir", None):
        study.runs_dir = args.runs_dir.resolve()
    return study


def _overrides(args) -> dict:
    return {k: getattr(args, k) for k in OVERRIDES if getattr(args, k, None) is not None}


def cmd_run(args) -> int:
    from .study import Runner, say
    from .models import resolve_name
    study = _load(args)
    for e in study.experiments:  # a misspelt model fails now, not hours into the study
        try:
            resolve_name(e.model)
        except UserError as err:
            raise UserError(f"{args.config}: experiment {e.name!r}: {err}") from None
    runner = Runner(study, data_root=args.data_root, device=args.device,
                    skip_bad_images=args.skip_bad_images, overrides=_overrides(args),
                    tensorboard=args.tensorboard, register=False, started=args.started)
    for note in study.notes:
        say(f"note: {note}")
    again = set(runner.matching(args.rerun, args.only)) if args.rerun else set()
    if args.dry_run:  # a dry run changes nothing: no reset, no registration
        if again:
            say("would run again (a dry run forgets nothing): " + ", ".join(sorted(again)))
        try:
            study_plan = runner.plan(runner.select(args.only), again=again)
        except UserError as e:  # no data here yet (e.g. no network): still list the work
            print(f"study {study.name}: no measured plan ({e}); experiments: "
                  + ", ".join(s.name for s in runner.select(args.only)))
            return 0
        print("\n".join(study_plan.lines()))
        study_plan.check()
        return 0
    runner.check_budget(again)  # before anything is reset, registered or trained
    runner.register()
    if args.rerun:
        say("will run again: " + ", ".join(runner.rerun(args.rerun, args.only)))
    say(f"study {study.name}: {len(study.experiments)} experiments, store "
        f"{typed_path(runner.store.path)}, device {runner.device}")
    if runner.tensorboard:
        say(f"TensorBoard curves under {runner.tensorboard}: tensorboard --logdir {runner.tensorboard}")
    out = runner.run(only=args.only, retry_failed=args.retry_failed, wait=args.wait)
    say(f"\ndone: {len(out.ran)} ran, {len(out.skipped)} already finished or skipped, "
        f"{len(out.busy)} held by other runners, {len(out.failed)} failed")
    for name, reason in out.failed:
        say(f"  {name}: {reason}")
    if out.failed:
        say("fix the cause, then run again with --retry-failed (finished experiments are kept)")
    from .fit import dist
    dist.finish()  # last: after it every process counts as rank 0
    return 1 if out.failed else 0


def _members(args):
    """Experiments and externals of the study named by CONFIG, else of the last one run."""
    from .store import Store
    if args.config:
        study = _load(args)
        store = Store(study.store, create=False)
        members = [(e.name, e.id) for e in study.experiments]
        args.planned = {e.id: e.to_dict() for e in study.experiments}  # rows for unrun ones
        if study.final is not None:  # the final experiment, once the grid has chosen it
            from .final import plan
            spec = plan(study, store).spec
            if spec is not None and store.get(spec.id) is not None:
                members.append((spec.name, spec.id))
        return store, members, [x.__dict__ for x in study.externals], study.name
    store = Store(args.store or os.environ.get("TRANSFERLAB_STORE") or DEFAULT_STORE, create=False)
    st = store.study()
    if st is None:
        raise UserError(f"{store.path} holds no study yet; run one: transferlab run CONFIG")
    return store, st["members"], st["externals"], st["name"]


def _split_final(store, members: list) -> tuple[list, dict | None]:
    """(the grid's members, the final model described in full, if the study has one)."""
    from .final import describe, stored
    found = stored(store, members)
    if found is None:
        return members, None
    return [m for m in members if m != tuple(found) and list(m) != list(found)], \
        describe(store, found[1])


def _flags(overrides: dict) -> str:
    return " ".join(f"--{k} {shlex.quote(str(overrides[k]))}" for k in OVERRIDES
                    if overrides.get(k) is not None)


def other_runs(args, store, name: str, members: list) -> list[str]:
    """What the store holds for this study under other overrides, with the command that shows
    it: the ids follow the overrides, so those rows are not the ones printed above."""
    if not args.config:
        return []
    shown = {i for _, i in members}
    missing = sum(store.get(i) is None for i in shown)
    from .store import mask_url
    store_flag = f" --store {shlex.quote(mask_url(args.store))}" if args.store else ""
    lines, seen = [], set()
    for run in store.study_runs(name):
        ids = tuple(i for _, i in run["members"])
        if set(ids) == shown or ids in seen:
            continue
        seen.add(ids)
        states = [row["status"] for i in ids if (row := store.get(i)) is not None]
        if not states:
            continue
        counts = ", ".join(f"{states.count(s)} {s}" for s in ("done", "running", "failed", "skipped", "pending")
                           if s in states)
        flags = _flags(run["overrides"])
        lines.append(f"  {flags or 'no overrides'}: {counts}  ->  transferlab {args.cmd} "
                     f"{shlex.quote(str(args.config))}{(' ' + flags) if flags else ''}{store_flag}")
    if not lines:
        return []
    mine = _flags(_overrides(args)) or "no overrides"
    head = (f"\n{missing} of {len(shown)} experiments have no record with these settings "
            f"({mine}); " if missing else "\n") + f"the store also holds study {name} run with:"
    return [head, *lines]


def cmd_status(args) -> int:
    from .report.tables import format_table, study_rows
    store, members, externals, name = _members(args)
    rows = study_rows(store, members, externals, planned=getattr(args, "planned", None),
                      other_runs=bool(args.config and store.study_runs(name)))
    print(f"study {name} ({typed_path(store.path)})")
    print(format_table(rows))
    for line in other_runs(args, store, name, members):
        print(line)
    return 0


def cmd_report(args) -> int:
    from .report.tables import best_row, best_summary, final_summary, format_table, report_json, study_rows
    store, members, externals, name = _members(args)
    grid, final = _split_final(store, members)
    rows = study_rows(store, grid, externals, planned=getattr(args, "planned", None),
                      other_runs=bool(args.config and store.study_runs(name)))
    if args.json:
        print(json.dumps(report_json(name, store, rows, final), indent=1, default=str))
        return 0
    print(f"study {name} ({typed_path(store.path)})\n")
    print(format_table(rows))
    for line in other_runs(args, store, name, grid):
        print(line)
    best = best_row(rows)
    print()
    if best is None:
        print("no finished experiment with a validation accuracy yet: nothing to choose from")
        return 0
    print("\n".join(best_summary(store, best)))
    if final is not None:
        print()
        print("\n".join(final_summary(final)))
    return 0


def cmd_show(args) -> int:
    from .report.tables import experiment_log
    store, members, _, _ = _members(args)
    ids = dict(members)
    if args.name not in ids:
        raise UserError(f"no experiment {args.name!r} in this study; known: {', '.join(ids)}")
    if store.get(ids[args.name]) is None:
        raise UserError(f"{args.name!r} is not in the store yet; run the study first")
    print("\n".join(experiment_log(store, args.name, ids[args.name])))
    return 0


def cmd_models(args) -> int:
    from .models import catalogue
    rows = catalogue()
    keys = list(rows[0])
    widths = [max(len(k), *(len(r[k]) for r in rows)) for k in keys]
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths)))
    for r in rows:
        print("  ".join(r[k].ljust(w) for k, w in zip(keys, widths)))
    print("\nAny timm or torchvision model name works; weights = \"imagenet\" needs the hub "
          "(internet or a filled cache) except where marked offline.")
    return 0


def cmd_configs(args) -> int:
    """One line per shipped config: what it is for, its models, its rough size."""
    from .config import load_study
    for name, path in shipped_configs().items():
        study = load_study(path, fingerprint=None)
        raw = tomllib.loads(path.read_text(encoding="utf-8")).get("study", {})
        print(f"{name:<14} {raw.get('description', '-')} | {config_size(study, raw)}")
    print("\nrun one: transferlab run NAME; copy one to edit: transferlab init NAME [DEST]")
    return 0


def config_size(study, raw: dict) -> str:
    """The models of a study and its rough size: experiments, data, resolution, epochs."""
    models = list(dict.fromkeys(e.model.split(".")[0] for e in study.experiments))
    epochs = sorted({e.epochs for e in study.experiments})
    res = sorted({e.resolution for e in study.experiments if e.resolution})
    data = f"{study.data.subset}/class" if study.data.subset else "every training image"
    parts = [f"{len(study.experiments)} experiments" + (" + final" if study.final else ""),
             f"{study.data.source}, {data}",
             f"{res[0]}-{res[-1]} px" if len(res) > 1 else f"{res[0]} px" if res else "",
             f"{epochs[0]}-{epochs[-1]} epochs" if len(epochs) > 1 else f"{epochs[0]} epochs"]
    if raw.get("budget"):
        parts.append(f"budget {raw['budget']}")
    return f"models: {', '.join(models)} | size: {', '.join(p for p in parts if p)}"


def cmd_init(args) -> int:
    shipped = shipped_configs()
    if args.name.removesuffix(".toml") not in shipped:
        raise UserError(f"no shipped config {args.name!r}; shipped: {', '.join(shipped)}")
    name = args.name.removesuffix(".toml")
    dest = args.dest or Path(f"{name}.toml")
    if dest.is_dir():
        dest = dest / f"{name}.toml"
    if dest.exists():
        raise UserError(f"{dest} exists; name another file (transferlab init {name} DEST) "
                        "or remove it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # an exact copy, study name included: the experiments it shares with the shipped study keep
    # their results and their files (runs/<study name>/<id>)
    dest.write_text(shipped[name].read_text(encoding="utf-8"), encoding="utf-8")
    print(f"wrote {dest}: a copy of {name}; edit it, then: transferlab run "
          f"{shlex.quote(str(dest))}")
    return 0


def cmd_notebook(args) -> int:
    from .report.notebook import execute
    paths = execute(args.config, out_dir=args.out, data=args.data, subset=args.subset,
                    epochs=args.epochs, budget=args.budget, store=args.store,
                    data_root=args.data_root,
                    timeout=args.timeout or None)
    for p in paths:
        print(typed_path(p))
    return 0


def cmd_store(args) -> int:
    from .store import Store, copy_study
    src = Store(args.src, create=False)
    dst = Store(args.dst)
    try:
        n = copy_study(src, dst, study=args.study, overwrite=args.overwrite)
    finally:
        src.close()
        dst.close()
    print(f"copied {n['experiments']} experiments and {n['studies']} studies from {src.path} to "
          f"{dst.path} ({n['unchanged']} already there, {n['replaced']} replaced)")
    return 0


def cmd_predict(args) -> int:
    from .predict import command
    from .trained import open_study
    first = args.items[0]
    config = first if first.lower().endswith(".toml") or is_shipped(first) else None
    paths = [Path(p) for p in (args.items[1:] if config else args.items)]
    if not paths:
        raise UserError("name the images to predict: transferlab predict [CONFIG] PATH...")
    study = open_study(Path(config) if config else None, args.store, DEFAULT_STORE,
                       _overrides(args))
    return command(study, args.model, paths, device=args.device, topk=args.top,
                   batch=args.batch, csv_path=args.csv, json_path=args.json, show=args.show)


def cmd_export(args) -> int:
    from .util import default_data_root
    from .export import export
    from .trained import load, open_study
    study = open_study(args.config, args.store, DEFAULT_STORE, _overrides(args))
    trained = load(study, args.name)
    paths = export(study, trained, args.format, args.out, args.data_root or default_data_root())
    card = json.loads(paths[1].read_text())
    chk = card["check"]
    print(f"{args.format} model of {trained.name}: checked on {chk['images']} test images "
          f"through {chk['runtime']}, max |logit difference| {chk['max_abs_diff']:.2e} "
          f"(allowed {chk['allowed']:.2e}), top-1 agrees on {chk['top1_agree']}")
    for p in paths:
        print(p)
    return 0


COMMANDS = {"run": cmd_run, "status": cmd_status, "report": cmd_report, "show": cmd_show,
            "models": cmd_models, "notebook": cmd_notebook, "store": cmd_store,
            "predict": cmd_predict, "export": cmd_export}
COMMANDS.update(configs=cmd_configs, init=cmd_init)  # the package's shipped configs


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.time()  # a budget counts the whole run, imports included
    args = _parser().parse_args(argv)
    args.started = started
    try:
        return COMMANDS[args.cmd](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
