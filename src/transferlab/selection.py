"""How the final stage's configuration is chosen: on the holdout validation split, or by k-fold
cross-validation over train + validation.

A validation split of two dozen images cannot carry a choice: two candidates tie at 100 % and
the tie-break decides. Under k-fold every candidate is fitted k times, each time with one fold
of train + validation held out, and is judged by its out-of-fold (OOF) predictions: one per
image of train + validation, N in all, so its interval is on N and two candidates compare image
by image (McNemar's exact test). The folds are ordinary experiments in the store (claimed,
checkpointed, resumable), one per fold, whose ids hold the parent's settings and the fold.

- Probes (cached features) are cheap to cross-validate: their weight decay is chosen on the
  out-of-fold predictions of every weight decay tried, whenever selection is not "holdout".
- Backprop fits run the grid's budget k times: under "auto" only when the validation split is
  small (under SMALL_VAL_PER_CLASS images per class) or the holdout leader's interval
  overlaps the runner-up's; never when they do not fit the time budget (their fold experiments
  then end as skipped, with why, and the choice falls back to the holdout split).

Study layer: reads the store, trains nothing.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from . import stats
from .config import ExperimentSpec, Study
from .store import Store

SMALL_VAL_PER_CLASS = 100  # below this many validation images per class, "auto" cross-validates
FOLD_MARK = ".fold"


def fold_name(parent: str, fold: int, k: int) -> str:
    suffix = f"{FOLD_MARK}{fold + 1}of{k}"
    return parent[:80 - len(suffix)] + suffix


def fold_specs(parent: ExperimentSpec, k: int) -> list[ExperimentSpec]:
    """The parent's settings on each fold of train + validation (fold i held out)."""
    return [dataclasses.replace(parent, name=fold_name(parent.name, i, k),
                                data=dataclasses.replace(parent.data, folds=k, fold=i))
            for i in range(k)]


@dataclass(frozen=True)
class Method:
    """Which selection runs, and why."""
    name: str  # "kfold" | "holdout"
    why: str
    folds: int
    probes: bool  # cross-validate the probes (their weight decay)
    backprop: bool  # cross-validate the backprop fits


def method(study: Study, ranked: list, val_per_class: float) -> Method:
    """The selection for this study, from its setting and the holdout figures (`ranked`:
    candidates with val_acc and val_n, best first)."""
    k = study.folds
    if study.selection == "holdout":
        return Method("holdout", 'selection = "holdout" in [study]', k, False, False)
    if study.selection == "kfold":
        return Method("kfold", 'selection = "kfold" in [study]', k, True, True)
    if val_per_class < SMALL_VAL_PER_CLASS:
        return Method("kfold", f"the validation split is small ({val_per_class:.0f} images per "
                      f"class, under {SMALL_VAL_PER_CLASS})", k, True, True)
    if len(ranked) > 1 and overlaps(ranked[0], ranked[1]):
        return Method("kfold", f"the validation leader {ranked[0].name}'s 95 % interval overlaps "
                      f"the runner-up {ranked[1].name}'s", k, True, True)
    return Method("holdout", "the validation split is large enough and its leader is clear of "
                  "the runner-up", k, True, False)


def overlaps(a, b) -> bool:
    lo_a, hi_a = stats.wilson(a.val_acc, a.val_n)
    lo_b, hi_b = stats.wilson(b.val_acc, b.val_n)
    return not (a.val_n and b.val_n) or (lo_a <= hi_b and lo_b <= hi_a)


@dataclass(frozen=True)
class OutOfFold:
    """One candidate's out-of-fold predictions over the pool (train + validation)."""
    name: str
    exp_id: str
    acc: float
    loss: float
    preds: tuple
    labels: tuple
    chosen_wd: float | None = None  # a probe's weight decay, chosen on these predictions

    @property
    def n(self) -> int:
        return len(self.labels)

    def as_dict(self) -> dict:
        lo, hi = stats.wilson(self.acc, self.n)
        return {"name": self.name, "oof_acc": self.acc, "n": self.n, "interval95": [lo, hi],
                "oof_loss": self.loss if math.isfinite(self.loss) else None,
                "chosen_wd": self.chosen_wd}


