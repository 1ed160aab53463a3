"""Data: decoding once into a tensor cache, stratified deterministic splits, subsets."""
import tarfile

import pytest
import torch
from PIL import Image

from transferlab import data as D
from transferlab.config import DataSpec
from transferlab.errors import UserError


def _folder(root, classes=("a", "b", "c"), train=10, test=4, size=(16, 16)):
    for split, n in (("train", train), ("test", test)):
        for k, cls in enumerate(classes):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", size, (k * 80, i * 20, 50)).save(d / f"{i}.jpg")
    return root


def test_splits_are_stratified_deterministic_and_disjoint(tmp_path):
    spec = DataSpec(source="synthetic:50", val_fraction=0.2)
    a = D.make_splits(spec, tmp_path)
    b = D.make_splits(spec, tmp_path)
    assert all(torch.equal(a.x[s], b.x[s]) for s in a.x)
    assert a.counts()["val"] == [10, 10, 10, 10] and a.counts()["train"] == [40] * 4
    flat = lambda t: {bytes(img.numpy()) for img in t}  # noqa: E731
    assert not flat(a.x["train"]) & flat(a.x["val"])


def test_subset_takes_n_per_class_and_a_proportional_test_share(tmp_path):
    spec = DataSpec(source="synthetic:60", subset=30, val_fraction=0.1)
    s = D.make_splits(spec, tmp_path)
    assert s.counts()["train"] == [27] * 4 and s.counts()["val"] == [3] * 4
    assert s.counts()["test"] == [10] * 4  # 20 test per class x 30/60


def test_folder_and_tarball_decode_once_into_the_same_cache(tmp_path, monkeypatch):
    root = _folder(tmp_path / "imgs")
    tar = tmp_path / "imgs.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        t.add(root, arcname="imgs")  # an extra top folder is accepted
    for src in (f"imagefolder:{root}", f"imagefolder:{tar}"):
        spec = DataSpec(source=src, val_fraction=0.1, fingerprint=D.fingerprint(src))
        s = D.make_splits(spec, tmp_path / "cache")
        assert s.classes == ["a", "b", "c"] and s.counts()["test"] == [4, 4, 4]
        assert s.x["train"].dtype == torch.uint8 and s.x["train"].shape[1:] == (16, 16, 3)
    monkeypatch.setattr(D, "decode_image", lambda *a: pytest.fail("decoded again"))
    D.make_splits(spec, tmp_path / "cache")  # served from the tensor cache


def test_val_split_name_is_accepted(tmp_path):
    root = _folder(tmp_path / "imgs")
    (root / "test").rename(root / "val")
    s = D.make_splits(DataSpec(source=f"imagefolder:{root}"), tmp_path)
    assert len(s.y["test"]) == 12


def test_unknown_source_is_explained():
    with pytest.raises(UserError, match="unknown data source 'cifar100'"):
        D.parse_source("cifar100")


def test_cifar10_without_network_says_how_to_use_a_local_copy(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*a, **k):
        raise OSError("network is unreachable")
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(UserError, match="imagefolder:PATH"):
        D.make_splits(DataSpec(source="cifar10"), tmp_path)


def test_real_cifar_jpeg_subset(cifar_jpeg, data_root):
    spec = DataSpec(source=cifar_jpeg, subset=20, fingerprint=D.fingerprint(cifar_jpeg))
    s = D.make_splits(spec, data_root)
    assert s.classes[:3] == ["airplane", "automobile", "bird"]
    assert s.counts()["train"] == [18] * 10 and s.counts()["test"] == [4] * 10
    assert s.image_size == 32 and "JPEG q75" in s.description


