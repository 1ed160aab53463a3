"""The measured plan of a study, and the time budget it is fitted to: one home for time.

Before anything trains, each experiment still to run is costed from timed steps of its own
model at its own resolution, batch and numerics: the numerics decision times them and caches
them, so the experiment later finds them and times nothing twice. A training loop runs a
little below the bare timed step (augmentation, the optimiser step, bookkeeping); that ratio,
the loop efficiency, is read from the experiments this machine has finished, and estimated
until there are some.

Under `budget` the final stage gets what the grid leaves, minus a stated safety margin, as
optimizer steps at its own throughput, and its learning rate decays to zero at the last of
them (Li, Yumer & Ramanan, ICLR 2020: a schedule fitted to the budget beats a longer one cut
short). Until the grid has chosen, the final is planned at the dearest candidate; when it
starts, its steps are fixed from the time actually left and the chosen model's measured rate,
and recorded (store and checkpoint) so that a resumed final keeps them on any machine.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import experiment, final, models, regimes
from .config import ExperimentSpec, Study
from .durations import duration_text, parse_budget
from .errors import ExperimentFailed, UserError, WeightsUnavailable
from .fit import probe
from .fit.features import probe_views
from .record import BudgetPlan
from .store import Store
from .util import cpu_name

# A budget must leave the final at least this much training (of its dearest candidate until
# the grid has chosen): half an epoch, so that a slow CPU (an AVX2-only EPYC) still fits the
# quick study, whose dearest candidate is a from-scratch control.
MIN_FINAL_EPOCHS = 0.5
MARGIN_FRACTION, MARGIN_SECONDS = 0.03, 5.0  # kept back from the budget: a stated margin
REPLAN_AT, REPLAN_MIN_STEPS = 0.03, 20  # when a new plan's rate is checked against the loop
REPLAN_TOLERANCE = 0.15  # a loop further off its planned rate than this is re-planned once
# Later checks (fractions of the steps): a machine that slows down mid-final (a busy neighbour
# on a shared VM: 171 -> 159 img/s in one Zen 4 run) is re-planned there, once in all, when the
# steps left would end more than half the margin past the time the plan has left.
LATE_CHECKS = (0.25, 0.5, 0.75)
DEFAULT_EFFICIENCY = 0.85  # loop rate / timed-step rate before this machine has finished a fit
HEAD_SAMPLES_PER_S = 1e5  # a probe head's fit on cached features, where it was not timed
CHECKPOINT_SECONDS = 2.0  # a final's per-epoch checkpoints, in all (estimated)


def margin_seconds(budget_s: float) -> float:
    return MARGIN_FRACTION * budget_s + MARGIN_SECONDS


# ------------------------------------------------------------------ rates and parts

@dataclass(frozen=True)
class Rate:
    """Images per second of one kind of work, and where the figure comes from."""
    img_per_s: float
    how: str

    @property
    def measured(self) -> bool:
        return self.how.startswith("measured")

    def text(self, unit: str = "img/s") -> str:
        return f"{self.img_per_s:.0f} {unit} ({'m' if self.measured else 'e'})"


@dataclass
class Part:
    """One part of the study's time: an experiment still to run, or one that is done."""
    name: str
    status: str
    seconds: float
    what: str = ""  # the work counted, in words
    rates: dict[str, Rate] = field(default_factory=dict)
    note: str = ""

    def line(self) -> str:
        rates = ", ".join(f"{k} {r.text('samples/s' if k == 'head' else 'img/s')}"
                          for k, r in self.rates.items())
        cost = f"~{duration_text(self.seconds)}" if self.status in ("pending", "rerun") else \
            (f"took {duration_text(self.seconds)}" if self.seconds else "")
        tail = f"  [{self.note}]" if self.note else ""
        return f"  {self.name:<26} {self.status:<8} {cost:<14} {rates}{tail}"


@dataclass(frozen=True)
class Efficiency:
    value: float
    how: str


