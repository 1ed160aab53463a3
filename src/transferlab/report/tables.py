"""Tables, the best model and the experiment descriptions, read from the store (never trains)."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import fmt, record
from ..final import rank_key
from ..places import typed_path
from ..record import Result
from ..store import Store


def epochs_total(details: dict | None, config_epochs: int) -> int:
    """The epochs a fit runs: a budgeted final's plan sets them, else its config."""
    plan = (details or {}).get("budget_plan")
    return math.ceil(plan["total_steps"] / plan["steps_per_epoch"]) if plan else config_epochs


def format_details(d: dict) -> list[str]:
    """The block printed before an experiment trains and by `transferlab show`."""
    return record.format_details(d)


def log_header(store: Store, name: str, exp_id: str, stage: str, missing: str,
               status: Callable[[str], str], reason: str) -> tuple:
    """An experiment log's first lines, in the words given: (its store row or None, lines)."""
    e = store.get(exp_id)
    if e is None:
        return None, [f"=== {name}  ({stage}id {exp_id}, {missing})"]
    out = [f"=== {name}  ({stage}id {exp_id}, {status(e['status'])})"]
    return e, out + ([f"  {reason.ljust(15)}: {e['reason']}"] if e["reason"] else [])


def experiment_log(store: Store, name: str, exp_id: str, stage: str = "") -> list[str]:
    """Everything recorded about one experiment, as `transferlab show` prints it: status,
    description, epoch rows, scores, environment (the notebook's Russian log: log_ru.py)."""
    e, out = log_header(store, name, exp_id, stage, "not in the store yet",
                        lambda st: f"status {st}", "reason")
    if e is None:
        return out
    d = store.description(exp_id)
    config = store.config(exp_id)
    if d is not None:
        out += d.lines()
    else:
        out.append("  config         : " + ", ".join(f"{k}={v}" for k, v in config.items()))
    n_epochs = epochs_total(d.as_dict() if d else None, config.get("epochs", 0))
    out += [record.format_epoch(row, n_epochs) for row in store.epochs(exp_id)]
    res = store.result_record(exp_id)
    if res is not None:
        out.append(f"  val accuracy   : {fmt.ci(res.val_acc, res.val_n, 'en')}")
        out.append(f"  test accuracy  : {fmt.ci(res.test_acc, test_n(res), 'en')}"
                   + (tta_note(d, res) if d else ""))
        out.append(f"  time           : {fmt.seconds(res.total_seconds, 'en')}, peak memory "
                   + (f"{res.peak_mem_mb:.0f} MB" if res.peak_mem_mb is not None else "?"))
        env = store.environment(exp_id) or {}
        out.append("  environment    : " + ", ".join(f"{k} {v}" for k, v in env.items()))
    return out


@dataclass
class Row:
    name: str
    exp_id: str | None
    status: str
    model: str
    regime: str
    key: str  # key parameters, short
    val_acc: float | None
    test_acc: float | None
    seconds: float | None
    reason: str | None = None
    external: bool = False
    val_loss: float | None = None  # breaks ties between equal validation accuracies
    val_n: int | None = None  # validation images, for the 95 % interval
    final: bool = False  # the final stage's experiment (shown apart from the grid)
    # the stored result (predictions per image: the conclusions' paired tests); not JSON
    result: Result | None = field(default=None, repr=False, compare=False)

    def val_text(self) -> str:
        return fmt.ci(self.val_acc, self.val_n, "en")

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "result"}
        d["val_interval95"] = fmt.interval(self.val_acc, self.val_n)
        return d


def key_params(cfg: dict) -> str:
    return fmt.key_params(cfg, "en")


NOT_RUN = ("not run yet", "not run with these settings")


