"""Layer-wise entropy analysis (paper section 3.1, eq. 4) and prediction entropy (eq. 7).

For a layer with activations chi (flattened per sample to d values), eq. 4 treats
p = softmax(chi) as a distribution over the d neurons and reports its Shannon entropy (natural
log). log(d) is the maximum, reached by constant activations. Two readings of "a layer's
neurons" exist for conv maps:

* ``pooled=False`` (default): all C*H*W activations of the map, as eq. 4 is written;
* ``pooled=True``: the map is averaged over its spatial positions first (C values), as
  Democratic Training (Sun et al., 2025), the paper's inspiration, does. Transformer token
  maps (N, T, D) are averaged over tokens.

Entropies of layers with different widths are on different scales (their maxima are
log(d)); :func:`normalised` divides by log(d) when layers are compared side by side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import DemHECError, eval_mode

__all__ = ["layer_entropy", "layer_widths", "normalised", "prediction_entropy", "softmax_entropy"]


def softmax_entropy(z: Tensor, dim: int = -1) -> Tensor:
    """Shannon entropy (nats) of softmax(z) along ``dim``, computed stably with log-softmax."""
    logp = F.log_softmax(z.float(), dim=dim)
    return -(logp.exp() * logp).sum(dim=dim)


def prediction_entropy(logits: Tensor) -> Tensor:
    """Eq. 7: per-sample entropy of the predictive distribution softmax(logits).

    The paper adds a small epsilon inside the log for stability; log-softmax makes that
    unnecessary and keeps the value exact.
    """
    return softmax_entropy(logits, dim=-1)


def _activation(out: object) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise DemHECError(f"layer output of type {type(out).__name__} is not a tensor")


def _flatten(a: Tensor, pooled: bool) -> Tensor:
    if pooled and a.dim() == 4:
        a = a.mean(dim=(2, 3))
    elif pooled and a.dim() == 3:
        a = a.mean(dim=1)
    return a.flatten(1)


def default_layers(model: nn.Module) -> tuple[str, ...]:
    """The natural stages of a registry model (stem, stages, penultimate features, logits)."""
    stages = getattr(model, "stages", None)
    if not stages:
        raise DemHECError(
            f"{type(model).__name__} does not declare .stages; pass layers=[...] with names "
            "from model.named_modules()"
        )
    return tuple(stages)


@torch.no_grad()
def layer_entropy(
    model: nn.Module,
    x: Tensor,
    layers: Sequence[str] | None = None,
    *,
    pooled: bool = False,
    batch_size: int | None = None,
) -> dict[str, Tensor]:
    """Eq. 4 for each named layer: per-sample entropy of softmax over that layer's activations.

    ``layers`` are names from ``model.named_modules()`` ("" is the whole model, i.e. the
    logits); ``None`` uses ``model.stages`` of registry models. The model is run in eval mode
    (its mode is restored) through forward hooks, so any ``nn.Module`` works. Returns a dict
    layer name -> tensor of shape (N,) on the CPU.
    """
    names = tuple(layers) if layers is not None else default_layers(model)
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise DemHECError(f"unknown layer(s) {missing}; see model.named_modules()")
    results: dict[str, list[Tensor]] = {n: [] for n in names}
    handles = []
    for n in names:
        def hook(_m, _inp, out, n=n):
            results[n].append(softmax_entropy(_flatten(_activation(out), pooled)).cpu())
        handles.append(modules[n].register_forward_hook(hook))
    try:
        with eval_mode(model):
            step = batch_size or len(x)
            for i in range(0, len(x), step):
                model(x[i : i + step])
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(v) for n, v in results.items()}


def layer_widths(model: nn.Module, x: Tensor, layers: Sequence[str] | None = None,
                 *, pooled: bool = False) -> dict[str, int]:
    """Each layer's width d for inputs shaped like ``x``: the number of values eq. 4's softmax
    runs over, so that log(d) is the largest entropy the layer can reach."""
    names = tuple(layers) if layers is not None else default_layers(model)
    widths: dict[str, int] = {}
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise DemHECError(f"unknown layer(s) {missing}; see model.named_modules()")
    handles = [
        modules[n].register_forward_hook(
            lambda _m, _i, out, n=n: widths.__setitem__(n, _flatten(_activation(out), pooled).shape[1])
        )
        for n in names
    ]
    try:
        with eval_mode(model), torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return widths


def normalised(entropies: dict[str, Tensor], model: nn.Module, x: Tensor,
               *, pooled: bool = False) -> dict[str, Tensor]:
    """Divide each layer's entropy by its maximum log(d), d = that layer's width for ``x``, so
    layers of different widths share one scale (a width-1 layer is left as it is)."""
    widths = layer_widths(model, x, list(entropies), pooled=pooled)
    return {n: e / math.log(widths[n]) if widths[n] > 1 else e for n, e in entropies.items()}
