"""AugMax: adversarial composition of random augmentations (Wang et al., NeurIPS 2021).

AugMix (Hendrycks et al., 2019) mixes ``K`` random augmentation chains of an image with random
weights, ``x_mix = (1 - m) x + m sum_k w_k chain_k(x)`` with ``w ~ Dirichlet`` and
``m ~ Beta``. AugMax keeps the random chains (diversity) but chooses the mixing weights
adversarially (hardness): a few steps of projected sign-gradient ascent on the cross-entropy
over ``(w, m)`` per image, ``w = softmax(q)`` so that ``w`` stays on the simplex whatever the
step on ``q``, and ``m`` clipped to [0, 1] (the paper's method; the official code
VITA-Group/AugMax, ``utils/attacks.py`` and ``augmax_modules/augmax.py``). A step then trains on

    CE(f(x), y) + lambda JS(p(x), p(x_augmax), p(x_augmix))

with ``x_augmix`` an ordinary AugMix view of independent chains (``augmax_training_ddp.py``).

The official CIFAR defaults (``augmax_training_ddp.py``; :class:`AugMaxSettings`): 3 chains of
depth 1-3 at severity 3 over AugMix's 9 operations; the "friendly" attacker (FAT, Zhang et al.,
2020) with ``tau = 1``: at most 5 ascent steps of size 0.1 on ``q`` and ``m``, an image
dropping out of the ascent as soon as the model misclassifies it; ``q, m ~ U[0, 1)`` at the
start; the ascent maximises the summed cross-entropy; lambda = 10.

What the paper and code leave open or we do differently, and why:

* Ascent steps: 5, the code's default and the step count in the checkpoint path of its README's
  test example ("fat-1-untargeted-5-0.1_Lambda10.0"); the README's training commands pass
  ``--steps 10``. A field away.
* Normalisation during the ascent: the official code puts the model in eval mode (running
  statistics). A :class:`~.registry.Step` offers no eval-mode forward, so the ascent goes through
  ``step.forward(..., update_stats=False)``: the training-mode model normalising with the
  batch's statistics, its running statistics untouched (ours). The images' ascents are thereby
  coupled through the batch statistics, a second-order effect on the sign of each gradient.
  The ascent runs in fp32 with autocast off, as the library's own ascent (Alg. 2) does.
* The three training views go through one concatenated forward, as this library's AugMix does,
  so BatchNorm normalises them with the statistics of all three; the official code forwards
  them separately (the AugMax view through DuBIN's auxiliary BatchNorm). One forward per
  backward also keeps the step valid under DistributedDataParallel.
* DuBIN (dual batch-and-instance normalisation) is left out. It is an architecture change
  (instance normalisation on part of the channels of the early layers and a second, auxiliary
  set of BatchNorm statistics for the AugMax images, switched per pass), not a training loss;
  the comparison fine-tunes one fixed, pretrained ResNet-20, whose normalisation layers DuBIN
  would replace, and a Step exposes no route switch. So this is AugMax with plain BatchNorm,
  not the paper's headline AugMax-DuBIN.
* Operations: torchvision's AugMix operation set without the four that overlap the -C
  corruptions (``all_ops=False``: autocontrast, equalize, posterize, rotate, solarize, shear
  and translate in x and y), the same 9 operations as the official
  ``augmentations.augmentations``, and the same chains as this library's ``augmix``. The
  magnitudes are torchvision's: one of the first ``severity`` of 10 equally spaced levels, where
  the official code draws a level uniformly from [0.1, severity] / 10 of the maximum.
* The chains are drawn per image on the CPU (each image its own chains, as the official
  dataset wrapper does); the random start of ``q, m`` is drawn on the CPU too, so a run's
  randomness is the CPU generator's whatever the training device.
* The AugMix view mixes its chains in float with ``w ~ Dirichlet(1, 1, 1)``, ``m ~ Beta(1, 1)``
  (the official ``AugMixModule``), not rounded back to 8 bits as torchvision's AugMix is.
* The targeted variant of the ascent (``--targeted``, off by default) is left out.
* The ascent maximises the plain cross-entropy, without the run's label smoothing, as the
  official attacker does; its reduction (a sum there) does not matter to a sign step.

Cost: ``passes = steps + 3``, the ascent's forward and input-gradient passes (counted as one
image pass each, though they skip the weights' gradients; FAT stops some images or the whole
batch early) plus the forward and backward of the three training views.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import v2

from .._common import DemHECError, check_choice, check_range
from ..losses import js_divergence_loss
from .augment import per_image
from .registry import Forward, Method, Step, register_method

__all__ = ["ATTACKERS", "AUGMAX", "AugMaxSettings", "ascend_mixing", "augmax_loss", "augmix_chains",
           "augmix_view", "mix_chains"]

log = logging.getLogger(__name__)

# How the ascent treats an image the model already misclassifies: "fat" (friendly adversarial
# training: it drops out of the ascent after ``tau`` misclassified steps) or "pgd" (every image
# takes every step). The official code's --attacker.
ATTACKERS = ("fat", "pgd")


@dataclass(frozen=True)
class AugMaxSettings:
    """AugMax hyperparameters: the official code's CIFAR defaults (Wang et al., 2021;
    VITA-Group/AugMax, ``augmax_training_ddp.py`` and its README)."""

    severity: int = 3  # --aug_severity 3: operation strength, 1-10 (torchvision's levels)
    width: int = 3  # --mixture_width 3: augmentation chains mixed per image (K)
    depth: int = -1  # --mixture_depth -1: each chain draws its depth from {1, 2, 3}
    all_ops: bool = False  # augmentations.augmentations: the 9 operations, none overlapping -C
    steps: int = 5  # --steps 5: ascent steps on the mixing weights (the README's examples use 10)
    step_size: float = 0.1  # --alpha 0.1: sign-ascent step on q (w = softmax(q)) and on m
    attacker: str = "fat"  # --attacker fat; see ATTACKERS
    tau: int = 1  # --tau 1: FAT's budget of misclassified steps per image
    consistency_weight: float = 10.0  # --Lambda 10: the JS term's weight (README: CIFAR, TIN)
    # AugMixModule: Dirichlet(alpha) chain weights and Beta(alpha, alpha) skip weight of the
    # AugMix view (hard-coded 1 there).
    alpha: float = 1.0

    def __post_init__(self) -> None:
        check_range("AugMax severity", self.severity, 1, 10, integer=True)
        check_range("AugMax width", self.width, 1, integer=True)
        if self.depth != -1:
            check_range("AugMax depth (-1: random 1-3)", self.depth, 1, integer=True)
        check_range("AugMax steps", self.steps, 0, integer=True)
        check_range("AugMax step_size", self.step_size, 0.0, low_open=True)
        check_choice("AugMax attacker", self.attacker, ATTACKERS)
        check_range("AugMax tau", self.tau, 1, integer=True)
        check_range("AugMax consistency_weight", self.consistency_weight, 0.0)
        check_range("AugMax alpha", self.alpha, 0.0, low_open=True)


AUGMAX = AugMaxSettings()


class _Chain(v2.AugMix):
    """One AugMix chain, unmixed: torchvision's AugMix with a single chain whose mixing weight is
    1 and the original image's 0 (through the hook torchvision keeps for fixing its Dirichlet
    draws), so the operations, their magnitudes and their random draws are torchvision's."""

    def _sample_dirichlet(self, params: Tensor) -> Tensor:
        weights = torch.zeros_like(params)
        weights[..., -1] = 1  # [original, chain] = [0, 1]; a single chain's weight = 1
        return weights


