"""Choosing the final's configuration by k-fold cross-validation over train + validation:
stratified seeded folds, resumable fold experiments, out-of-fold figures on every image, and
the holdout split where it is large enough."""
import json

import pytest
import torch

from conftest import write_config

STUDY = """
[study]
name = "sel"
data = "DATA"
SELECTION

[study.final]
epochs = 1

[defaults]
epochs = 1
batch_size = 32
resolution = 32
optimizer = { name = "sgd", lr = 0.05 }

[[experiment]]
name = "base"
model = "baseline"
regime = "scratch"

[[experiment]]
name = "lite0-linear"
model = "efficientnet_lite0"
regime = "linear"
epochs = 3
optimizer = { name = "adamw", lr = 0.003 }
probe_wd = [0.0, 0.01]
"""


def study_text(selection: str = "", data: str = "synthetic") -> str:
    return STUDY.replace("SELECTION", selection).replace("DATA", data)


def _report(cli, *args):
    code, out, err = cli("report", *args, "--json")
    assert code == 0, err
    return json.loads(out)


# ------------------------------------------------------------------ the folds

def test_folds_are_stratified_disjoint_covering_and_fixed_by_the_seed():
    from transferlab.folds import fold_split, stratified_folds
    y = torch.tensor([0] * 23 + [1] * 12 + [2] * 7)
    folds = stratified_folds(y, 5)
    joined = torch.cat(folds)
    assert sorted(joined.tolist()) == list(range(len(y)))  # every image in exactly one fold
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    for c, n in enumerate((23, 12, 7)):  # each class spread evenly over the folds
        per_fold = [int((y[f] == c).sum()) for f in folds]
        assert max(per_fold) - min(per_fold) <= 1 and sum(per_fold) == n
    assert all(torch.equal(a, b) for a, b in zip(folds, stratified_folds(y, 5)))
    assert not all(torch.equal(a, b) for a, b in zip(folds, stratified_folds(y, 5, seed=11)))
    train, held = fold_split(y, 5, 2)
    assert torch.equal(held, folds[2]) and not set(train.tolist()) & set(held.tolist())


def test_a_class_smaller_than_the_folds_is_a_clear_error():
    from transferlab.errors import UserError
    from transferlab.folds import stratified_folds
    with pytest.raises(UserError, match="folds = 5 needs at least 5"):
        stratified_folds(torch.tensor([0] * 10 + [1] * 3), 5)


def test_fold_splits_hold_out_train_and_val_never_test(data_root):
    from transferlab.config import DataSpec
    from transferlab.data import make_splits
    base = make_splits(DataSpec("synthetic"), data_root)
    n = len(base.y["train"]) + len(base.y["val"])
    held = []
    for i in range(5):
        s = make_splits(DataSpec("synthetic", folds=5, fold=i), data_root)
        assert len(s.y["train"]) + len(s.y["val"]) == n
        assert torch.equal(s.x["test"], base.x["test"])  # the test split in no fold
        assert s.pool.size == n and len(s.pool.index["val"]) == len(s.y["val"])
        held += s.pool.index["val"].tolist()
    assert sorted(held) == list(range(n))


# ------------------------------------------------------------------ the config

def test_selection_keys_leave_ids_alone_and_bad_values_are_clear_errors():
    import tomllib
    from transferlab.config import parse_study
    from transferlab.errors import UserError
    plain = parse_study(tomllib.loads(study_text()))
    kfold = parse_study(tomllib.loads(study_text('selection = "kfold"\nfolds = 3')))
    assert plain.selection == "holdout" and plain.folds == 5
    assert kfold.selection == "kfold" and kfold.folds == 3
    assert [e.id for e in plain.experiments] == [e.id for e in kfold.experiments]
    for bad, words in (('selection = "cv"', ["selection", "auto, holdout, kfold"]),
                       ("folds = 1", ["folds = 1", "at least 2"]),
                       ('folds = "5"', ["folds must be int"]),
                       ("selection = 5", ["selection must be str"])):
        with pytest.raises(UserError) as e:
            parse_study(tomllib.loads(study_text(bad)), "x.toml")
        assert all(w in str(e.value) for w in words), str(e.value)
        assert "[study]" in str(e.value)


def test_fold_experiments_have_their_own_ids_derived_from_the_parent():
    import tomllib
    from transferlab.config import parse_study
    from transferlab.selection import fold_specs
    parent = parse_study(tomllib.loads(study_text())).experiments[0]
    folds = fold_specs(parent, 5)
    assert len({f.id for f in folds} | {parent.id}) == 6
    assert [f.name for f in folds][:2] == ["base.fold1of5", "base.fold2of5"]
    assert fold_specs(parent, 5)[3].id == folds[3].id  # the same fold, the same id


# ------------------------------------------------------------------ the choice, from the store

def _finished(store, spec, val_acc, val_loss, val_n, extra=None):
    store.register(spec.id, spec.name, spec.to_dict())
    store.claim(spec.id, "test-owner")
    store.finish(spec.id, {"val_acc": val_acc, "test_acc": 0.5, "test_acc_no_tta": 0.5,
                           "classes": ["a", "b"], "best_epoch": 1, "total_seconds": 1.0,
                           "extra": {"val_loss": val_loss, "val_n": val_n, **(extra or {})}},
                 {})


