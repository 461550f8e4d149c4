"""The backbone registry: one :class:`ModelInfo` record per backbone, :func:`get_model` to build
it, and the :class:`Classifier` wrapper every backbone is returned in.

A record gathers what the project knows of a backbone in one place (its builder, head, stages,
input sizes, normalisation, published weights and architecture settings), so adding a backbone
is one registration rather than an entry in several tables. Name families (``timm:<name>``,
``torchvision:<name>``) are routed by prefix to a builder that finds those facts in the network
itself (:mod:`demhec.models.external`).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn

from .._common import DemHECError, check_choice, check_range, load_tensors

__all__ = [
    "MIN_INPUT_SIZE",
    "NORMALISATION",
    "Builder",
    "Classifier",
    "ModelInfo",
    "Normalisation",
    "check_backbone",
    "download_weights",
    "get_model",
    "list_models",
    "model_info",
    "register_family",
    "register_model",
    "register_model_info",
]

logger = logging.getLogger(__name__)

# The smallest square side a convolutional backbone with adaptive pooling is meant for: CIFAR
# resolution, below which its stride-2 stages leave too little to pool.
MIN_INPUT_SIZE = 32


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

# (num_classes, pretrained, progress, **kw) -> Classifier
Builder = Callable[..., "Classifier"]


@dataclass(frozen=True)
class ModelInfo:
    """Everything the registry knows of one backbone, registered together.

    ``builder``: ``(num_classes, pretrained, progress, **kw) -> Classifier``. ``head``: module
    name, in the :class:`Classifier`, of the final linear layer. ``stages``: module names shallow
    to deep, the head last; empty when the built network decides them (a ViT's depth). Sizes:
    the native square side and the smallest one the backbone is meant for (None: the network's
    own). ``normalisation``: what the weights expect, by the dataset they were trained on (the
    first is the default; empty when the library that builds the network says). ``weights_urls``:
    the published state dict per dataset, for weights this project downloads itself (not
    torchvision's or timm's). ``config``: the architecture's settings (blocks, widths, ...).
    """

    name: str
    builder: Builder
    head: str | None = None
    stages: tuple[str, ...] = ()
    input_size: int | None = None
    min_input_size: int | None = None
    normalisation: Mapping[str, Normalisation] = field(default_factory=dict)
    weights_urls: Mapping[str, str] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Read-only views: a record is shared by every model built from it.
        object.__setattr__(self, "stages", tuple(self.stages))
        for name in ("normalisation", "weights_urls", "config"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))


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

    @classmethod
    def from_info(
        cls,
        info: ModelInfo,
        net: nn.Module,
        num_classes: int,
        *,
        norm: Normalisation | None = None,
        stages: Sequence[str] | None = None,
        input_size: int | None = None,
        min_input_size: int | None = None,
    ) -> Classifier:
        """``net`` wrapped with the facts of its record ``info``; the keywords give those the
        record leaves to the built network (and ``norm`` the dataset's, when there are several)."""
        if info.head is None:
            raise DemHECError(f"{info.name}: its record names no head")
        return cls(
            net,
            arch=info.name,
            num_classes=num_classes,
            head_name=info.head,
            stages=info.stages if stages is None else stages,
            input_size=_given(info.name, "input_size", input_size, info.input_size),
            min_input_size=_given(info.name, "min_input_size", min_input_size, info.min_input_size),
            norm=norm if norm is not None else next(iter(info.normalisation.values())),
        )

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


def _given(arch: str, what: str, value: int | None, recorded: int | None) -> int:
    if value is not None:
        return value
    if recorded is None:
        raise DemHECError(f"{arch}: its record has no {what} and the builder found none")
    return recorded


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


_REGISTRY: dict[str, ModelInfo] = {}
# Name prefix -> builder called with the full name first, for libraries' whole model zoos.
_FAMILIES: dict[str, Builder] = {}


def register_model_info(info: ModelInfo) -> ModelInfo:
    """Add the backbone ``info`` describes under ``info.name``; returns ``info``."""
    if info.name in _REGISTRY:
        raise DemHECError(f"backbone {info.name!r} is already registered")
    _REGISTRY[info.name] = info
    return info


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator adding a builder ``(num_classes, pretrained, progress, **kw) -> Classifier``
    that knows its backbone's facts itself (a record with the name and the builder alone)."""

    def decorate(builder: Builder) -> Builder:
        register_model_info(ModelInfo(name, builder))
        return builder

    return decorate


def register_family(prefix: str, builder: Builder) -> None:
    """Route every name ``<prefix><model>`` to ``builder(name, num_classes, pretrained,
    progress, **kw)``, which finds the model's facts in the network it builds."""
    if prefix in _FAMILIES:
        raise DemHECError(f"backbone family {prefix!r} is already registered")
    _FAMILIES[prefix] = builder


def list_models() -> list[str]:
    """Registered backbone names, sorted."""
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    """The record of registered backbone ``name`` (one-line error listing the valid ones)."""
    return _REGISTRY[check_choice("backbone", name, list_models())]


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


def _family(name: Any) -> str | None:
    """The registered prefix ``name`` starts with, if a model name follows it."""
    if not isinstance(name, str):
        return None
    return next((p for p in _FAMILIES if name.startswith(p) and name[len(p):]), None)


def check_backbone(name: str) -> str:
    """``name`` if :func:`get_model` accepts it (a registry name or a ``timm:`` /
    ``torchvision:`` name, not built here); otherwise a one-line error listing the valid ones."""
    if _family(name) is not None:
        return name
    return check_choice("backbone", name, [*list_models(), *(f"{p}<name>" for p in _FAMILIES)])


def _builder(name: str) -> Builder:
    check_backbone(name)
    prefix = _family(name)
    if prefix is not None:
        return functools.partial(_FAMILIES[prefix], name)
    return _REGISTRY[name].builder


def _load_local(path: Path) -> dict[str, Any]:
    state = load_tensors(path, "pretrained checkpoint")
    if not isinstance(state, Mapping):
        raise DemHECError(f"cannot read checkpoint {path}: it holds a {type(state).__name__}, not a "
                          "state dict")
    return state


def download_weights(url: str, progress: bool) -> dict[str, Any]:
    """The state dict published at ``url``, through torch.hub's cache, its hash checked against
    the one its file name starts with."""
    try:
        return torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=progress, check_hash=True
        )
    except (OSError, RuntimeError) as exc:  # no network (URLError) or a hash mismatch
        raise DemHECError(f"cannot download {url}: {exc}".splitlines()[0]) from exc
