"""CPU fast paths: a direct weight gradient for depthwise convolutions with wide zero padding,
and a frozen TorchScript trace for inference. Whether either pays on a given CPU is measured
(hardware.decide); both give PyTorch's numbers up to float rounding.

The depthwise weight gradient:

Measured on a 2-core AVX2 EPYC with torch 2.14 (bench/cpu_kernels.py): oneDNN computes the
weight gradient of a depthwise convolution 5-35x slower than a direct sum whenever the zero
padding covers most of the output map (2 * padding >= output side). EfficientNet/MobileNet
at 64-112 px hit exactly that in their last stages (5x5 kernels on 2x2 and 4x4 maps), where
it costs more than half of a fine-tuning step. There, the gradient of each of the k*k kernel
taps is one product-and-sum of overlapping slices, which we compute directly; the input
gradient and every other case stay with PyTorch. Results equal PyTorch's up to float rounding.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn


def _taps(k: int, stride: int, pad: int, size_in: int, size_out: int):
    """For each kernel tap: (first, last+1) output index and first input index it touches."""
    for t in range(k):
        outs = [o for o in range(size_out) if 0 <= o * stride + t - pad < size_in]
        if outs:
            yield t, outs[0], outs[-1] + 1, outs[0] * stride + t - pad


def depthwise_weight_grad(x: torch.Tensor, grad_out: torch.Tensor, kernel: tuple[int, int],
                          stride: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    """d loss / d weight of conv2d(x, weight, groups=channels), shape (C, 1, kh, kw)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    H, W = x.shape[-2:]
    Ho, Wo = grad_out.shape[-2:]
    grad = x.new_zeros(x.shape[1], kh, kw)
    rows, cols = list(_taps(kh, sh, ph, H, Ho)), list(_taps(kw, sw, pw, W, Wo))
    for i, oh0, oh1, ih0 in rows:
        for j, ow0, ow1, iw0 in cols:
            xs = x[:, :, ih0:ih0 + (oh1 - oh0 - 1) * sh + 1:sh, iw0:iw0 + (ow1 - ow0 - 1) * sw + 1:sw]
            grad[:, i, j] = (grad_out[:, :, oh0:oh1, ow0:ow1] * xs).sum((0, 2, 3))
    return grad.unsqueeze(1)


class _DepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.has_bias, ctx.stride, ctx.padding = bias is not None, stride, padding
        return torch.nn.functional.conv2d(x, weight, bias, stride, padding, 1, x.shape[1])

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gx = gw = gb = None
        if need_x:  # PyTorch's own input gradient is fast in these shapes
            gx = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, list(ctx.stride), list(ctx.padding), [1, 1], False,
                [0, 0], x.shape[1], [True, False, False])[0]
        if need_w:
            gw = depthwise_weight_grad(x, grad_out, tuple(weight.shape[-2:]), ctx.stride,
                                       ctx.padding).to(weight.dtype)
        if need_b and ctx.has_bias:
            gb = grad_out.sum((0, 2, 3))
        return gx, gw, gb, None, None


