"""Study configs: typed specs, strict TOML loading, grid expansion and stable experiment ids.

A study file has four kinds of table:

    [study]        name, data source, subset, validation fraction, store path
    [defaults]     experiment settings shared by every experiment
    [[experiment]] one experiment (settings override the defaults)
    [[grid]]       list-valued settings expand to their cartesian product
    [[external]]   a result obtained elsewhere (name + accuracy), shown in tables and the chart

An experiment is a pure function of its resolved spec, so its id is a hash of that spec
(the display name is left out: renaming an experiment does not retrain it).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import hashlib
import itertools
import json
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import regimes
from .errors import UserError
from .resources import study_config
from .places import is_server_url

STORE_ENV = "TRANSFERLAB_STORE"  # replaces [study] store (e.g. a postgresql:// URL on a cluster)

REGIMES = regimes.names()  # the registry in regimes.py: one entry per regime
SCHEDULES = ("cosine", "onecycle", "constant")
OPTIMIZERS = ("sgd", "adamw")
AUGMENTS = ("none", "flip", "crop_flip", "rrc_flip")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
NORMALIZE = ("auto", "imagenet", "inception")
FITS = ("auto", "features", "backprop")
HEADS = ("linear", "mlp")
INITS = ("default", "kaiming", "trunc_normal")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,79}$")


@dataclass(frozen=True)
class OptimizerSpec:
    name: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8


@dataclass(frozen=True)
class HeadSpec:
    kind: str = "linear"
    hidden: tuple = (512,)
    dropout: float = 0.2


@dataclass(frozen=True)
class DataSpec:
    source: str = "cifar10"
    subset: int = 0  # train images per class; 0 = all
    val_fraction: float = 0.1
    cache_size: int = 0  # side of cached images for folders of large photos; 0 = auto
    fingerprint: str = ""  # content key, filled in when the study is resolved
    folds: int = 0  # a cross-validation fold's view of train + val: how many folds (0 = none)
    fold: int = -1  # which fold is held out (0 .. folds - 1)


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    model: str
    weights: str = "imagenet"  # imagenet | none | file:PATH | a torchvision weight enum name
    regime: str = "linear"  # a name in the regimes.py registry: linear | last:K | full | ...
    head: HeadSpec = field(default_factory=HeadSpec)
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    epochs: int = 10
    batch_size: int = 128
    resolution: int = 0  # 0 = the data's native size
    augment: str = "crop_flip"
    label_smoothing: float = 0.1
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    tta: bool = True
    seed: int = 0
    layer_decay: float = 1.0  # layer-wise LR decay for full fine-tuning; 1 = off
    fit: str = "auto"  # frozen backbones: cached features, or backprop with augmentation
    probe_wd: tuple = (0.0, 1e-4, 1e-3, 1e-2)  # weight decays tried on validation (features fit)
    gradual_head_epochs: int = 1
    gradual_lr_scale: float = 0.1
    normalize: str = "auto"
    init: str = "default"  # random-init scheme for scratch / new layers
    budget: str = ""  # a budgeted final stage: the study's time budget as written ("25m")
    data: DataSpec = field(default_factory=DataSpec)
    weights_sha256: str = ""  # content of a weights = "file:PATH", filled in when resolved

    @property
    def id(self) -> str:
        return experiment_id(self)

    @property
    def uses_features(self) -> bool:
        """Frozen backbone fitted on cached features (no per-epoch backbone forward)."""
        return regimes.on_features(self)

    @property
    def last_k(self) -> int | None:
        return regimes.last_k(self.regime)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FINAL_CANDIDATES = ("all", "backprop")


@dataclass(frozen=True)
class FinalSpec:
    """[study.final]: after the grid, the configuration validation chose is trained again on
    every training image (train + validation) with this budget; its test accuracy is the answer.
    Declared before anything runs, so nothing about it can follow the test split."""
    epochs: int = 0  # backprop fits; 0 = the chosen experiment's own (probes keep their head epochs)
    resolution: int = 0  # 0 = the chosen experiment's own
    batch_size: int = 0  # 0 = the chosen experiment's own
    subset: int = 0  # train images per class for the final fit; 0 = all of them
    # Which grid experiments the final may take: "all", or "backprop" (no probe on cached
    # features: a probe's final has a fixed cost, so it cannot use what a budget leaves).
    candidates: str = "all"


@dataclass(frozen=True)
class ExternalResult:
    name: str
    test_acc: float
    val_acc: float | None = None
    note: str = ""


@dataclass
class Study:
    name: str
    path: Path | None
    data: DataSpec
    experiments: list[ExperimentSpec]
    externals: list[ExternalResult]
    store: Path | str  # a SQLite file, or a postgresql:// URL
    runs_dir: Path
    tensorboard: Path | None = None  # TensorBoard event files per experiment go under it
    final: FinalSpec | None = None  # [study.final], if the study has a final stage
    budget: str | None = None  # [study] budget or --budget: the whole study's wall-clock time
    notes: list[str] = field(default_factory=list)  # how settings that meet were resolved
    selection: str = "holdout"  # how the final's configuration is chosen: holdout | auto | kfold
    folds: int = 5  # folds of train + validation under k-fold selection

    def use_store(self, path: str | Path) -> None:
        """Another store; for a SQLite file, checkpoints and feature caches move beside it (a
        server store leaves runs_dir as the config or --runs-dir sets it)."""
        if is_server_url(str(path)):
            self.store = str(path)
            return
        self.store = Path(path)
        self.runs_dir = self.store.resolve().parent


def experiment_id(spec: ExperimentSpec) -> str:
    """Hash of the resolved spec without its display name; the data enter by their content
    fingerprint, not by the path as typed (relative or absolute, from any folder: one id)."""
    d = _id_dict(spec)
    if d["data"]["fingerprint"]:
        d["data"].pop("source")
    return _spec_hash(d)


# fields added after ids were first pinned: left out of the hash while unset
_LATER_FIELDS = {"budget": "", "weights_sha256": ""}
_LATER_DATA_FIELDS = {"folds": 0, "fold": -1}


def _drop_unset(d: dict) -> None:
    """Settings added later enter the hash only when set, so existing ids stay as they were."""
    for key, unset in _LATER_FIELDS.items():
        if d.get(key) == unset:
            d.pop(key)
    for key, unset in _LATER_DATA_FIELDS.items():
        if d["data"].get(key) == unset:
            d["data"].pop(key)


def legacy_experiment_id(spec: ExperimentSpec) -> str:
    """The id this spec had before ids followed the data's fingerprint (source as typed)."""
    return _spec_hash(_id_dict(spec))


