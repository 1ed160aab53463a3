"""Tables, the best model and the experiment descriptions, read from the store (never trains)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from . import record
from .final import interval95, rank_key
from .store import Store


def epochs_total(details: dict | None, config_epochs: int) -> int:
    """The epochs a fit runs: a budgeted final's plan sets them, else its config."""
    plan = (details or {}).get("budget_plan")
    return math.ceil(plan["total_steps"] / plan["steps_per_epoch"]) if plan else config_epochs


def format_details(d: dict) -> list[str]:
    """The block printed before an experiment trains and by `transferlab show`."""
    return record.format_details(d)


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

    def val_text(self) -> str:
        if self.val_acc is None:
            return "-"
        if not self.val_n:
            return f"{self.val_acc:.2%}"
        lo, hi = interval95(self.val_acc, self.val_n)
        return f"{self.val_acc:.2%} [{lo:.1%}, {hi:.1%}] n={self.val_n}"

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items()}
        d["val_interval95"] = list(interval95(self.val_acc, self.val_n)) \
            if self.val_acc is not None and self.val_n else None
        return d


def key_params(cfg: dict) -> str:
    o = cfg["optimizer"]
    res = f"{cfg['resolution']}px" if cfg["resolution"] else "native px"
    parts = [res, f"{o['name']} lr={o['lr']:g}", f"{cfg['epochs']}ep"]
    if cfg["head"]["kind"] == "mlp":
        parts.insert(0, "mlp" + "x".join(str(h) for h in cfg["head"]["hidden"]))
    return ", ".join(parts)


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
        res = store.result(exp_id) if e["status"] == "done" else None
        extra = (res or {}).get("extra") or {}
        rows.append(Row(name, exp_id, e["status"], cfg["model"], cfg["regime"], key_params(cfg),
                        res and res["val_acc"], res and res["test_acc"],
                        res and res["total_seconds"], e["reason"],
                        val_loss=extra.get("val_loss"), val_n=extra.get("val_n")))
    for x in externals:
        rows.append(Row(x["name"], None, "external", "external", "external", x.get("note", ""),
                        x.get("val_acc"), x["test_acc"], None, external=True))
    return rows


def best_row(rows: list[Row]) -> Row | None:
    """Chosen on validation accuracy, ties broken by validation loss (as the final stage
    chooses): the test split plays no part in the choice."""
    done = [r for r in rows if r.status == "done" and not r.external and r.val_acc is not None]
    return min(done, key=lambda r: rank_key(r.val_acc, r.val_loss), default=None)


def _pct(x) -> str:
    return f"{x:.2%}" if x is not None else "-"


def format_table(rows: list[Row], with_acc: bool = True) -> str:
    head = ["experiment", "status", "model", "regime", "key parameters"]
    if with_acc:
        head += ["val acc [95% CI] n", "test acc", "time"]
    table = [head]
    for r in rows:
        line = [r.name, r.status, r.model, r.regime, r.key]
        if with_acc:
            line += [r.val_text(), _pct(r.test_acc), f"{r.seconds:.0f}s" if r.seconds else "-"]
        table.append(line)
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    out.insert(1, "  ".join("-" * w for w in widths))
    failed = [r for r in rows if r.status in ("failed", "skipped") and r.reason]
    out += [f"  {r.name} {r.status}: {r.reason}" for r in failed]
    return "\n".join(out)


def best_summary(store: Store, row: Row) -> list[str]:
    import json
    e = store.get(row.exp_id)
    d = json.loads(e["details"]) if e["details"] else {}
    o = d.get("optimizer", {})
    return [
        f"best model (chosen on validation accuracy): {row.name}",
        f"  source model      : {d.get('arch', row.model)}",
        f"  modified layers   : {d.get('modified_layers', '?')}",
        f"  transfer type     : {row.regime}: {d.get('regime_description', '')}",
        f"  optimiser         : {o.get('name', '?')} ("
        + ", ".join(f"{k}={v}" for k, v in o.items() if k != "name") + ")",
        f"  initialisation    : {d.get('init', '?')}",
        *training_lines(d, store.result(row.exp_id) or {}),
        f"  validation acc    : {_pct(row.val_acc)}",
        f"  test accuracy     : {_pct(row.test_acc)}" + tta_note(d, store.result(row.exp_id) or {}),
    ]


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
    ci = f.get("test_interval95")
    test = f"{f['test_acc']:.2%}" + (f" (95% CI {ci[0]:.1%}-{ci[1]:.1%}, n={f['test_n']})"
                                     if ci else "")
    return [
        f"final model: {f['name']} (the grid's {chosen.get('parent', '?')} trained again on "
        f"all {f.get('train_images') or '?'} training images)",
        f"  chosen because  : {chosen.get('reason', '?')}",
        *selection_lines(chosen.get("selection")),
        f"  source model    : {f['source_model']}",
        f"  modified layers : {f['modified_layers']}",
        f"  transfer type   : {f['transfer_type']}: {f['regime_description']}",
        f"  optimiser       : {o.get('name', '?')} ("
        + ", ".join(f"{k}={v}" for k, v in o.items() if k != "name") + ")",
        f"  schedule        : {s.get('name', '?')}, warmup {s.get('warmup_epochs', 0)} epoch(s); "
        f"{f['epochs']} epochs (the last one kept: no validation split), batch {f['batch_size']}",
        f"  input           : {f['resolution']}px, augmentation {f['augment']}, label smoothing "
        f"{f['label_smoothing']}",
        f"  initialisation  : {f['initialisation']}",
        *budget_lines(f.get("budget")),
        f"  test accuracy   : {test}; "
        + (f"with flip TTA (without: {f['test_acc_no_tta']:.2%})" if f["tta"] else "no TTA"),
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
    return {"study": name, "store": str(store.path), "rows": [r.as_dict() for r in rows],
            "best_on_validation": best.name if best else None, "final": final,
            "budget": (final or {}).get("budget"),
            "selection": ((final or {}).get("chosen") or {}).get("selection"),
            "answer_test_acc": (final or {}).get("test_acc") if final else
            (best.test_acc if best else None)}


def training_lines(d: dict, res: dict) -> list[str]:
    """Epochs (and which one validation chose), batch size and LR schedule of a model."""
    extra = res.get("extra") or {}
    if extra.get("fit") == "cached features":
        chosen = f"the last epoch; weight decay {extra.get('chosen_wd')} chosen on validation"
    elif res.get("val_acc") is None:
        chosen = "the last epoch: no validation split to choose one"
    else:
        chosen = f"weights of epoch {res.get('best_epoch', '?')}, " + \
            (extra.get("epoch_choice") or "chosen on validation")
    s = d.get("schedule") or {}
    sched = f"{s.get('name', '?')}, warmup {s.get('warmup_epochs', 0)} epoch(s)"
    if s.get("layer_decay", 1) < 1:
        sched += f", layer-wise LR decay {s['layer_decay']}"
    return [f"  epochs            : {d.get('epochs', '?')} ({chosen})",
            f"  batch size        : {d.get('batch_size', '?')}",
            f"  LR schedule       : {sched}"]


def tta_note(d: dict, res: dict) -> str:
    """Whether the test figure averages flip views, and the figure without them."""
    if not d.get("tta"):
        return " (no flip TTA)"
    return f" (with flip TTA; without {_pct(res.get('test_acc_no_tta'))})"