def slow_in_onednn(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    """The measured slow case: padding covers at least half of the output map."""
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    Ho = (x.shape[-2] + 2 * ph - kh) // sh + 1
    Wo = (x.shape[-1] + 2 * pw - kw) // sw + 1
    return 2 * ph >= Ho or 2 * pw >= Wo


class DepthwiseConv2d(nn.Conv2d):
    """nn.Conv2d (same parameters and state dict) using the direct weight gradient on CPU."""

    def _conv_forward(self, x, weight, bias):
        if (x.device.type == "cpu" and torch.is_grad_enabled() and weight.requires_grad
                and x.dtype == weight.dtype == torch.float32
                and not torch.is_autocast_enabled("cpu") and slow_in_onednn(x, self)):
            return _DepthwiseConv.apply(x, weight, bias, self.stride, self.padding)
        return super()._conv_forward(x, weight, bias)


def _eligible(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.groups == m.in_channels == m.out_channels
            and m.groups > 1 and m.dilation == (1, 1) and m.padding_mode == "zeros"
            and isinstance(m.padding, tuple))


def use_fast_depthwise(model: nn.Module) -> int:
    """Switch every plain depthwise nn.Conv2d in `model` to DepthwiseConv2d; returns the count.

    Only the class changes: parameters, buffers and state-dict keys stay as they are.
    """
    count = 0
    for m in model.modules():
        if _eligible(m):
            m.__class__ = DepthwiseConv2d
            count += 1
    return count


def frozen_for_inference(backbone: nn.Module, sample: torch.Tensor, expected: torch.Tensor):
    """(trace, None): a TorchScript trace of `backbone`, frozen (BatchNorm folded into the
    convolutions, ops fused), that reproduces eager's `expected` output on `sample`; or
    (None, why) when tracing fails or its output strays from eager's.

    fp32 on CPU: on an AVX2 EPYC it extracts features 1.3-1.8x faster than eager
    (bench/cpu_kernels.py); tracing plus freezing costs ~0.4 s once per experiment.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks
            frozen = torch.jit.freeze(torch.jit.trace(backbone, sample[:2], check_trace=False))
            got = frozen(sample).float()
    except Exception as e:  # noqa: BLE001  (any failure means: stay eager, and say why)
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        return None, f"{type(e).__name__}: {lines[-1][:200] if lines else 'no message'}"
    if got.shape != expected.shape:
        return None, f"traced output shape {tuple(got.shape)} != eager {tuple(expected.shape)}"
    scale = float(expected.abs().max()) or 1.0
    if not torch.allclose(got, expected, rtol=1e-3, atol=1e-4 * scale):
        err = float((got - expected).abs().max())
        return None, f"traced output differs from eager by up to {err:.3g} (scale {scale:.3g})"
    return frozen, None


# ------------------------------------------------------------------ frozen layers in bf16

_CONTAINERS = (nn.Sequential, nn.ModuleList)


def _units(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's direct children, a Sequential or ModuleList opened one level (a timm
    stage): coarse enough that the casts between units cost little."""
    units = []
    for child in backbone.children():
        units.extend(child.children() if isinstance(child, _CONTAINERS) else [child])
    return units


def _frozen(m: nn.Module) -> bool:
    own = list(m.parameters())
    return bool(own) and not any(p.requires_grad for p in own)


def _enter_bf16(m: nn.Module, args):
    """A frozen unit whose input needs no gradient is pure inference inside a training step:
    run it under bf16 autocast. Anything that needs a gradient through it stays fp32, so
    what is trained and the gradients it gets are as in plain fp32."""
    if not torch.is_grad_enabled() or not _frozen(m) or \
            any(torch.is_tensor(a) and a.requires_grad for a in args):
        return None
    ctx = torch.autocast(args[0].device.type, dtype=torch.bfloat16)
    ctx.__enter__()
    m._bf16_ctx = ctx
    return None


def _leave_bf16(m: nn.Module, args, out):
    ctx = m.__dict__.pop("_bf16_ctx", None)
    if ctx is None:
        return None
    ctx.__exit__(None, None, None)
    return out.float() if torch.is_tensor(out) and out.dtype == torch.bfloat16 else out


def frozen_layers_in_bf16(net: nn.Module) -> int:
    """Run the frozen units of `net.backbone` (a regime's frozen stem and first stages) under
    bf16 autocast in training steps; returns how many units are frozen now. Where bf16 is
    native (AMX, AVX512-BF16) bf16 inference is 1.4-2.4x fp32 while bf16 training is ~0.5x
    (bench/RESULTS.md section 3), so the frozen prefix of a `last:K` fine-tune is the part
    of a step that bf16 speeds up. Hooks only: parameters and state-dict keys are unchanged;
    evaluation (grad disabled) keeps the eval numerics."""
    units = _units(net.backbone)
    for m in units:
        if not getattr(m, "_bf16_hooked", False):
            m.register_forward_pre_hook(_enter_bf16)
            m.register_forward_hook(_leave_bf16, always_call=True)  # exits on errors too
            m._bf16_hooked = True
    return sum(_frozen(m) for m in units)