def _id_dict(spec: ExperimentSpec) -> dict:
    """What an id hashes: the spec without its display name; a weights file's content only
    where there is one (every other id stays as it was)."""
    d = spec.to_dict()
    d.pop("name")
    _drop_unset(d)
    return d


def _spec_hash(d: dict) -> str:
    blob = json.dumps(d, sort_keys=True, default=list).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# ---------------------------------------------------------------- strict parsing

_STUDY_KEYS = {"name": str, "data": str, "subset": int, "val_fraction": float,
               "cache_size": int, "store": str, "runs_dir": str, "tensorboard": str,
               "budget": str, "selection": str, "folds": int}
SELECTIONS = ("auto", "holdout", "kfold")
_CHOICES = {"regime": REGIMES, "schedule": SCHEDULES, "augment": AUGMENTS,
            "precision": PRECISIONS, "normalize": NORMALIZE, "fit": FITS, "init": INITS,
            "optimizer.name": OPTIMIZERS, "head.kind": HEADS}

# what a study is for, in one line: `transferlab configs` prints it; nothing else reads it
_STUDY_KEYS["description"] = str


class _Ctx:
    """Where a value came from, for error messages."""

    def __init__(self, file: str):
        self.file = file

    def fail(self, where: str, msg: str) -> UserError:
        return UserError(f"{self.file}: {where}: {msg}")


