"""After the study: predict on new images, export with a model card, TensorBoard curves.

One tiny study (the baseline CNN from scratch and a Lite0 linear probe on synthetic images)
is trained once for the module; its test images are written out as PNG files, so `predict`
reads them the way a user's images are read, and must give what the store recorded.
"""
import csv
import json
import os
import sys
import tarfile
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_config

STUDY = """
[study]
name = "tiny"
data = "synthetic"

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
optimizer = { name = "adamw", lr = 0.003 }
probe_wd = [0.0, 0.01]
"""


def _main(capsys, *args):
    from transferlab.cli import main
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def study(tmp_path_factory, data_root):
    """A finished tiny study, its test images as test/<class>/<index>.png, its store."""
    from transferlab.cli import main
    from transferlab.config import load_study
    from transferlab.data import fingerprint
    from transferlab.data import make_splits
    root = tmp_path_factory.mktemp("use")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("TRANSFERLAB_DATA", str(data_root))
        cfg = write_config(root / "tiny.toml", STUDY)
        assert main(["run", str(cfg), "--tensorboard", "tb"]) == 0
        st = load_study(cfg, fingerprint=fingerprint)
        splits = make_splits(st.data, data_root, False, 32)
        for i, (x, y) in enumerate(zip(splits.x["test"], splits.y["test"])):
            d = root / "images" / "test" / splits.classes[int(y)]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x.numpy()).save(d / f"{i:05d}.png")
        yield {"root": root, "config": cfg, "study": st, "classes": splits.classes,
               "n_test": len(splits.y["test"])}


def _stored(st, name):
    from transferlab.store import Store
    spec = next(e for e in st.experiments if e.name == name)
    store = Store(st.store, create=False)
    try:
        return store.result(spec.id)
    finally:
        store.close()


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", ["base", "lite0-linear"])
def test_predict_gives_the_stored_test_predictions(study, capsys, name):
    out_csv = study["root"] / f"pred-{name}.csv"
    code, out, _ = _main(capsys, "predict", study["config"], study["root"] / "images" / "test",
                         "--model", name, "--csv", out_csv)
    assert code == 0, out
    rows = _csv(out_csv)
    stored = _stored(study["study"], name)
    assert len(rows) == study["n_test"] == len(stored["extra"]["test_predictions"])
    classes = study["classes"]
    for row in rows:  # file i is test image i: the same image, the same class as scored in the study
        i = int(os.path.basename(row["path"])[:5])
        assert classes.index(row["prediction"]) == stored["extra"]["test_predictions"][i], row
    acc = sum(r["prediction"] == r["label"] for r in rows) / len(rows)
    assert acc == pytest.approx(stored["test_acc"], abs=1e-6)
    assert f"accuracy against folder names {stored['test_acc']:.2%}" in out
    probs = [float(r["probability"]) for r in rows]
    assert all(0 < p <= 1 for p in probs) and "class_3" in rows[0]


def test_predict_defaults_to_the_best_on_validation(study, capsys):
    from transferlab.report.tables import best_row, study_rows
    from transferlab.store import Store
    st = study["study"]
    store = Store(st.store, create=False)
    best = best_row(study_rows(store, [(e.name, e.id) for e in st.experiments], [])).name
    store.close()
    img = next((study["root"] / "images" / "test").rglob("*.png"))
    with pytest.MonkeyPatch.context() as mp:  # no CONFIG: the last study of runs/transferlab.db
        mp.chdir(study["root"])
        code, out, _ = _main(capsys, "predict", img, "--top", "2")
    assert code == 0
    assert out.startswith(f"model {best} (best on validation")
    assert "flip TTA: logits averaged" in out and "1 images predicted" in out


