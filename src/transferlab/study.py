"""Run a study over the store: skip what is done, resume what was interrupted, share the work.

Any number of runner processes may work on one study and one store: each experiment is
claimed atomically before it runs, and a claim whose runner died is taken over.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import sys
import tempfile
import threading
import time
import traceback
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import torch

from . import final, selection
from .fit import dist
from . import plan as planning
from .config import ExperimentSpec, Study, legacy_experiment_id
from .data import Splits, make_splits
from .errors import ClaimLost, ExperimentFailed, UserError, WeightsUnavailable
from .record import BudgetPlan
from .store import Store, lease_seconds, owner_id
from .util import load_or_set_aside, remove_stale_temps


def say(msg: str) -> None:
    if dist.rank() == 0:  # one voice under torchrun
        print(msg, flush=True)


def experiment_dir(study: Study, spec: ExperimentSpec) -> Path:
    """An experiment's files (checkpoint, model), keyed by id: renaming the experiment in the
    config keeps them. A folder left by an older transferlab is taken over (see below)."""
    root = (study.runs_dir / study.name).resolve()
    path = root / spec.id  # hex: no name, however spelt, reaches outside the study's folder
    if not path.exists():
        _take_over_old_dir(root, spec, path)
    return path


def _take_over_old_dir(root: Path, spec: ExperimentSpec, path: Path) -> None:
    """Older versions named the folder `<name>-<id>`, with an id that hashed the data path as
    typed: rename such a folder to the id, so an interrupted run resumes from its checkpoint."""
    if not root.is_dir():
        return
    for old_id in dict.fromkeys((spec.id, legacy_experiment_id(spec))):
        for old in sorted(root.glob(f"*-{old_id}")):
            try:
                old.rename(path)
                return
            except OSError:  # another runner took it over first, or it is not a folder
                continue


def writable_folder(path: Path, what: str, fix: str) -> None:
    """Create `path` and write a file in it, or fail now with what to pass instead, before any
    experiment is claimed (checkpoints, models and feature caches go there)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as e:
        raise UserError(f"cannot write the {what} {path} ({type(e).__name__}: {e}); pass {fix} "
                        "to a writable folder, or fix its permissions") from None


@dataclass
class Outcome:
    ran: list[str]
    skipped: list[str]
    failed: list[tuple[str, str]]
    busy: list[str]  # held by another live runner


class Heartbeat:
    """Keeps a claim alive from a side thread (its own store connection) from the moment it is
    taken, so a long data decode cannot let another runner steal a live claim.

    When the claim was taken over, or could not be refreshed for a whole lease (the store
    unreachable or locked), `lost` says why and `check()` raises ClaimLost: the experiment's
    next record stops the work instead of training on for nothing."""

    def __init__(self, where, exp_id: str, owner: str, token: str, lease: float):
        self.where, self.exp_id, self.owner, self.token = where, exp_id, owner, token
        self.lease, self.every = lease, lease / 6
        self.lost: str | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        store, last_ok, failing = None, time.monotonic(), False
        try:
            while not self.stop.wait(self.every):
                try:
                    if store is None:
                        store = Store(self.where)
                        store.hold(self.exp_id, self.token)
                    store.heartbeat(self.exp_id, self.owner)
                    last_ok, failing = time.monotonic(), False
                except ClaimLost as e:
                    self.lost = str(e)
                    return
                except Exception as e:  # locked, connection dropped: retry on a new connection
                    if not failing:
                        print(f"  heartbeat failed ({type(e).__name__}: {e}); retrying",
                              file=sys.stderr, flush=True)
                    failing = True
                    if store is not None:
                        with suppress(Exception):
                            store.close()
                        store = None
                    if time.monotonic() - last_ok >= self.lease:
                        self.lost = (f"the heartbeat could not refresh the claim for "
                                     f"{self.lease:g}s ({type(e).__name__}: {e}); another runner "
                                     "may take the experiment over")
                        return
        finally:
            if store is not None:
                store.close()

    def check(self) -> None:
        if self.lost:
            raise ClaimLost(self.lost)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)