def augmix_chains(x: Tensor, settings: AugMaxSettings = AUGMAX) -> Tensor:
    """``settings.width`` random AugMix chains of every image of a float N x 3 x H x W batch in
    [0, 1]: float N x K x 3 x H x W, still on the 8-bit grid, each image with its own chains.
    The draws are the CPU generator's."""
    chain = _Chain(severity=settings.severity, mixture_width=1, chain_depth=settings.depth,
                   all_ops=settings.all_ops)
    k = settings.width
    return per_image(lambda img: torch.cat([chain(img) for _ in range(k)]), x).unflatten(1, (k, -1))


def mix_chains(x: Tensor, chains: Tensor, w: Tensor, m: Tensor) -> Tensor:
    """AugMix's mixture ``(1 - m) x + m sum_k w_k chains_k`` per image: ``x`` N x C x H x W,
    ``chains`` N x K x C x H x W, chain weights ``w`` N x K, skip weight ``m`` N. Differentiable
    in ``w`` and ``m``, which is what AugMax ascends on."""
    aug = torch.einsum("nk,nkchw->nchw", w, chains)
    m = m.view(-1, 1, 1, 1)
    out = (1 - m) * x + m * aug
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def augmix_view(x: Tensor, settings: AugMaxSettings = AUGMAX) -> Tensor:
    """One AugMix view of ``x`` as AugMax trains with it: fresh chains mixed in float with
    ``w ~ Dirichlet(alpha)`` and ``m ~ Beta(alpha, alpha)`` (the official ``AugMixModule``)."""
    chains = augmix_chains(x, settings)
    n = len(x)
    w = torch.distributions.Dirichlet(torch.full((settings.width,), float(settings.alpha))).sample((n,))
    m = torch.distributions.Beta(float(settings.alpha), float(settings.alpha)).sample((n,))
    return mix_chains(x, chains, w.to(x.device, x.dtype), m.to(x.device, x.dtype))