def study_rows(store: Store, members: list, externals: list, planned: dict | None = None,
               other_runs: bool = False) -> list[Row]:
    """A row per member. One the store has no record of is described from its config
    (`planned`: id -> spec dict); `other_runs`: the store holds this study under other
    settings, which the status then says."""
    import json
    rows = []
    for name, exp_id in members:
        e = store.get(exp_id)
        if e is None:
            cfg = (planned or {}).get(exp_id)
            status = NOT_RUN[other_runs]
            rows.append(Row(name, exp_id, status, cfg["model"], cfg["regime"], key_params(cfg),
                            None, None, None) if cfg else
                        Row(name, exp_id, status, "?", "?", "", None, None, None))
            continue
        cfg = json.loads(e["config"])
        res = store.result_record(exp_id) if e["status"] == "done" else None
        rows.append(Row(name, exp_id, e["status"], cfg["model"], cfg["regime"], key_params(cfg),
                        res and res.val_acc, res and res.test_acc, res and res.total_seconds,
                        e["reason"], val_loss=res and res.val_loss, val_n=res and res.val_n,
                        result=res))
    for x in externals:
        rows.append(Row(x["name"], None, "external", "external", "external", x.get("note", ""),
                        x.get("val_acc"), x["test_acc"], None, external=True))
    return rows


def best_row(rows: list[Row]) -> Row | None:
    """Chosen on validation accuracy, ties broken by validation loss (as the final stage
    chooses): the test split plays no part in the choice."""
    done = [r for r in rows if r.status == "done" and not r.external and r.val_acc is not None]
    return min(done, key=lambda r: rank_key(r.val_acc, r.val_loss), default=None)


def format_table(rows: list[Row], with_acc: bool = True) -> str:
    head = ["experiment", "status", "model", "regime", "key parameters"]
    if with_acc:
        head += ["val acc (95 % CI, n)", "test acc", "time"]
    table = [head]
    for r in rows:
        line = [r.name, r.status, r.model, r.regime, r.key]
        if with_acc:
            line += [r.val_text(), fmt.pct(r.test_acc), fmt.seconds(r.seconds, "en")]
        table.append(line)
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    out.insert(1, "  ".join("-" * w for w in widths))
    failed = [r for r in rows if r.status in ("failed", "skipped") and r.reason]
    out += [f"  {r.name} {r.status}: {r.reason}" for r in failed]
    return "\n".join(out)


def best_summary(store: Store, row: Row) -> list[str]:
    d = store.description(row.exp_id)
    res = store.result_record(row.exp_id)
    return [
        f"best model (chosen on validation accuracy): {row.name}",
        f"  source model      : {d.arch or row.model}",
        f"  modified layers   : {d.modified_layers or '?'}",
        f"  transfer type     : {row.regime}: {regime_text(d)}",
        f"  optimiser         : {fmt.optimizer_text(d.optimizer or {})}",
        f"  initialisation    : {d.init or '?'}",
        *training_lines(d, res),
        f"  validation acc    : {fmt.ci(row.val_acc, row.val_n, 'en')}",
        f"  test accuracy     : {fmt.ci(row.test_acc, test_n(res), 'en')}" + tta_note(d, res),
    ]


def regime_text(d: record.Description) -> str:
    """The regime in English, from the registry (regimes.py) and the stored record."""
    from .. import regimes
    return regimes.text(d.facts(), "en") if d.regime else (d.regime_description or "")


def test_n(res: Result | None) -> int | None:
    """Test images a result was scored on (its stored predictions), None if unknown."""
    return len(res.test_predictions) if res is not None and res.test_predictions else None


def final_summary(f: dict) -> list[str]:
    """The final model in full: what the assignment asks of the best model, and how it was
    chosen and trained (from `final.describe`)."""
    chosen = f.get("chosen") or {}
    o = f.get("optimizer") or {}
    s = f.get("schedule") or {}
    if f["status"] != "done":
        return [f"final model: {f['name']} ({f['status']}"
                + (f": {f['reason_failed']}" if f.get("reason_failed") else "") + ")",
                f"  chosen because  : {chosen.get('reason', '?')}"]
    test = fmt.ci(f["test_acc"], f.get("test_n"), "en")
    return [
        f"final model: {f['name']} (the grid's {chosen.get('parent', '?')} trained again on "
        f"all {f.get('train_images') or '?'} training images)",
        f"  chosen because  : {chosen.get('reason', '?')}",
        *selection_lines(chosen.get("selection")),
        f"  source model    : {f['source_model']}",
        f"  modified layers : {f['modified_layers']}",
        f"  transfer type   : {f['transfer_type']}: {f['regime_description']}",
        f"  optimiser       : {fmt.optimizer_text(o)}",
        f"  schedule        : {fmt.schedule_text(s, 'en')}; "
        f"{f['epochs']} epochs (the last one kept: no validation split), batch {f['batch_size']}",
        f"  input           : {f['resolution']}px, augmentation {f['augment']}, label smoothing "
        f"{f['label_smoothing']}",
        f"  initialisation  : {f['initialisation']}",
        *budget_lines(f.get("budget")),
        f"  test accuracy   : {test}; "
        + (f"with flip TTA (without: {fmt.pct(f['test_acc_no_tta'])})" if f["tta"] else "no TTA"),
    ]


