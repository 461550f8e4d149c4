"""Push-pull inhibition layers and the push-pull CIFAR ResNet-20s (Strisciuglio et al., 2020;
Ranabhat et al., 2025).

Table 4 of the Dem-HEC paper compares it with Ranabhat et al. (2025) on CIFAR-10 ResNet-20. Both
push-pull variants replace only the first convolution of the CIFAR ResNet, as both papers do
(Strisciuglio et al., section 3.2), so every other module keeps the zoo's names, and the models
keep the ResNet-20 record's head, stages and normalisation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._common import DemHECError, check_range
from .cifar import CifarResNet, cifar_classifier
from .registry import Classifier, ModelInfo, model_info, register_model_info

__all__ = [
    "ChannelAttention",
    "MultiScalePushPullConv2d",
    "PushPullCifarResNet",
    "PushPullConv2d",
    "pull_kernel_size",
    "upsample_kernel",
]


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
        self, in_channels: int, out_channels: int, kernel_size: int = 3, *, stride: int = 1, padding: int = 1,
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


def _pushpull_model(name: str, stem: Callable[[], nn.Module], what: str) -> ModelInfo:
    """Register ``name``: ResNet-20 whose first convolution is ``stem()``; no published weights."""
    base = model_info("resnet20")

    def build(
        num_classes: int, pretrained: bool, progress: bool, dataset: str | None = None
    ) -> Classifier:
        if pretrained:
            raise DemHECError(
                f"{name} has no published weights to download; train it, or pass "
                "pretrained=<path of a state dict>"
            )
        net = PushPullCifarResNet(info.config["blocks_per_layer"], num_classes, stem())
        return cifar_classifier(info, net, num_classes=num_classes, pretrained=False,
                                progress=progress, dataset=dataset)

    build.__doc__ = f"CIFAR ResNet-20 whose first convolution is {what}; no published weights."
    info = ModelInfo(name, build, head=base.head, stages=base.stages, input_size=base.input_size,
                     min_input_size=base.min_input_size, normalisation=base.normalisation,
                     config={"base": base.name, **base.config, "stem": what})
    return register_model_info(info)


# "resnet20_pushpull" is the push-pull of the paper's Table 4 (Ranabhat et al.); the original,
# single-scale rectified layer is "resnet20_pushpull_single".
_pushpull_model(
    "resnet20_pushpull", functools.partial(MultiScalePushPullConv2d, 3, 16),
    "a multi-scale unrectified push-pull layer with channel attention (Ranabhat et al., 2025)")
_pushpull_model(
    "resnet20_pushpull_single", functools.partial(PushPullConv2d, 3, 16),
    "a push-pull layer (Strisciuglio et al., 2020)")
