"""The final stage: the grid's validation-chosen configuration, trained again on every
training image (train + validation) with the budget `[study.final]` declared.

The choice reads validation figures only (accuracy scored with the same views for every fit,
then validation loss to break ties), so its answer cannot follow the test split; the final
experiment is an experiment like any other in the store (claimed, checkpointed, resumable), whose
details name its parent and the reason it was chosen.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from . import selection, stats
from .config import ExperimentSpec, FinalSpec, Study
from .record import BudgetPlan, Description, Result
from .store import Store

FINAL_PREFIX = "final-"


def interval95(acc: float, n: int) -> tuple[float, float]:
    """Wilson score interval of a proportion measured on n images (95 %): stats.wilson."""
    return stats.wilson(acc, n)


def rank_key(val_acc: float, val_loss: float | None) -> tuple[float, float]:
    """Sort key, best first: higher validation accuracy, then lower validation loss."""
    return (-val_acc, val_loss if val_loss is not None else math.inf)


@dataclass(frozen=True)
class Candidate:
    """One grid experiment as the final choice sees it: validation figures only."""
    name: str
    exp_id: str
    val_acc: float
    val_loss: float  # inf where an older result did not record it
    val_n: int
    measure: str = "val"  # "val": the holdout split; "oof": out-of-fold over train + val

    def interval(self) -> tuple[float, float]:
        return interval95(self.val_acc, self.val_n)

    def text(self) -> str:
        lo, hi = self.interval()
        n = f"n={self.val_n}, 95% CI {lo:.1%}-{hi:.1%}" if self.val_n else "n unknown"
        loss = f", {self.measure} loss {self.val_loss:.4f}" if math.isfinite(self.val_loss) else ""
        return f"{self.name}: {self.measure} acc {self.val_acc:.2%} ({n}){loss}"


@dataclass(frozen=True)
class Plan:
    """What the final stage will run, or why it cannot run yet."""
    spec: ExperimentSpec | None  # the final experiment (None: nothing to choose yet)
    parent: ExperimentSpec | None
    ranking: tuple[Candidate, ...]  # best first
    waiting: tuple[str, ...]  # grid (or fold) experiments not finished yet
    excluded: tuple[str, ...]  # failed or skipped, with why
    selection: selection.Selection | None = None  # how the choice is made (once the grid is done)
    paired: stats.Paired | None = None  # the choice against the runner-up, on validation
    candidates: str = "all"  # [study.final] candidates: the pool the choice was made in

    @property
    def reason(self) -> str:
        if self.parent is None:
            return "no grid experiment has finished with a validation accuracy"
        best = self.ranking[0]
        what = "out-of-fold" if best.measure == "oof" else "validation"
        why = f"best {what} accuracy of {len(self.ranking)} grid experiment(s)"
        if self.candidates == "backprop":
            why += " trained by backprop (probes left out: [study.final] candidates = \"backprop\")"
        if len(self.ranking) > 1 and self.ranking[1].val_acc == best.val_acc:
            why += f" (tied with {self.ranking[1].name}; lower {what} loss)"
        return f"{why}: {best.text()}" + self.noise()

    def noise(self) -> str:
        """Whether the choice is clear of the runner-up, by McNemar's test on validation."""
        if len(self.ranking) < 2:
            return ""
        second, t = self.ranking[1], self.paired
        if t is None:  # no predictions of the same images stored: the intervals say it
            return f"; next {second.text()}"
        verdict = "beyond the noise" if t.significant else "inside the noise"
        return (f"; next {second.name}: {verdict} (McNemar on the same {t.n} validation "
                f"images: {t.only_a} right only for the choice, {t.only_b} only for "
                f"{second.name}, p = {t.p:.3g})")

    def info(self) -> dict:
        """What the final experiment's details record about its choice."""
        return {"parent": self.parent.name, "parent_id": self.parent.id, "reason": self.reason,
                "ranking": [dataclasses.asdict(c) for c in self.ranking],
                "excluded": list(self.excluded),
                "selection": self.selection.summary() if self.selection else None,
                "paired": dataclasses.asdict(self.paired) if self.paired else None,
                "candidates": self.candidates}


