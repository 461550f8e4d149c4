"""High-entropy sample generation by projected gradient ascent (paper Alg. 2, eq. 8-9)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ._common import DemHECError, check_choice, check_range, eval_mode
from .entropy import prediction_entropy, softmax_entropy
from .losses import forward_with_features

__all__ = ["OBJECTIVES", "SAMPLES", "high_entropy_samples", "uniform_ball_samples"]

OBJECTIVES = ("output", "features")
DIRECTIONS = ("high", "low")
# How x' is made: "ascent" (Alg. 2) or "uniform" (the random-noise control: a uniform point of
# the same eps-ball, no ascent).
SAMPLES = ("ascent", "uniform")


def uniform_ball_samples(x: Tensor, eps: float, *, generator: torch.Generator | None = None,
                         noise: Tensor | None = None) -> Tensor:
    """The random-noise control of x': a uniform point of the L-inf ball of radius
    ``eps`` around ``x``, clipped to [0, 1]; exactly the random start of Alg. 2 with no ascent
    step, so it never looks at a model. ``noise`` (uniform draws in [0, 1) shaped like ``x``)
    replaces the draws from ``generator``, as in :func:`high_entropy_samples`."""
    x = _pixel_units(x).detach().float()
    check_range("eps", eps, 0.0, 1.0)
    if noise is None:
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    elif noise.shape != x.shape:
        raise DemHECError(f"noise must be shaped like x {tuple(x.shape)}, got {tuple(noise.shape)}")
    return (x + (2 * noise.to(x.dtype) - 1) * eps).clamp(0, 1)


def high_entropy_samples(
    model: nn.Module,
    x: Tensor,
    eps: float = 8 / 255,
    step_size: float = 2 / 255,
    steps: int = 5,
    random_start: bool = True,
    *,
    objective: Literal["output", "features"] = "output",
    direction: Literal["high", "low"] = "high",
    head: str | None = None,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """Alg. 2: x' = argmax_{||x'-x||_inf <= eps, x' in [0,1]} H(x'), by sign-gradient ascent.

    ``objective="output"`` maximises the batch-mean prediction entropy (eq. 7), as eq. 8
    states; ``"features"`` maximises the entropy of softmax over the penultimate features g(x)
    (eq. 4 at the "final pooling" layer the paper mentions). ``direction="low"`` minimises
    instead, the Democratic Training direction, kept for the ablation.

    The model is put in eval mode (BatchNorm running statistics stay untouched) with
    parameter gradients off and autocast disabled (fp32 ascent), then restored exactly:
    mode, ``requires_grad`` flags and parameter ``.grad`` are as the caller left them.
    Returns a detached tensor in pixel units, like ``x``.

    ``x`` is float in [0, 1] or uint8 (converted by dividing by 255); anything else outside
    [0, 1], or NaN, is refused rather than clamped.

    ``noise`` (uniform draws in [0, 1) shaped like ``x``) replaces the random start's draws from
    ``generator``; data-parallel fine-tuning passes each rank its slice of the global batch's.
    """
    x = _pixel_units(x)
    check_range("eps", eps, 0.0, 1.0)
    check_range("step_size", step_size, 0.0, 1.0)
    check_range("steps", steps, 1, integer=True)
    check_choice("entropy objective", objective, OBJECTIVES)
    check_choice("entropy direction", direction, DIRECTIONS)
    sign = 1.0 if direction == "high" else -1.0

    x = x.detach().float()
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        with eval_mode(model), torch.autocast(device_type=x.device.type, enabled=False):
            x_adv = uniform_ball_samples(x, eps, generator=generator, noise=noise) if random_start else x.clone()
            for _ in range(steps):
                x_adv.requires_grad_(True)
                with torch.enable_grad():
                    if objective == "output":
                        h = prediction_entropy(model(x_adv))
                    else:
                        h = softmax_entropy(forward_with_features(model, x_adv, head)[1])
                    (grad,) = torch.autograd.grad(sign * h.mean(), x_adv)
                x_adv = x_adv.detach() + step_size * grad.sign()
                x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(0, 1)
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
    return x_adv.detach()


def _pixel_units(x: Tensor) -> Tensor:
    """``x`` as float pixels in [0, 1]: uint8 is converted explicitly; values outside [0, 1]
    (0..255 floats, say) or NaN would be clamped into nonsense by the projection, so refuse."""
    if x.dtype == torch.uint8:
        return x.float() / 255
    if not x.is_floating_point():
        raise DemHECError(f"images must be float in [0, 1] or uint8, got dtype {x.dtype}")
    if bool(torch.isnan(x).any()):
        raise DemHECError("images contain NaN")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        hint = "; divide 0..255 images by 255" if hi > 1.5 else ""
        raise DemHECError(f"images must be in [0, 1] (pixel units), got values from {lo:g} to {hi:g}{hint}")
    return x
