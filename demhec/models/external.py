"""Backbones that torchvision and timm build: the registered ImageNet-family ones (ResNet-18/50
and AlexNet from torchvision, the ViTs from timm) and any other classifier of either library by
name, ``"timm:<name>"`` or ``"torchvision:<name>"``.

Section 4.1 of the paper fine-tunes ResNet-18/50 and ViT-L on Tiny-ImageNet; AlexNet is the
reference network of the mean corruption error. For a library model named by the user, the
facts a registry record holds (head, stages, normalisation, native size) are found in the built
network and its pretrained configuration instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from torch import nn

from .._common import DemHECError, check_choice
from .registry import (
    MIN_INPUT_SIZE,
    NORMALISATION,
    Classifier,
    ModelInfo,
    Normalisation,
    register_family,
    register_model_info,
)

__all__ = ["EXTERNAL_PREFIXES", "TIMM_VITS", "VIT_TEST_CONFIG"]

_IMAGENET = {"imagenet": NORMALISATION["imagenet"]}

# --------------------------------------------------------------------------------------
# ImageNet-family models (torchvision)
# --------------------------------------------------------------------------------------


def _torchvision_net(arch: str, pretrained: bool, progress: bool) -> nn.Module:
    import torchvision.models as tvm

    weights = tvm.get_model_weights(arch).DEFAULT if pretrained else None
    try:
        return tvm.get_model(arch, weights=weights, progress=progress)
    except (OSError, RuntimeError) as exc:  # no network (URLError) or a hash mismatch
        raise DemHECError(
            f"cannot download ImageNet weights for {arch}: {exc}".splitlines()[0]
        ) from exc


def _replace_linear(old: nn.Linear, num_classes: int) -> nn.Linear:
    """A fresh head for ``num_classes``; the 1000-way ImageNet head is kept if it fits."""
    if old.out_features == num_classes:
        return old
    return nn.Linear(old.in_features, num_classes)


def _torchvision_model(name: str, new_head: Callable[[nn.Module, int], None], doc: str,
                       **facts: Any) -> ModelInfo:
    """Register torchvision's ``name`` at ImageNet's size and normalisation; ``new_head(net,
    num_classes)`` puts the ``num_classes``-way head in place."""

    def build(num_classes: int, pretrained: bool, progress: bool) -> Classifier:
        net = _torchvision_net(name, pretrained, progress)
        new_head(net, num_classes)
        return Classifier.from_info(info, net, num_classes)

    build.__doc__ = doc
    info = ModelInfo(name, build, input_size=224, normalisation=_IMAGENET, **facts)
    return register_model_info(info)


def _resnet_head(net: nn.Module, num_classes: int) -> None:
    net.fc = _replace_linear(net.fc, num_classes)


def _alexnet_head(net: nn.Module, num_classes: int) -> None:
    net.classifier[6] = _replace_linear(net.classifier[6], num_classes)


for _arch in ("resnet18", "resnet50"):
    _torchvision_model(
        _arch, _resnet_head,
        f"torchvision {_arch}; pretrained=True loads its DEFAULT ImageNet weights.",
        head="net.fc", min_input_size=MIN_INPUT_SIZE,
        stages=("net.maxpool", *(f"net.layer{i}" for i in range(1, 5)), "net.avgpool", "net.fc"))

_torchvision_model(
    "alexnet", _alexnet_head,
    "torchvision AlexNet; the head is the last Linear of ``classifier`` (index 6).",
    head="net.classifier.6",
    # The three max-pools close the conv stages; classifier.5 is the ReLU giving the head its
    # input, the penultimate feature.
    stages=tuple(f"net.{s}" for s in ("features.2", "features.5", "features.12", "avgpool",
                                      "classifier.5", "classifier.6")),
    # Its three stride-2 max-pools after a stride-4 convolution leave nothing below 63 px.
    min_input_size=63)


# --------------------------------------------------------------------------------------
# Vision Transformers (timm)
# --------------------------------------------------------------------------------------

# timm architectures registered as backbones; vit_large_patch16_384 is the paper's ViT-L.
TIMM_VITS = (
    "vit_large_patch16_384",
    "vit_base_patch16_224",
    "vit_small_patch16_224",
    "vit_tiny_patch16_224",
)

# A ViT small enough for CPU tests: 32 px images, 4x4 patches of 8 px, four blocks.
VIT_TEST_CONFIG: dict[str, int] = {
    "img_size": 32,
    "patch_size": 8,
    "embed_dim": 64,
    "depth": 4,
    "num_heads": 4,
}


def _vit_classifier(info: ModelInfo, net: nn.Module, num_classes: int,
                    norm: Normalisation) -> Classifier:
    # Class-token ViTs pool after `norm` (fc_norm is Identity); average-pool ViTs use
    # fc_norm instead, leaving `norm` as Identity. Take the one that does the work.
    final_norm = "norm" if isinstance(net.fc_norm, nn.Identity) else "fc_norm"
    blocks = [f"net.blocks.{i}" for i in range(len(net.blocks))]
    size = int(net.patch_embed.img_size[0])
    return Classifier.from_info(info, net, num_classes, norm=norm, input_size=size, min_input_size=size,
                                stages=("net.patch_embed", *blocks, f"net.{final_norm}", "net.head"))


def _timm_vit(name: str) -> ModelInfo:
    """Register timm's ``name``; its depth, size and normalisation are the built network's."""

    def build(num_classes: int, pretrained: bool, progress: bool, **kw: Any) -> Classifier:
        import timm

        try:
            net = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kw)
        except OSError as exc:  # offline / missing on the Hugging Face hub
            msg = f"cannot load timm pretrained weights for {name} (needs network access): {exc}"
            raise DemHECError(msg.splitlines()[0]) from exc
        cfg = net.pretrained_cfg
        norm = Normalisation(tuple(cfg["mean"]), tuple(cfg["std"]))
        return _vit_classifier(info, net, num_classes, norm)

    build.__doc__ = f"timm {name}; pretrained=True loads timm's default pretrained tag."
    info = register_model_info(ModelInfo(name, build, head="net.head"))
    return info


for _arch in TIMM_VITS:
    _timm_vit(_arch)


def _vit_test(num_classes: int, pretrained: bool, progress: bool) -> Classifier:
    """A tiny timm VisionTransformer (VIT_TEST_CONFIG) for CPU tests; no published weights."""
    from timm.models.vision_transformer import VisionTransformer

    if pretrained:
        raise DemHECError("vit_test has no pretrained weights")
    net = VisionTransformer(num_classes=num_classes, **_VIT_TEST.config)
    return _vit_classifier(_VIT_TEST, net, num_classes, NORMALISATION["imagenet"])


_VIT_TEST = register_model_info(ModelInfo("vit_test", _vit_test, head="net.head", normalisation=_IMAGENET,
                                          config=VIT_TEST_CONFIG))


# --------------------------------------------------------------------------------------
# Any timm or torchvision classifier by name: "timm:<name>", "torchvision:<name>"
# --------------------------------------------------------------------------------------

# get_model routes names with these prefixes here instead of to the registry.
EXTERNAL_PREFIXES = ("timm:", "torchvision:")

# Leaves that pass their input through (or only drop some of it at training time): the
# penultimate stage is the last module before the head that is none of these.
_PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)


def _module_name(net: nn.Module, module: nn.Module) -> str | None:
    return next((n for n, m in net.named_modules() if m is module), None)


def _penultimate(net: nn.Module, head: str) -> str:
    """The last leaf module registered before ``head`` that does real work: its output is
    (up to pass-through layers) the head's input, the penultimate feature of section 4.1.
    Registration order is execution order for the timm and torchvision classifiers, as
    :func:`demhec.training.freeze_parameters` already assumes."""
    last = None
    for name, m in net.named_modules():
        if name == head:
            break
        if name and not any(True for _ in m.children()) and not isinstance(m, _PASS_THROUGH):
            last = name
    if last is None:
        raise DemHECError(f"no module runs before the head {head!r}; pass stages=(...)")
    return last


class _Found(NamedTuple):
    """What a timm / torchvision builder finds in a network for :class:`Classifier`."""

    net: nn.Module
    head: str
    blocks: list[str]  # stem and stages, shallow to deep (empty when ``stages`` is given)
    norm: Normalisation
    input_size: int
    min_input_size: int


def _external(
    arch: str,
    num_classes: int,
    pretrained: bool,
    progress: bool,
    *,
    head: str | None = None,
    stages: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **kw: Any,
) -> Classifier:
    """Build ``"timm:<name>"`` / ``"torchvision:<name>"`` and wrap it: stages = (stem and
    stages ..., penultimate, head) as found, unless ``stages`` is given; ``head``, ``mean`` and
    ``std`` override what was found. ``kw`` goes to timm's / torchvision's constructor."""
    find = _timm_found if arch.startswith("timm:") else _torchvision_found
    found = find(arch, num_classes, pretrained, progress, head, stages is None, kw)
    if stages is None:
        stages = (*found.blocks, _penultimate(found.net, found.head), found.head)
    else:
        stages = tuple(s.removeprefix("net.") for s in stages)
        if len(stages) < 3:
            raise DemHECError(f"{arch}: stages needs at least a stem, one stage and the head, got {stages}")
    norm = Normalisation(tuple(mean) if mean is not None else found.norm.mean,
                         tuple(std) if std is not None else found.norm.std)
    return Classifier(
        found.net,
        arch=arch,
        num_classes=num_classes,
        head_name=f"net.{found.head}",
        stages=tuple(f"net.{s}" for s in stages),
        input_size=found.input_size,
        min_input_size=found.min_input_size,
        norm=norm,
    )


def _head_error(arch: str, what: str) -> DemHECError:
    return DemHECError(
        f"{arch}: {what}; pass head='<name of its final nn.Linear>' (a name from "
        "named_modules() of the bare network)"
    )


def _timm_found(arch: str, num_classes: int, pretrained: bool, progress: bool, head: str | None,
                find_stages: bool, kw: dict[str, Any]) -> _Found:
    """Any timm classifier. Normalisation and native size from its ``pretrained_cfg``; the
    head from ``get_classifier()``; the stages from ``feature_info`` (the modules whose
    outputs timm's ``features_only`` mode returns), preceded by the first top-level module
    (the stem) when timm's first feature is already a downsampling stage."""
    import timm

    name = arch.removeprefix("timm:")
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:8]}*")[:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise DemHECError(f"unknown timm model {name!r} (see timm.list_models()){hint}")
    try:
        net = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kw)
    except OSError as exc:  # offline / missing on the Hugging Face hub
        msg = f"cannot load timm pretrained weights for {name} (needs network access): {exc}"
        raise DemHECError(msg.splitlines()[0]) from exc
    if head is None:
        module = net.get_classifier() if hasattr(net, "get_classifier") else None
        head = _module_name(net, module) if isinstance(module, nn.Module) else None
        if head is None or not isinstance(module, nn.Linear):
            raise _head_error(arch, f"get_classifier() gives {type(module).__name__}, not a Linear head")
    blocks: list[str] = []
    if find_stages:
        info = getattr(net, "feature_info", None)
        blocks = [f["module"] for f in info] if info else []
        if not blocks:
            raise DemHECError(f"{arch}: timm gives no feature_info; pass stages=(stem, stage, ..., head)")
        # A stem at stride <= 2 is the first feature of timm's CNNs (act1, bn1); ConvNeXt and
        # ViTs start at their first stage, so their first top-level module is the stem.
        if info[0].get("reduction", 0) > 2 or len(blocks) == 1:
            blocks = [next(n for n, _ in net.named_children()), *blocks]
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    norm = Normalisation(tuple(cfg.get("mean", NORMALISATION["imagenet"].mean)),
                         tuple(cfg.get("std", NORMALISATION["imagenet"].std)))
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    patch = getattr(net, "patch_embed", None)
    if patch is not None and getattr(patch, "img_size", None) is not None:
        size = int(patch.img_size[0])
    # Patch embeddings with a fixed grid take only their own size; CNNs pool adaptively.
    fixed = patch is not None and getattr(patch, "strict_img_size", False)
    return _Found(net, head, blocks, norm, size, size if fixed else MIN_INPUT_SIZE)