def loop_efficiency(store: Store, specs: list[ExperimentSpec], prefer: str | None = None,
                    machine: str | None = None) -> Efficiency:
    """Training loop images/s over the timed-step images/s, from finished backprop fits on
    this machine: the parent's own where `prefer` names it, else the median."""
    machine = machine or cpu_name()
    ratios = {}
    for spec in specs:
        if spec.uses_features:
            continue
        r = _ratio(store, spec.id, machine)
        if r is not None:
            ratios[spec.id] = (spec.name, r)
    if prefer in ratios:
        name, r = ratios[prefer]
        return Efficiency(r, f"measured: {name}'s loop ran at {r:.2f}x its timed steps")
    if ratios:
        r = statistics.median(v for _, v in ratios.values())
        return Efficiency(r, f"measured: median of {len(ratios)} finished fit(s), {r:.2f}x")
    return Efficiency(DEFAULT_EFFICIENCY, f"estimated: {DEFAULT_EFFICIENCY:.2f}x the timed "
                      "steps (no fit has finished on this machine yet)")


def _ratio(store: Store, exp_id: str, machine: str) -> float | None:
    row = store.get(exp_id)
    if row is None or row["status"] != "done" or not row["details"]:
        return None
    env = store.environment(exp_id) or {}
    if env.get("device") != machine:
        return None
    train = (json.loads(row["details"]).get("numerics") or {}).get("train") or {}
    timed = (train.get("img_per_s") or {}).get(train.get("numerics"))
    loop = [e["img_per_s"] for e in store.epochs(exp_id) if e.get("img_per_s")]
    if not timed or not loop:
        return None
    return statistics.mean(loop) / timed


# ------------------------------------------------------------------ costing an experiment

def measure(spec: ExperimentSpec, image_size: int, num_classes: int, device, data_root=None
            ) -> tuple[dict[str, Rate], float]:
    """The experiment's rates by the numerics decision's timed steps (cached for its run), and
    the seconds its model takes to build. Raises WeightsUnavailable where it would skip."""
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # building draws from the global RNG: leave it be
        net = models.build(spec, num_classes)
    regimes.apply(net, spec, phase=0)
    net = net.to(device)
    if spec.channels_last:
        net = net.to(memory_format=torch.channels_last)
    build_s = time.perf_counter() - t0
    choices = experiment.decide_numerics(spec, net, spec.resolution or image_size, device,
                                         need_rate=True, data_root=data_root)
    rates = {k: Rate(c.rate, c.how) for k, c in choices.items() if c.rate}
    if any(p.on_features(spec) for p in regimes.phases(spec)):
        rate = probe.head_rate(spec, net.info.num_features, num_classes)
        rates["head"] = Rate(rate, "measured: timed head steps on random features")
    return rates, build_s


def views(spec: ExperimentSpec) -> int:
    return 2 if spec.tta else 1


def seconds_of(spec: ExperimentSpec, sizes: dict, rates: dict[str, Rate], eff: float,
               overhead_s: float = 0.0, epochs: float | None = None) -> tuple[float, str]:
    """What an experiment costs at these rates: (seconds, the work in words). `epochs`
    overrides the backprop epochs (a final planned by its minimum)."""
    n_train, n_val, n_test = sizes["train"], sizes["val"], sizes["test"]
    total, what = overhead_s, []
    phases = regimes.phases(spec)
    if any(p.on_features(spec) for p in phases):
        pv = probe_views(spec)
        images = n_train * len(pv["train"]) + (n_val + n_test) * len(pv["test"])
        total += images / rates["extract"].img_per_s
        head_epochs = sum(p.epochs(spec) for p in phases if p.on_features(spec))
        head = rates["head"].img_per_s if "head" in rates else HEAD_SAMPLES_PER_S
        wds = len(spec.probe_wd) + 1  # the sweep often extends past an edge once
        total += head_epochs * n_train * len(pv["train"]) * wds / head
        what.append(f"features of {images:,} images")
    bp_epochs = sum(p.epochs(spec) for p in phases if not p.on_features(spec))
    if bp_epochs:
        bp_epochs = bp_epochs if epochs is None else epochs
        train = rates["train"].img_per_s * eff
        scored = (bp_epochs * n_val + n_val + n_test) * views(spec)  # per epoch, then the end
        total += bp_epochs * n_train / train + scored / rates["eval"].img_per_s
        what.append(f"{bp_epochs:g} epoch(s) x {n_train:,} images at {train:.0f} img/s")
    return total, ", ".join(what)


