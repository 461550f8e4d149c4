"""Test-time adaptation baselines: BatchNorm statistics adaptation and TENT.

Neither is part of the paper; they are the cheapest family the corruption-robustness field
compares against, since they need no training, only the unlabelled corrupted test images:

* ``"bn"``: BatchNorm statistics adaptation (Schneider et al., 2020, "Improving robustness
  against common corruptions by covariate shift adaptation", eq. 2). Each BatchNorm layer
  normalises a test batch of n images with

      mu = N / (N + n) * mu_s + n / (N + n) * mu_t,
      sigma^2 = N / (N + n) * sigma_s^2 + n / (N + n) * sigma_t^2,

  where mu_s, sigma_s^2 are the running (training) statistics, mu_t, sigma_t^2 the batch's
  mean and biased variance over images and positions, and N the prior strength (a pseudo
  sample size). N = 0 is full adaptation, the paper's headline setting and our default.
* ``"tent"``: TENT (Wang et al., 2021, "Tent: fully test-time adaptation by entropy
  minimization"). BatchNorm normalises with each test batch's statistics (N = 0) and only
  its affine parameters (gamma, beta) are trained, online: for every batch one forward pass
  gives the predictions, then one optimiser step on the mean prediction entropy (eq. 7 of
  the Dem-HEC paper, the same quantity). Defaults are Wang et al.'s CIFAR-10-C setting:
  Adam, learning rate 1e-3, betas (0.9, 0.999), no weight decay, batch 200.

Both work on a copy of the model made per test set (one corruption cell), so cells do not
leak into each other and the caller's model is never changed. The test stream is the set in
a seeded random order: sets stored class by class (ImageFolder, the CPU reproduction's split)
would otherwise give single-class batches, whose statistics are the class's, not the
corruption's; CIFAR-10-C, on which both methods were evaluated, is in the (random) order of
the CIFAR-10 test set.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import DemHECError, check_choice, check_range
from .distributed import rank_and_world
from .entropy import softmax_entropy
from .prediction import as_float_images, predict

log = logging.getLogger(__name__)

__all__ = [
    "ADAPT_METHODS",
    "AdaptConfig",
    "adaptation_cost",
    "adapted_model",
    "adaptive_predict",
    "has_batch_norm",
    "prior_batch_norm",
]

ADAPT_METHODS = ("bn", "tent")


@dataclass(frozen=True)
class AdaptConfig:
    """Settings of a test-time adaptation method (see the module docstring for the sources).

    ``prior``: N of Schneider et al.'s eq. 2 for ``"bn"`` (0 = full adaptation; TENT always
    uses 0, as Wang et al. do). ``lr``, ``betas``: TENT's Adam. ``batch_size``: the test batch
    n (Wang et al. use 200 on CIFAR-10-C). ``order_seed``: the seed of the stream's order.
    """

    method: str = "bn"
    prior: float = 0.0
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 200
    order_seed: int = 0

    def __post_init__(self) -> None:
        check_choice("adapt method", self.method, ADAPT_METHODS)
        check_range("prior", self.prior, 0)
        check_range("lr", self.lr, 0, low_open=True)
        check_range("batch_size", self.batch_size, 1, integer=True)
        check_range("order_seed", self.order_seed, 0, integer=True)


def _batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def has_batch_norm(model: nn.Module) -> bool:
    """Whether both methods apply to ``model`` (they adapt BatchNorm layers only; a ViT's
    LayerNorms normalise each image by itself and have no test-set statistics to re-estimate)."""
    return bool(_batch_norms(model))


def prior_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: Tensor, prior: float) -> Tensor:
    """Schneider et al.'s eq. 2: normalise ``x`` (N, C, ...) with the source statistics of
    ``bn`` mixed with the batch's, weights N/(N+n) and n/(N+n), then apply ``bn``'s affine
    transform. Gradients flow through the batch statistics, as in a training-mode BatchNorm
    (TENT differentiates through them too)."""
    if prior == 0:  # the batch's statistics alone: PyTorch's fused training-mode kernel
        return F.batch_norm(x, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
    if bn.running_mean is None or bn.running_var is None:
        raise DemHECError("prior > 0 needs BatchNorm layers with running statistics")
    dims = [0, *range(2, x.dim())]
    w = prior / (prior + x.shape[0])
    mean = w * bn.running_mean + (1 - w) * x.mean(dims)
    var = w * bn.running_var + (1 - w) * x.var(dims, unbiased=False)  # BatchNorm's batch variance
    shape = (1, -1) + (1,) * (x.dim() - 2)
    y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + bn.eps)
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    return y


def adapted_model(model: nn.Module, config: AdaptConfig) -> tuple[nn.Module, torch.optim.Optimizer | None]:
    """A copy of ``model`` whose BatchNorm layers normalise with eq. 2's statistics (prior
    ``config.prior`` for "bn", 0 for "tent"), in eval mode otherwise (dropout off); for
    "tent" also the Adam optimiser over the BatchNorm affine parameters, the only ones that
    require gradients. ``model`` itself is not touched."""
    norms = _batch_norms(model)
    if not norms:
        raise DemHECError(f"{type(model).__name__} has no BatchNorm layers; test-time adaptation "
                          f"({config.method}) adapts BatchNorm only")
    copy_ = copy.deepcopy(model).eval()
    prior = config.prior if config.method == "bn" else 0.0
    for bn in _batch_norms(copy_):
        # An instance attribute shadows the class's forward: only this copy changes.
        bn.forward = lambda x, bn=bn: prior_batch_norm(bn, x, prior)  # type: ignore[method-assign]
    if config.method == "bn":
        for p in copy_.parameters():
            p.requires_grad_(False)
        return copy_, None
    params = []
    for p in copy_.parameters():
        p.requires_grad_(False)
    for bn in _batch_norms(copy_):
        if bn.affine:
            bn.weight.requires_grad_(True)
            bn.bias.requires_grad_(True)
            params += [bn.weight, bn.bias]
    if not params:
        raise DemHECError("TENT needs BatchNorm layers with affine parameters; none has them")
    opt = torch.optim.Adam(params, lr=config.lr, betas=config.betas, weight_decay=0.0)
    return copy_, opt


def _stream(n: int, config: AdaptConfig) -> Iterator[np.ndarray]:
    order = np.random.default_rng(config.order_seed).permutation(n)
    for i in range(0, n, config.batch_size):
        yield order[i : i + config.batch_size]


def adaptive_predict(
    model: nn.Module,
    images: Any,
    config: AdaptConfig,
    *,
    device: str | torch.device | None = None,
    channels_last: bool = False,
) -> Tensor:
    """Logits (N, K) on the CPU, in the images' order, of ``model`` adapted at test time to
    ``images`` (uint8 N x H x W x 3 or float in [0, 1]) by ``config.method``; the adaptation
    starts afresh from ``model`` on every call, which is left unchanged. For TENT each batch's
    predictions come from the forward pass that its update step then uses (Wang et al.)."""
    if rank_and_world()[1] > 1:
        raise DemHECError("test-time adaptation runs in one process; evaluate it outside torchrun")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    net, opt = adapted_model(model, config)
    parts: list[tuple[np.ndarray, Tensor]] = []
    for idx in _stream(len(images), config):
        x = as_float_images(images[idx] if isinstance(images, np.ndarray) else images[torch.as_tensor(idx)], dev)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if opt is None:
            with torch.no_grad():
                logits = net(x)
        else:
            logits = net(x)
            loss = softmax_entropy(logits).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        parts.append((idx, logits.detach().float().cpu()))
    if not parts:
        return torch.empty(0)
    out = torch.empty((len(images), parts[0][1].shape[1]))
    for idx, logits in parts:
        out[torch.as_tensor(idx)] = logits
    return out


def adaptation_cost(
    model: nn.Module,
    images: Any,
    configs: dict[str, AdaptConfig | None],
    *,
    rounds: int = 2,
    batch_size: int = 200,
    device: str | torch.device | None = None,
) -> dict[str, dict[str, float]]:
    """What scoring ``images`` costs plainly (config None) and with each adaptation: seconds of
    process CPU time and of wall time, the minimum over ``rounds`` rounds run in turn (so that a
    change in the machine's load hits every method alike). On a shared CPU the process time of a
    single-threaded run is the stable measure; wall time also counts waiting for the cores."""
    check_range("rounds", rounds, 1, integer=True)
    out: dict[str, dict[str, float]] = {name: {"cpu_s": float("inf"), "wall_s": float("inf")} for name in configs}
    for _ in range(rounds):
        for name, cfg in configs.items():
            cpu, wall = time.process_time(), time.perf_counter()
            if cfg is None:
                predict(model, images, batch_size=batch_size, device=device)
            else:
                adaptive_predict(model, images, cfg, device=device)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            out[name] = {"cpu_s": min(out[name]["cpu_s"], cpu), "wall_s": min(out[name]["wall_s"], wall)}
    return out
