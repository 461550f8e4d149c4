"""The CIFAR zoo's ResNets and RepVGGs (chenyaofo/pytorch-cifar-models), registered with their
published CIFAR-10/100 weights.

Section 4.1 of the paper fine-tunes CIFAR ResNet-20/56 and RepVGG-A0/A2 with the zoo's
pretrained weights on CIFAR-10/100. The networks reproduce the zoo's module names and shapes
exactly, so its published state dicts load with ``strict=True`` into ``Classifier.net``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._common import DemHECError, check_choice
from .registry import (
    MIN_INPUT_SIZE,
    NORMALISATION,
    Classifier,
    ModelInfo,
    download_weights,
    register_model_info,
)

__all__ = [
    "CIFAR_WEIGHT_URLS",
    "REPVGG_A_BLOCKS",
    "REPVGG_BASE_WIDTHS",
    "REPVGG_WIDTHS",
    "RESNET_CIFAR_BLOCKS",
    "BasicBlock",
    "CifarRepVGG",
    "CifarResNet",
    "RepVGGBlock",
    "cifar_classifier",
    "reparameterize",
]

logger = logging.getLogger(__name__)

# The class count each published CIFAR checkpoint was trained for.
_CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}

# What every CIFAR backbone is normalised with, by the dataset its weights were trained on.
_CIFAR_NORMALISATION = {d: NORMALISATION[d] for d in _CIFAR_CLASSES}

# RepVGG-A (Ding et al., 2021, table 2): blocks in stages 1-4 and the base widths that each
# model's width multipliers a, b scale (the last stage uses b).
REPVGG_A_BLOCKS = (2, 4, 14, 1)
REPVGG_BASE_WIDTHS = (64, 128, 256, 512)

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


def _cifar_dataset(info: ModelInfo, num_classes: int, pretrained: bool, dataset: str | None) -> str:
    """Pick the normalisation's dataset; with published weights it must match the classes."""
    default = "cifar100" if num_classes == 100 else "cifar10"
    dataset = check_choice("dataset", dataset or default, sorted(info.normalisation))
    if pretrained and _CIFAR_CLASSES[dataset] != num_classes:
        raise DemHECError(
            f"published {info.name} weights exist for 10 (cifar10) or 100 (cifar100) classes; "
            f"got num_classes={num_classes} with dataset={dataset!r}"
        )
    return dataset


def cifar_classifier(
    info: ModelInfo,
    net: nn.Module,
    *,
    num_classes: int,
    pretrained: bool,
    progress: bool,
    dataset: str | None,
) -> Classifier:
    """``net`` wrapped as the CIFAR backbone ``info``: normalised for ``dataset`` (by default the
    one of the class count), with the published weights of that dataset if ``pretrained``."""
    dataset = _cifar_dataset(info, num_classes, pretrained, dataset)
    model = Classifier.from_info(info, net, num_classes, norm=info.normalisation[dataset])
    if pretrained:
        model.load_state_dict_any(download_weights(info.weights_urls[dataset], progress))
        logger.info("loaded published %s %s weights", dataset, info.name)
    return model


def _zoo_model(name: str, net: type[nn.Module], *, head: str, stages: Sequence[str],
               config: Mapping[str, Any], weights_urls: Mapping[str, str], layout: str) -> ModelInfo:
    """The record of the CIFAR zoo's ``name``; its builder makes ``net(num_classes=...,
    **config)``."""

    def build(
        num_classes: int, pretrained: bool, progress: bool, dataset: str | None = None
    ) -> Classifier:
        return cifar_classifier(info, net(num_classes=num_classes, **info.config),
                                num_classes=num_classes, pretrained=pretrained, progress=progress,
                                dataset=dataset)

    build.__doc__ = f"CIFAR {name} (chenyaofo/pytorch-cifar-models layout{layout})."
    info = ModelInfo(name, build, head=head, stages=tuple(stages), input_size=32,
                     min_input_size=MIN_INPUT_SIZE, normalisation=_CIFAR_NORMALISATION,
                     weights_urls=weights_urls, config=config)
    return register_model_info(info)


