"""The final stage: the validation-chosen configuration trained again on every training image,
chosen like for like, resumable, reported apart; and no choice ever looks at the test split."""
import json
import re

import pytest
import torch

from conftest import write_config

FINAL = """
[study]
name = "fin"
data = "synthetic"

[study.final]
epochs = 1

[defaults]
epochs = 2
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
epochs = 4
optimizer = { name = "adamw", lr = 0.003 }
probe_wd = [0.0, 0.01]
"""


@pytest.fixture
def final_config(workdir):
    return write_config(workdir / "fin.toml", FINAL)


def _report(cli, *args):
    code, out, err = cli("report", *args, "--json")
    assert code == 0, err
    return json.loads(out)


def test_final_stage_trains_the_validation_choice_on_all_training_images(cli, final_config,
                                                                       workdir):
    code, out, err = cli("run", final_config)
    assert code == 0, out + err
    rep = _report(cli, final_config)
    grid = {r["name"]: r for r in rep["rows"]}
    assert set(grid) == {"base", "lite0-linear"}  # the final is reported apart from the grid
    for r in grid.values():  # every candidate scored on validation the same way, with its size
        assert r["val_n"] == 24 and r["val_loss"] is not None
        lo, hi = r["val_interval95"]
        assert lo <= r["val_acc"] <= hi
    best = min(grid.values(), key=lambda r: (-r["val_acc"], r["val_loss"]))
    fin = rep["final"]
    assert rep["best_on_validation"] == best["name"]
    assert fin["name"] == "final-" + best["name"] and fin["status"] == "done"
    assert fin["chosen"]["parent"] == best["name"]
    assert "best validation accuracy of 2" in fin["chosen"]["reason"]
    assert fin["train_images"] == 240  # 216 train + 24 validation: every training image
    assert rep["answer_test_acc"] == fin["test_acc"]
    for key in ("source_model", "modified_layers", "transfer_type", "optimizer", "initialisation",
                "epochs", "batch_size", "schedule", "tta", "test_acc_no_tta"):
        assert fin[key] is not None, key
    assert "final stage: final-" in out and "train + validation" in out

    code, text, _ = cli("report", final_config)  # the human-readable report says the same
    assert f"final model: final-{best['name']}" in text and "chosen because" in text
    code, again, _ = cli("run", final_config)  # nothing redone, the final included
    assert code == 0 and "done: 0 ran, 3 already finished" in again
    code, text, _ = cli("report")  # from the store alone (no config): the final is found
    assert f"final model: final-{best['name']}" in text
    from transferlab.trained import load, open_study  # predict and export hand on the final
    trained = load(open_study(final_config, None, workdir / "runs" / "transferlab.db", {}))
    assert trained.name == fin["name"] and trained.result["test_acc"] == fin["test_acc"]


def test_final_waits_for_the_grid(cli, final_config):
    code, out, _ = cli("run", final_config, "--only", "base")
    assert code == 0 and "final stage" not in out
    code, out, _ = cli("run", final_config, "--only", "final")
    assert "final stage: waiting for 1 grid experiment(s) (lite0-linear)" in out
    assert _report(cli, final_config)["final"] is None


def test_final_of_a_probe_keeps_the_weight_decay_validation_chose(cli, workdir):
    cfg = write_config(workdir / "probe.toml", FINAL.split("[[experiment]]\nname = \"base\"")[0]
                       + FINAL.split("regime = \"scratch\"\n")[1])
    code, out, err = cli("run", cfg)
    assert code == 0, out + err
    fin = _report(cli, cfg)["final"]
    assert fin["name"] == "final-lite0-linear" and fin["epochs"] == 4  # head epochs kept
    from transferlab.store import Store
    store = Store(workdir / "runs" / "transferlab.db")
    parent = store.result(fin["chosen"]["parent_id"])["extra"]["chosen_wd"]
    assert json.loads(store.get(fin["id"])["config"])["probe_wd"] == [parent]


def test_a_backprop_final_never_takes_a_probe(cli, workdir):
    cfg = write_config(workdir / "bp.toml", FINAL.replace(
        "[study.final]\n", '[study.final]\ncandidates = "backprop"\n', 1))
    code, out, err = cli("run", cfg)
    assert code == 0, out + err
    fin = _report(cli, cfg)["final"]
    assert fin["name"] == "final-base" and fin["chosen"]["parent"] == "base"
    assert "probes left out" in fin["chosen"]["reason"]
    assert "left out: lite0-linear (a probe" in out
    bad = write_config(workdir / "bad.toml", FINAL.replace(
        "[study.final]\n", '[study.final]\ncandidates = "finetunes"\n', 1))
    code, _, err = cli("run", bad)
    assert code != 0 and "[study.final]" in err and "backprop" in err


def test_ties_break_by_validation_loss():
    from transferlab.final import Candidate, rank_key
    a = Candidate("a", "1", 0.8, 0.70, 100)
    b = Candidate("b", "2", 0.8, 0.55, 100)
    c = Candidate("c", "3", 0.79, 0.10, 100)
    ranked = sorted([a, b, c], key=lambda x: rank_key(x.val_acc, x.val_loss))
    assert [x.name for x in ranked] == ["b", "a", "c"]


