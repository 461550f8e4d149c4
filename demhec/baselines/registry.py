"""The registry of training methods: :class:`Method`, :class:`Step` and their lookup."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import Tensor

from .._common import DemHECError, check_choice

__all__ = ["METHODS", "Forward", "Method", "Step", "augment_batch", "get_method", "register_method"]


class Forward(Protocol):
    def __call__(self, images: Tensor, *, update_stats: bool = True) -> Tensor: ...


@dataclass(frozen=True)
class Step:
    """What a method's loss sees of the model in one training step."""

    # Images in [0, 1] -> logits, through the trained model in training mode (BatchNorm normalises
    # with the batch's statistics). update_stats=False leaves the running statistics as they are
    # (for passes that only search for an input, as AugMax's ascent does).
    forward: Forward
    # The run's cross-entropy (label smoothing from the training config).
    ce: Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Method:
    """One training method: the loss of a step on a batch ``x`` (float N x 3 x H x W in [0, 1],
    already cropped and flipped unless ``crops``) with labels ``y``."""

    name: str  # registry key, the result and checkpoint name
    label: str  # as tables print it
    reference: str  # the paper it implements
    loss: Callable[[Step, Tensor, Tensor], tuple[Tensor, dict[str, float]]]
    augment: Callable[[Tensor], Tensor] | None = None  # one augmented view of a batch (None: none)
    # Images through the network per training image and step, forward and backward (a plain
    # step = 1); the measured cost is in benchmarks/.
    passes: float = 1.0
    crops: bool = False  # draws its own crop + flip per copy (the batches come uncropped)
    settings: Any = field(default=None)  # the frozen dataclass of its hyperparameters


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add ``method`` to :data:`METHODS`; a name can be registered once."""
    if method.name in METHODS:
        raise DemHECError(f"training method {method.name!r} is already registered")
    return METHODS.setdefault(method.name, method)


def get_method(name: str) -> Method:
    """The registered method ``name``; a typo fails listing the valid names."""
    return METHODS[check_choice("training method", name, METHODS)]


def augment_batch(x: Tensor, method: str) -> Tensor:
    """One view of ``method``'s augmentation of a float N x 3 x H x W batch in [0, 1] (the crop +
    flip the batches carry not included): ``x`` itself for a method without one."""
    fn = get_method(method).augment
    return x if fn is None else fn(x)