def _field_types(cls) -> dict[str, Any]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _unknown_key(ctx, where, key, valid) -> UserError:
    close = difflib.get_close_matches(key, valid, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ctx.fail(where, f"unknown key {key!r}.{hint} Valid keys: {', '.join(sorted(valid))}")


def _coerce(ctx, where: str, key: str, value, default):
    """Check a TOML value against the type of the dataclass default."""
    want = type(default)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, tuple):
        ok = isinstance(value, list)
        value = tuple(value) if ok else value
        want = list
    else:
        ok = isinstance(value, want)
    if not ok:
        raise ctx.fail(where, f"{key} must be {want.__name__}, got {value!r} ({type(value).__name__})")
    choices = _CHOICES.get(key)
    if choices:
        if key == "regime":
            try:
                regimes.get(value)
                return value
            except KeyError:
                pass
        if value not in choices:
            raise ctx.fail(where, f"{key} = {value!r} is not valid; choose one of {', '.join(choices)}")
    return value


def _merge_section(ctx, where: str, cls, base: dict, overrides: dict, prefix: str) -> dict:
    fields = _field_types(cls)
    out = dict(base)
    for key, value in overrides.items():
        if key not in fields:
            raise _unknown_key(ctx, where, key, list(fields))
        default = fields[key].default
        out[key] = _coerce(ctx, where, prefix + key, value, default)
    return out


_NESTED = {"head": HeadSpec, "optimizer": OptimizerSpec}
_EXPERIMENT_FIELDS = {f.name for f in dataclasses.fields(ExperimentSpec)} - {
    "data", "budget", "weights_sha256"}  # set by the study, not by a table


