"""DV+AP+JSD: Kim, Kim & Choi, "Distinct Views Improve Generalization and Robustness: Combinations
of Augmentations With Different Features", IEEE Access 13:50353-50366, 2025 (the paper's Table 3
compares with it).

What could be read of the paper: its abstract (cut off after "To furth...") and keywords, from the
Hanyang University repository record (scholarworks.bwise.kr/hanyang/handle/2021.sw.hanyang/207126,
DOI 10.1109/ACCESS.2025.3552110). Neither its full text nor code by its authors could be found,
so every setting below is a choice of ours, marked as such. The abstract says: each image is
turned at once into three views by augmentations of different character, a colour-preserving, a
shape-preserving and a diversity-enhancing view; the two feature-preserving views keep "local
color (texture)" and "global shape information", the third enhances diversity. The method's name
adds AP and a JSD consistency loss, which the lost part of the abstract introduces.

How each part is built here (all "ours" unless cited):

* The views split AugMix's operations (Hendrycks et al., 2019, official code
  google-research/augmix ``augmentations.py``) by what they keep. The colour-preserving view is a
  chain of its geometric operations (rotate, shear x/y, translate x/y): pixels move, no colour
  changes. They resample nearest-neighbour, so every output pixel is a copy of an input pixel or
  the black fill (AugMix's code resamples bilinearly, which would blend colours at edges). The
  shape-preserving view is a chain of its colour operations (autocontrast, equalize, posterize,
  solarize): per-channel maps of a pixel's value, so the spatial layout stays as it is.
  Brightness, contrast, colour and sharpness are left out, as AugMix leaves them out, since they
  overlap the -C corruptions the comparison tests on.
* Chains as AugMix's: a depth drawn from {1, 2, 3} per image, each operation drawn uniformly
  from the view's set, its level ``U(0.1, severity)`` at AugMix's severity 3 and AugMix's
  magnitudes: rotate ``int(level * 3)`` degrees, shear ``level * 0.03``, translate
  ``int(level * size / 30)`` pixels, each with a random sign; posterize to
  ``4 - int(level * 0.4)`` bits; solarize above ``256 - int(level * 25.6)``.
* The diversity-enhancing view is AugMix itself (torchvision's, at the ``augmix`` baseline's
  settings): it mixes chains of all those operations.
* AP: the abstract does not define it; the authors' keywords list "Adversarial training", so AP
  is read as an adversarial perturbation: one FGSM step from a random start (Wong et al., 2020)
  of L-inf radius 1/255 and step 1.25/255 on the diversity-enhancing view, raising its
  cross-entropy, in training mode with BatchNorm's running statistics kept. The radius is small
  since adversarial training helps common corruptions only at a small radius (Kireev et al.,
  2022). ``ap_epsilon=0`` turns it off: the reading in which AP is only the views' augmentation
  policy (DV + JSD).
* Loss: AugMix's, over four distributions: ``CE(f(x), y) + 12 JS(p(x), p(colour), p(shape),
  p(diverse))``, the cross-entropy on the clean image only, the weight AugMix's 12, the clean
  image one of the JSD's distributions (``jsd_with_clean``). The four batches go through one
  forward pass, so BatchNorm normalises them together (AugMix's official code).

A step passes each image five times through the network: the clean image and its three views,
plus the AP ascent (a forward and an input-gradient backward of the diversity-enhancing views).
The views act per image on the CPU with torch's global generator; the AP start draws on the
batch's device from torch's generator there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from .._common import DemHECError, check_choice, check_range
from ..losses import js_divergence_loss
from .augment import per_image
from .registry import Method, Step, register_method

__all__ = ["DV", "GEOMETRIC_OPS", "PHOTOMETRIC_OPS", "DistinctViewsSettings", "adversarial_view",
           "distinct_views", "distinct_views_loss", "one_view"]

GEOMETRIC_OPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
PHOTOMETRIC_OPS = ("autocontrast", "equalize", "posterize", "solarize")
_SIGNED = frozenset(GEOMETRIC_OPS)
_NEAREST = InterpolationMode.NEAREST
_FILL = [0.0]  # black, as AugMix's PIL operations fill


@dataclass(frozen=True)
class DistinctViewsSettings:
    """DV+AP+JSD hyperparameters. The paper's text could not be read; every value is ours, most
    of them AugMix's (see the module docstring)."""

    # ours: AugMix's geometric operations; they move pixels, never change a colour
    colour_ops: tuple[str, ...] = GEOMETRIC_OPS
    # ours: AugMix's colour operations; per-channel value maps that keep the spatial layout
    shape_ops: tuple[str, ...] = PHOTOMETRIC_OPS
    severity: int = 3  # ours: AugMix's --aug-severity; levels drawn from U(0.1, severity), of 10
    depth: int = -1  # ours: operations per feature-preserving chain; -1: drawn from {1, 2, 3}
    diverse_severity: int = 3  # ours: the diversity-enhancing view is AugMix at its CIFAR settings
    diverse_width: int = 3  # ours: AugMix's --mixture-width
    diverse_depth: int = -1  # ours: AugMix's --mixture-depth
    diverse_alpha: float = 1.0  # ours: AugMix's --aug-prob-coeff
    # ours: L-inf radius of the AP on the diversity-enhancing view, in [0, 1] pixel units; 0: no AP
    ap_epsilon: float = 1 / 255
    ap_step: float = 1.25  # ours: the FGSM step in units of ap_epsilon (Wong et al., 2020)
    jsd_weight: float = 12.0  # ours: AugMix's lambda
    jsd_with_clean: bool = True  # ours: the clean image's prediction is one of the JSD's inputs

    def __post_init__(self) -> None:
        for name, ops, valid in (("colour-preserving operation", self.colour_ops, GEOMETRIC_OPS),
                                 ("shape-preserving operation", self.shape_ops, PHOTOMETRIC_OPS)):
            if not ops:
                raise DemHECError(f"the {name}s must not be empty")
            for op in ops:
                check_choice(name, op, valid)
        check_range("severity", self.severity, 1, 10, integer=True)
        check_range("diverse_severity", self.diverse_severity, 1, 10, integer=True)
        check_range("diverse_width", self.diverse_width, 1, integer=True)
        for name in ("depth", "diverse_depth"):
            value = getattr(self, name)
            if value != -1:
                check_range(name, value, 1, integer=True)
        check_range("diverse_alpha", self.diverse_alpha, 0.0, low_open=True)
        check_range("ap_epsilon", self.ap_epsilon, 0.0, 1.0)
        check_range("ap_step", self.ap_step, 0.0, low_open=True)
        check_range("jsd_weight", self.jsd_weight, 0.0)

    @property
    def passes(self) -> float:
        """Network passes per training image and step: clean + three views (+ the AP ascent)."""
        return 4.0 + (self.ap_epsilon > 0)


