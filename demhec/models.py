"""Model registry: every backbone of the paper behind one uniform :class:`Classifier` wrapper.

Section 4.1 of the paper fine-tunes CIFAR ResNet-20/56 and RepVGG-A0/A2 (pretrained weights
of chenyaofo/pytorch-cifar-models) on CIFAR-10/100, and ResNet-18/50 and ViT-L on
Tiny-ImageNet. Dem-HEC needs three things from each of them, which the wrapper provides
uniformly:

* images in [0, 1]; the per-channel normalisation the weights were trained with lives inside
  the wrapper (non-persistent buffers, so checkpoints stay in the zoo's layout);
* ``head_name``: the final linear layer whose *input* is the penultimate feature vector the
  contrastive loss (eq. 8) pulls apart; entropy is computed "at the final pooling or dense
  layer" (section 4.1);
* ``stages``: the natural stages, shallow to deep, for the layer-wise entropy analysis
  (section 3.1, figure 3).

The CIFAR networks reproduce the zoo's module names and shapes exactly, so its published
state dicts load with ``strict=True`` into ``Classifier.net``.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import DemHECError, check_choice, check_range, load_tensors

__all__ = [
    "CIFAR_WEIGHT_URLS",
    "NORMALISATION",
    "BasicBlock",
    "ChannelAttention",
    "CifarRepVGG",
    "CifarResNet",
    "Classifier",
    "MultiScalePushPullConv2d",
    "Normalisation",
    "PushPullCifarResNet",
    "PushPullConv2d",
    "RepVGGBlock",
    "check_backbone",
    "get_model",
    "list_models",
    "pull_kernel_size",
    "register_model",
    "reparameterize",
    "upsample_kernel",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Normalisation:
    """Per-channel mean and standard deviation the pretrained weights expect."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