def _merge_experiment(ctx, where: str, base: dict, table: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in table.items():
        if key not in _EXPERIMENT_FIELDS:
            raise _unknown_key(ctx, where, key, _EXPERIMENT_FIELDS)
        if key in _NESTED:
            if not isinstance(value, dict):
                raise ctx.fail(where, f"{key} must be a table, e.g. {key} = {{ ... }}")
            out[key] = _merge_section(ctx, f"{where}.{key}", _NESTED[key], out[key], value, key + ".")
        elif key in ("name", "model"):
            if not isinstance(value, str):
                raise ctx.fail(where, f"{key} must be a string, got {value!r}")
            out[key] = value
        else:
            default = ExperimentSpec.__dataclass_fields__[key].default
            if isinstance(default, dataclasses._MISSING_TYPE):
                default = ExperimentSpec.__dataclass_fields__[key].default_factory()
            out[key] = _coerce(ctx, where, key, value, default)
    return out


def _default_experiment_dict() -> dict:
    spec = ExperimentSpec(name="_", model="_")
    d = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    d["head"] = dataclasses.asdict(spec.head)
    d["optimizer"] = dataclasses.asdict(spec.optimizer)
    d.pop("data")
    d.pop("budget")  # the study's, given to its final stage only
    d.pop("weights_sha256")
    return d


def _auto_name(d: dict) -> str:
    model = d["model"].split(":")[-1].replace("efficientnet_", "")
    parts = [model, d["regime"].replace(":", "")]
    if d["head"]["kind"] == "mlp":
        parts.append("mlp")
    return "-".join(parts)


def _build(ctx, where: str, d: dict, data: DataSpec) -> ExperimentSpec:
    if d.get("model") in (None, "_"):
        raise ctx.fail(where, "model is required, e.g. model = \"efficientnet_lite0\" "
                       "(see `transferlab models`)")
    if not d.get("name") or d["name"] == "_":
        d["name"] = _auto_name(d)
    if not NAME_RE.match(d["name"]):
        raise ctx.fail(where, f"name {d['name']!r} is not allowed: use letters, digits, "
                       "'.', '_', '+', '-' (it becomes a folder name under the runs directory)")
    head = HeadSpec(**{**d["head"], "hidden": tuple(d["head"]["hidden"])})
    opt = OptimizerSpec(**{**d["optimizer"], "betas": tuple(d["optimizer"]["betas"])})
    spec = ExperimentSpec(**{**d, "head": head, "optimizer": opt, "data": data})
    _check_values(ctx, where, spec)
    return spec


def _check_values(ctx, where: str, s: ExperimentSpec) -> None:
    checks = [
        (s.epochs >= 1, "epochs must be at least 1"),
        (s.batch_size >= 1, "batch_size must be at least 1"),
        (s.resolution >= 0, "resolution must be 0 (native) or a positive size in pixels"),
        (s.optimizer.lr > 0, "optimizer.lr must be positive"),
        (0 <= s.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
        (0 < s.layer_decay <= 1, "layer_decay must be in (0, 1]"),
        (0 <= s.head.dropout < 1, "head.dropout must be in [0, 1)"),
        (s.warmup_epochs >= 0, f"warmup_epochs must be 0 or more, got {s.warmup_epochs:g}"),
        (s.optimizer.weight_decay >= 0, "optimizer.weight_decay must be 0 or more"),
        (len(s.probe_wd) > 0, "probe_wd must list at least one weight decay to choose from on "
         "validation, e.g. probe_wd = [0.0, 1e-4, 1e-3, 1e-2]"),
        (all(_number(w) and w >= 0 for w in s.probe_wd),
         f"probe_wd must hold weight decays (numbers, 0 or more), got {list(s.probe_wd)}"),
        (all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in s.head.hidden),
         f"head.hidden must hold layer widths (positive integers), got {list(s.head.hidden)}"),
        (len(s.optimizer.betas) == 2 and all(_number(b) and 0 <= b < 1 for b in s.optimizer.betas),
         f"optimizer.betas must be two numbers in [0, 1), got {list(s.optimizer.betas)}"),
        (regimes.check(s) is None, regimes.check(s)),
        (s.model != "baseline" or not regimes.get(s.regime).pretrained,
         "the baseline CNN has no pretrained weights: use regime = \"scratch\""),
    ]
    for ok, msg in checks:
        if not ok:
            raise ctx.fail(where, msg)


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _expand_grid(ctx, where: str, table: dict) -> list[dict]:
    axes = {k: v for k, v in table.items() if isinstance(v, list) and k not in ("probe_wd",)}
    fixed = {k: v for k, v in table.items() if k not in axes}
    if any(k == "hidden" for k in axes):
        raise ctx.fail(where, "head.hidden cannot be a grid axis")
    out = []
    for combo in itertools.product(*axes.values()):
        t = dict(fixed)
        t.update(dict(zip(axes, combo)))
        if "name" in t:
            try:
                t["name"] = t["name"].format(**{k: str(v).replace(":", "") for k, v in t.items()
                                               if not isinstance(v, dict)})
            except KeyError as e:
                raise ctx.fail(where, f"name template refers to unknown key {e}")
            except (ValueError, IndexError, AttributeError) as e:
                raise ctx.fail(where, f"name template {t['name']!r} is not valid ({e}); write "
                               "it like \"lite0-{seed}\", with {KEY} for a key of this grid")
        out.append(t)
    return out


def load_study(path: str | Path, data: str | None = None, subset: int | None = None,
               epochs: int | None = None, *, fingerprint, budget: str | None = None) -> Study:
    """Load and resolve a study file; command-line overrides win over the file.

    The data's content key goes into every experiment id: pass `data.fingerprint` (the data
    layer reads the data; this one only records), or None to skip reading the data, e.g. to
    validate a config on a machine without it (ids then follow the source as typed)."""
    path = study_config(path)  # a file, or the name of a shipped config
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML: {e}") from None
    return parse_study(raw, str(path), data=data, subset=subset, epochs=epochs,
                       fingerprint=fingerprint, base_dir=Path.cwd(), budget=budget)


def parse_study(raw: dict, file: str = "<config>", data=None, subset=None, epochs=None,
                fingerprint=None, base_dir: Path | None = None, budget=None) -> Study:
    ctx = _Ctx(file)
    allowed = {"study", "defaults", "experiment", "grid", "external"}
    for key in raw:
        if key not in allowed:
            raise _unknown_key(ctx, "top level", key, allowed)
        _check_table_shape(ctx, key, raw[key])
    st = raw.get("study", {})
    for key, value in st.items():
        if key == "final":
            continue
        if key not in _STUDY_KEYS:
            raise _unknown_key(ctx, "[study]", key, _STUDY_KEYS)
        want = _STUDY_KEYS[key]
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, want) or isinstance(value, bool):
            raise ctx.fail("[study]", f"{key} must be {want.__name__}, got {value!r}")
    name = st.get("name") or (Path(file).stem if file != "<config>" else "study")
    if not NAME_RE.match(name):
        raise ctx.fail("[study]", f"name {name!r} is not allowed (letters, digits, . _ + -)")
    dspec = DataSpec(source=data or st.get("data", "cifar10"),
                     subset=subset if subset is not None else st.get("subset", 0),
                     val_fraction=float(st.get("val_fraction", 0.1)),
                     cache_size=st.get("cache_size", 0))
    if not 0 <= dspec.val_fraction < 1:
        raise ctx.fail("[study]", "val_fraction must be in [0, 1)")
    if dspec.subset < 0:
        raise ctx.fail("[study]", "subset must be 0 (all) or a positive number of images per class")
    if fingerprint is not None:
        dspec = dataclasses.replace(dspec, fingerprint=fingerprint(dspec.source))

    base = _default_experiment_dict()
    base = _merge_experiment(ctx, "[defaults]", base, raw.get("defaults", {}))
    tables = [(f"[[experiment]] #{i + 1}", t) for i, t in enumerate(raw.get("experiment", []))]
    for i, g in enumerate(raw.get("grid", [])):
        tables += [(f"[[grid]] #{i + 1}", t) for t in _expand_grid(ctx, f"[[grid]] #{i + 1}", g)]
    experiments = []
    for where, table in tables:
        d = _merge_experiment(ctx, where, base, table)
        if epochs is not None:
            d["epochs"] = epochs
            # a regime's head phase shrinks to fit (gradual with --epochs 1 keeps only its
            # all-layer phase, and says so in its description)
            d["gradual_head_epochs"] = min(d["gradual_head_epochs"], max(epochs - 1, 0))
        experiments.append(_build(ctx, where, d, dspec))
    if fingerprint is not None:  # resolving for real: a weights file enters by its content
        experiments = [_with_weights_digest(e, base_dir or Path.cwd()) for e in experiments]
    _check_unique(ctx, experiments)
    externals = [_parse_external(ctx, i, t) for i, t in enumerate(raw.get("external", []))]
    base_dir = base_dir or Path.cwd()
    runs_dir = base_dir / st.get("runs_dir", "runs")
    where = os.environ.get(STORE_ENV) or st.get("store")
    store = where if is_server_url(where) else \
        base_dir / (where or str(Path(st.get("runs_dir", "runs")) / "transferlab.db"))
    final = _parse_final(ctx, st.get("final"), epochs)
    selection, folds = _parse_selection(ctx, st)
    budget, notes = _resolve_budget(ctx, budget or st.get("budget"), final, epochs,
                                    from_cli=budget is not None)
    return Study(name, Path(file) if file != "<config>" else None, dspec, experiments,
                 externals, store, runs_dir,
                 tensorboard=base_dir / st["tensorboard"] if st.get("tensorboard") else None,
                 final=final, budget=budget, notes=notes, selection=selection, folds=folds)