def _torchvision_blocks(net: nn.Module) -> list[str] | None:
    """Stem and stages of torchvision's classification families (their ``forward`` order)."""
    children = dict(net.named_children())
    if all(f"layer{i}" in children for i in range(1, 5)):  # ResNet, ResNeXt, Wide ResNet
        return ["maxpool", *(f"layer{i}" for i in range(1, 5))]
    if "trunk_output" in children:  # RegNet
        return ["stem", *(f"trunk_output.{n}" for n, _ in net.trunk_output.named_children())]
    if "stage2" in children:  # ShuffleNetV2
        return ["maxpool", "stage2", "stage3", "stage4"]
    if "encoder" in children and "conv_proj" in children:  # ViT
        layers = [f"encoder.layers.{n}" for n, _ in net.encoder.layers.named_children()]
        return ["conv_proj", *layers]
    features = children.get("features")
    if isinstance(features, nn.Sequential):
        named = list(features.named_children())
        pools = [n for n, m in named if isinstance(m, nn.MaxPool2d)]
        dense = [n for n, _ in named if n.startswith("denseblock")]
        if dense:  # DenseNet: the stem ends at pool0
            return ["features.pool0", *(f"features.{n}" for n in dense)]
        if len(pools) >= 2:  # VGG, AlexNet: the max-pools close the conv stages
            return [f"features.{n}" for n in pools]
        # MobileNet, EfficientNet, ConvNeXt, Swin: features[0] is the stem
        return [f"features.{n}" for n, _ in named]
    return None