def test_interval_is_wilson():
    from transferlab.final import interval95
    lo, hi = interval95(0.9, 1000)
    assert lo == pytest.approx(0.8797, abs=1e-3) and hi == pytest.approx(0.9178, abs=1e-3)
    lo, hi = interval95(1.0, 20)  # stays inside [0, 1] at the edge
    assert hi == 1.0 and 0.8 < lo < 0.85


def test_bad_final_table_is_a_clear_error(cli, workdir):
    cfg = write_config(workdir / "bad.toml", FINAL.replace("epochs = 1\n", "epoch = 1\n", 1))
    code, _, err = cli("run", cfg)
    assert code != 0 and "[study.final]" in err and "epochs" in err


def test_shuffled_test_labels_change_no_choice(cli, workdir, monkeypatch):
    """Every choice (epoch, weight decay, best configuration, hence the final experiment) is the
    same when the test labels are shuffled: nothing but the test figures may move."""
    import transferlab.study as study_mod
    real = study_mod.make_splits

    def choices(tag, shuffle):
        def splits(*a, **k):
            s = real(*a, **k)
            if shuffle:
                g = torch.Generator().manual_seed(7)
                s.y["test"] = s.y["test"][torch.randperm(len(s.y["test"]), generator=g)]
            return s
        monkeypatch.setattr(study_mod, "make_splits", splits)
        monkeypatch.chdir(workdir)
        cfg = write_config(workdir / f"{tag}.toml", FINAL.replace('name = "fin"', f'name = "{tag}"')
                           .replace('[study.final]', f'store = "{tag}/s.db"\n\n[study.final]'))
        code, out, err = cli("run", cfg)
        assert code == 0, out + err
        rep = _report(cli, cfg)
        from transferlab.store import Store
        store = Store(workdir / tag / "s.db")
        picked = {r["name"]: (store.result(r["exp_id"])["best_epoch"],
                              (store.result(r["exp_id"])["extra"] or {}).get("chosen_wd"),
                              r["val_acc"]) for r in rep["rows"]}
        return picked, rep["final"]["id"], rep["final"]["test_acc"], \
            [r["test_acc"] for r in rep["rows"]]

    plain, final_plain, test_plain, grid_plain = choices("plain", False)
    shuffled, final_shuffled, test_shuffled, grid_shuffled = choices("shuffled", True)
    assert plain == shuffled and final_plain == final_shuffled
    assert (test_plain, grid_plain) != (test_shuffled, grid_shuffled)  # the test figures moved


def test_backprop_epochs_are_chosen_on_validation_scored_like_the_ranking(cli, workdir,
                                                                         monkeypatch):
    """Each epoch's validation accuracy (which picks the epoch) is scored with the views the
    ranking and the test use: flip TTA when tta = true."""
    from transferlab.fit import evaluate
    cfg = write_config(workdir / "tta.toml", """
        [study]
        name = "tta"
        data = "synthetic:16"
        val_fraction = 0.25

        [defaults]
        model = "baseline"
        regime = "scratch"
        epochs = 2
        batch_size = 16
        resolution = 16
        precision = "fp32"
        tta = true

        [[experiment]]
        name = "main"
        """)
    real, seen = evaluate.on_images, []

    def spy(net, pipe, x, y, batch, amp, tta):
        plain, views = real(net, pipe, x, y, batch, amp, tta)
        seen.append((len(y), tta, views.acc))
        return plain, views
    monkeypatch.setattr(evaluate, "on_images", spy)
    code, out, err = cli("run", cfg)
    assert code == 0, out + err
    per_epoch = seen[:2]  # then the test split and the validation split at the chosen weights
    assert [(n, tta) for n, tta, _ in per_epoch] == [(16, True), (16, True)]
    code, out, err = cli("report", cfg, "--json")
    rows = {r["name"]: r for r in json.loads(out)["rows"]}
    code, out, err = cli("show", "main", cfg)
    accs = [float(a) / 100 for a in re.findall(r"^ +epoch .*val acc (\d+\.\d+)%", out, re.M)]
    assert accs == pytest.approx([acc for _, _, acc in per_epoch], abs=1e-4)
    assert rows["main"]["val_acc"] == max(acc for _, _, acc in per_epoch)
    code, out, err = cli("report", cfg)
    assert "validation scored with flip TTA, as the ranking and the test" in out


def test_the_baseline_cnn_keeps_its_own_resolution_in_the_final_stage():
    from transferlab import final as final_stage
    from transferlab.config import parse_study
    study = parse_study({
        "study": {"name": "r", "data": "synthetic:20", "final": {"resolution": 80}},
        "defaults": {"epochs": 1, "weights": "none"},
        "experiment": [{"name": "cnn", "model": "baseline", "regime": "scratch", "resolution": 32},
                       {"name": "lite", "model": "efficientnet_lite0", "regime": "full",
                        "resolution": 64}]})
    cnn, lite = study.experiments
    assert final_stage.final_spec(cnn, study.final, None).resolution == 32  # 6x dearer at 80 px
    assert final_stage.final_spec(lite, study.final, None).resolution == 80
