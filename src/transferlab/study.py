"""Run a study over the store: skip what is done, resume what was interrupted, share the work.

Any number of runner processes may work on one study and one store: each experiment is
claimed atomically before it runs, and a claim whose runner died is taken over.
"""
from __future__ import annotations

import fnmatch
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from . import dist
from .config import ExperimentSpec, Study, legacy_experiment_id
from .data import Splits, default_data_root, make_splits
from .errors import ExperimentFailed, UserError
from .store import LEASE_SECONDS, Store, owner_id


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


@dataclass
class Outcome:
    ran: list[str]
    skipped: list[str]
    failed: list[tuple[str, str]]
    busy: list[str]  # held by another live runner


class Heartbeat:
    """Refreshes a claim from a side thread (own SQLite connection) while an experiment runs."""

    def __init__(self, store_path: Path, exp_id: str, owner: str, every: float = LEASE_SECONDS / 6):
        self.args, self.every = (store_path, exp_id, owner), every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        store = Store(self.args[0])
        try:
            while not self.stop.wait(self.every):
                store.heartbeat(self.args[1], self.args[2])
        finally:
            store.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)


class Runner:
    def __init__(self, study: Study, data_root: Path | None = None, device: str = "auto",
                 skip_bad_images: bool = False, overrides: dict | None = None,
                 register: bool = True):
        from .util import pick_device
        dist.init()
        self.study, self.overrides = study, overrides or {}
        self.data_root = Path(data_root) if data_root else default_data_root()
        self.device = pick_device(device)
        self.skip_bad = skip_bad_images
        self.is_main = dist.rank() == 0
        self.store = Store(study.store)
        self.owner = owner_id()
        self._splits: Splits | None = None
        if register:
            self._register()

    def _register(self) -> None:
        if not self.is_main:
            return
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

    def select(self, only: str | None) -> list[ExperimentSpec]:
        chosen = [e for e in self.study.experiments if not only or fnmatch.fnmatch(e.name, only)]
        if only and not chosen:
            raise UserError(f"--only {only!r} matches no experiment; names: "
                            f"{', '.join(e.name for e in self.study.experiments)}")
        return chosen

    def matching(self, pattern: str) -> list[str]:
        """Names that --rerun PATTERN would forget (an error if none)."""
        names = [e.name for e in self.study.experiments if fnmatch.fnmatch(e.name, pattern)]
        if not names:
            raise UserError(f"--rerun {pattern!r} matches no experiment")
        return names

    def rerun(self, pattern: str) -> list[str]:
        names = self.matching(pattern)
        for e in self.study.experiments:
            if e.name in names:
                self.store.reset(e.id)
                for f in ("checkpoint.pt", "model.pt"):
                    (experiment_dir(self.study, e) / f).unlink(missing_ok=True)
        return names

    def splits(self) -> Splits:
        if self._splits is None:
            max_res = max((e.resolution for e in self.study.experiments), default=0)
            self._splits = make_splits(self.study.data, self.data_root, self.skip_bad, max_res)
            say(f"data: {self._splits.description}; sizes "
                + ", ".join(f"{k} {len(v)}" for k, v in self._splits.y.items())
                + (f"; {len(self._splits.skipped)} unreadable images skipped"
                   if self._splits.skipped else ""))
        return self._splits

    def run(self, only: str | None = None, retry_failed: bool = False) -> Outcome:
        out = Outcome([], [], [], [])
        todo = self.select(only)
        for i, spec in enumerate(todo):
            claimed = self.is_main and self.store.claim(spec.id, self.owner, retry_failed=retry_failed)
            claimed = dist.broadcast(claimed)
            if not claimed:
                row = self.store.get(spec.id)
                status = row["status"] if row else "?"
                (out.busy if status == "running" else out.skipped).append(spec.name)
                if self.is_main:
                    say(f"[{i + 1}/{len(todo)}] {spec.name}: {status}"
                        + (f" ({row['reason']})" if status == "failed" and row["reason"] else "")
                        + (", skipped" if status != "running" else ", held by another runner"))
                continue
            say(f"\n[{i + 1}/{len(todo)}] {spec.name}  (id {spec.id})")
            reason = self._run_one(spec)
            if reason is None:
                out.ran.append(spec.name)
            else:
                out.failed.append((spec.name, reason))
        return out

    def _run_one(self, spec: ExperimentSpec) -> str | None:
        from . import experiment
        exp_dir = experiment_dir(self.study, spec)
        exp_dir.mkdir(parents=True, exist_ok=True)
        ckpt = exp_dir / "checkpoint.pt"
        if self.is_main and not ckpt.exists():
            self.store.clear_epochs(spec.id)
        feature_dir = self.study.runs_dir / "features"
        store = self.store if self.is_main else None
        try:
            splits = self.splits()
        except BaseException:  # bad data is the study's problem, not this experiment's:
            if self.is_main:   # give the claim back (pending), then stop with the message
                self.store.set_status(spec.id, "pending")
            raise
        try:
            with Heartbeat(self.study.store, spec.id, self.owner) if self.is_main else _Null():
                result = experiment.run(
                    spec, splits, exp_dir, feature_dir, self.device,
                    record_epoch=(lambda row: store.add_epoch(spec.id, row)) if store else _noop,
                    record_details=(lambda d: store.set_details(spec.id, d)) if store else _noop,
                    say=say if self.is_main else _noop)
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

    def _fail(self, spec: ExperimentSpec, reason: str) -> str:
        say(f"  FAILED: {reason}")
        if self.is_main:
            self.store.set_status(spec.id, "failed", reason)
        return reason


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _noop(*_a, **_k):
    return None
