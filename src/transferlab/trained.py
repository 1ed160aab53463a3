"""A finished experiment loaded back for use: its spec, what the store recorded, its weights,
and the exact input path it was evaluated with.

That path, for a new image, is the training code's own: `data.decode_image` (any mode to RGB),
the decoded cache's side (`data._square_resize`: shorter side to the side, bicubic, centre
crop; a no-op for images already that size), then `augment.Pipeline.eval` (to float, bilinear
antialiased resize to the resolution, normalisation, channels_last) and flip TTA as in
`evaluate.on_images`. Every parameter of it is read from the store, none is guessed.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .fit import hardware
from . import models
from .fit.augment import Pipeline
from .config import ExperimentSpec, Study, load_study
from .data import _square_resize, decode_image
from .errors import DamagedFile, UserError
from .final import plan
from .report.tables import best_row, study_rows
from .store import Store
from .util import safe_load


@dataclass(frozen=True)
class Preprocess:
    """How an image reaches the network, as recorded for one experiment."""
    decoded_side: int  # side of the uint8 cache the model was trained and tested on
    resolution: int
    mean: tuple
    std: tuple
    tta: bool
    channels_last: bool
    side_recorded: bool = True  # False for experiments stored before the side was recorded

    @classmethod
    def from_details(cls, d: dict) -> "Preprocess":
        side = d.get("decoded_side")
        return cls(decoded_side=int(side or d["resolution"]), resolution=int(d["resolution"]),
                   mean=tuple(d["normalization"]["mean"]), std=tuple(d["normalization"]["std"]),
                   tta=bool(d["tta"]), channels_last=bool(d["channels_last"]),
                   side_recorded=side is not None)

    def decode(self, raw: bytes, name: str) -> np.ndarray:
        """File bytes -> (side, side, 3) uint8, as the study's decode cache holds its images."""
        return _square_resize(decode_image(raw, name), self.decoded_side)

    def pipeline(self, device: torch.device) -> Pipeline:
        return Pipeline(self.mean, self.std, self.resolution, "none", device, self.channels_last)

    def steps(self) -> list[str]:
        """The path in words, for the terminal and the model card."""
        resize = (f"bilinear (antialiased) resize to {self.resolution}x{self.resolution}"
                  if self.resolution != self.decoded_side else "no further resize")
        return [
            "decode to RGB (greyscale repeated, transparency composed on white, 16-bit scaled)",
            f"shorter side to {self.decoded_side} px (bicubic), centre crop "
            f"{self.decoded_side}x{self.decoded_side} (skipped for images already that size)"
            + ("" if self.side_recorded else
               " [side not recorded for this experiment: the resolution is used]"),
            f"to float in [0, 1], {resize}",
            f"normalise with mean {list(self.mean)}, std {list(self.std)}",
            ("flip TTA: logits averaged over the image and its horizontal mirror"
             if self.tta else "no TTA"),
        ]


@dataclass
class Trained:
    name: str
    spec: ExperimentSpec
    details: dict
    result: dict
    weights: Path
    prep: Preprocess

    @property
    def classes(self) -> list[str]:
        return list(self.result.get("classes") or self.details["classes"])

    def numerics(self, device: torch.device | None = None) -> hardware.Numerics:
        """The number format the test split was scored in (fast paths compute the same
        numbers by another route and are not needed here). On another kind of device than
        the study's, plain fp32: a GPU's bf16 can run ~18x slower on a CPU without bf16 units,
        and across devices the last bits differ whatever the format."""
        ran_on = str(self.details.get("device", "cpu")).split(":")[0]
        if device is not None and device.type != ran_on:
            return hardware.FP32
        rec = self.details.get("numerics") or {}
        for kind in ("eval", "extract"):
            name = (rec.get(kind) or {}).get("numerics")
            if name:
                n = hardware.by_name(name)
                return hardware.FP32 if n.fast_path else n
        try:  # stores written before the numerics were recorded per kind
            return hardware.by_name(self.details.get("precision", "fp32"))
        except KeyError:
            return hardware.FP32

    def load_net(self, device: torch.device) -> models.Net:
        """The network with its trained weights, in eval mode, as it was evaluated."""
        # the architecture only: the weights file holds every tensor, so no pretrained
        # weights are fetched (offline, hub or file) just to be overwritten
        net = models.build(dataclasses.replace(self.spec, weights="none"), len(self.classes))
        try:
            net.load_state_dict(safe_load(self.weights))
        except DamagedFile as e:
            raise UserError(f"{str(e).split('; delete it')[0]}: train it again with transferlab "
                            f"run CONFIG --rerun {self.name}") from None
        except RuntimeError as e:
            raise UserError(f"{self.weights} does not fit {self.spec.model} with "
                            f"{len(self.classes)} classes ({str(e).splitlines()[0]}); was the "
                            f"experiment rerun with other settings? Rerun it: transferlab run "
                            f"CONFIG --rerun {self.name}") from None
        net = net.to(device).eval()
        if self.prep.channels_last:
            net = net.to(memory_format=torch.channels_last)
        return net