def _torchvision_found(arch: str, num_classes: int, pretrained: bool, progress: bool, head: str | None,
                       find_stages: bool, kw: dict[str, Any]) -> _Found:
    """Any torchvision classifier. Normalisation and native size from its DEFAULT weights'
    ``transforms()`` (known without downloading them); the head is its last ``nn.Linear``,
    replaced by a ``num_classes``-way one; the stages from torchvision's known layouts."""
    import torchvision.models as tvm

    name = arch.removeprefix("torchvision:")
    check_choice("torchvision classifier", name, tvm.list_models(module=tvm))
    try:
        weights_enum = tvm.get_model_weights(name)
    except (KeyError, ValueError):
        weights_enum = None
    if pretrained and weights_enum is None:
        raise DemHECError(f"torchvision has no pretrained weights for {name}")
    weights = weights_enum.DEFAULT if weights_enum is not None else None
    try:
        net = tvm.get_model(name, weights=weights if pretrained else None, progress=progress, **kw)
    except (OSError, RuntimeError) as exc:  # no network (URLError) or a hash mismatch
        raise DemHECError(f"cannot download ImageNet weights for {name}: {exc}".splitlines()[0]) from exc
    if head is None:
        linears = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise _head_error(arch, "it has no nn.Linear layer")
        head = linears[-1]
    module = dict(net.named_modules()).get(head)
    if not isinstance(module, nn.Linear):
        raise _head_error(arch, f"{head!r} is {type(module).__name__}, not an nn.Linear")
    parent, _, child = head.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, child, _replace_linear(module, num_classes))
    blocks = _torchvision_blocks(net) if find_stages else []
    if blocks is None:
        raise DemHECError(f"{arch}: its stages are not a known torchvision layout; pass "
                          "stages=('<stem>', '<stage 1>', ..., '<head>') from named_modules()")
    norm, size = NORMALISATION["imagenet"], 224
    if weights is not None:
        t = weights.transforms()
        norm = Normalisation(tuple(t.mean), tuple(t.std))
        size = int(t.crop_size[0])
    image_size = getattr(net, "image_size", None)  # torchvision's ViT takes one size only
    return _Found(net, head, blocks, norm, int(image_size or size), int(image_size or MIN_INPUT_SIZE))



for _prefix in EXTERNAL_PREFIXES:
    register_family(_prefix, _external)