def scaled(rates: dict[str, Rate], from_res: int, to_res: int) -> dict[str, Rate]:
    """Rates at another resolution, by pixel count (an estimate, said so)."""
    if from_res == to_res:
        return rates
    k = (from_res / to_res) ** 2
    return {n: Rate(r.img_per_s * k, f"estimated from the {from_res}px timing x "
                    f"({from_res}/{to_res})^2") for n, r in rates.items()}


# ------------------------------------------------------------------ the study's plan

@dataclass
class StudyPlan:
    """What is left to run, what it costs, and (under a budget) what the final gets."""
    study: str
    machine: str
    parts: list[Part]
    final: Part | None  # the final stage at its planned (or, unchosen, dearest) cost
    final_note: str
    spent_s: float  # wall time the grid has taken so far (earlier runs and this process)
    efficiency: Efficiency
    budget: str | None = None
    budget_s: float | None = None
    final_steps: int | None = None
    final_epochs: float | None = None
    final_rate: float | None = None
    final_train_images: int = 0
    final_fixed: bool = False  # the final has started (its plan is fixed) or finished

    @property
    def pending(self) -> list[Part]:
        return [p for p in self.parts if p.status in ("pending", "rerun")]

    @property
    def grid_left_s(self) -> float:
        return sum(p.seconds for p in self.pending)

    @property
    def grid_done(self) -> bool:
        return not self.pending

    @property
    def margin_s(self) -> float:
        return margin_seconds(self.budget_s) if self.budget_s else 0.0

    @property
    def final_left_s(self) -> float | None:
        """What the budget leaves the final stage."""
        if self.budget_s is None:
            return None
        return self.budget_s - self.spent_s - self.grid_left_s - self.margin_s

    def lines(self) -> list[str]:
        head = f"study {self.study}: {len(self.parts)} experiments, on {self.machine}"
        if self.budget:
            head += f", budget {self.budget} ({self.budget_s:.0f} s)"
        out = [head, f"  loop efficiency: {self.efficiency.how}", *(p.line() for p in self.parts)]
        if self.final is not None:
            out.append(self.final.line())
            out.append(f"    {self.final_note}")
        out.append(f"grid: ~{duration_text(self.grid_left_s)} still to run"
                   + (f", {duration_text(self.spent_s)} spent already" if self.spent_s else ""))
        if self.budget_s is not None and self.final is not None and not self.final_fixed:
            out.append(f"final: the budget leaves it ~{duration_text(max(self.final_left_s, 0))} "
                       f"(after a {self.margin_s:.0f} s safety margin: "
                       f"{MARGIN_FRACTION:.0%} of the budget + {MARGIN_SECONDS:.0f} s)")
            if self.grid_done and self.final_left_s < self.final.seconds:
                out.append(f"  the grid is done: the final runs anyway, at least "
                           f"~{duration_text(self.final.seconds)}, and overruns the budget")
            if self.final_steps:
                out.append(f"  -> ~{self.final_steps:,} optimizer steps = {self.final_epochs:.2f} "
                           f"epochs of {self.final_train_images:,} images at "
                           f"~{self.final_rate:.0f} img/s; its learning rate reaches zero at the "
                           "last step (fixed when the final starts, from the time then left)")
        elif self.final is not None:
            out.append(f"total: ~{duration_text(self.grid_left_s + self.final.seconds)} for what "
                       "would run")
        out.append("(m) measured on this machine now or earlier (cached), (e) estimated")
        return out

    def check(self) -> None:
        """Fail before any training if the grid leaves the final less than its minimum. Once
        the grid is done the final runs whatever is left: stopping then would throw away the
        grid's time for no answer (it trains its minimum, and the log says it overruns)."""
        if self.budget_s is None or self.final is None or self.final_fixed:
            return
        need = self.final.seconds  # the dearest candidate's minimum
        if self.final_left_s >= need or self.grid_done:
            return
        fits = self.spent_s + self.grid_left_s + self.margin_s + need
        raise UserError(
            f"budget {self.budget} does not fit this study on this machine: the grid still "
            f"needs ~{duration_text(self.grid_left_s)} (measured: "
            + "; ".join(f"{p.name} {duration_text(p.seconds)}" for p in self._dearest_parts())
            + (f"; {duration_text(self.spent_s)} spent already" if self.spent_s else "")
            + f"), which leaves the final stage ~{duration_text(max(self.final_left_s, 0))} "
            f"after the {self.margin_s:.0f} s margin, less than its minimum of "
            f"{MIN_FINAL_EPOCHS:g} epoch ({duration_text(need)}: {self.final_note}). "
            f"Lower [study] subset, the grid's resolution or epochs, or give a budget that "
            f"fits: --budget {math.ceil(fits / 60)}m. Nothing was run or changed.")

    def _dearest_parts(self) -> list[Part]:
        return sorted(self.pending, key=lambda p: -p.seconds)[:3]