class Runner:
    def __init__(self, study: Study, data_root: Path | None = None, device: str = "auto",
                 skip_bad_images: bool = False, overrides: dict | None = None,
                 tensorboard: Path | None = None, register: bool = True,
                 started: float | None = None):
        from .util import default_data_root, pick_device
        dist.init()
        self.study, self.overrides = study, overrides or {}
        self.data_root = Path(data_root) if data_root else default_data_root()
        self.device = pick_device(device)
        self.skip_bad = skip_bad_images
        self.is_main = dist.rank() == 0
        self.store = Store(study.store)
        remove_stale_temps(self.data_root)  # a numerics cache write that was killed
        self.lease = lease_seconds()
        self.owner = owner_id()  # unique per runner: hostname:pid:random
        self._splits: dict = {}  # DataSpec -> Splits (the final stage trains on all of train)
        self.tensorboard = tensorboard or study.tensorboard  # curves per experiment, if set
        if self.tensorboard:
            from .tboard import require
            require()
        # the grid's wall time, from this process's start (the budget counts imports and decoding)
        self.clock = planning.Clock(self.store, study, started or time.time())
        self.worked = False  # whether this process ran grid experiments (then it charges its time)
        if register:  # a dry run writes nothing
            self.register()

    def register(self) -> None:
        if not self.is_main:
            return
        writable_folder(self.study.runs_dir / self.study.name, "runs folder", "--runs-dir DIR")
        for e in self.study.experiments:
            legacy = legacy_experiment_id(e)
            if legacy != e.id and self.store.adopt(legacy, e.id):
                say(f"{e.name}: its results (stored under the older id {legacy}) carried over")
            self.store.register(e.id, e.name, e.to_dict())
            experiment_dir(self.study, e)  # takes over a folder an older version named
        self.store.save_study(self.study.name, str(self.study.path or ""), self.overrides,
                              [(e.name, e.id) for e in self.study.experiments],
                              [x.__dict__ for x in self.study.externals])
        self.store.save_study_run(self.study.name, self.overrides,
                                  [(e.name, e.id) for e in self.study.experiments])

    def select(self, only: str | None, with_final: bool = True) -> list[ExperimentSpec]:
        chosen = [e for e in self.study.experiments if not only or fnmatch.fnmatch(e.name, only)]
        if only and not chosen and not (with_final and self.study.final is not None
                                         and self._final_selected(only)):
            raise UserError(f"--only {only!r} matches no experiment; names: "
                            f"{', '.join(e.name for e in self.study.experiments)}")
        return chosen

    def matching(self, pattern: str, only: str | None = None) -> list[str]:
        """Names that --rerun PATTERN would forget: grid experiments and the final one (once
        stored), among those --only selects; an error if none, so nothing is forgotten that
        this run would not train again."""
        names = [e.name for e in self._rerunnable() if fnmatch.fnmatch(e.name, pattern)]
        if not names:
            raise UserError(f"--rerun {pattern!r} matches no experiment; names: "
                            f"{', '.join(e.name for e in self._rerunnable())}")
        chosen = [n for n in names if self._selected(n, only)]
        if not chosen:
            raise UserError(f"--rerun {pattern!r} matches {', '.join(names)}, but --only {only!r} "
                            "selects none of them: they would be forgotten and not run again. "
                            "Drop --only, or give one that selects them")
        if len(chosen) < len(names):
            say(f"--rerun {pattern!r}: left as they are (not selected by --only {only!r}): "
                + ", ".join(n for n in names if n not in chosen))
        return chosen

    def _selected(self, name: str, only: str | None) -> bool:
        if not only or fnmatch.fnmatch(name, only):
            return True
        is_final = self.study.final is not None and name.startswith(final.FINAL_PREFIX) and \
            name not in {e.name for e in self.study.experiments}
        return is_final and self._final_selected(only)

    @staticmethod
    def _final_selected(only: str | None) -> bool:
        """--only final, --only 'final-*' (or no --only) selects the final stage."""
        return not only or fnmatch.fnmatch("final", only) or \
            fnmatch.fnmatch(final.FINAL_PREFIX, only)

    def _rerunnable(self) -> list[ExperimentSpec]:
        """The grid's experiments, and the final stage's once the store holds it."""
        specs = list(self.study.experiments)
        if self.study.final is not None:
            spec = final.plan(self.study, self.store).spec
            if spec is not None and self.store.get(spec.id) is not None:
                specs.append(spec)
        return specs

    def rerun(self, pattern: str, only: str | None = None) -> list[str]:
        names = self.matching(pattern, only)
        if self.is_main:  # under torchrun the other ranks must not reset what rank 0 claims next
            for e in self._rerunnable():
                if e.name in names:
                    self.store.reset(e.id)
                    for f in ("checkpoint.pt", "model.pt"):
                        (experiment_dir(self.study, e) / f).unlink(missing_ok=True)
        dist.barrier()
        return names

    def final_data(self):
        return dataclasses.replace(self.study.data, subset=self.study.final.subset, val_fraction=0.0)

    def plan(self, specs: list[ExperimentSpec] | None = None, again: set = frozenset(),
             quiet: bool = False) -> planning.StudyPlan:
        """The measured plan of `specs` (default: the whole study) and the final stage."""
        splits = self.splits()
        final_sizes = None
        if self.study.final is not None:
            final_sizes = {k: len(v) for k, v in self.splits(self.final_data()).y.items()}
        return planning.make(self.study, self.store, specs or self.grid_and_folds(),
                             {k: len(v) for k, v in splits.y.items()}, final_sizes,
                             splits.image_size, splits.num_classes, self.device,
                             self.clock.grid_seconds() + self.clock.elapsed(), again,
                             say=_noop if quiet else say, data_root=self.data_root)

    def grid_and_folds(self) -> list[ExperimentSpec]:
        """What the plan costs up front: the grid, and under selection = "kfold" every grid
        experiment's folds (the final stage needs them all). Under "auto" the folds are
        decided after the grid, and costed then."""
        specs = list(self.study.experiments)
        if self.study.selection == "kfold" and self.study.final is not None:
            for e in self.study.experiments:
                specs += selection.fold_specs(e, self.study.folds)
        return specs

    def check_budget(self, again: set = frozenset()) -> None:
        """Under a budget, before anything trains or is reset: the measured plan must leave
        the final stage its minimum, else a UserError with the figures (on every rank)."""
        if not self.study.budget:
            return
        err = None
        if self.is_main:
            study_plan = self.plan(again=again, quiet=True)
            for line in study_plan.lines():
                say(line)
            try:
                study_plan.check()
            except UserError as e:
                err = str(e)
        else:
            self.splits()
            if self.study.final is not None:
                self.splits(self.final_data())
        err = dist.broadcast(err)
        if err:
            raise UserError(err)

    def splits(self, data=None) -> Splits:
        """The study's splits, or those of another view of its data (the final stage's)."""
        data = data or self.study.data
        if data not in self._splits:
            stage = self.study.final
            max_res = max([e.resolution for e in self.study.experiments]
                          + [stage.resolution if stage else 0])
            if not self.is_main:  # rank 0 downloads and decodes once; the others read its cache
                dist.barrier()
            splits = make_splits(data, self.data_root, self.skip_bad, max_res)
            if self.is_main:
                dist.barrier()
            say(f"{'data' if data == self.study.data else 'final stage data'}: "
                f"{splits.description}; sizes "
                + ", ".join(f"{k} {len(v)}" for k, v in splits.y.items())
                + (f"; {len(splits.skipped)} unreadable images skipped"
                   if splits.skipped else ""))
            self._splits[data] = splits
        return self._splits[data]

    def run(self, only: str | None = None, retry_failed: bool = False,
            wait: bool = False) -> Outcome:
        """One pass over the study; with `wait`, then keep polling the experiments other runners
        hold, taking over any whose runner stops heartbeating, until none is held."""
        out = Outcome([], [], [], [])
        todo = self.select(only)
        self._pass(list(enumerate(todo)), len(todo), out, retry_failed, quiet=False)
        if wait and out.busy:
            say(f"waiting for {len(out.busy)} experiment(s) held by other runners (taken over "
                f"if their runner stops heartbeating for {self.lease:g}s)")
        while wait and out.busy:
            time.sleep(min(self.lease / 4, 15.0))
            held, out.busy = out.busy, []
            self._pass([(i, s) for i, s in enumerate(todo) if s.name in held], len(todo), out,
                       retry_failed, quiet=True)
        if self.study.final is not None and self._final_selected(only):
            self.run_folds(out, retry_failed)
            self.run_final(out, retry_failed, wait)
        return out

    def run_folds(self, out: Outcome, retry_failed: bool = False) -> None:
        """The cross-validation folds the selection needs, after the grid, before the final."""
        sel = self.final_plan().selection
        if sel is None or not sel.waiting:
            return
        todo = [s for s in sel.fold_specs if s.name in sel.waiting]
        say(f"\nselection: {sel.method.folds}-fold cross-validation over train + validation "
            f"({sel.method.why}): {len(todo)} fold experiment(s) to run")
        if self.study.budget and self.is_main:
            todo = self._folds_in_budget(sel, todo)
        if self.is_main:
            for spec in todo:
                self.store.register(spec.id, spec.name, spec.to_dict())
        for i, spec in enumerate(todo):
            self._pass([(i, spec)], len(todo), out, retry_failed, quiet=False,
                       details={"fold": {"k": spec.data.folds, "fold": spec.data.fold}})

    def _folds_in_budget(self, sel: selection.Selection,
                         todo: list[ExperimentSpec]) -> list[ExperimentSpec]:
        """Under a time budget the folds must leave the final its minimum. Under "auto" the
        backprop folds that do not fit end as skipped (the choice falls back to the holdout
        split, and says so); the cheap probe folds are kept where they fit."""
        probes = [s for s in todo if s.uses_features]
        for keep in (todo, probes, []):
            study_plan = self.plan(list(self.study.experiments) + keep, quiet=True)
            try:
                study_plan.check()
            except UserError as e:
                if self.study.selection == "kfold":
                    raise UserError(f"selection = \"kfold\": {e}") from None
                continue
            break
        dropped = [s for s in todo if s not in keep]
        if dropped:
            why = (f"the {len(dropped)} fold fit(s) do not fit the time budget "
                   f"({self.study.budget}) beside the final stage's minimum: the choice falls "
                   "back to the holdout validation split")
            say(f"  {why}")
            for spec in dropped:
                self.store.register(spec.id, spec.name, spec.to_dict())
                self.store.set_status(spec.id, "skipped", why)
        return keep

    def final_plan(self) -> final.Plan:
        """Rank 0 reads the store and tells the other ranks what the final stage runs."""
        return dist.broadcast(final.plan(self.study, self.store) if self.is_main else None)

    def run_final(self, out: Outcome, retry_failed: bool = False, wait: bool = False) -> None:
        """The final stage: the validation-chosen configuration on every training image."""
        plan = self.final_plan()
        while wait and plan.waiting:  # other runners still finish grid experiments
            time.sleep(min(self.lease / 4, 15.0))
            plan = self.final_plan()
        if plan.waiting:
            say(f"\nfinal stage: waiting for {len(plan.waiting)} grid experiment(s) "
                f"({', '.join(plan.waiting)}); it runs once they are done (rerun, or use --wait)")
            return
        if plan.spec is None:
            say(f"\nfinal stage: nothing to choose from: {plan.reason}")
            return
        spec = plan.spec
        say(f"\nfinal stage: {spec.name} = {plan.parent.name} trained again on every training "
            f"image (train + validation)\n  chosen: {plan.reason}")
        for c in plan.ranking[1:4]:
            say(f"  runner-up: {c.text()}")
        if plan.excluded:
            say(f"  left out: {', '.join(plan.excluded)}")
        info = plan.info()
        budget = self._final_budget(spec, plan.parent)
        if self.is_main:
            self.store.register(spec.id, spec.name, spec.to_dict())
            members = [(e.name, e.id) for e in self.study.experiments] + [(spec.name, spec.id)]
            self.store.save_study(self.study.name, str(self.study.path or ""), self.overrides,
                                  members, [x.__dict__ for x in self.study.externals])
        self._pass([(0, spec)], 1, out, retry_failed, quiet=False, details={"final": info},
                   budget=budget)

    def _final_budget(self, spec: ExperimentSpec, parent: ExperimentSpec):
        """A budgeted backprop final's account: the grid's time (this process's charged
        first), when the final starts, the loop efficiency, and a plan recorded before."""
        if not self.study.budget or not self.is_main:
            return None
        if spec.uses_features:
            say(f"  budget {self.study.budget}: the chosen configuration is a probe on cached "
                "features, whose cost is fixed: the final stage does not stretch to the budget")
            return None
        if self.worked:
            self.clock.charge()
            self.worked = False
        row = self.store.get(spec.id)
        existing = json.loads(row["details"]).get("budget_plan") if row and row["details"] else None
        return planning.FinalBudget(
            spec.budget, self.clock.grid_seconds(), time.time(),
            planning.loop_efficiency(self.store, self.study.experiments, prefer=parent.id,
                                     machine=planning.device_name(self.device)),
            BudgetPlan.from_dict(existing) if existing else None)

    def _pass(self, numbered, total: int, out: Outcome, retry_failed: bool, quiet: bool,
              details: dict | None = None, budget=None) -> None:
        for i, spec in numbered:
            token = self.store.claim(spec.id, self.owner, lease=self.lease,
                                     retry_failed=retry_failed) if self.is_main else None
            claimed = dist.broadcast(token is not None)
            if not claimed:
                row = self.store.get(spec.id) if self.is_main else None
                status = row["status"] if row else "?"
                (out.busy if status == "running" else out.skipped).append(spec.name)
                if self.is_main and not (quiet and status == "running"):
                    say(f"[{i + 1}/{total}] {spec.name}: {status}"
                        + (f" ({row['reason']})" if status == "failed" and row["reason"] else "")
                        + (", skipped" if status != "running" else ", held by another runner"))
                continue
            say(f"\n[{i + 1}/{total}] {spec.name}  (id {spec.id})")
            reason = None
            try:  # the heartbeat runs from the claim on, through the data decode
                with Heartbeat(self.study.store, spec.id, self.owner, token, self.lease) \
                        if self.is_main else _Null() as beat:
                    reason = self._run_one(spec, beat, details, budget)
            except ClaimLost as e:
                say(f"  STOPPED: {e}; another runner finishes it (not marked failed)")
                out.busy.append(spec.name)
                continue
            except KeyboardInterrupt:  # anywhere while claimed (decode, finish): give it back
                if self.is_main and spec.id in self.store.tokens:
                    with suppress(ClaimLost):
                        self.store.set_status(spec.id, "pending", "interrupted; rerun to resume")
                raise
            finally:  # the folds are the grid's work too: the final gets what is left
                self._charge(details is None or "fold" in details, reason)
            if reason is None:
                out.ran.append(spec.name)
            elif isinstance(reason, Skip):
                out.skipped.append(spec.name)
            else:
                out.failed.append((spec.name, reason.reason))

    def _charge(self, grid: bool, reason: "Skip | Failure | None") -> None:
        """After a grid experiment, charge this process's time to the grid's ledger. A skip
        (weights not here) before any real work charges nothing: a rerun that only finds the
        grid done and retries a hub model must not bill its start-up to the grid."""
        if not grid or not self.is_main or (isinstance(reason, Skip) and not self.worked):
            return
        self.worked = True
        with suppress(Exception):  # the account must not stop the study
            self.clock.charge()

    def _run_one(self, spec: ExperimentSpec, beat=None, details: dict | None = None,
                 budget=None) -> "Skip | Failure | None":
        from . import experiment
        exp_dir = experiment_dir(self.study, spec)
        exp_dir.mkdir(parents=True, exist_ok=True)
        ckpt = exp_dir / "checkpoint.pt"
        feature_dir = self.study.runs_dir / "features"
        if self.is_main:
            remove_stale_temps(exp_dir, older_than=0)  # this runner holds the claim: none is live
            remove_stale_temps(feature_dir)
            if self._damaged(ckpt):
                say("  the experiment starts again from epoch 0")
            if not ckpt.exists():
                self.store.clear_epochs(spec.id)
        store = self.store if self.is_main else None
        try:
            splits = self.splits(spec.data)
        except BaseException:  # bad data is the study's problem, not this experiment's:
            if self.is_main:   # give the claim back (pending), then stop with the message
                self.store.set_status(spec.id, "pending")
            raise
        beat = beat or _Null()
        try:  # each record first checks the claim: a lost one stops the work there
            with self._curves(spec) as curves:
                result = experiment.run(
                    spec, splits, exp_dir, feature_dir, self.device,
                    record_epoch=curves.wrap((lambda row: (beat.check(), store.add_epoch(spec.id, row)))
                                             if store else _noop),
                    record_details=(lambda d: (beat.check(), store.set_details(
                        spec.id, {**d, **(details or {})})))
                    if store else _noop,
                    say=say if self.is_main else _noop, budget=budget,
                    data_root=self.data_root)
        except ClaimLost:
            raise
        except WeightsUnavailable as e:  # not a failure: nothing here can fetch them
            say(f"  SKIPPED: {e}")
            if self.is_main:
                self.store.set_status(spec.id, "skipped", str(e))
            return Skip(str(e))
        except (ExperimentFailed, UserError) as e:
            return self._fail(spec, str(e))
        except torch.cuda.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # the next experiment starts from a clean device
            return self._fail(spec, f"CUDA out of memory at batch_size {spec.batch_size}: lower "
                              "batch_size for this experiment (or its resolution) and rerun "
                              "with --retry-failed")
        except KeyboardInterrupt:
            if self.is_main:
                with suppress(ClaimLost):  # not ours any more: nothing to give back
                    self.store.set_status(spec.id, "pending", "interrupted; rerun to resume")
            raise
        except Exception as e:  # a bug or an unexpected library error: record it, go on
            traceback.print_exc(file=sys.stderr)
            return self._fail(spec, f"{type(e).__name__}: {e}")
        if self.is_main:
            from .experiment import env_record
            self.store.finish(spec.id, result, env_record(self.device))
            ckpt.unlink(missing_ok=True)  # only now: a kill before `finish` resumes, not retrains
        return None

    @staticmethod
    def _damaged(ckpt: Path) -> bool:
        """A checkpoint that cannot be read back is set aside (kept), so that the experiment
        starts again instead of failing on every --retry-failed."""
        try:
            return ckpt.exists() and load_or_set_aside(ckpt, lambda m: say("  " + m)) is None
        except UserError:  # one that could run code: refused where it is resumed, and the
            return False   # experiment fails with that message (someone should look at it)

    def _curves(self, spec: ExperimentSpec):
        from .tboard import EpochCurves, NoCurves
        if self.tensorboard and self.is_main:
            return EpochCurves(self.tensorboard, self.study.name, spec)
        return NoCurves()

    def _fail(self, spec: ExperimentSpec, reason: str) -> "Failure":
        say(f"  FAILED: {reason}")
        if self.is_main:
            self.store.set_status(spec.id, "failed", reason)
        return Failure(reason)


@dataclass(frozen=True)
class Skip:
    """An experiment that could not start here (its weights cannot be fetched): not a
    failure, and no work was done for it."""
    reason: str


@dataclass(frozen=True)
class Failure:
    """An experiment that failed, and why (the store keeps the same words)."""
    reason: str


class _Null:
    lost = None

    def check(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _noop(*_a, **_k):
    return None