def test_corrupt_images_are_reported_and_skipped(study, capsys):
    src = study["root"] / "images" / "test"
    mixed = study["root"] / "mixed" / "class1"
    mixed.mkdir(parents=True)
    good = sorted((src / "class1").glob("*.png"))[:3]
    for p in good:
        (mixed / p.name).write_bytes(p.read_bytes())
    (mixed / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (mixed / "cut.png").write_bytes(good[0].read_bytes()[:60])
    (mixed / "notes.txt").write_text("not an image: ignored inside a folder")
    archive = study["root"] / "more.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for p in sorted((src / "class2").glob("*.png"))[:2]:
            tar.add(p, arcname=f"class2/{p.name}")
    out_json = study["root"] / "mixed.json"
    code, out, _ = _main(capsys, "predict", study["config"], study["root"] / "mixed", archive,
                         "--json", out_json, "--model", "base", "--batch", "2")
    assert code == 0, out
    assert "skipped" in out and "broken.png" in out and "cut.png" in out
    blob = json.loads(out_json.read_text())
    assert len(blob["predictions"]) == 5 and len(blob["skipped"]) == 2
    assert {os.path.basename(s["path"]) for s in blob["skipped"]} == {"broken.png", "cut.png"}
    assert any(p["path"].startswith(f"{archive}:class2/") and p["label"] == "class2"
               for p in blob["predictions"])
    assert blob["preprocessing"][1].startswith("shorter side to 32 px")

    (study["root"] / "allbad").mkdir()
    (study["root"] / "allbad" / "x.png").write_bytes(b"nope")
    code, out, _ = _main(capsys, "predict", study["config"], study["root"] / "allbad")
    assert code == 1 and "0 images predicted, 1 skipped" in out


def test_predict_bad_input_is_a_clear_error(study, capsys):
    code, _, err = _main(capsys, "predict", study["config"], study["root"] / "nowhere")
    assert code == 2 and "does not exist" in err
    code, _, err = _main(capsys, "predict", study["config"], study["root"] / "images",
                         "--model", "nope")
    assert code == 2 and "no experiment 'nope'" in err and "base" in err


def test_predict_resizes_new_images_like_the_decode_cache(workdir, cli):
    """Photos of mixed sizes were resized once into the cache; predict on the original files
    goes through the same resize and must give what the study scored."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 14), ("test", 5)):
        for c, cls in enumerate(("cats", "dogs")):
            d = workdir / "imgs" / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 80, (30 + 3 * i, 44, 3), dtype=np.uint8)
                arr[..., c] += 150  # a learnable colour cue
                Image.fromarray(arr).save(d / f"{i:02d}.png")
    cfg = write_config(workdir / "f.toml", f"""
        [study]
        name = "folder"
        data = "imagefolder:{workdir / 'imgs'}"
        [[experiment]]
        name = "base"
        model = "baseline"
        regime = "scratch"
        epochs = 1
        batch_size = 8
        resolution = 32
        """)
    assert cli("run", cfg)[0] == 0
    code, out, _ = cli("predict", cfg, workdir / "imgs" / "test", "--csv", workdir / "p.csv")
    assert code == 0, out
    # the cache side (the largest shorter side, 44 px), then the resolution
    assert "shorter side to 44 px" in out and "resize to 32x32" in out
    from transferlab.config import load_study
    from transferlab.data import fingerprint
    stored = _stored(load_study(cfg, fingerprint=fingerprint), "base")["extra"]["test_predictions"]
    rows = _csv(workdir / "p.csv")  # sorted paths: the order the study decoded them in
    assert [["cats", "dogs"].index(r["prediction"]) for r in rows] == stored


def test_missing_weights_are_a_clear_error(study, capsys, tmp_path):
    import shutil
    shutil.copytree(study["root"] / "runs", tmp_path / "runs")
    shutil.copy(study["config"], tmp_path / "tiny.toml")
    from transferlab.config import load_study
    from transferlab.data import fingerprint
    base = next(e for e in load_study(study["config"], fingerprint=fingerprint).experiments if e.name == "base")
    weights = tmp_path / "runs" / "tiny" / base.id / "model.pt"
    weights.unlink()
    img = next((study["root"] / "images" / "test").rglob("*.png"))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        code, _, err = _main(capsys, "predict", "tiny.toml", img, "--model", "base")
    assert code == 2 and "the weights of 'base' are missing" in err and "--rerun base" in err


# ------------------------------------------------------------------ export

def _png_batch(paths, size):
    """The exported model's documented input: float RGB in [0, 1] at the input size."""
    arrs = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    assert all(a.shape[:2] == (size, size) for a in arrs)
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float().div(255)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_passes_its_check_and_runs_as_the_card_says(study, capsys, fmt):
    out_dir = study["root"] / f"exports-{fmt}"
    code, out, err = _main(capsys, "export", "base", study["config"], "--format", fmt,
                           "--out", out_dir)
    assert code == 0, err
    assert "max |logit difference|" in out
    suffix = {"torchscript": ".torchscript.pt", "onnx": ".onnx"}[fmt]
    model = out_dir / f"base{suffix}"
    card = json.loads((out_dir / f"base{suffix}.card.json").read_text())
    md = (out_dir / f"base{suffix}.card.md").read_text()
    stored = _stored(study["study"], "base")
    assert card["check"]["passed"] and card["check"]["max_abs_diff"] <= card["check"]["allowed"]
    assert card["classes"] == study["classes"] and card["input"]["shape"] == ["N", 3, 32, 32]
    assert card["accuracy"]["test"] == stored["test_acc"]
    assert card["source_model"]["arch"].startswith("baseline") and card["regime"]["name"] == "scratch"
    assert card["optimizer"]["name"] == "sgd" and card["data"]["fingerprint"] == "synthetic-default"
    assert card["transferlab"] and card["exported"].endswith("UTC")
    assert "Normalisation is inside the model" in md and "Equivalence check" in md
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        [model.name, model.name + ".card.json", model.name + ".card.md"])

    # the file alone, fed as the card documents, reproduces the study's test predictions
    files = sorted((study["root"] / "images" / "test").rglob("*.png"))
    x = _png_batch(files, 32)
    if fmt == "onnx":
        import onnxruntime as ort
        sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        logits = torch.from_numpy(sess.run(None, {"images": x.numpy()})[0])
    else:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in torch 2.14
            logits = torch.jit.load(str(model))(x)
    preds = {int(f.name[:5]): int(p) for f, p in zip(files, logits.argmax(1))}
    want = stored["extra"]["test_predictions"]
    agree = sum(preds[i] == want[i] for i in range(len(want)))
    assert agree >= len(want) - 1  # float32 here, the study's own number format there