@dataclass
class Selection:
    """The selection that ran (or is still to run) over a study's finished grid."""
    method: Method
    fold_specs: list[ExperimentSpec] = field(default_factory=list)  # every fold it needs
    waiting: list[str] = field(default_factory=list)  # fold experiments not finished
    oof: dict[str, OutOfFold] = field(default_factory=dict)  # candidate name -> its OOF
    fallback: str = ""  # why k-fold fell back to the holdout split

    @property
    def name(self) -> str:
        return "holdout" if self.fallback or self.method.name == "holdout" else "kfold"

    def ranking(self) -> list[OutOfFold]:
        """Best first: higher OOF accuracy, then lower OOF loss."""
        return sorted(self.oof.values(), key=lambda o: (-o.acc, o.loss))

    def paired(self) -> stats.Paired | None:
        r = self.ranking()
        if len(r) < 2:
            return None
        return stats.paired(r[0].preds, r[1].preds, r[0].labels)

    def why(self) -> str:
        if self.fallback:
            return f"holdout: {self.fallback}"
        if self.name == "holdout":
            return f"holdout: {self.method.why}"
        n = next(iter(self.oof.values())).n if self.oof else 0
        return (f"{self.method.folds}-fold cross-validation on all {n} train + validation "
                f"images: {self.method.why}")

    def summary(self) -> dict:
        """What the final's details, `report --json` and the notebook give of the selection."""
        ranking = self.ranking() if self.name == "kfold" else []
        p = self.paired() if self.name == "kfold" else None
        return {"method": self.name, "folds": self.method.folds if self.name == "kfold" else None,
                "n": ranking[0].n if ranking else None, "why": self.why(),
                "probe_weight_decay_by_oof": {o.name: o.chosen_wd for o in self.oof.values()
                                              if o.chosen_wd is not None},
                "candidates": [o.as_dict() for o in ranking],
                "paired": None if p is None else {
                    "leader": ranking[0].name, "runner_up": ranking[1].name, "n": p.n,
                    "only_leader": p.only_a, "only_runner_up": p.only_b, "p_value": p.p}}


def resolve(study: Study, store: Store, ranked: list) -> Selection:
    """The selection over the finished grid's candidates (`ranked`, best first on holdout)."""
    specs = {e.name: e for e in study.experiments}
    m = method(study, ranked, val_per_class(store, ranked))
    sel = Selection(m)
    wanted = [specs[c.name] for c in ranked
              if (m.probes if specs[c.name].uses_features else m.backprop)]
    for parent in wanted:
        sel.fold_specs += fold_specs(parent, m.folds)
    for spec in sel.fold_specs:
        row = store.get(spec.id)
        status = row["status"] if row else "pending"
        if status in ("pending", "running"):
            sel.waiting.append(spec.name)
        elif status != "done" and not sel.fallback:
            sel.fallback = (f"the fold experiment {spec.name} is {status}"
                            + (f" ({row['reason']})" if row["reason"] else ""))
    if sel.waiting:
        return sel
    for parent in wanted:  # a fallback still keeps the probes' out-of-fold weight decays
        if all(_done(store, s) for s in fold_specs(parent, m.folds)):
            sel.oof[parent.name] = out_of_fold(store, parent, m.folds)
    return sel


def _done(store: Store, spec: ExperimentSpec) -> bool:
    row = store.get(spec.id)
    return row is not None and row["status"] == "done"


def val_per_class(store: Store, ranked: list) -> float:
    """The holdout validation split's size per class (the smallest any candidate saw)."""
    sizes = []
    for c in ranked:
        res = store.result(c.exp_id) or {}
        if c.val_n and res.get("classes"):
            sizes.append(c.val_n / len(res["classes"]))
    return min(sizes) if sizes else 0.0


def out_of_fold(store: Store, parent: ExperimentSpec, k: int) -> OutOfFold:
    """Assemble the k folds' held-out predictions into one prediction per pool image; a probe
    first chooses its weight decay on them."""
    folds = [(store.result(s.id) or {}).get("extra") or {} for s in fold_specs(parent, k)]
    size = folds[0]["fold"]["pool_size"]
    labels = [0] * size
    for f in folds:
        for i, y in zip(f["fold"]["held_out"], f["fold"]["labels"]):
            labels[i] = y
    if parent.uses_features:
        return _probe_oof(parent, folds, labels)
    preds = _gather(folds, size, [f["fold"]["predictions"] for f in folds])
    loss = _mean_loss(folds, [f.get("val_loss") for f in folds])
    return OutOfFold(parent.name, parent.id, _acc(preds, labels), loss, tuple(preds),
                     tuple(labels))


def _probe_oof(parent: ExperimentSpec, folds: list[dict], labels: list[int]) -> OutOfFold:
    """Every weight decay's OOF accuracy; the best (then the lower OOF loss, then the grid's
    order) is the probe's choice."""
    best = None
    for j, wd in enumerate(w["weight_decay"] for w in folds[0]["probe_sweep"]):
        rows = [f["probe_sweep"][j] for f in folds]
        preds = _gather(folds, len(labels), [r["predictions"] for r in rows])
        acc, loss = _acc(preds, labels), _mean_loss(folds, [r.get("val_loss") for r in rows])
        if best is None or (-acc, loss) < (-best.acc, best.loss):
            best = OutOfFold(parent.name, parent.id, acc, loss, tuple(preds), tuple(labels),
                             float(wd))
    return best


def _gather(folds: list[dict], size: int, per_fold: list[list[int]]) -> list[int]:
    preds = [-1] * size
    for f, p in zip(folds, per_fold):
        for i, y in zip(f["fold"]["held_out"], p):
            preds[i] = y
    return preds


def _acc(preds: list[int], labels: list[int]) -> float:
    return sum(p == y for p, y in zip(preds, labels)) / len(labels) if labels else math.nan


def _mean_loss(folds: list[dict], losses: list) -> float:
    """The folds' validation losses weighted by their sizes (inf where one was not recorded)."""
    if any(x is None for x in losses):
        return math.inf
    sizes = [len(f["fold"]["held_out"]) for f in folds]
    return sum(x * n for x, n in zip(losses, sizes)) / max(1, sum(sizes))
