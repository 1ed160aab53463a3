"""The CPU fast paths give PyTorch's numbers: depthwise weight gradients, frozen-trace feature
extraction and side-by-side probe heads, each checked against the plain computation."""
from __future__ import annotations

import copy
from contextlib import nullcontext

import pytest
import torch
from torch import nn

from conftest import write_config
from transferlab.fit import kernels
from transferlab.fit.augment import Pipeline
from transferlab.config import load_study, parse_study
from transferlab.data import fingerprint
from transferlab.fit.features import Extractor
from transferlab.fit.probe import fit_head, fit_heads
from transferlab.store import Store


# ------------------------------------------------------------------ depthwise weight gradient

@pytest.mark.parametrize("channels,k,stride,hw,bias,channels_last", [
    (16, 5, 1, (2, 2), False, True),   # the slow case in Lite0's last stage
    (24, 5, 1, (4, 4), True, True),
    (24, 5, 2, (4, 4), False, False),
    (8, 3, 1, (2, 3), True, False),    # non-square map
    (8, 3, 2, (5, 7), False, True),    # odd sizes, stride 2
    (8, 3, 1, (16, 16), False, True),  # not slow: stays with PyTorch
])
def test_depthwise_conv_matches_pytorch(channels, k, stride, hw, bias, channels_last):
    torch.manual_seed(0)
    ref = nn.Conv2d(channels, channels, k, stride, k // 2, groups=channels, bias=bias)
    fast = copy.deepcopy(ref)
    assert kernels.use_fast_depthwise(fast) == 1 and type(fast) is kernels.DepthwiseConv2d
    x = torch.randn(6, channels, *hw)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    outs, grads = [], []
    for conv in (ref, fast):
        xi = x.clone().requires_grad_()
        out = conv(xi)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append(out)
        grads.append([xi.grad] + [p.grad for p in conv.parameters()])
    torch.testing.assert_close(outs[1], outs[0])
    for g_fast, g_ref in zip(grads[1], grads[0]):
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-4, atol=1e-5)


def test_direct_gradient_only_where_onednn_is_slow(monkeypatch):
    calls = []
    real = kernels._DepthwiseConv.apply
    monkeypatch.setattr(kernels._DepthwiseConv, "apply", lambda *a: calls.append(1) or real(*a))
    conv = nn.Conv2d(8, 8, 5, 1, 2, groups=8)
    kernels.use_fast_depthwise(conv)
    conv(torch.randn(2, 8, 4, 4))                     # 2 * padding >= output side: direct
    conv(torch.randn(2, 8, 16, 16))                   # large map: PyTorch
    with torch.no_grad():
        conv(torch.randn(2, 8, 4, 4))                 # no gradient wanted: PyTorch
    conv.weight.requires_grad_(False)
    conv(torch.randn(2, 8, 4, 4))                     # frozen weight: PyTorch
    assert len(calls) == 1


def test_only_plain_depthwise_convs_switch_and_state_dict_keeps_its_keys():
    class Sub(nn.Conv2d):
        pass
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1),               # dense
                        nn.Conv2d(8, 8, 3, padding=1, groups=8),     # depthwise: switches
                        nn.Conv2d(8, 8, 3, padding=1, groups=2),     # grouped, not depthwise
                        nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8),
                        nn.Conv2d(8, 8, 3, padding="same", groups=8),
                        Sub(8, 8, 3, padding=1, groups=8))           # someone else's subclass
    keys = list(net.state_dict())
    assert kernels.use_fast_depthwise(net) == 1
    assert [type(m).__name__ for m in net] == ["Conv2d", "DepthwiseConv2d", "Conv2d", "Conv2d",
                                               "Conv2d", "Sub"]
    assert list(net.state_dict()) == keys


# ------------------------------------------------------------------ frozen layers in bf16

class _Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.pool(self.blocks(self.stem(x)))


class _TwoPartNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone, self.head = _Backbone(), nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.backbone(x))


def _frozen_prefix_net():
    torch.manual_seed(0)
    net = _TwoPartNet()
    for p in [*net.backbone.stem.parameters(), *net.backbone.blocks[0].parameters()]:
        p.requires_grad_(False)  # a last:K regime: the stem and the first block frozen
    net.backbone.stem.eval()
    return net