# chenyaofo/pytorch-cifar-models release assets (README model-zoo table, resnet.py and
# repvgg.py). The 8 hex digits in each file name are the start of its SHA-256, which
# torch.hub verifies with check_hash=True.
_ZOO = "https://github.com/chenyaofo/pytorch-cifar-models/releases/download"

_RESNET_STAGES = ("net.relu", "net.layer1", "net.layer2", "net.layer3", "net.avgpool", "net.fc")
_REPVGG_STAGES = (*(f"net.stage{i}" for i in range(5)), "net.gap", "net.linear")

# The CIFAR ResNets of He et al. (2016): depth = 6n + 2 with n BasicBlocks per layer.
_RESNETS = [
    _zoo_model(name, CifarResNet, head="net.fc", stages=_RESNET_STAGES,
               config={"blocks_per_layer": blocks}, weights_urls=urls, layout="")
    for name, blocks, urls in [
        ("resnet20", 3, {"cifar10": f"{_ZOO}/resnet/cifar10_resnet20-4118986f.pt",
                         "cifar100": f"{_ZOO}/resnet/cifar100_resnet20-23dac2f1.pt"}),
        ("resnet32", 5, {"cifar10": f"{_ZOO}/resnet/cifar10_resnet32-ef93fc4d.pt",
                         "cifar100": f"{_ZOO}/resnet/cifar100_resnet32-84213ce6.pt"}),
        ("resnet44", 7, {"cifar10": f"{_ZOO}/resnet/cifar10_resnet44-2a3cabcb.pt",
                         "cifar100": f"{_ZOO}/resnet/cifar100_resnet44-ffe32858.pt"}),
        ("resnet56", 9, {"cifar10": f"{_ZOO}/resnet/cifar10_resnet56-187c023a.pt",
                         "cifar100": f"{_ZOO}/resnet/cifar100_resnet56-f2eff4c8.pt"}),
    ]
]

# RepVGG-A0/A1/A2 with their width multipliers (a, a, a, b).
_REPVGGS = [
    _zoo_model(name, CifarRepVGG, head="net.linear", stages=_REPVGG_STAGES,
               config={"widths": widths}, weights_urls=urls, layout=", training form")
    for name, widths, urls in [
        ("repvgg_a0", (0.75, 0.75, 0.75, 2.5),
         {"cifar10": f"{_ZOO}/repvgg/cifar10_repvgg_a0-ef08a50e.pt",
          "cifar100": f"{_ZOO}/repvgg/cifar100_repvgg_a0-2df1edd0.pt"}),
        ("repvgg_a1", (1.0, 1.0, 1.0, 2.5),
         {"cifar10": f"{_ZOO}/repvgg/cifar10_repvgg_a1-38d2431b.pt",
          "cifar100": f"{_ZOO}/repvgg/cifar100_repvgg_a1-c06b21a7.pt"}),
        ("repvgg_a2", (1.5, 1.5, 1.5, 2.75),
         {"cifar10": f"{_ZOO}/repvgg/cifar10_repvgg_a2-09488915.pt",
          "cifar100": f"{_ZOO}/repvgg/cifar100_repvgg_a2-8e71b1f8.pt"}),
    ]
]

# Views of the records above by (arch, dataset) and by arch, for callers that look facts up so.
CIFAR_WEIGHT_URLS: dict[tuple[str, str], str] = {
    (info.name, dataset): url
    for info in (*_RESNETS, *_REPVGGS)
    for dataset, url in info.weights_urls.items()
}
RESNET_CIFAR_BLOCKS: dict[str, int] = {
    info.name: info.config["blocks_per_layer"] for info in _RESNETS
}
REPVGG_WIDTHS: dict[str, tuple[float, float, float, float]] = {
    info.name: info.config["widths"] for info in _REPVGGS
}