def selection_lines(sel: dict | None) -> list[str]:
    """How the choice was made (from `selection.Selection.summary`): the method and why, each
    candidate's out-of-fold accuracy on all n images, and the paired test of the first two."""
    if not sel:
        return []
    out = [f"  selection       : {sel['why']}"]
    for c in sel.get("candidates") or []:
        lo, hi = c["interval95"]
        wd = f", weight decay {c['chosen_wd']:g}" if c.get("chosen_wd") is not None else ""
        out.append(f"    {c['name']}: out-of-fold acc {c['oof_acc']:.2%} (n={c['n']}, 95% CI "
                   f"{lo:.1%}-{hi:.1%}){wd}")
    p = sel.get("paired")
    if p:
        out.append(f"    {p['leader']} vs {p['runner_up']}: right only {p['only_leader']} vs "
                   f"{p['only_runner_up']} of {p['n']} images, McNemar exact p = "
                   f"{p['p_value']:.3g}")
    return out


def budget_lines(b: dict | None) -> list[str]:
    """A budgeted final's plan and what ran (from `final.budget_summary`)."""
    if not b:
        return []
    replan = (f", re-planned from {b['first_planned_steps']:,}" if b.get("replanned") else "")
    took = (f"; the grid took {b['grid_seconds'] / 60:.1f} min, the final "
            f"{b['final_seconds'] / 60:.1f} min, the study {b['study_seconds'] / 60:.1f} min"
            if b.get("final_seconds") else "")
    return [f"  time budget     : {b['budget']}: {b['planned_steps']:,} steps planned{replan} "
            f"({b['planned_epochs']:.2f} epochs at {b['planned_img_per_s']:.0f} img/s), "
            f"{b['actual_steps'] if b.get('actual_steps') is not None else '?'} taken{took}"]


def report_json(name: str, store: Store, rows: list[Row], final: dict | None) -> dict:
    """`transferlab report --json`: the table, the validation-best grid row and the final model."""
    best = best_row(rows)
    return {"study": name, "store": typed_path(store.path), "rows": [r.as_dict() for r in rows],
            "best_on_validation": best.name if best else None, "final": final,
            "budget": (final or {}).get("budget"),
            "selection": ((final or {}).get("chosen") or {}).get("selection"),
            "answer_test_acc": (final or {}).get("test_acc") if final else
            (best.test_acc if best else None)}


def training_lines(d: record.Description, res: Result | None) -> list[str]:
    """Epochs (and which one validation chose), batch size and LR schedule of a model."""
    if res is not None and res.on_features:
        chosen = f"the last epoch; weight decay {res.chosen_wd} chosen on validation"
    elif res is None or res.val_acc is None:
        chosen = "the last epoch: no validation split to choose one"
    else:
        chosen = f"weights of epoch {res.best_epoch or '?'}, " + \
            (res.epoch_choice or "chosen on validation")
    return [f"  epochs            : {d.epochs or '?'} ({chosen})",
            f"  batch size        : {d.batch_size or '?'}",
            f"  LR schedule       : {fmt.schedule_text(d.schedule or {}, 'en')}"]


def tta_note(d: record.Description, res: Result | None) -> str:
    """Whether the test figure averages flip views, and the figure without them."""
    if not d.tta:
        return " (no flip TTA)"
    return f" (with flip TTA; without {fmt.pct(res and res.test_acc_no_tta)})"