def test_a_failed_export_check_is_an_error_and_leaves_nothing(study, capsys, monkeypatch):
    from transferlab import export
    real = export.build_exportable

    def tampered(trained):
        m = real(trained)
        with torch.no_grad():
            m.net.head.weight.mul_(1.5)  # what a broken exporter or runtime would look like
        return m
    monkeypatch.setattr(export, "build_exportable", tampered)
    out_dir = study["root"] / "exports-bad"
    code, _, err = _main(capsys, "export", "base", study["config"], "--format", "torchscript",
                         "--out", out_dir)
    assert code == 2 and "does not reproduce the PyTorch model" in err
    assert "nothing was written" in err
    assert list(out_dir.iterdir()) == []


def test_export_unknown_experiment_is_an_error(study, capsys):
    code, _, err = _main(capsys, "export", "nope", study["config"], "--format", "onnx")
    assert code == 2 and "no experiment 'nope'" in err


# ------------------------------------------------------------------ TensorBoard

def _scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_curves_per_experiment(study):
    from transferlab.store import Store
    st = study["study"]
    store = Store(st.store, create=False)
    for spec in st.experiments:
        runs = list((study["root"] / "tb" / "tiny").glob(f"{spec.name}-*"))
        assert len(runs) == 1
        curves = _scalars(runs[0])
        epochs = store.epochs(spec.id)
        assert [s for s, _ in curves["accuracy/val"]] == [1, 2]
        assert [v for _, v in curves["loss/train"]] == pytest.approx(
            [e["train_loss"] for e in epochs], rel=1e-6)
        assert {"accuracy/train", "learning_rate", "speed/images_per_s"} <= set(curves)
    store.close()


def test_tensorboard_rerun_and_config_key(workdir, cli, smoke_config):
    text = smoke_config.read_text().replace('data = "synthetic"',
                                            'data = "synthetic"\ntensorboard = "curves"')
    smoke_config.write_text(text)
    assert cli("run", smoke_config, "--only", "base", "--epochs", "1")[0] == 0
    assert cli("run", smoke_config, "--only", "base", "--epochs", "1", "--rerun", "base")[0] == 0
    run, = (workdir / "curves" / "smoke").glob("base-*")
    assert [s for s, _ in _scalars(run)["loss/train"]] == [1]  # the rerun replaced, not added


def test_tensorboard_missing_package_is_a_clear_error(cli, smoke_config, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    code, _, err = cli("run", smoke_config, "--tensorboard", "tb")
    assert code == 2 and "pip install 'transferlab[tensorboard]'" in err


def test_predict_number_format_follows_the_study_on_its_own_kind_of_device():
    from transferlab.fit import hardware
    from transferlab.trained import Preprocess, Trained
    details = {"device": "cuda:0", "resolution": 32, "decoded_side": 32, "tta": True,
               "channels_last": True, "normalization": {"mean": [0.5] * 3, "std": [0.5] * 3},
               "numerics": {"train": {"numerics": "fp16 autocast + loss scaling"},
                            "eval": {"numerics": "bf16 autocast"}}}
    t = Trained("m", None, details, {}, None, Preprocess.from_details(details))
    assert t.numerics(torch.device("cuda", 0)) is hardware.BF16
    assert t.numerics(torch.device("cpu")) is hardware.FP32  # no GPU bf16 on a laptop CPU
    details.update(device="cpu", numerics={"extract": {"numerics": "fp32 + frozen trace"}})
    assert t.numerics(torch.device("cpu")) is hardware.FP32  # same numbers, eager route
