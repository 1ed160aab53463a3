"""Errors say what really failed: a download, or something else (which is then named)."""
import pytest
import timm
import torchvision.models as tvm

from transferlab import models
from transferlab.config import ExperimentSpec
from transferlab.errors import UserError, WeightsUnavailable


def _raise(exc):
    def fail(*_a, **_k):
        raise exc
    return fail


def test_timm_error_that_is_not_a_download_is_reported_as_itself(monkeypatch):
    monkeypatch.setattr(models, "reachable", lambda host: True)
    monkeypatch.setattr(timm, "create_model", _raise(TypeError("unexpected keyword 'drop'")))
    with pytest.raises(UserError) as err:
        models.build(ExperimentSpec(name="r", model="resnet18"), 10)
    msg = str(err.value)
    assert "cannot fetch" not in msg
    assert "timm cannot create model 'resnet18'" in msg and "TypeError: unexpected keyword" in msg


def test_timm_download_failure_is_reported_as_one(monkeypatch):
    monkeypatch.setattr(models, "reachable", lambda host: True)
    monkeypatch.setattr(timm, "create_model", _raise(ConnectionError("no route to host")))
    with pytest.raises(WeightsUnavailable, match=r"no ImageNet weights for timm model "
                                                 r"'resnet18'.*ConnectionError: no route"):
        models.build(ExperimentSpec(name="r", model="resnet18"), 10)


def test_unreachable_hub_is_known_at_once_without_timm_retrying(monkeypatch):
    """Offline, timm's hub client retries for about a minute; a failed connection check (and
    no cached file) ends it at once, with the command that fetches the weights."""
    monkeypatch.setattr(models, "reachable", lambda host: False)
    monkeypatch.setattr(models, "_hf_cached_file", lambda name: None)
    monkeypatch.setattr(timm, "create_model", _raise(AssertionError("must not be called")))
    with pytest.raises(WeightsUnavailable) as err:
        models.build(ExperimentSpec(name="r", model="mobilenetv3_large_100"), 10)
    msg = str(err.value)
    assert "huggingface.co is unreachable" in msg and "timm/mobilenetv3_large_100" in msg
    assert "timm.create_model('mobilenetv3_large_100', pretrained=True)" in msg


def test_cached_hub_weights_are_used_offline(monkeypatch, tmp_path):
    seen = {}

    def create(name, pretrained=False, **kw):
        seen.update(kw, pretrained=pretrained)
        return real(name, pretrained=False)
    real = timm.create_model
    monkeypatch.setattr(models, "reachable", _raise(AssertionError("no network check needed")))
    monkeypatch.setattr(models, "_hf_cached_file", lambda name: str(tmp_path / "w.safetensors"))
    monkeypatch.setattr(timm, "create_model", create)
    models.build(ExperimentSpec(name="r", model="resnet18"), 10)
    assert seen["pretrained"] and seen["pretrained_cfg_overlay"] == {"file": str(tmp_path / "w.safetensors")}


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


def test_report_shows_a_model_without_its_weights_as_a_structure(monkeypatch):
    """The notebook's architecture section draws every source model; a hub model offline is
    built with random weights and says so, instead of failing the whole report."""
    from transferlab.report import architecture
    monkeypatch.setattr(models, "reachable", lambda host: False)
    monkeypatch.setattr(models, "_hf_cached_file", lambda name: None)
    spec = ExperimentSpec(name="mnv3-linear", model="mobilenetv3_large_100", regime="linear")
    net = architecture.build_net(spec, 10)
    assert net.info.init.startswith("веса ImageNet здесь недоступны")
    assert "эксперименты этой модели пропущены" in net.info.init  # the report is in Russian
    assert "huggingface.co is unreachable" in net.info.init
    (row,) = architecture.regime_rows(net, [spec])
    assert row["trained"] == ["head"] and row["frozen_params"] > 1_000_000
    assert "trainable flags" in architecture.summary_for(net, spec, 64, depth=1)