def _step(net, x):
    net.zero_grad(set_to_none=True)
    net(x).square().sum().backward()
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.requires_grad}


def test_frozen_layers_run_in_bf16_and_the_trained_ones_keep_fp32_gradients():
    ref, net = _frozen_prefix_net(), _frozen_prefix_net()
    keys = list(net.state_dict())
    seen = {}
    net.backbone.blocks[1].register_forward_pre_hook(
        lambda m, a: seen.update(dtype=a[0].dtype, autocast=torch.is_autocast_enabled("cpu")))
    assert kernels.frozen_layers_in_bf16(net) == 3  # stem.0, stem.1, blocks.0 (the rest trains)
    assert kernels.frozen_layers_in_bf16(net) == 3  # idempotent: no second set of hooks
    x = torch.randn(4, 3, 8, 8)
    want, got = _step(ref, x), _step(net, x)
    assert seen == {"dtype": torch.float32, "autocast": False}  # the trained unit: fp32 input
    assert set(got) == set(want) == {"backbone.blocks.1.weight", "backbone.blocks.1.bias",
                                     "head.weight", "head.bias"}
    for n in want:  # bf16 rounding of the frozen features, nothing more
        assert torch.allclose(got[n], want[n], rtol=0.05, atol=0.05 * want[n].abs().max().item())
    assert not all(torch.equal(got[n], want[n]) for n in want)  # bf16 really ran
    assert list(net.state_dict()) == keys
    with torch.no_grad():  # evaluation keeps its own numerics: exactly fp32 here
        assert torch.equal(net(x), ref(x))
    assert not torch.is_autocast_enabled("cpu")


def test_a_frozen_layer_that_a_gradient_must_cross_stays_fp32():
    ref, net = _frozen_prefix_net(), _frozen_prefix_net()
    for m in (ref, net):  # the stem trains now: a gradient crosses the frozen blocks.0
        for p in m.backbone.stem.parameters():
            p.requires_grad_(True)
    assert kernels.frozen_layers_in_bf16(net) == 1
    x = torch.randn(4, 3, 8, 8)
    want, got = _step(ref, x), _step(net, x)
    assert all(torch.equal(got[n], want[n]) for n in want)


def test_frozen_bf16_is_a_training_candidate_only_where_bf16_is_native():
    from transferlab.fit import hardware
    assert hardware.FROZEN_BF16 in hardware.cpu_candidates("auto", "train", True)
    assert hardware.FROZEN_BF16 not in hardware.cpu_candidates("auto", "train", False)
    assert hardware.FROZEN_BF16 not in hardware.cpu_candidates("fp32", "train", True)
    assert hardware.FROZEN_BF16 not in hardware.cpu_candidates("auto", "eval", True)


# ------------------------------------------------------------------ frozen-trace extraction

class _ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.body(x)


class _Noisy(_ConvNet):  # a trace of this cannot reproduce eager: extraction must stay eager
    def forward(self, x):
        return self.body(x) + torch.rand(len(x), 8)


class _Untraceable(_ConvNet):  # tracing fails outright
    def forward(self, x):
        if torch.jit.is_tracing():
            raise RuntimeError("this model cannot be traced")
        return self.body(x)


def _extract(net, x, trace):
    pipe = Pipeline((0.5,) * 3, (0.5,) * 3, 16, "none", torch.device("cpu"), True)
    ex = Extractor(net, pipe, batch=8, amp=nullcontext, allow_trace=trace)
    return ex(x), ex.mode


