"""Errors say what really failed: a download, or something else (which is then named)."""
import pytest
import timm
import torchvision.models as tvm

from transferlab import models
from transferlab.config import ExperimentSpec
from transferlab.errors import UserError


def _raise(exc):
    def fail(*_a, **_k):
        raise exc
    return fail


def test_timm_error_that_is_not_a_download_is_reported_as_itself(monkeypatch):
    monkeypatch.setattr(timm, "create_model", _raise(TypeError("unexpected keyword 'drop'")))
    with pytest.raises(UserError) as err:
        models.build(ExperimentSpec(name="r", model="resnet18"), 10)
    msg = str(err.value)
    assert "cannot fetch" not in msg
    assert "timm cannot create model 'resnet18'" in msg and "TypeError: unexpected keyword" in msg


def test_timm_download_failure_is_reported_as_one(monkeypatch):
    monkeypatch.setattr(timm, "create_model", _raise(ConnectionError("no route to host")))
    with pytest.raises(UserError, match=r"cannot fetch ImageNet weights for timm model "
                                        r"'resnet18'.*ConnectionError: no route"):
        models.build(ExperimentSpec(name="r", model="resnet18"), 10)


def test_torchvision_build_error_without_weights_names_the_real_error(monkeypatch):
    monkeypatch.setattr(tvm, "get_model", _raise(RuntimeError("out of memory")))
    with pytest.raises(UserError) as err:
        models.build(ExperimentSpec(name="r", model="tv:resnet18", weights="none"), 10)
    msg = str(err.value)
    assert "torchvision cannot build model 'resnet18' (weights none): RuntimeError: out of " \
           "memory" in msg and "fetch" not in msg


def test_torchvision_unknown_weight_enum_names_the_valid_ones():
    with pytest.raises(UserError, match=r"no weights 'IMAGENET1K_V9'.*one of IMAGENET1K_V1, "
                                        r"IMAGENET1K_V2"):
        models.build(ExperimentSpec(name="r", model="tv:resnet50", weights="IMAGENET1K_V9"), 10)


def test_torchvision_model_without_weights_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(tvm, "get_model_weights", _raise(ValueError("no weights")))
    with pytest.raises(UserError, match="ships no pretrained weights"):
        models.build(ExperimentSpec(name="r", model="tv:resnet18"), 10)