def _fold_extra(preds, labels, k, fold):
    held = [i for i in range(len(labels)) if i % k == fold]
    return {"fold": {"k": k, "fold": fold, "pool_size": len(labels), "held_out": held,
                     "labels": [labels[i] for i in held],
                     "predictions": [preds[i] for i in held]}}


def test_holdout_ties_and_k_fold_separates_the_candidates(tmp_path):
    """On 24 validation images both candidates score 100 % and the tie goes to the lower loss
    (base); out of fold, on all 240 images, lite0-linear is clearly better, and is chosen."""
    import tomllib
    from transferlab import final
    from transferlab.config import parse_study
    from transferlab.selection import fold_specs
    from transferlab.store import Store
    labels = [i % 2 for i in range(240)]
    oof = {"base": [y if i % 5 else 1 - y for i, y in enumerate(labels)],  # 80 %
           "lite0-linear": [y if i % 20 else 1 - y for i, y in enumerate(labels)]}  # 95 %
    results = {}
    for selection in ("holdout", "kfold"):
        study = parse_study(tomllib.loads(study_text(f'selection = "{selection}"')))
        store = Store(tmp_path / f"{selection}.db")
        (base, probe) = study.experiments
        _finished(store, base, 1.0, 0.10, 24)
        _finished(store, probe, 1.0, 0.20, 24, {"chosen_wd": 0.0})
        for spec in (base, probe):
            for i, f in enumerate(fold_specs(spec, 5)):
                extra = _fold_extra(oof[spec.name], labels, 5, i)
                if spec.uses_features:  # a probe's folds give every weight decay's predictions
                    worse = [1 - y for y in extra["fold"]["labels"]]
                    extra["probe_sweep"] = [
                        {"weight_decay": 0.0, "val_loss": 0.5, "predictions": worse},
                        {"weight_decay": 0.01, "val_loss": 0.3,
                         "predictions": extra["fold"]["predictions"]}]
                _finished(store, f, 0.9, 0.3, 48, extra)
        results[selection] = final.plan(study, store)
    hold, kfold = results["holdout"], results["kfold"]
    assert hold.parent.name == "base" and "tied with lite0-linear" in hold.reason
    assert hold.selection.summary()["method"] == "holdout"
    assert kfold.parent.name == "lite0-linear"
    assert kfold.spec.probe_wd == (0.01,)  # the weight decay chosen out of fold
    summary = kfold.selection.summary()
    assert summary["method"] == "kfold" and summary["folds"] == 5 and summary["n"] == 240
    accs = {c["name"]: c["oof_acc"] for c in summary["candidates"]}
    assert accs == {"lite0-linear": 0.95, "base": 0.8}
    assert summary["paired"]["leader"] == "lite0-linear" and summary["paired"]["p_value"] < 0.05
    assert "out-of-fold accuracy of 2" in kfold.reason


# ------------------------------------------------------------------ end to end

def _image_folder(root, per_class: int, test_per_class: int):
    """A two-class folder of PNG photos: train/<class>/*.png and test/<class>/*.png."""
    from PIL import Image
    from transferlab.data import synthetic
    _, splits, _ = synthetic(per_class=per_class, test_per_class=test_per_class, num_classes=2)
    for split, (x, y) in splits.items():
        for i, (img, label) in enumerate(zip(x, y)):
            d = root / split / f"class{int(label)}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.numpy()).save(d / f"{i:04d}.png")
    return root


def test_a_folder_of_120_images_per_class_is_chosen_by_k_fold(cli, workdir):
    """"auto" cross-validates a small folder: `report --json` shows the k-fold choice on every
    train + validation image, and the final model is built from it."""
    folder = _image_folder(workdir / "photos", 120, 20)
    cfg = write_config(workdir / "sel.toml",
                       study_text('selection = "auto"', data=f"imagefolder:{folder}"))
    code, out, err = cli("run", cfg)
    assert code == 0, out + err
    assert "selection: 5-fold cross-validation" in out
    rep = _report(cli, cfg)
    sel = rep["selection"]
    assert sel["method"] == "kfold" and sel["folds"] == 5
    assert sel["n"] == 240  # every train + validation image, out of fold
    assert "validation split is small" in sel["why"]
    assert {c["name"] for c in sel["candidates"]} == {"base", "lite0-linear"}
    for c in sel["candidates"]:
        lo, hi = c["interval95"]
        assert c["n"] == 240 and lo <= c["oof_acc"] <= hi
    assert 0 <= sel["paired"]["p_value"] <= 1
    leader = sel["candidates"][0]["name"]
    fin = rep["final"]
    assert fin["status"] == "done" and fin["chosen"]["parent"] == leader
    assert fin["name"] == f"final-{leader}" and fin["train_images"] == 240
    assert rep["rows"] and all(".fold" not in r["name"] for r in rep["rows"])  # folds apart
    code, text, _ = cli("report", cfg)
    assert "selection" in text and "5-fold" in text and "240" in text
    code, again, _ = cli("run", cfg)  # nothing redone: the folds and the final are done
    assert code == 0 and "fold experiment(s) to run" not in again and "0 ran" in again