def test_frozen_trace_gives_eager_features_and_says_so():
    torch.manual_seed(0)
    net = _ConvNet()
    net.body[1].running_mean.uniform_(-1, 1)  # BN folding must use the real statistics
    x = torch.randint(0, 256, (20, 16, 16, 3), dtype=torch.uint8)  # 2 full batches + a tail
    eager, mode_e = _extract(net, x, trace=False)
    traced, mode_t = _extract(net, x, trace=True)
    assert (mode_e, mode_t) == ("eager", "TorchScript, frozen")
    torch.testing.assert_close(traced, eager, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("net,why", [(_Noisy(), ""), (_Untraceable(), "this model cannot be traced")],
                         ids=["mismatch", "untraceable"])
def test_trace_that_fails_or_strays_falls_back_to_eager_and_says_why(net, why):
    x = torch.randint(0, 256, (16, 16, 16, 3), dtype=torch.uint8)
    feats, mode = _extract(net, x, trace=True)
    assert mode.startswith("eager (trace failed: ") and feats.shape == (16, 8)
    assert why in mode and len(mode) > len("eager (trace failed: )")


# ------------------------------------------------------------------ weight-decay sweep

def _probe_spec(head):
    study = parse_study({"study": {"name": "t", "data": "synthetic"},
                         "defaults": {"epochs": 4, "batch_size": 32},
                         "experiment": [{"name": "p", "regime": "linear", "model": "resnet18",
                                         "weights": "none", "head": head}]})
    return study.experiments[0]


def test_side_by_side_linear_heads_equal_one_at_a_time():
    spec = _probe_spec({"kind": "linear"})
    g = torch.Generator().manual_seed(1)
    f, y = torch.randn(300, 24, generator=g), torch.randint(0, 10, (300,), generator=g)
    vf, vy = [torch.randn(50, 24, generator=g)], torch.randint(0, 10, (50,), generator=g)
    wds = [0.0, 1e-3, 0.1]
    alone = [fit_head(spec, 24, 10, f, y, vf, vy, wd) for wd in wds]
    together = fit_heads(spec, 24, 10, f, y, vf, vy, wds)
    for (h1, hist1), (h2, hist2) in zip(alone, together):
        torch.testing.assert_close(h2.weight, h1.weight, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(h2.bias, h1.bias, rtol=1e-4, atol=1e-6)
        assert [r["val_acc"] for r in hist2] == [r["val_acc"] for r in hist1]
        assert [round(r["train_loss"], 4) for r in hist2] == [round(r["train_loss"], 4) for r in hist1]
        assert hist2[-1]["phase"] == hist1[-1]["phase"]
    # different weight decays really gave different heads
    assert not torch.allclose(together[0][0].weight, together[2][0].weight)


def test_mlp_heads_are_fitted_one_at_a_time():
    spec = _probe_spec({"kind": "mlp", "hidden": [16]})
    f, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    fits = fit_heads(spec, 8, 3, f, y, [f[:10]], y[:10], [0.0, 0.1])
    assert len(fits) == 2 and all(isinstance(h, nn.Sequential) for h, _ in fits)


# ------------------------------------------------------------------ what the user sees

def _fast_paths_win(monkeypatch):
    """Whether a fast path pays is measured on the machine; pin the measurement's outcome."""
    from transferlab.fit import hardware
    monkeypatch.setattr(hardware, "measure", lambda module, kind, cands, *a, **k: {
        c.name: (200.0 if c.fast_path else 100.0) for c in cands})


def test_run_log_names_the_fast_paths(cli, workdir, monkeypatch):
    _fast_paths_win(monkeypatch)
    cfg = write_config(workdir / "fast.toml", """
        [study]
        name = "fast"
        data = "synthetic"

        [defaults]
        model = "efficientnet_lite0"
        weights = "none"
        epochs = 1
        batch_size = 16
        resolution = 64
        precision = "fp32"

        [[experiment]]
        name = "probe"
        regime = "linear"
        probe_wd = [0.0, 0.01]

        [[experiment]]
        name = "full"
        regime = "full"
        """)
    code, out, err = cli("run", cfg, "--subset", "40")  # enough for full extraction batches
    assert code == 0, out + err
    assert "TorchScript, frozen" in out
    assert "cpu kernels    : direct weight gradient for the 16 depthwise convolutions" in out
    study = load_study(cfg, subset=40, fingerprint=fingerprint)
    store = Store(workdir / "runs" / "transferlab.db")
    probe = store.result(next(s.id for s in study.experiments if s.name == "probe"))
    assert probe["extra"]["feature_extraction"] == "TorchScript, frozen"