def ascend_mixing(
    forward: Forward,
    x: Tensor,
    chains: Tensor,
    y: Tensor,
    settings: AugMaxSettings = AUGMAX,
    *,
    q: Tensor | None = None,
    m: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """AugMax's inner maximisation (Wang et al., 2021): the mixing weights of
    :func:`mix_chains` that maximise the cross-entropy of ``forward``, by ``settings.steps``
    sign-gradient ascent steps of ``settings.step_size`` on the chain-weight logits ``q``
    (``w = softmax(q)``, always on the simplex) and on ``m``, projected onto [0, 1] after each.
    With the "fat" attacker an image stops moving once the model has misclassified it
    ``settings.tau`` times, and the ascent ends when no image moves.

    ``q`` (N x K) and ``m`` (N) are the start, drawn from U[0, 1) on the CPU when not given.
    ``forward`` is called with ``update_stats=False``. Returns the final ``(w, m)``, detached;
    no parameter receives a gradient.
    """
    n, k = len(x), chains.shape[1]
    if chains.shape[0] != n or chains.shape[2:] != x.shape[1:]:
        raise DemHECError(f"chains must be N x K x {tuple(x.shape[1:])} for {n} images, "
                          f"got {tuple(chains.shape)}")
    if q is None:
        q = torch.rand(n, k)
    if m is None:
        m = torch.rand(n)
    q = q.detach().to(x.device, x.dtype)
    m = m.detach().to(x.device, x.dtype).clamp(0, 1)
    x, chains = x.detach(), chains.detach()
    budget = torch.full((n,), settings.tau, device=x.device)
    with torch.enable_grad(), torch.autocast(device_type=x.device.type, enabled=False):
        for t in range(settings.steps):
            q.requires_grad_(True)
            m.requires_grad_(True)
            logits = forward(mix_chains(x, chains, q.softmax(1), m), update_stats=False).float()
            active = None
            if settings.attacker == "fat":
                wrong = logits.argmax(1) != y
                budget = torch.where(wrong & (budget > 0), budget - 1, budget)
                active = budget > 0
                if not bool(active.any()):
                    log.debug("AugMax ascent: every image misclassified at step %d", t)
                    break
            loss = F.cross_entropy(logits, y, reduction="sum")
            grad_q, grad_m = torch.autograd.grad(loss, [q, m])
            with torch.no_grad():
                step_q, step_m = grad_q.sign(), grad_m.sign()
                if active is not None:
                    step_q, step_m = step_q * active[:, None], step_m * active
                q = q + settings.step_size * step_q
                m = (m + settings.step_size * step_m).clamp(0, 1)
    return q.detach().softmax(1), m.detach()


def augmax_loss(
    settings: AugMaxSettings = AUGMAX,
) -> Callable[[Step, Tensor, Tensor], tuple[Tensor, dict[str, float]]]:
    """The AugMax training loss of a step (``Method.loss``): ``CE(f(x), y) + lambda JS(p(x),
    p(x_augmax), p(x_augmix))`` (the official ``augmax_training_ddp.py``), the AugMax view from
    :func:`ascend_mixing` over fresh chains, the AugMix view from :func:`augmix_view`."""

    def loss(step: Step, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        chains = augmix_chains(x, settings)
        w, m = ascend_mixing(step.forward, x, chains, y, settings)
        x_max = mix_chains(x, chains, w, m)
        x_mix = augmix_view(x, settings)
        # The three views in one forward pass, so BatchNorm sees all of them (module docstring).
        logits_clean, logits_max, logits_mix = step.forward(torch.cat([x, x_max, x_mix])).split(len(x))
        ce = step.ce(logits_clean, y)
        jsd = js_divergence_loss(logits_clean, logits_max, logits_mix)
        value = ce + settings.consistency_weight * jsd
        ce_max = F.cross_entropy(logits_max.detach().float(), y)
        return value, {"ce": ce.item(), "jsd": jsd.item(), "ce_augmax": ce_max.item()}

    return loss


register_method(Method(
    "augmax", "AugMax",
    f"Wang et al., 2021 (AugMax + JSD, {AUGMAX.attacker.upper()} ascent, {AUGMAX.steps} steps, "
    "plain BatchNorm: no DuBIN)",
    augmax_loss(AUGMAX), passes=float(AUGMAX.steps + 3), settings=AUGMAX,
))