def candidates(study: Study, store: Store) -> tuple[list[Candidate], list[str], list[str]]:
    """(ranked candidates, experiments still to finish, experiments left out and why)."""
    ranked, waiting, excluded = [], [], []
    for spec in study.experiments:
        if not eligible(study, spec):
            excluded.append(f"{spec.name} (a probe: [study.final] candidates = \"backprop\")")
            continue
        row = store.get(spec.id)
        status = row["status"] if row else "pending"
        if status in ("pending", "running"):
            waiting.append(spec.name)
            continue
        res = store.result_record(spec.id) if status == "done" else None
        if res is None or res.val_acc is None:
            excluded.append(f"{spec.name} ({status if res is None else 'no validation split'})")
            continue
        ranked.append(Candidate(spec.name, spec.id, float(res.val_acc),
                                float(res.val_loss) if res.val_loss is not None else math.inf,
                                int(res.val_n or 0)))
    ranked.sort(key=lambda c: rank_key(c.val_acc, c.val_loss))
    return ranked, waiting, excluded


def eligible(study: Study, spec: ExperimentSpec) -> bool:
    """Whether the final stage may take this grid experiment ([study.final] candidates)."""
    return not (study.final and study.final.candidates == "backprop" and spec.uses_features)


def plan(study: Study, store: Store) -> Plan:
    ranked, waiting, excluded = candidates(study, store)
    if waiting or not ranked or study.final is None:
        return Plan(None, None, tuple(ranked), tuple(waiting), tuple(excluded))
    sel = selection.resolve(study, store, ranked)
    if sel.waiting:  # the folds run after the grid, before the final
        return Plan(None, None, tuple(ranked), tuple(sel.waiting), tuple(excluded), sel)
    if sel.name == "kfold":
        ranked = [Candidate(o.name, o.exp_id, o.acc, o.loss, o.n, "oof") for o in sel.ranking()]
    parent = next(e for e in study.experiments if e.id == ranked[0].exp_id)
    res = store.result_record(parent.id)
    chosen = res.chosen_wd if res else None  # lp-ft: its probe phase's
    if parent.name in sel.oof and sel.oof[parent.name].chosen_wd is not None:
        chosen = sel.oof[parent.name].chosen_wd  # a probe's weight decay, chosen out of fold
    spec = final_spec(parent, study.final, chosen, study.budget)
    # the paired test compares the holdout's predictions: a k-fold ranking is out of fold
    paired = runner_up(store, ranked) if sel.name != "kfold" else None
    return Plan(spec, parent, tuple(ranked), (), tuple(excluded), sel, paired,
                study.final.candidates)


def runner_up(store: Store, ranked: list[Candidate]) -> stats.Paired | None:
    """McNemar's test of the chosen experiment against the next one on their validation
    images (None: fewer than two, or no stored predictions of the same images)."""
    if len(ranked) < 2:
        return None
    a, b = (store.result_record(c.exp_id) for c in ranked[:2])
    if not (a and b and a.val_predictions and b.val_predictions and a.val_labels
            and a.val_labels == b.val_labels and len(a.val_predictions) == len(a.val_labels)
            and len(b.val_predictions) == len(b.val_labels)):
        return None
    return stats.paired(a.val_predictions, b.val_predictions, a.val_labels)


def final_resolution(parent: ExperimentSpec, final: FinalSpec) -> int | None:
    """[study.final] resolution, except for the baseline CNN: built for the data's own 32 px,
    it gains nothing from an upsampled input and would pay (80/32)^2 = 6x per image for it
    (and, as the dearest candidate, hold the whole budget's plan hostage)."""
    if parent.model == "baseline":
        return parent.resolution
    return final.resolution or parent.resolution