def make(study: Study, store: Store, specs: list[ExperimentSpec], sizes: dict,
         final_sizes: dict | None, image_size: int, num_classes: int, device, spent_s: float,
         again: set = frozenset(), say: Callable[[str], None] = lambda _m: None,
         data_root=None) -> StudyPlan:
    """Cost every experiment of `specs` (timing what is still to run) and the final stage."""
    machine = device_name(device)
    eff = loop_efficiency(store, study.experiments, machine=machine)
    parts, rates_of = [], {}
    for spec in specs:
        row = store.get(spec.id)
        status = "rerun" if spec.name in again else (row["status"] if row else "pending")
        if status == "running":
            status = "pending"  # a claim another runner holds, or one to resume: count it
        if status not in ("pending", "rerun"):
            res = store.result(spec.id) if status == "done" else None
            parts.append(Part(spec.name, status, (res or {}).get("total_seconds") or 0.0))
            continue
        say(f"  timing {spec.name} ...")
        part, rates = _pending_part(spec, status, sizes, image_size, num_classes, device, eff,
                                    data_root)
        parts.append(part)
        if rates:
            rates_of[spec.name] = rates
    plan = StudyPlan(study.name, machine, parts, None, "", spent_s, eff,
                     budget=study.budget,
                     budget_s=parse_budget(study.budget) if study.budget else None)
    if study.final is not None and final_sizes is not None:
        _plan_final(plan, study, store, sizes, final_sizes, image_size, num_classes, device,
                    rates_of, eff, data_root)
    return plan


def _pending_part(spec, status, sizes, image_size, num_classes, device, eff: Efficiency,
                  data_root=None):
    try:
        rates, build_s = measure(spec, image_size, num_classes, device, data_root)
    except WeightsUnavailable as e:
        return Part(spec.name, "skipped", 0.0, note=f"will be skipped: {e}"), None
    seconds, what = seconds_of(spec, sizes, rates, eff.value, build_s)
    return Part(spec.name, status, seconds, what, rates), rates