DV = DistinctViewsSettings()


def _shear(img: Tensor, m: float, axis: int) -> Tensor:
    # AugMix's PIL shear (1, m, 0, 0, 1, 0) shears about the top-left corner.
    shear = [math.degrees(math.atan(m)), 0.0] if axis == 0 else [0.0, math.degrees(math.atan(m))]
    return TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=shear,
                     interpolation=_NEAREST, fill=_FILL, center=[0, 0])


def _translate(img: Tensor, pixels: int, axis: int) -> Tensor:
    shift = [pixels, 0] if axis == 0 else [0, pixels]
    return TF.affine(img, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0],
                     interpolation=_NEAREST, fill=_FILL)


# name -> (uint8 image, level in [0.1, severity), sign) -> uint8 image, at AugMix's magnitudes
# (level / 10 of each operation's maximum; integer magnitudes truncated, as AugMix's code does).
_OPS: dict[str, Callable[[Tensor, float, int], Tensor]] = {
    "rotate": lambda img, lv, s: TF.rotate(img, angle=float(s * int(lv * 30 / 10)),
                                           interpolation=_NEAREST, fill=_FILL),
    "shear_x": lambda img, lv, s: _shear(img, s * lv * 0.3 / 10, 0),
    "shear_y": lambda img, lv, s: _shear(img, s * lv * 0.3 / 10, 1),
    "translate_x": lambda img, lv, s: _translate(img, s * int(lv * img.shape[-1] / 3 / 10), 0),
    "translate_y": lambda img, lv, s: _translate(img, s * int(lv * img.shape[-2] / 3 / 10), 1),
    "autocontrast": lambda img, lv, s: TF.autocontrast(img),
    "equalize": lambda img, lv, s: TF.equalize(img),
    "posterize": lambda img, lv, s: TF.posterize(img, bits=4 - int(lv * 4 / 10)),
    "solarize": lambda img, lv, s: TF.solarize(img, threshold=256 - int(lv * 256 / 10)),
}