def final_spec(parent: ExperimentSpec, final: FinalSpec, chosen_wd: float | None,
               budget: str | None = None) -> ExperimentSpec:
    """The parent's settings on every training image, with the final budget. A probe keeps its
    head epochs (cheap) and the weight decay validation chose; a backprop fit takes the final
    epochs and keeps its last epoch (there is no validation split left to choose one).

    Under a time budget a backprop fit's length is the plan's, fixed when it starts from the
    time the grid left: the id holds the budget as written, never the measured steps."""
    data = dataclasses.replace(parent.data, subset=final.subset, val_fraction=0.0)
    spec = dataclasses.replace(
        parent, name=(FINAL_PREFIX + parent.name)[:80], data=data,
        resolution=final_resolution(parent, final),
        batch_size=final.batch_size or parent.batch_size)
    if parent.uses_features:
        wd = parent.optimizer.weight_decay if chosen_wd is None else float(chosen_wd)
        return dataclasses.replace(spec, probe_wd=(wd,), optimizer=dataclasses.replace(
            parent.optimizer, weight_decay=wd))
    epochs = parent.epochs if budget else final.epochs or parent.epochs
    head_epochs = min(parent.gradual_head_epochs, max(epochs - 1, 0))
    if chosen_wd is not None:  # a probe phase before fine-tuning (lp-ft) keeps its chosen decay
        spec = dataclasses.replace(spec, probe_wd=(float(chosen_wd),))
    return dataclasses.replace(spec, epochs=epochs, gradual_head_epochs=head_epochs,
                               budget=budget or "")


def stored(store: Store, members: list) -> tuple[str, str] | None:
    """The (name, id) among a stored study's members that is its final experiment."""
    for name, exp_id in members:
        d = store.description(exp_id)
        if d is not None and d.final:
            return name, exp_id
    return None


def describe(store: Store, exp_id: str) -> dict | None:
    """The final model in full, as the report, the notebook and `report --json` give it."""
    e = store.get(exp_id)
    if e is None:
        return None
    d = store.description(exp_id) or Description.from_dict({})
    res = store.result_record(exp_id) if e["status"] == "done" else None
    cfg = store.config(exp_id)
    out = {"name": e["name"], "id": exp_id, "status": e["status"], "reason_failed": e["reason"],
           "chosen": d.final or {}, "source_model": d.arch or cfg["model"],
           "modified_layers": d.modified_layers, "transfer_type": cfg["regime"],
           "regime_description": d.regime_description, "initialisation": d.init,
           "optimizer": d.optimizer, "schedule": d.schedule,
           "epochs": cfg["epochs"], "batch_size": cfg["batch_size"],
           "resolution": d.resolution or cfg["resolution"], "augment": cfg["augment"],
           "label_smoothing": cfg["label_smoothing"], "tta": cfg["tta"],
           "train_images": (d.split_sizes or {}).get("train"), "data": d.data,
           "test_acc": None, "test_acc_no_tta": None, "test_n": None, "test_interval95": None}
    if res is not None:
        n = len(res.test_predictions or [])
        out.update(test_acc=res.test_acc, test_acc_no_tta=res.test_acc_no_tta,
                   test_n=n or None, seconds=res.total_seconds,
                   test_interval95=list(interval95(res.test_acc, n)) if n else None)
    out["budget"] = budget_summary(d.budget_plan, res, store.epochs(exp_id))
    if out["budget"]:  # the budget set the length: the config's epochs were not used
        out["epochs"] = out["budget"]["actual_epochs"] or out["budget"]["planned_epochs"]
    return out


def budget_summary(plan: dict | None, res: Result | None, epochs: list[dict]) -> dict | None:
    """A budgeted final's plan beside what ran: steps, epochs, throughput, wall time."""
    if not plan:
        return None
    p = BudgetPlan.from_dict(plan)
    done = res.steps if res else None
    rates = [e["img_per_s"] for e in epochs if e.get("img_per_s")]
    final_s = res.total_seconds if res else None
    return {"budget": p.budget, "budget_seconds": p.budget_s, "grid_seconds": p.grid_s,
            "margin_seconds": p.margin_s, "planned_steps": p.total_steps,
            "first_planned_steps": (p.replanned or {}).get("total_steps_before", p.total_steps),
            "actual_steps": done, "planned_epochs": round(p.epochs, 3),
            "actual_epochs": round(done / p.steps_per_epoch, 3) if done else None,
            "planned_img_per_s": p.img_per_s, "rate_source": p.rate_how,
            "measured_img_per_s": sum(rates) / len(rates) if rates else None,
            "replanned": p.replanned, "machine": p.machine, "final_seconds": final_s,
            "study_seconds": p.grid_s + final_s if final_s else None}