def _plan_final(plan: StudyPlan, study, store, sizes, final_sizes, image_size, num_classes,
                device, rates_of: dict, eff: Efficiency, data_root=None) -> None:
    """The final stage: the chosen configuration measured at its own settings, or, before the
    grid has chosen, the dearest candidate estimated from its grid timing."""
    chosen = final.plan(study, store)
    budgeted = study.budget is not None
    if chosen.spec is not None:
        spec = chosen.spec
        row = store.get(spec.id)
        status = row["status"] if row else "pending"
        if status == "done":
            res = store.result(spec.id) or {}
            plan.final = Part(spec.name, "done", res.get("total_seconds") or 0.0)
            plan.final_note = "the final stage has finished"
            plan.final_fixed = True
            return
        details = json.loads(row["details"]) if row and row["details"] else {}
        if details.get("budget_plan"):  # started already: its plan is fixed, whatever happens here
            fixed = BudgetPlan.from_dict(details["budget_plan"])
            plan.final = Part(spec.name, status, 0.0, note="started: its plan is fixed")
            plan.final_note = fixed.text()
            plan.final_fixed = True
            return
        eff = loop_efficiency(store, study.experiments, prefer=chosen.parent.id,
                              machine=plan.machine)
        plan.efficiency = eff
        rates, build_s = measure(spec, image_size, num_classes, device, data_root)
        cands = [(spec, rates, build_s, "chosen on validation")]
    else:
        cands = []
        for parent in study.experiments:
            if parent.name not in rates_of or not final.eligible(study, parent):
                continue  # done (rates unknown here, timed again below), skipped or failing
            spec = final.final_spec(parent, study.final, None, study.budget)
            grid_res = parent.resolution or image_size
            cands.append((spec, scaled(rates_of[parent.name], grid_res,
                                       spec.resolution or image_size), 0.0, "estimated"))
        for parent in study.experiments:  # finished candidates: time them at the final's size
            row = store.get(parent.id)
            if (parent.name in rates_of or row is None or row["status"] != "done"
                    or not final.eligible(study, parent)):
                continue
            spec = final.final_spec(parent, study.final, None, study.budget)
            try:
                rates, build_s = measure(spec, image_size, num_classes, device, data_root)
            except WeightsUnavailable:
                continue
            cands.append((spec, rates, build_s, "measured"))
    if not cands:
        return
    costed = []
    for spec, rates, build_s, why in cands:
        epochs = MIN_FINAL_EPOCHS if budgeted else None
        sec, what = seconds_of(spec, final_sizes, rates, eff.value, build_s, epochs=epochs)
        costed.append((sec, spec, rates, what, why))
    sec, spec, rates, what, why = max(costed, key=lambda c: c[0])
    label = spec.name if chosen.spec is not None else "final (after the grid)"
    plan.final = Part(label, "pending", sec, what, rates)
    res = spec.resolution or image_size
    plan.final_note = (f"{spec.name} at {res}px: {what}" if chosen.spec is not None else
                       f"planned at the dearest of {len(costed)} candidate(s), {spec.name} at "
                       f"{res}px: {what}")
    if budgeted and not spec.uses_features and "train" in rates:
        n = final_sizes["train"]
        left = plan.final_left_s - (sec - n * MIN_FINAL_EPOCHS / (rates["train"].img_per_s * eff.value))
        plan.final_rate = rates["train"].img_per_s * eff.value
        plan.final_steps = max(0, int(left * plan.final_rate / spec.batch_size))
        plan.final_train_images = n
        plan.final_epochs = plan.final_steps * spec.batch_size / max(n, 1)


# ------------------------------------------------------------------ the study's clock

def ledger_key(study: Study) -> str:
    """The grid's account in the store: its experiments' ids (an override that changes the
    grid opens a new account; a budget alone does not)."""
    ids = ",".join(sorted(e.id for e in study.experiments))
    return f"{study.name}|{hashlib.sha256(ids.encode()).hexdigest()[:16]}"


class Clock:
    """The grid's wall time. A process that runs grid experiments charges the store's ledger
    with its own time from its start (imports, decoding, the plan included), experiment by
    experiment, so a kill loses at most the one running; a process with no grid work charges
    nothing. A store without an account (older, or copied) falls back on the grid's recorded
    experiment times."""

    def __init__(self, store: Store, study: Study, started: float):
        self.store, self.study, self.key = store, study, ledger_key(study)
        self.mark, self.started = started, started

    def charge(self) -> None:
        now = time.time()
        self.store.charge(self.key, now - self.mark)
        self.mark = now

    def elapsed(self) -> float:
        """This process's time not yet charged."""
        return time.time() - self.mark

    def grid_seconds(self) -> float:
        charged = self.store.ledger(self.key)
        if charged is not None:
            return charged
        total = 0.0
        for e in self.study.experiments:
            res = self.store.result(e.id)
            total += (res or {}).get("total_seconds") or 0.0
        return total


# ------------------------------------------------------------------ the final's budget

@dataclass
class FinalBudget:
    """What a budgeted final may spend, from the runner to the fit: the budget, the grid's
    time, when the final started, the loop efficiency, and a plan it recorded before (kept)."""
    budget: str
    grid_s: float
    started: float
    efficiency: Efficiency
    existing: BudgetPlan | None = None

    @property
    def budget_s(self) -> float:
        return parse_budget(self.budget)

    def for_fit(self, spec: ExperimentSpec, choices: dict, splits, record) -> "FitBudget":
        train, ev = choices["train"], choices["eval"]  # a resumed fit's carry no rates
        n_eval = (len(splits.y["test"]) + len(splits.y["val"])) * views(spec)
        reserve = n_eval / ev.rate + CHECKPOINT_SECONDS if ev.rate else CHECKPOINT_SECONDS
        how = (f"timed steps {train.rate or 0:.0f} img/s ({train.how}) x loop efficiency "
               f"{self.efficiency.value:.2f} ({self.efficiency.how})")
        return FitBudget(self, float(train.rate or 0.0) * self.efficiency.value, how, reserve,
                         len(splits.y["train"]), record)