def _parse_selection(ctx, st: dict) -> tuple[str, int]:
    """[study] selection and folds: how the final stage's configuration is chosen."""
    selection, folds = st.get("selection", "holdout"), st.get("folds", 5)
    if selection not in SELECTIONS:
        raise ctx.fail("[study]", f"selection = {selection!r} is not valid; choose one of "
                       f"{', '.join(SELECTIONS)} (\"auto\": k-fold where the validation split is "
                       "too small to choose on)")
    if folds < 2:
        raise ctx.fail("[study]", f"folds = {folds} is not valid: k-fold selection needs at "
                       "least 2 folds (e.g. folds = 5)")
    return selection, folds


def _resolve_budget(ctx, budget: str | None, final: FinalSpec | None, epochs: int | None,
                    from_cli: bool) -> tuple[str | None, list[str]]:
    """The budget sizes the final stage. Which setting wins where they meet: --epochs (a fixed
    shape for a quick trial) turns the budget off; a budget ignores [study.final] epochs."""
    if budget is None:
        return None, []
    from .durations import parse_budget
    where = "--budget" if from_cli else "[study] budget"
    try:
        parse_budget(budget)
    except ValueError as e:
        raise ctx.fail(where, str(e)) from None
    if final is None:
        raise ctx.fail(where, f"budget = {budget!r} sizes the final stage, and this study has "
                       "none: add a [study.final] table (e.g. resolution = 0 keeps the chosen "
                       "experiment's own), or drop the budget")
    if epochs is not None:
        return None, [f"--epochs {epochs} fixes every fit, the final stage's too: the budget "
                      f"({budget}) is not used"]
    notes = []
    if final.epochs:
        notes.append(f"the budget ({budget}) sizes the final stage: [study.final] epochs = "
                     f"{final.epochs} is not used")
    return budget.strip(), notes