def _hidden_extras(root, splits=("train", "test")):
    """What Jupyter, macOS and its archiver leave in a data folder."""
    for split in splits:
        ck = root / split / ".ipynb_checkpoints"
        ck.mkdir(parents=True)
        Image.new("RGB", (16, 16)).save(ck / "0-checkpoint.jpg")
        mac = root / split / "__MACOSX" / "a"
        mac.mkdir(parents=True)
        (mac / "._0.jpg").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (root / "train" / "a" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    Image.new("RGB", (16, 16)).save(root / "train" / "b" / ".hidden.jpg")


@pytest.mark.parametrize("where", [("train", "test"), ("train",)], ids=["both-splits", "train-only"])
@pytest.mark.parametrize("kind", ["folder", "tar.gz"])
def test_hidden_files_and_folders_are_neither_classes_nor_images(tmp_path, caplog, where, kind):
    root = _folder(tmp_path / "imgs", classes=("a", "b"))
    _hidden_extras(root, where)
    src = root
    if kind == "tar.gz":
        src = tmp_path / "imgs.tar.gz"
        with tarfile.open(src, "w:gz") as t:
            t.add(root, arcname="imgs")
    caplog.set_level("INFO", logger="transferlab.data")
    s = D.make_splits(DataSpec(source=f"imagefolder:{src}", val_fraction=0.1), tmp_path / "c")
    assert s.classes == ["a", "b"] and s.counts()["test"] == [4, 4]
    assert len(s.y["train"]) + len(s.y["val"]) == 20  # .hidden.jpg and the checkpoints left out
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ignoring hidden")]
    assert len(said) == 1 and ".ipynb_checkpoints" in said[0] and "__MACOSX" in said[0], said


def test_hidden_files_do_not_change_a_folders_fingerprint(tmp_path):
    root = _folder(tmp_path / "imgs", classes=("a", "b"))
    before = D.fingerprint(f"imagefolder:{root}")
    _hidden_extras(root)
    assert D.fingerprint(f"imagefolder:{root}") == before
    Image.new("RGB", (16, 16)).save(root / "train" / "a" / "new.jpg")
    assert D.fingerprint(f"imagefolder:{root}") != before


def test_mixed_sizes_decode_like_resizing_each_native_image(tmp_path):
    """Images at least the cache side shrink as they are decoded, smaller ones wait for the
    study's side: the cache equals resizing every native image to that side."""
    import numpy as np
    root = tmp_path / "imgs"
    sizes = [(40, 30), (64, 80), (23, 50), (90, 90), (33, 33)]  # (w, h); cache side 32
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("a", "b"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i, wh in enumerate(sizes):
                arr = rng.integers(0, 255, (wh[1], wh[0], 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i}.png")
    spec = DataSpec(source=f"imagefolder:{root}", cache_size=32)
    classes, splits, _ = D.decoded(spec, tmp_path / "c")
    side = min(32, max(min(wh) for wh in sizes))
    for split in ("train", "test"):
        want = [D._square_resize(np.asarray(Image.open(root / split / c / f"{i}.png").convert("RGB")),
                                 side) for c in ("a", "b") for i in range(len(sizes))]
        assert torch.equal(splits[split][0], torch.from_numpy(np.stack(want)))
    # all smaller than the cache side: the side is the largest shorter side, none resized early
    small = DataSpec(source=f"imagefolder:{root}", cache_size=256)
    x = D.decoded(small, tmp_path / "c2")[1]["train"][0]
    assert x.shape[1:] == (90, 90, 3)


def test_large_photos_are_not_all_held_at_full_size(tmp_path):
    """24 photos of 1600 x 1200 (5.8 MB each decoded, 138 MB together): decoding into a
    64 px cache holds only the few in flight, never all of them (numpy's allocations, which
    tracemalloc sees)."""
    import tracemalloc
    import numpy as np
    root = tmp_path / "photos"
    yy, xx = np.mgrid[0:1200, 0:1600]
    for i in range(24):
        d = root / ("test" if i % 4 == 3 else "train") / ("a", "b")[i // 4 % 2]
        d.mkdir(parents=True, exist_ok=True)
        arr = np.stack([(xx * (i + 1) // 13) % 256, (yy * 3) % 256, (xx + yy) % 256], 2)
        Image.fromarray(arr.astype(np.uint8)).save(d / f"{i}.jpg", quality=80)
    tracemalloc.start()
    try:
        _, splits, _ = D.decoded(DataSpec(source=f"imagefolder:{root}", cache_size=64),
                                 tmp_path / "c")
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert splits["train"][0].shape == (18, 64, 64, 3) and splits["test"][0].shape == (6, 64, 64, 3)
    workers = D.decode_workers()
    assert peak < 5.8 * (3 * workers + 3), f"peak {peak:.0f} MB of numpy arrays"


def test_the_description_names_the_folder_as_the_user_gave_it(tmp_path, monkeypatch):
    """The report is the user's: a relative path stays relative, not this machine's absolute."""
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / "photos" / split / c).mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    spec = DataSpec(source="imagefolder:photos", val_fraction=0.0)
    assert D.describe_source(spec).startswith("image folder photos,")
    assert str(tmp_path) not in D.describe_source(spec)


def test_the_description_in_russian_for_the_report():
    spec = DataSpec(source="synthetic", subset=40, val_fraction=0.1, folds=5, fold=1)
    assert D.describe_source(spec) == ("synthetic test images, subset 40/class, val 10% of train; "
                                       "fold 2 of 5 of train + val held out")
    assert D.describe_source(spec, lang="ru") == (
        "синтетические тестовые изображения, подвыборка 40 на класс, валидация — 10% обучающей; "
        "валидация — фолд 2 из 5 (train + val)")