NORMALISATION: dict[str, Normalisation] = {
    # chenyaofo/pytorch-cifar-models training recipe (its default CIFAR-10/100 transforms).
    "cifar10": Normalisation((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": Normalisation((0.5070, 0.4865, 0.4409), (0.2673, 0.2564, 0.2761)),
    # torchvision's ImageNet weights (their `transforms()`), also timm's IMAGENET_DEFAULT_*.
    "imagenet": Normalisation((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

_ZOO = "https://github.com/chenyaofo/pytorch-cifar-models/releases/download"

# chenyaofo/pytorch-cifar-models release assets (README model-zoo table, resnet.py and
# repvgg.py). The 8 hex digits in each file name are the start of its SHA-256, which
# torch.hub verifies with check_hash=True.
CIFAR_WEIGHT_URLS: dict[tuple[str, str], str] = {
    ("resnet20", "cifar10"): f"{_ZOO}/resnet/cifar10_resnet20-4118986f.pt",
    ("resnet32", "cifar10"): f"{_ZOO}/resnet/cifar10_resnet32-ef93fc4d.pt",
    ("resnet44", "cifar10"): f"{_ZOO}/resnet/cifar10_resnet44-2a3cabcb.pt",
    ("resnet56", "cifar10"): f"{_ZOO}/resnet/cifar10_resnet56-187c023a.pt",
    ("resnet20", "cifar100"): f"{_ZOO}/resnet/cifar100_resnet20-23dac2f1.pt",
    ("resnet32", "cifar100"): f"{_ZOO}/resnet/cifar100_resnet32-84213ce6.pt",
    ("resnet44", "cifar100"): f"{_ZOO}/resnet/cifar100_resnet44-ffe32858.pt",
    ("resnet56", "cifar100"): f"{_ZOO}/resnet/cifar100_resnet56-f2eff4c8.pt",
    ("repvgg_a0", "cifar10"): f"{_ZOO}/repvgg/cifar10_repvgg_a0-ef08a50e.pt",
    ("repvgg_a1", "cifar10"): f"{_ZOO}/repvgg/cifar10_repvgg_a1-38d2431b.pt",
    ("repvgg_a2", "cifar10"): f"{_ZOO}/repvgg/cifar10_repvgg_a2-09488915.pt",
    ("repvgg_a0", "cifar100"): f"{_ZOO}/repvgg/cifar100_repvgg_a0-2df1edd0.pt",
    ("repvgg_a1", "cifar100"): f"{_ZOO}/repvgg/cifar100_repvgg_a1-c06b21a7.pt",
    ("repvgg_a2", "cifar100"): f"{_ZOO}/repvgg/cifar100_repvgg_a2-8e71b1f8.pt",
}

# The class count each published CIFAR checkpoint was trained for.
_CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}

# BasicBlocks per layer for the CIFAR ResNets of He et al. (2016): depth = 6n + 2.
RESNET_CIFAR_BLOCKS: dict[str, int] = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9}

# RepVGG-A (Ding et al., 2021, table 2): blocks in stages 1-4 and width multipliers a, b
# applied to the base widths 64, 128, 256, 512 (the last stage uses b).
REPVGG_A_BLOCKS = (2, 4, 14, 1)
REPVGG_BASE_WIDTHS = (64, 128, 256, 512)
REPVGG_WIDTHS: dict[str, tuple[float, float, float, float]] = {
    "repvgg_a0": (0.75, 0.75, 0.75, 2.5),
    "repvgg_a1": (1.0, 1.0, 1.0, 2.5),
    "repvgg_a2": (1.5, 1.5, 1.5, 2.75),
}

# timm architectures registered as backbones; vit_large_patch16_384 is the paper's ViT-L.
TIMM_VITS = (
    "vit_large_patch16_384",
    "vit_base_patch16_224",
    "vit_small_patch16_224",
    "vit_tiny_patch16_224",
)

# A ViT small enough for CPU tests: 32 px images, 4x4 patches of 8 px, two blocks.
VIT_TEST_CONFIG: dict[str, int] = {
    "img_size": 32,
    "patch_size": 8,
    "embed_dim": 64,
    "depth": 4,
    "num_heads": 4,
}

# The smallest square side each conv family is meant for: CIFAR resolution for the ResNets
# and RepVGGs (adaptive pooling makes them accept any size), and 63 px for AlexNet, whose
# three stride-2 max-pools after a stride-4 convolution leave nothing below that.
_MIN_SIZE_CIFAR = 32
_MIN_SIZE_ALEXNET = 63


class Classifier(nn.Module):
    """Uniform wrapper: normalises [0, 1] images, then runs the architecture ``net``.

    Attributes: ``arch`` (registry name), ``num_classes``, ``head_name`` (module name, as in
    ``named_modules()``, of the final linear layer; its input is the (N, D) penultimate
    feature), ``stages`` (module names shallow to deep, the head last), ``input_size``
    (native square side), ``min_input_size`` (smallest square side the wrapper is meant
    for), ``mean`` / ``std`` (non-persistent (3,) buffers).
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        arch: str,
        num_classes: int,
        head_name: str,
        stages: Sequence[str],
        input_size: int,
        min_input_size: int,
        norm: Normalisation,
    ) -> None:
        super().__init__()
        self.net = net
        self.arch = arch
        self.num_classes = num_classes
        self.head_name = head_name
        self.stages = tuple(stages)
        self.input_size = input_size
        self.min_input_size = min_input_size
        # Non-persistent: a checkpoint is the architecture's own state dict, nothing more.
        self.register_buffer("mean", torch.tensor(norm.mean), persistent=False)
        self.register_buffer("std", torch.tensor(norm.std), persistent=False)
        self.mean: Tensor
        self.std: Tensor
        names = dict(self.named_modules())
        missing = [s for s in (head_name, *self.stages) if s not in names]
        if missing:
            raise DemHECError(f"{arch}: no module named {', '.join(missing)}")
        if not isinstance(names[head_name], nn.Linear):
            raise DemHECError(f"{arch}: head {head_name!r} is not a Linear layer")

    @property
    def head(self) -> nn.Linear:
        """The final classification layer (see ``head_name``)."""
        return self.get_submodule(self.head_name)

    @property
    def feature_dim(self) -> int:
        """Width D of the penultimate feature vector, the head's input."""
        return self.head.in_features

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, num_classes) for images in [0, 1] of shape (N, 3, H, W)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise DemHECError(f"{self.arch} expects images (N, 3, H, W), got {tuple(x.shape)}")
        x = (x - self.mean.view(1, 3, 1, 1)) / self.std.view(1, 3, 1, 1)
        return self.net(x)

    def load_state_dict_any(self, sd: Mapping[str, Any], strict: bool = True) -> Any:
        """Load a zoo-layout, wrapper-layout (``net.``) or checkpoint dict into ``net``.

        A checkpoint dict is one with a ``"model"`` or ``"state_dict"`` entry; keys saved
        from ``nn.DataParallel`` (``module.``) are accepted too. A dict of another
        architecture or class count raises :class:`DemHECError` with a one-line message.
        """
        sd = _unwrap_checkpoint(sd)
        for prefix in ("module.", "net."):
            if sd and all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
        problems = _mismatches(self.net.state_dict(), sd, strict)
        try:
            if not problems:
                return self.net.load_state_dict(sd, strict=strict)
        except RuntimeError as exc:  # e.g. a non-tensor value under a parameter's name
            problems = [str(exc).splitlines()[-1].strip()]
        raise DemHECError(
            f"checkpoint does not fit {self.arch} with {self.num_classes} classes: "
            + "; ".join(problems)
        )


def _mismatches(own: Mapping[str, Tensor], sd: Mapping[str, Any], strict: bool) -> list[str]:
    """One short phrase per kind of mismatch, shape mismatches first (they name the culprit)."""

    def some(keys: list[str]) -> str:
        more = f" and {len(keys) - 1} more" if len(keys) > 1 else ""
        return f"{keys[0]}{more}"

    problems = []
    sized = [
        k for k in own if k in sd and isinstance(sd[k], Tensor) and sd[k].shape != own[k].shape
    ]
    if sized:
        k = sized[0]
        problems.append(
            f"size mismatch for {some(sized)} "
            f"(checkpoint {tuple(sd[k].shape)}, model {tuple(own[k].shape)})"
        )
    if strict:
        missing = [k for k in own if k not in sd]
        unexpected = [k for k in sd if k not in own]
        if missing:
            problems.append(f"{len(missing)} missing keys ({some(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys ({some(unexpected)})")
    return problems


def _unwrap_checkpoint(sd: Any) -> dict[str, Any]:
    while isinstance(sd, Mapping):
        inner = next((sd[k] for k in ("model", "state_dict") if k in sd), None)
        if not isinstance(inner, Mapping):
            break
        sd = inner
    if not isinstance(sd, Mapping) or not all(isinstance(k, str) for k in sd):
        raise DemHECError(f"not a state dict: {type(sd).__name__}")
    return dict(sd)


_Builder = Callable[..., Classifier]
_REGISTRY: dict[str, _Builder] = {}


def register_model(name: str) -> Callable[[_Builder], _Builder]:
    """Decorator adding a builder ``(num_classes, pretrained, progress, **kw) -> Classifier``."""

    def decorate(builder: _Builder) -> _Builder:
        if name in _REGISTRY:
            raise DemHECError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return decorate


def list_models() -> list[str]:
    """Registered backbone names, sorted."""
    return sorted(_REGISTRY)


def get_model(
    name: str,
    num_classes: int = 10,
    pretrained: bool | str | os.PathLike = False,
    *,
    progress: bool = False,
    **kw: Any,
) -> Classifier:
    """Build backbone ``name`` with a ``num_classes``-way head, wrapped in :class:`Classifier`.

    ``name`` is a registry name, ``"timm:<any timm model>"`` or ``"torchvision:<any
    torchvision classifier>"``; the latter two find their normalisation, head and stages
    themselves, and take ``head=``, ``stages=``, ``mean=``, ``std=`` to override them.
    ``pretrained``: False (random init), True (published weights: CIFAR zoo, torchvision
    ImageNet or timm) or the path of a local state dict in zoo or wrapper layout. ``kw`` goes
    to the builder: ``dataset`` ("cifar10"/"cifar100") for CIFAR models, timm arguments
    (e.g. ``img_size``) for ViTs and ``timm:`` models, torchvision ones for ``torchvision:``.
    """
    builder = _builder(name)
    check_range("num_classes", num_classes, 1, integer=True)
    if isinstance(pretrained, (str, os.PathLike)):
        model = builder(num_classes=num_classes, pretrained=False, progress=progress, **kw)
        model.load_state_dict_any(_load_local(Path(pretrained)))
        logger.info("loaded %s weights from %s", name, pretrained)
        return model
    if not isinstance(pretrained, bool):
        raise DemHECError(f"pretrained must be True, False or a path, got {pretrained!r}")
    return builder(num_classes=num_classes, pretrained=pretrained, progress=progress, **kw)


def check_backbone(name: str) -> str:
    """``name`` if :func:`get_model` accepts it (a registry name or a ``timm:`` /
    ``torchvision:`` name, not built here); otherwise a one-line error listing the valid ones."""
    if isinstance(name, str) and name.startswith(EXTERNAL_PREFIXES) and name.partition(":")[2]:
        return name
    return check_choice("backbone", name, [*list_models(), "timm:<name>", "torchvision:<name>"])


def _builder(name: str) -> _Builder:
    check_backbone(name)
    if name.startswith(EXTERNAL_PREFIXES):
        return functools.partial(_external, name)
    return _REGISTRY[name]


def _load_local(path: Path) -> dict[str, Any]:
    state = load_tensors(path, "pretrained checkpoint")
    if not isinstance(state, Mapping):
        raise DemHECError(f"cannot read checkpoint {path}: it holds a {type(state).__name__}, not a "
                          "state dict")
    return state


def _download(url: str, progress: bool) -> dict[str, Any]:
    try:
        return torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=progress, check_hash=True
        )
    except (OSError, RuntimeError) as exc:  # no network (URLError) or a hash mismatch
        raise DemHECError(f"cannot download {url}: {exc}".splitlines()[0]) from exc


# --------------------------------------------------------------------------------------
# CIFAR ResNets (chenyaofo/pytorch-cifar-models resnet.py, itself from torchvision)
# --------------------------------------------------------------------------------------


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (projected when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(cout),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: 3x3 stem, three layers of 16/32/64 channels, no max-pool."""

    def __init__(self, blocks_per_layer: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        widths, cin = (16, 32, 64), 16
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            layer = [BasicBlock(cin, width, stride)]
            layer += [BasicBlock(width, width) for _ in range(blocks_per_layer - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
            cin = width
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# --------------------------------------------------------------------------------------
# CIFAR RepVGG (chenyaofo/pytorch-cifar-models repvgg.py, from DingXiaoH/RepVGG)
# --------------------------------------------------------------------------------------


def _conv_bn(cin: int, cout: int, kernel_size: int, stride: int, padding: int) -> nn.Sequential:
    branch = nn.Sequential()
    branch.add_module(
        "conv", nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
    )
    branch.add_module("bn", nn.BatchNorm2d(cout))
    return branch


def _fuse_bn(kernel: Tensor, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    scale = bn.weight / (bn.running_var + bn.eps).sqrt()
    return kernel * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


class RepVGGBlock(nn.Module):
    """Training form: ReLU(3x3 conv-BN + 1x1 conv-BN + BN identity); deploy form: one 3x3 conv.

    :meth:`switch_to_deploy` folds the three branches, using the BN running statistics,
    into ``rbr_reparam`` (structural re-parameterisation, Ding et al., 2021).
    """

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.nonlinearity = nn.ReLU()
        self.rbr_identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
        self.rbr_dense = _conv_bn(cin, cout, 3, stride, 1)
        self.rbr_1x1 = _conv_bn(cin, cout, 1, stride, 0)

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self, "rbr_reparam"):
            return self.nonlinearity(self.rbr_reparam(x))
        out = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            out = out + self.rbr_identity(x)
        return self.nonlinearity(out)

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        """Replace the branches by the equivalent single 3x3 conv (eval-mode semantics)."""
        if hasattr(self, "rbr_reparam"):
            return
        conv = self.rbr_dense.conv
        kernel, bias = _fuse_bn(conv.weight, self.rbr_dense.bn)
        k1, b1 = _fuse_bn(F.pad(self.rbr_1x1.conv.weight, [1, 1, 1, 1]), self.rbr_1x1.bn)
        kernel, bias = kernel + k1, bias + b1
        if self.rbr_identity is not None:
            c = conv.in_channels
            ident = torch.zeros(c, c, 3, 3, dtype=kernel.dtype, device=kernel.device)
            ident[:, :, 1, 1] = torch.eye(c, dtype=kernel.dtype, device=kernel.device)
            ki, bi = _fuse_bn(ident, self.rbr_identity)
            kernel, bias = kernel + ki, bias + bi
        self.rbr_reparam = nn.Conv2d(
            conv.in_channels, conv.out_channels, 3, stride=conv.stride, padding=1, bias=True
        ).to(device=kernel.device, dtype=kernel.dtype)
        self.rbr_reparam.weight.copy_(kernel)
        self.rbr_reparam.bias.copy_(bias)
        del self.rbr_dense, self.rbr_1x1, self.rbr_identity


class CifarRepVGG(nn.Module):
    """RepVGG-A for 32x32 inputs: the zoo keeps stride 1 in stage0 and stage1."""

    def __init__(self, widths: Sequence[float], num_classes: int) -> None:
        super().__init__()
        cin = min(64, int(64 * widths[0]))
        self.stage0 = RepVGGBlock(3, cin, stride=1)
        for i, (blocks, base, mult) in enumerate(zip(REPVGG_A_BLOCKS, REPVGG_BASE_WIDTHS, widths)):
            width = int(base * mult)
            layer = []
            for j in range(blocks):
                layer.append(RepVGGBlock(cin, width, stride=2 if i > 0 and j == 0 else 1))
                cin = width
            self.add_module(f"stage{i + 1}", nn.Sequential(*layer))
        self.gap = nn.AdaptiveAvgPool2d(output_size=1)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage0(x)
        x = self.stage4(self.stage3(self.stage2(self.stage1(x))))
        return self.linear(torch.flatten(self.gap(x), 1))


def reparameterize(model: nn.Module) -> nn.Module:
    """Convert every RepVGG block of ``model`` to its deploy form in place; returns ``model``.

    The fused network computes what the training form computes in eval mode; BN statistics
    stop adapting afterwards, so fine-tune before converting.
    """
    blocks = [m for m in model.modules() if isinstance(m, RepVGGBlock)]
    if not blocks:
        raise DemHECError(f"{type(model).__name__} has no RepVGG blocks to re-parameterise")
    for block in blocks:
        block.switch_to_deploy()
    return model


def _cifar_dataset(arch: str, num_classes: int, pretrained: bool, dataset: str | None) -> str:
    """Pick the normalisation's dataset; with published weights it must match the classes."""
    default = "cifar100" if num_classes == 100 else "cifar10"
    dataset = check_choice("dataset", dataset or default, sorted(_CIFAR_CLASSES))
    if pretrained and _CIFAR_CLASSES[dataset] != num_classes:
        raise DemHECError(
            f"published {arch} weights exist for 10 (cifar10) or 100 (cifar100) classes; "
            f"got num_classes={num_classes} with dataset={dataset!r}"
        )
    return dataset


def _cifar_classifier(
    arch: str,
    net: nn.Module,
    *,
    num_classes: int,
    pretrained: bool,
    progress: bool,
    dataset: str | None,
    head_name: str,
    stages: Sequence[str],
) -> Classifier:
    dataset = _cifar_dataset(arch, num_classes, pretrained, dataset)
    model = Classifier(
        net,
        arch=arch,
        num_classes=num_classes,
        head_name=head_name,
        stages=stages,
        input_size=32,
        min_input_size=_MIN_SIZE_CIFAR,
        norm=NORMALISATION[dataset],
    )
    if pretrained:
        model.load_state_dict_any(_download(CIFAR_WEIGHT_URLS[arch, dataset], progress))
        logger.info("loaded published %s %s weights", dataset, arch)
    return model


def _cifar_builder(arch: str, net: Callable[[int], nn.Module], head_name: str,
                   stages: tuple[str, ...], layout: str) -> _Builder:
    """A registry builder of the CIFAR zoo's ``arch``; ``net(num_classes)`` makes the network."""
    def build(
        num_classes: int, pretrained: bool, progress: bool, dataset: str | None = None
    ) -> Classifier:
        return _cifar_classifier(arch, net(num_classes), num_classes=num_classes,
                                 pretrained=pretrained, progress=progress, dataset=dataset,
                                 head_name=head_name, stages=stages)

    build.__doc__ = f"CIFAR {arch} (chenyaofo/pytorch-cifar-models layout{layout})."
    return build


for _arch in RESNET_CIFAR_BLOCKS:
    register_model(_arch)(_cifar_builder(
        _arch, functools.partial(CifarResNet, RESNET_CIFAR_BLOCKS[_arch]), "net.fc",
        ("net.relu", "net.layer1", "net.layer2", "net.layer3", "net.avgpool", "net.fc"), ""))
for _arch in REPVGG_WIDTHS:
    register_model(_arch)(_cifar_builder(
        _arch, functools.partial(CifarRepVGG, REPVGG_WIDTHS[_arch]), "net.linear",
        (*(f"net.stage{i}" for i in range(5)), "net.gap", "net.linear"), ", training form"))


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


def _torchvision_resnet_builder(arch: str) -> _Builder:
    def build(num_classes: int, pretrained: bool, progress: bool) -> Classifier:
        net = _torchvision_net(arch, pretrained, progress)
        net.fc = _replace_linear(net.fc, num_classes)
        layers = [f"net.layer{i}" for i in range(1, 5)]
        return Classifier(
            net,
            arch=arch,
            num_classes=num_classes,
            head_name="net.fc",
            stages=("net.maxpool", *layers, "net.avgpool", "net.fc"),
            input_size=224,
            min_input_size=_MIN_SIZE_CIFAR,
            norm=NORMALISATION["imagenet"],
        )

    build.__doc__ = f"torchvision {arch}; pretrained=True loads its DEFAULT ImageNet weights."
    return build


for _arch in ("resnet18", "resnet50"):
    register_model(_arch)(_torchvision_resnet_builder(_arch))


@register_model("alexnet")
def _alexnet(num_classes: int, pretrained: bool, progress: bool) -> Classifier:
    """torchvision AlexNet; the head is the last Linear of ``classifier`` (index 6)."""
    net = _torchvision_net("alexnet", pretrained, progress)
    net.classifier[6] = _replace_linear(net.classifier[6], num_classes)
    # The three max-pools close the conv stages; classifier.5 is the ReLU giving the head
    # its input, the penultimate feature.
    stages = ("features.2", "features.5", "features.12", "avgpool", "classifier.5", "classifier.6")
    return Classifier(
        net,
        arch="alexnet",
        num_classes=num_classes,
        head_name="net.classifier.6",
        stages=tuple(f"net.{s}" for s in stages),
        input_size=224,
        min_input_size=_MIN_SIZE_ALEXNET,
        norm=NORMALISATION["imagenet"],
    )


# --------------------------------------------------------------------------------------
# Vision Transformers (timm)
# --------------------------------------------------------------------------------------


def _vit_classifier(arch: str, net: nn.Module, num_classes: int, norm: Normalisation) -> Classifier:
    # Class-token ViTs pool after `norm` (fc_norm is Identity); average-pool ViTs use
    # fc_norm instead, leaving `norm` as Identity. Take the one that does the work.
    final_norm = "norm" if isinstance(net.fc_norm, nn.Identity) else "fc_norm"
    blocks = [f"net.blocks.{i}" for i in range(len(net.blocks))]
    size = int(net.patch_embed.img_size[0])
    return Classifier(
        net,
        arch=arch,
        num_classes=num_classes,
        head_name="net.head",
        stages=("net.patch_embed", *blocks, f"net.{final_norm}", "net.head"),
        input_size=size,
        min_input_size=size,
        norm=norm,
    )


def _timm_vit_builder(arch: str) -> _Builder:
    def build(num_classes: int, pretrained: bool, progress: bool, **kw: Any) -> Classifier:
        import timm

        try:
            net = timm.create_model(arch, pretrained=pretrained, num_classes=num_classes, **kw)
        except OSError as exc:  # offline / missing on the Hugging Face hub
            msg = f"cannot load timm pretrained weights for {arch} (needs network access): {exc}"
            raise DemHECError(msg.splitlines()[0]) from exc
        cfg = net.pretrained_cfg
        norm = Normalisation(tuple(cfg["mean"]), tuple(cfg["std"]))
        return _vit_classifier(arch, net, num_classes, norm)

    build.__doc__ = f"timm {arch}; pretrained=True loads timm's default pretrained tag."
    return build


for _arch in TIMM_VITS:
    register_model(_arch)(_timm_vit_builder(_arch))


@register_model("vit_test")
def _vit_test(num_classes: int, pretrained: bool, progress: bool) -> Classifier:
    """A tiny timm VisionTransformer (VIT_TEST_CONFIG) for CPU tests; no published weights."""
    from timm.models.vision_transformer import VisionTransformer

    if pretrained:
        raise DemHECError("vit_test has no pretrained weights")
    net = VisionTransformer(num_classes=num_classes, **VIT_TEST_CONFIG)
    return _vit_classifier("vit_test", net, num_classes, NORMALISATION["imagenet"])


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
    return _Found(net, head, blocks, norm, size, size if fixed else _MIN_SIZE_CIFAR)


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
    return _Found(net, head, blocks, norm, int(image_size or size), int(image_size or _MIN_SIZE_CIFAR))


# --------------------------------------------------------------------------------------
# Push-pull CIFAR ResNets (Strisciuglio et al., 2020; Ranabhat et al., 2025)
# --------------------------------------------------------------------------------------

# Table 4 of the Dem-HEC paper compares it with Ranabhat et al. (2025) on CIFAR-10 ResNet-20.
# Both push-pull variants replace only the first convolution of the CIFAR ResNet, as both
# papers do (Strisciuglio et al., section 3.2), so every other module keeps the zoo's names.
_PUSHPULL_BASE = "resnet20"
_PUSHPULL_STAGES = ("net.relu", "net.layer1", "net.layer2", "net.layer3", "net.avgpool", "net.fc")


def pull_kernel_size(push_size: int, scale: float) -> int:
    """Side of the pull kernel: ``floor(push_size * scale)`` made odd by adding one if even.

    Strisciuglio et al. (2020), section 3.1: s^ = floor(s h) + 1 - (floor(s h) mod 2). Odd
    sides keep the pull kernel centred on the push kernel, so both responses align.
    """
    n = int(push_size * scale)  # floor, both positive
    return n + 1 - n % 2


def upsample_kernel(weight: Tensor, size: int) -> Tensor:
    """Bilinear (align_corners=True) resize of (out, in, k, k) kernels to (out, in, size, size).

    This is the differentiable upsampling of the official push-pull code
    (nicstrisc/Push-Pull-CNN-layer, ``nn.Upsample(mode="bilinear", align_corners=True)``),
    so gradients reach the push kernel through its pull copy too (section 3.1).
    """
    return F.interpolate(weight, size=(size, size), mode="bilinear", align_corners=True)


def _centre_pad(weight: Tensor, size: int) -> Tensor:
    pad = (size - weight.shape[-1]) // 2
    return F.pad(weight, [pad, pad, pad, pad])


def _check_pushpull(kernel_size: int, scales: Sequence[float]) -> None:
    check_range("kernel_size", kernel_size, 1, integer=True)
    # An even push kernel has no centre: its pull copy cannot be aligned with it (the
    # official code then yields responses of different sizes).
    if kernel_size % 2 == 0:
        raise DemHECError(f"push-pull needs an odd kernel_size, got {kernel_size}")
    if not scales:
        raise DemHECError("push-pull needs at least one pull scale")
    for scale in scales:
        check_range("push-pull scale", scale, 1.0)


def _init_alpha(shape: tuple[int, ...], in_channels: int, out_channels: int) -> nn.Parameter:
    # The official code's initialisation of a learned inhibition strength:
    # U(0.5 - r, 0.5 + r) with r = 1 / sqrt(in_channels * out_channels).
    r = (in_channels * out_channels) ** -0.5
    return nn.Parameter(torch.empty(shape).uniform_(0.5 - r, 0.5 + r))


class PushPullConv2d(nn.Module):
    """Push-pull inhibition layer (Strisciuglio, Lopez-Antequera & Petkov, 2020, section 3.1).

    ``P(I) = ReLU(k * I) - alpha ReLU(-k^h * I)``: the learned push kernel ``k`` (``push``,
    an ``nn.Conv2d`` without bias) and a pull kernel derived from it at every forward pass,
    negated and bilinearly upsampled by ``scale`` to :func:`pull_kernel_size`. The pull
    response suppresses push responses to patterns of the opposite contrast over a wider
    area, which is what makes the layer robust to noise. ``alpha`` is a fixed hyper-parameter
    (a plain number, not in the state dict) unless ``train_alpha``; then it is one learned
    value per output channel, kept non-negative by a ReLU, as in the official code. The
    state-dict layout (``push.weight``, plus ``alpha`` when learned) is the official code's.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        padding: int = 1,
        # Upsampling factor h of the pull kernel; section 4 uses h = 2 for all results.
        scale: float = 2.0,
        # Inhibition strength alpha; section 4 uses alpha = 1.
        alpha: float = 1.0,
        # Learned alpha: off in the official ResNet-20-PP recipe (train.py default), and
        # table 5 shows learning it did not improve ResNet-20's robustness.
        train_alpha: bool = False,
    ) -> None:
        super().__init__()
        _check_pushpull(kernel_size, [scale])
        self.push = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=padding, bias=False)
        self.scale = scale
        self.pull_size = pull_kernel_size(kernel_size, scale)
        self.pull_padding = padding + (self.pull_size - kernel_size) // 2
        self.train_alpha = train_alpha
        self.alpha: float | nn.Parameter
        if train_alpha:
            self.alpha = _init_alpha((1, out_channels, 1, 1), in_channels, out_channels)
        else:
            self.alpha = float(check_range("alpha", alpha, 0.0))

    def pull_weight(self) -> Tensor:
        """The pull kernel: the push kernel upsampled to ``pull_size`` and negated."""
        return -upsample_kernel(self.push.weight, self.pull_size)

    def inhibition(self) -> float | Tensor:
        """alpha as used in the forward pass (ReLU of the learned value, if learned)."""
        return F.relu(self.alpha) if isinstance(self.alpha, nn.Parameter) else self.alpha

    def extra_repr(self) -> str:
        alpha = "learned" if isinstance(self.alpha, nn.Parameter) else self.alpha
        return f"scale={self.scale}, pull_size={self.pull_size}, alpha={alpha}"

    def forward(self, x: Tensor) -> Tensor:
        push = self.push(x)
        pull = F.conv2d(x, self.pull_weight(), stride=self.push.stride, padding=self.pull_padding)
        return F.relu(push) - self.inhibition() * F.relu(pull)


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation channel gate (Hu et al., 2018): x times sigmoid(MLP(mean(x))).

    The MLP is two 1x1 convolutions with biases and a ReLU between them, ``channels ->
    channels // reduction -> channels``, as in the attention of Ranabhat's public push-pull
    code (robinnarsinghranabhat/Adversarial-Robustness-of-Push-Pull-CNN).
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        check_range("reduction", reduction, 1, integer=True)
        hidden = max(1, channels // reduction)
        self.reduce = nn.Conv2d(channels, hidden, kernel_size=1)
        self.expand = nn.Conv2d(hidden, channels, kernel_size=1)

    def gate(self, x: Tensor) -> Tensor:
        """The (N, C, 1, 1) weights in (0, 1) that the channels of ``x`` are scaled by."""
        squeezed = x.mean(dim=(2, 3), keepdim=True)
        return torch.sigmoid(self.expand(F.relu(self.reduce(squeezed))))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)


class MultiScalePushPullConv2d(nn.Module):
    """Multi-scale unrectified push-pull with channel attention (Ranabhat et al., 2025).

    The paper's three changes to :class:`PushPullConv2d`: no rectification of the push and
    pull responses before they are combined; pull kernels at several scales ``h_s``; and a
    squeeze-and-excitation gate (:class:`ChannelAttention`) over the channels of the result::

        z = k * I - (1/S) sum_s alpha_s (-k^{h_s} * I),      output = z * gate(z)

    The pull responses are averaged over the S scales so that the total inhibition has the
    single-scale layer's strength (ours). As the pull kernels are negated push kernels,
    subtracting their unrectified responses adds smoothed, wider copies of the push response
    (the paper's "linear feature enhancement"). Without the ReLUs, ``z`` is linear in ``I``: it is
    computed as one convolution with :meth:`combined_weight`, the push kernel plus the
    weighted pull kernels, all centred in the largest one, which gives the same result as
    S + 1 convolutions at a fraction of the cost. ``push`` is kept as an ``nn.Conv2d`` to hold
    the push kernel (``push.weight``, the layout of :class:`PushPullConv2d`) but is not called.
    A learned ``alpha`` has one value per scale and output channel, kept non-negative by a
    ReLU; a fixed one is a plain number, not in the state dict.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        padding: int = 1,
        # Pull upsampling factors (ours: the paper's text was not available). They bracket
        # Strisciuglio et al.'s h = 2 and give distinct odd pull kernels of 5, 7 and 9 px for
        # the 3x3 stem (2.5 would repeat 7 px).
        scales: Sequence[float] = (1.5, 2.0, 3.0),
        # Inhibition strength of each scale (ours: Strisciuglio et al.'s alpha = 1).
        alpha: float = 1.0,
        # Learned alpha (ours: fixed, as in Strisciuglio et al.'s ResNet-20 recipe).
        train_alpha: bool = False,
        # Squeeze-and-excitation reduction ratio: 4 in Ranabhat's public push-pull code
        # (its PPmodule2d attention and SEBlock); 16 channels -> 4 hidden units.
        reduction: int = 4,
    ) -> None:
        super().__init__()
        scales = tuple(float(s) for s in scales)
        _check_pushpull(kernel_size, scales)
        self.push = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=padding, bias=False)
        self.scales = scales
        self.pull_sizes = tuple(pull_kernel_size(kernel_size, s) for s in scales)
        self.size = max(kernel_size, *self.pull_sizes)
        self.padding = padding + (self.size - kernel_size) // 2
        self.train_alpha = train_alpha
        self.alpha: float | nn.Parameter
        if train_alpha:
            self.alpha = _init_alpha((len(scales), out_channels), in_channels, out_channels)
        else:
            self.alpha = float(check_range("alpha", alpha, 0.0))
        self.attention = ChannelAttention(out_channels, reduction)

    def pull_weights(self) -> list[Tensor]:
        """The pull kernel of each scale: the push kernel upsampled and negated."""
        return [-upsample_kernel(self.push.weight, size) for size in self.pull_sizes]

    def inhibition(self) -> float | Tensor:
        """alpha as used in the forward pass: a number, or (S, out_channels) if learned."""
        return F.relu(self.alpha) if isinstance(self.alpha, nn.Parameter) else self.alpha

    def combined_weight(self) -> Tensor:
        """The single kernel equal to push minus the scale-averaged, alpha-weighted pulls."""
        alpha = self.inhibition()
        kernel = _centre_pad(self.push.weight, self.size)
        for i, pull in enumerate(self.pull_weights()):
            a = alpha[i].view(-1, 1, 1, 1) if isinstance(alpha, Tensor) else alpha
            kernel = kernel - a / len(self.scales) * _centre_pad(pull, self.size)
        return kernel

    def extra_repr(self) -> str:
        alpha = "learned" if isinstance(self.alpha, nn.Parameter) else self.alpha
        return f"scales={self.scales}, pull_sizes={self.pull_sizes}, alpha={alpha}"

    def forward(self, x: Tensor) -> Tensor:
        z = F.conv2d(x, self.combined_weight(), stride=self.push.stride, padding=self.padding)
        return self.attention(z)


class PushPullCifarResNet(CifarResNet):
    """:class:`CifarResNet` whose first convolution ``conv1`` is ``stem`` (3 -> 16 channels).

    Only ``conv1`` changes, so state dicts differ from the zoo's in its entries alone; with
    :class:`PushPullConv2d` the layout is that of Strisciuglio et al.'s ResNet-20-PP.
    """

    def __init__(self, blocks_per_layer: int, num_classes: int, stem: nn.Module) -> None:
        super().__init__(blocks_per_layer, num_classes)
        # Assigning over the existing name keeps conv1 first in registration order, which
        # freeze_parameters and the stage split rely on.
        self.conv1 = stem
        for m in stem.modules():
            if isinstance(m, nn.Conv2d):  # the parent's initialisation of every convolution
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def _pushpull_builder(arch: str, stem: Callable[[], nn.Module], what: str) -> _Builder:
    def build(
        num_classes: int, pretrained: bool, progress: bool, dataset: str | None = None
    ) -> Classifier:
        if pretrained:
            raise DemHECError(
                f"{arch} has no published weights to download; train it, or pass "
                "pretrained=<path of a state dict>"
            )
        net = PushPullCifarResNet(RESNET_CIFAR_BLOCKS[_PUSHPULL_BASE], num_classes, stem())
        return _cifar_classifier(arch, net, num_classes=num_classes, pretrained=False,
                                 progress=progress, dataset=dataset, head_name="net.fc",
                                 stages=_PUSHPULL_STAGES)

    build.__doc__ = f"CIFAR ResNet-20 whose first convolution is {what}; no published weights."
    return build


# "resnet20_pushpull" is the push-pull of the paper's Table 4 (Ranabhat et al.); the original,
# single-scale rectified layer is "resnet20_pushpull_single".
register_model("resnet20_pushpull")(_pushpull_builder(
    "resnet20_pushpull", functools.partial(MultiScalePushPullConv2d, 3, 16),
    "a multi-scale unrectified push-pull layer with channel attention (Ranabhat et al., 2025)"))
register_model("resnet20_pushpull_single")(_pushpull_builder(
    "resnet20_pushpull_single", functools.partial(PushPullConv2d, 3, 16),
    "a push-pull layer (Strisciuglio et al., 2020)"))