@dataclass
class FitBudget:
    """The budget as a backprop fit sees it: plan its steps, check its rate once, record."""
    final: FinalBudget
    img_per_s: float  # planned loop throughput
    rate_how: str
    reserve_s: float
    train_images: int
    record: Callable[[BudgetPlan], None]
    planned_at: float = 0.0

    @property
    def existing(self) -> BudgetPlan | None:
        return self.final.existing

    def plan(self, steps_per_epoch: int, batch: int) -> BudgetPlan:
        if not self.img_per_s > 0:
            raise ExperimentFailed("the final stage has no measured training rate to plan its "
                                   "budget with; delete its checkpoint and run again")
        f = self.final
        margin = margin_seconds(f.budget_s)
        self.planned_at = time.time()
        left = f.budget_s - f.grid_s - margin - (self.planned_at - f.started) - self.reserve_s
        steps = int(max(left, 0.0) * self.img_per_s / batch)
        floor = math.ceil(MIN_FINAL_EPOCHS * steps_per_epoch)
        how = self.rate_how
        if steps < floor:  # the grid overran its plan: a final this short would be no answer
            how += (f"; the time left gives {steps} steps, raised to the minimum of "
                    f"{MIN_FINAL_EPOCHS:g} epoch: the study overruns its budget")
            steps = floor
        return BudgetPlan(
            budget=f.budget, budget_s=f.budget_s, grid_s=f.grid_s, margin_s=margin,
            reserve_s=self.reserve_s, train_s=left, img_per_s=self.img_per_s, rate_how=how,
            batch_size=batch, steps_per_epoch=steps_per_epoch, total_steps=steps,
            train_images=self.train_images, machine=_machine(),
            created=datetime.datetime.now().isoformat(timespec="seconds"))

    def check_step(self, plan: BudgetPlan) -> int:
        """The step after which the loop's own rate is first compared with the plan's."""
        return min(plan.total_steps, max(REPLAN_MIN_STEPS, math.ceil(REPLAN_AT * plan.total_steps)))

    def check_steps(self, plan: BudgetPlan) -> list[int]:
        """Every step after which the rate is checked: the early one, then the late ones."""
        first = self.check_step(plan)
        late = [math.ceil(f * plan.total_steps) for f in LATE_CHECKS]
        return [first] + sorted({s for s in late if first < s < plan.total_steps})

    def replan(self, plan: BudgetPlan, done: int, measured: float,
               late: bool = False) -> BudgetPlan | None:
        """A new total from the time left at the measured rate; None if the plan stands. Early,
        a rate off by more than the tolerance either way re-plans; late, only a projected
        overrun of more than half the margin does (a fast loop just ends early)."""
        left = plan.train_s - (time.time() - self.planned_at)
        if late:
            needed = (plan.total_steps - done) * plan.batch_size / max(measured, 1e-9)
            if needed - left <= plan.margin_s / 2:
                return None
        elif abs(measured / plan.img_per_s - 1) <= REPLAN_TOLERANCE:
            return None
        total = max(done + 1, done + int(max(left, 0.0) * measured / plan.batch_size))
        total = max(total, math.ceil(MIN_FINAL_EPOCHS * plan.steps_per_epoch))
        return dataclasses.replace(plan, total_steps=total, img_per_s=measured, replanned={
            "at_step": done, "planned_img_per_s": plan.img_per_s, "measured_img_per_s": measured,
            "total_steps_before": plan.total_steps,
            "when": datetime.datetime.now().isoformat(timespec="seconds")})


def device_name(device) -> str:
    """The machine as the environment record names it (CPU model, or the GPU)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def _machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{cpu_name()}, {torch.get_num_threads()} threads"