def default_model(store: Store, members: list, externals: list,
                  final: ExperimentSpec | None = None) -> str | None:
    """The model a study hands on when none is named: its final model (the validation choice
    retrained on train + val) once that has finished, else the grid's best on validation, as
    `transferlab report` shows them (test accuracy plays no part in either)."""
    if final is not None and (row := store.get(final.id)) is not None and row["status"] == "done":
        return final.name
    row = best_row(study_rows(store, members, externals))
    return row.name if row else None


def open_study(config: Path | None, store_path: Path | None, default_store: Path,
               overrides: dict) -> Study:
    """The study named by CONFIG (with command-line overrides), else the last one run in the
    store, loaded from the config file and overrides that run recorded."""
    from .data import fingerprint
    if config is None:
        store = Store(store_path or default_store, create=False)
        try:
            st = store.study()
        finally:
            store.close()
        if st is None:
            raise UserError(f"{store.path} holds no study yet; run one: transferlab run CONFIG")
        config = Path(st["config_path"]) if st["config_path"] else None
        if config is None or not config.is_file():
            raise UserError(f"the last study in {store.path} ({st['name']}) was run from "
                            f"{st['config_path'] or 'an unknown config'}, which is not there; "
                            "name the config: transferlab predict CONFIG PATH...")
        overrides = {**st["overrides"], **overrides}
    study = load_study(config, data=overrides.get("data"), subset=overrides.get("subset"),
                       epochs=overrides.get("epochs"), fingerprint=fingerprint,
                       budget=overrides.get("budget"))
    if store_path:
        study.use_store(store_path)
    return study


def load(study: Study, name: str | None = None) -> Trained:
    """A finished experiment of `study` (default: `default_model`), ready to predict with."""
    from .study import experiment_dir
    store = Store(study.store, create=False)
    try:
        members = [(e.name, e.id) for e in study.experiments]
        specs = list(study.experiments)
        final_spec = plan(study, store).spec if study.final is not None else None
        if final_spec is not None:
            specs.append(final_spec)
        if name is None:
            name = default_model(store, members, [x.__dict__ for x in study.externals],
                                 final_spec)
            if name is None:
                raise UserError(f"study {study.name} has no finished experiment with a "
                                "validation accuracy to choose from; run it first, or name "
                                "one with --model NAME")
        spec = next((e for e in specs if e.name == name), None)
        if spec is None:
            raise UserError(f"no experiment {name!r} in study {study.name}; known: "
                            f"{', '.join(e.name for e in specs)}")
        row = store.get(spec.id)
        if row is None or row["status"] != "done" or not row["details"]:
            status = row["status"] if row else "not run"
            raise UserError(f"experiment {name!r} is {status}, not finished; run it first: "
                            f"transferlab run CONFIG --only {name}")
        details, result = json.loads(row["details"]), store.result(spec.id)
    finally:
        store.close()
    weights = experiment_dir(study, spec) / "model.pt"
    if not weights.is_file():
        raise UserError(f"the weights of {name!r} are missing ({weights}); the store says it "
                        f"finished, so the runs folder was moved or cleaned. Rerun it: "
                        f"transferlab run CONFIG --rerun {name}")
    return Trained(name, spec, details, result, weights, Preprocess.from_details(details))

