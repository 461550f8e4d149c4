"""Gaussian-noise augmentation (GNT, Rusak et al., 2020), the simple alternative to Dem-HEC's
high-entropy samples that ``DemHECConfig(noise_sigma=...)`` switches on."""

from __future__ import annotations

import torch
from torch import Tensor

from ..distributed import rank_and_world

__all__ = ["gaussian_augment"]


def gaussian_augment(x: Tensor, sigma: float, clean_share: float, gen: torch.Generator) -> Tensor:
    """Gaussian-noise augmentation (GNT, Rusak et al. 2020): each image gets N(0, s^2) pixel noise
    with its own s drawn uniformly from [0, ``sigma``], except a ``clean_share`` of the images,
    left clean; clipped to [0, 1]. Draws are made for the global batch and sliced per rank, so N
    ranks reproduce one process."""
    rank, world = rank_and_world()
    n = len(x)
    shape = (n * world, *x.shape[1:])
    s = torch.rand(n * world, generator=gen, device=x.device) * sigma
    s = torch.where(torch.rand(n * world, generator=gen, device=x.device) < clean_share, torch.zeros_like(s), s)
    z = torch.randn(shape, generator=gen, device=x.device, dtype=torch.float32)
    sl = slice(rank * n, (rank + 1) * n)
    return (x + s[sl].view(-1, 1, 1, 1).to(x.dtype) * z[sl].to(x.dtype)).clamp(0, 1)