def _chain(ops: tuple[str, ...], severity: int, depth: int) -> Callable[[Tensor], Tensor]:
    """A random chain of ``ops`` on one uint8 3 x H x W image. Draws, in this order, from torch's
    global generator: the depth (if -1), then per operation its index, its level and, for a
    geometric operation, its sign."""

    def apply(img: Tensor) -> Tensor:
        n = depth if depth > 0 else int(torch.randint(1, 4, ()))
        for _ in range(n):
            name = ops[int(torch.randint(len(ops), ()))]
            level = 0.1 + (severity - 0.1) * float(torch.rand(()))
            sign = (-1 if float(torch.rand(())) < 0.5 else 1) if name in _SIGNED else 1
            img = _OPS[name](img, level, sign)
        return img

    return apply


def _transforms(settings: DistinctViewsSettings) -> tuple[Callable[[Tensor], Tensor], ...]:
    s = settings
    return (
        _chain(s.colour_ops, s.severity, s.depth),
        _chain(s.shape_ops, s.severity, s.depth),
        v2.AugMix(severity=s.diverse_severity, mixture_width=s.diverse_width,
                  chain_depth=s.diverse_depth, alpha=s.diverse_alpha, all_ops=False),
    )


def distinct_views(x: Tensor, settings: DistinctViewsSettings = DV) -> tuple[Tensor, Tensor, Tensor]:
    """The colour-preserving, shape-preserving and diversity-enhancing views of a float
    N x 3 x H x W batch in [0, 1] (Kim et al., 2025), each image with its own draws; the views are
    drawn in that order, each over the whole batch."""
    colour, shape, diverse = _transforms(settings)
    return per_image(colour, x), per_image(shape, x), per_image(diverse, x)


def one_view(x: Tensor, settings: DistinctViewsSettings = DV) -> Tensor:
    """One augmented view per image: one of its three distinct views, drawn uniformly (the
    registry's one-view augmentation; AP needs the model and is not part of it)."""
    transforms = _transforms(settings)

    def pick(img: Tensor) -> Tensor:
        return transforms[int(torch.randint(len(transforms), ()))](img)

    return per_image(pick, x)


def adversarial_view(step: Step, x: Tensor, y: Tensor, epsilon: float, step_size: float) -> Tensor:
    """AP as read here: ``x`` moved by one signed-gradient step of ``step_size`` that raises the
    cross-entropy, from a uniform random start in the L-inf ball of radius ``epsilon``, projected
    back onto the ball and [0, 1] (FGSM with random start, Wong et al., 2020). The pass keeps
    BatchNorm's running statistics and leaves no gradient on the weights."""
    start = x + (torch.rand_like(x) * 2 - 1) * epsilon
    probe = start.clamp(0, 1).detach().requires_grad_(True)
    loss = step.ce(step.forward(probe, update_stats=False).float(), y)
    (grad,) = torch.autograd.grad(loss, probe)
    delta = (probe.detach() - x + step_size * grad.sign()).clamp(-epsilon, epsilon)
    return (x + delta).clamp(0, 1).detach()


def distinct_views_loss(
    settings: DistinctViewsSettings = DV,
) -> Callable[[Step, Tensor, Tensor], tuple[Tensor, dict[str, float]]]:
    """The DV+AP+JSD loss of a step: ``CE(f(x), y) + jsd_weight * JS(...)`` over the clean image
    (with ``jsd_with_clean``) and its three views, the last one under AP."""

    def loss(step: Step, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        colour, shape, diverse = distinct_views(x, settings)
        if settings.ap_epsilon > 0:
            diverse = adversarial_view(step, diverse, y, settings.ap_epsilon,
                                       settings.ap_step * settings.ap_epsilon)
        logits = step.forward(torch.cat([x, colour, shape, diverse])).split(len(x))
        ce = step.ce(logits[0], y)
        jsd = js_divergence_loss(*(logits if settings.jsd_with_clean else logits[1:]))
        value = ce + settings.jsd_weight * jsd
        return value, {"ce": ce.item(), "jsd": jsd.item()}

    return loss


register_method(Method(
    "dv_ap_jsd", "DV+AP+JSD",
    "Kim, Kim & Choi, 2025 (Distinct Views: colour-, shape-preserving and AugMix views, "
    "FGSM perturbation, JSD); settings ours, the paper's text unread",
    distinct_views_loss(DV), augment=lambda x: one_view(x, DV), passes=DV.passes, settings=DV,
))
