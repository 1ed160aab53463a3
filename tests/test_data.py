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