def _check_table_shape(ctx, key: str, value) -> None:
    """[study] and [defaults] are tables; experiment, grid and external arrays of tables."""
    if key in ("study", "defaults"):
        if not isinstance(value, dict):
            raise ctx.fail("top level", f"{key} must be a table ([{key}] with its keys below "
                           f"it), got {value!r}")
    elif not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ctx.fail("top level", f"{key} must be an array of tables: one [[{key}]] per "
                       f"{key}, with its keys below it; got {key} = {value!r}")


def _parse_final(ctx, table, epochs_override: int | None) -> FinalSpec | None:
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ctx.fail("[study]", "final must be a table: [study.final] with epochs, resolution, "
                       "batch_size, subset")
    merged = _merge_section(ctx, "[study.final]", FinalSpec, {}, table, "")
    final = FinalSpec(**merged)
    if final.candidates not in FINAL_CANDIDATES:
        raise ctx.fail("[study.final]", f"candidates must be one of {', '.join(FINAL_CANDIDATES)}"
                       f", got {final.candidates!r}")
    for key in ("epochs", "resolution", "batch_size", "subset"):
        if getattr(final, key) < 0:
            raise ctx.fail("[study.final]", f"{key} must be 0 (the chosen experiment's own) or "
                           "positive")
    if epochs_override is not None and final.epochs:  # --epochs caps every fit, the final's too
        final = dataclasses.replace(final, epochs=epochs_override)
    return final


def _with_weights_digest(spec: ExperimentSpec, base_dir: Path) -> ExperimentSpec:
    """A `file:PATH` spec with the file's sha256: replacing the file makes a new experiment
    (and new cached features), not a stale "done". A missing file is left to the model
    factory, which names it."""
    if not spec.weights.startswith("file:"):
        return spec
    path = Path(spec.weights[5:]).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if not path.is_file():
        return spec
    return dataclasses.replace(spec, weights_sha256=file_digest(path))


def file_digest(path: Path) -> str:
    """sha256 of a file's content, read once per process while its size and mtime hold."""
    st = Path(path).stat()
    return _digest(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_unique(ctx, experiments: list[ExperimentSpec]) -> None:
    names, ids = {}, {}
    for e in experiments:
        if e.name in names:
            raise ctx.fail("experiments", f"two experiments are named {e.name!r}: give each a "
                           "unique name (set name = \"...\")")
        if e.id in ids:
            raise ctx.fail("experiments", f"{e.name!r} and {ids[e.id]!r} have identical settings;"
                           " remove one (they would be the same experiment)")
        names[e.name] = e
        ids[e.id] = e.name


def _parse_external(ctx, i: int, t: dict) -> ExternalResult:
    where = f"[[external]] #{i + 1}"
    fields = _field_types(ExternalResult)
    for key in t:
        if key not in fields:
            raise _unknown_key(ctx, where, key, list(fields))
    if "name" not in t or "test_acc" not in t:
        raise ctx.fail(where, "an external result needs name and test_acc (a fraction, e.g. 0.93)")
    acc = t["test_acc"]
    if not isinstance(acc, (int, float)) or not 0 <= acc <= 1:
        raise ctx.fail(where, f"test_acc must be a fraction in [0, 1], got {acc!r}")
    return ExternalResult(name=t["name"], test_acc=float(acc), val_acc=t.get("val_acc"),
                          note=t.get("note", ""))
