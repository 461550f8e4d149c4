"""Augmentation baselines built on torchvision's policies: Pad-Crop, TrivialAugment, AutoAugment,
AugMix, and Batch Augmentation (BA, BA (AA)).

* ``pad_crop``: the CIFAR recipe's crop + flip and nothing more (the table's "Pad-Crop"; as a
  fine-tune, the plain fine-tune).
* ``trivialaugment``: TrivialAugment-Wide (Müller & Hutter, 2021), the table's "TA".
* ``autoaugment``: AutoAugment with its CIFAR-10 policy (Cubuk et al., 2019), "AA".
* ``augmix``: AugMix with the Jensen-Shannon consistency loss (Hendrycks et al., 2019).
* ``ba`` / ``ba_aa``: Batch Augmentation (Hoffer et al., 2020, "Augment your batch"): every image
  of the batch appears ``M`` times, each copy with its own draw of the augmentation (crop + flip;
  for BA (AA) crop + flip + AutoAugment), so a step sees ``M`` times the images at the same
  number of steps; the cross-entropy is averaged over all copies.

The extra augmentations act per image on the CPU (each image draws its own sub-policy), so their
randomness is the CPU generator's whatever the training device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.transforms import v2

from ..batches import random_crop_flip
from ..losses import js_divergence_loss
from .registry import Method, Step, register_method

__all__ = ["AUGMIX", "BA", "AugMixSettings", "BatchAugmentSettings", "per_image"]


@dataclass(frozen=True)
class AugMixSettings:
    """AugMix hyperparameters: the defaults of the paper's CIFAR experiments (Hendrycks et al.,
    2019, section 4 and the official code google-research/augmix ``cifar.py``)."""

    severity: int = 3  # --aug-severity 3
    width: int = 3  # --mixture-width 3: augmentation chains mixed per view
    depth: int = -1  # --mixture-depth -1: each chain draws its depth from {1, 2, 3}
    alpha: float = 1.0  # --aug-prob-coeff 1: Dirichlet(alpha) chain weights, Beta(alpha) skip
    # The paper removes operations that overlap with the -C corruptions (brightness, colour,
    # contrast, sharpness) so the test corruptions stay unseen; the code's --all-ops is off.
    all_ops: bool = False
    jsd_weight: float = 12.0  # lambda of the consistency term, hard-coded 12 in cifar.py


@dataclass(frozen=True)
class BatchAugmentSettings:
    """Batch Augmentation (Hoffer et al., 2020). The paper studies M from 2 to 40 at a fixed
    number of steps, the gain growing with M (its CIFAR-10 ResNet-44 uses M = 40). M = 2 here (ours):
    the smallest repetition, which doubles a step's cost (the CPU budget of the comparison); a
    larger M costs M plain steps per step and is a field away."""

    m: int = 2  # copies of every image per batch


AUGMIX = AugMixSettings()
BA = BatchAugmentSettings()


def per_image(transform: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``transform`` (uint8 3 x H x W in and out) applied to each image of a float batch in [0, 1].

    Batches come from uint8 images (/255), so the round trip is exact; the transform runs on the
    CPU so its draws come from the CPU generator whatever the device."""
    u8 = x.detach().clamp(0, 1).mul(255).round_().to(device="cpu", dtype=torch.uint8)
    out = torch.stack([transform(img) for img in u8]).to(x.device).float().div_(255)
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def _augmenter(transform: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    return lambda x: per_image(transform, x)


def _cross_entropy_of(augment: Callable[[Tensor], Tensor] | None):
    def loss(step: Step, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        value = step.ce(step.forward(x if augment is None else augment(x)), y)
        return value, {"ce": value.item()}

    return loss


def _augmix_loss(augment: Callable[[Tensor], Tensor]):
    def loss(step: Step, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        # The three views in one forward pass, so BatchNorm sees all of them (the official code).
        logits_clean, logits_aug1, logits_aug2 = step.forward(torch.cat([x, augment(x), augment(x)])).split(len(x))
        ce = step.ce(logits_clean, y)
        jsd = js_divergence_loss(logits_clean, logits_aug1, logits_aug2)
        value = ce + AUGMIX.jsd_weight * jsd
        return value, {"ce": ce.item(), "jsd": jsd.item()}

    return loss


def _batch_augment_loss(augment: Callable[[Tensor], Tensor] | None, m: int):
    def loss(step: Step, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        copies = [random_crop_flip(x) for _ in range(m)]
        if augment is not None:
            copies = [augment(c) for c in copies]
        value = step.ce(step.forward(torch.cat(copies)), y.repeat(m))
        return value, {"ce": value.item()}

    return loss


_trivial = _augmenter(v2.TrivialAugmentWide())
_auto = _augmenter(v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10))
_augmix = _augmenter(v2.AugMix(severity=AUGMIX.severity, mixture_width=AUGMIX.width,
                               chain_depth=AUGMIX.depth, alpha=AUGMIX.alpha, all_ops=AUGMIX.all_ops))

register_method(Method("pad_crop", "Pad-Crop", "the CIFAR recipe's random crop (4 px padding) + flip",
                       _cross_entropy_of(None)))
register_method(Method("trivialaugment", "TA", "Müller & Hutter, 2021 (TrivialAugment-Wide)",
                       _cross_entropy_of(_trivial), augment=_trivial))
register_method(Method("autoaugment", "AA", "Cubuk et al., 2019 (AutoAugment, CIFAR-10 policy)",
                       _cross_entropy_of(_auto), augment=_auto))
register_method(Method("augmix", "AugMix", "Hendrycks et al., 2019 (AugMix + JSD)", _augmix_loss(_augmix),
                       augment=_augmix, passes=3.0, settings=AUGMIX))
register_method(Method("ba", "BA", f"Hoffer et al., 2020 (Batch Augmentation, M = {BA.m})",
                       _batch_augment_loss(None, BA.m), passes=float(BA.m), crops=True, settings=BA))
register_method(Method("ba_aa", "BA (AA)", f"Hoffer et al., 2020 (Batch Augmentation with AutoAugment, M = {BA.m})",
                       _batch_augment_loss(_auto, BA.m), augment=_auto, passes=float(BA.m), crops=True,
                       settings=BA))
