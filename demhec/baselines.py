"""Augmentation baselines of the paper's Table 3 (section 5.3), trained by this library.

Every baseline is the CIFAR zoo recipe (:class:`~demhec.training.TrainConfig`: SGD, cosine
schedule, random crop with 4 px padding + horizontal flip) with one more augmentation on top:

* ``pad_crop``: nothing more, the plain recipe (the table's "Pad-Crop" column);
* ``autoaugment``: AutoAugment with its CIFAR-10 policy (Cubuk et al., 2019);
* ``trivialaugment``: TrivialAugment-Wide (Müller & Hutter, 2021), the table's "TA";
* ``augmix``: AugMix with the Jensen-Shannon consistency loss (Hendrycks et al., 2019).

They run through the shared engine :func:`demhec.training.run_steps`, so checkpointing, resume and
the non-finite-loss stop behave as in base training. The extra augmentations act per image on
the CPU (each image draws its own sub-policy) and take their randomness from torch's global
RNG, which the engine seeds per step: a run is reproducible, independent of the device, and a
resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms import v2

from ._common import DemHECError, check_choice
from .runs import TrainRun
from .training import TrainConfig, data_parallel, prepare_data, run_steps

log = logging.getLogger(__name__)

__all__ = [
    "AUGMIX",
    "BASELINES",
    "AugMixSettings",
    "augment_batch",
    "js_divergence_loss",
    "train_baseline",
]

BASELINES = ("pad_crop", "autoaugment", "trivialaugment", "augmix")


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


AUGMIX = AugMixSettings()


def _transform(method: str) -> Callable[[Tensor], Tensor] | None:
    """The method's per-image torchvision transform (uint8 3 x H x W in and out), if any."""
    if method == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    if method == "trivialaugment":
        return v2.TrivialAugmentWide()
    if method == "augmix":
        return v2.AugMix(severity=AUGMIX.severity, mixture_width=AUGMIX.width,
                         chain_depth=AUGMIX.depth, alpha=AUGMIX.alpha, all_ops=AUGMIX.all_ops)
    return None


def _apply(x: Tensor, transform: Callable[[Tensor], Tensor] | None) -> Tensor:
    if transform is None:
        return x
    # Batches come from uint8 images (/255), so this round trip is exact; the transforms run on
    # the CPU so their random draws come from the CPU generator whatever the training device.
    u8 = x.detach().clamp(0, 1).mul(255).round_().to(device="cpu", dtype=torch.uint8)
    out = torch.stack([transform(img) for img in u8]).to(x.device).float().div_(255)
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def augment_batch(x: Tensor, method: str) -> Tensor:
    """Apply ``method``'s augmentation to every image of a float N x 3 x H x W batch in [0,1].

    The crop+flip that all baselines share is not included (the training batches carry it), so
    ``pad_crop`` returns ``x`` itself; ``augmix`` returns one AugMix view. Each image draws its
    own random operations from torch's global RNG; the result lies on the 1/255 grid of [0,1].
    """
    check_choice("baseline", method, BASELINES)
    return _apply(x, _transform(method))


def js_divergence_loss(logits_clean: Tensor, logits_aug1: Tensor, logits_aug2: Tensor) -> Tensor:
    """AugMix's Jensen-Shannon consistency loss (Hendrycks et al., 2019, eq. 1):
    ``JS(p_clean, p_aug1, p_aug2) = (KL(p_clean||M) + KL(p_aug1||M) + KL(p_aug2||M)) / 3`` with
    ``M`` the mean of the three softmax distributions, averaged over the batch.

    As in the official code, ``M`` is clamped to [1e-7, 1] before its log, which keeps the loss
    finite when a class probability underflows. The result is symmetric in its three inputs.
    """
    probs = [F.softmax(z.float(), dim=1) for z in (logits_clean, logits_aug1, logits_aug2)]
    log_mixture = torch.clamp((probs[0] + probs[1] + probs[2]) / 3, 1e-7, 1).log()
    return sum(F.kl_div(log_mixture, p, reduction="batchmean") for p in probs) / 3


def train_baseline(
    model: nn.Module,
    train_data: Any,
    method: str,
    config: TrainConfig = TrainConfig(),  # noqa: B008 - frozen, so sharing it is safe
    **run: Any,
) -> nn.Module:
    """Train ``model`` with an augmentation baseline of Table 3 (see :data:`BASELINES`).

    Same data forms and options as :func:`demhec.training.train`; the recipe is ``config``'s,
    whose ``augment`` must be "crop_flip" since every baseline builds on it. ``pad_crop``,
    ``autoaugment`` and ``trivialaugment`` minimise cross-entropy on the augmented batch;
    ``augmix`` minimises ``CE(f(x), y) + 12 JS(p(x), p(x_aug1), p(x_aug2))`` with two AugMix
    views per image, the three views in one forward pass (so BatchNorm sees all of them, as in
    the official code). A checkpoint only resumes a run of the same method and config. ``run``:
    the keywords of :class:`~demhec.runs.TrainRun`.
    """
    check_choice("baseline", method, BASELINES)
    if config.augment != "crop_flip":
        raise DemHECError(
            f"baselines build on the crop+flip recipe; config.augment must be 'crop_flip', "
            f"got {config.augment!r}"
        )
    options = TrainRun(**run)
    dev, batches = prepare_data(model, train_data, config, options)
    if batches.augment != "crop_flip":
        raise DemHECError(
            f"baselines build on the crop+flip recipe; the given TensorBatches must use "
            f"augment='crop_flip', got {batches.augment!r}"
        )
    transform = _transform(method)
    smoothing = config.label_smoothing
    net = data_parallel(model, dev, options)

    def loss_fn(x: Tensor, y: Tensor, step: int) -> tuple[Tensor, dict[str, float]]:
        if method != "augmix":
            loss = F.cross_entropy(net(_apply(x, transform)), y, label_smoothing=smoothing)
            return loss, {"loss": loss.item()}
        views = torch.cat([x, _apply(x, transform), _apply(x, transform)])
        logits_clean, logits_aug1, logits_aug2 = net(views).split(len(x))
        ce = F.cross_entropy(logits_clean, y, label_smoothing=smoothing)
        jsd = js_divergence_loss(logits_clean, logits_aug1, logits_aug2)
        loss = ce + AUGMIX.jsd_weight * jsd
        return loss, {"ce": ce.item(), "jsd": jsd.item(), "loss": loss.item()}

    log.info("training baseline %s for %d epochs", method, config.epochs)
    return run_steps(f"baseline_{method}", model, batches, config, loss_fn, device=dev, run=options)
