"""Batched prediction: a model's logits for a set of images, in eval mode and without gradients,
shared out across data-parallel ranks.

Both the evaluation (:mod:`demhec.evaluation`) and the test-time adaptation
(:mod:`demhec.adaptation`) score images through this module, which needs neither of them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ._common import eval_mode
from .distributed import gather, rank_and_world, shard

__all__ = ["as_float_images", "predict"]


def _to_float_batch(chunk: Any, device: torch.device) -> Tensor:
    if isinstance(chunk, np.ndarray):
        chunk = torch.from_numpy(np.array(chunk))  # a copy: cached splits are read-only maps
    chunk = chunk.to(device, non_blocking=True)
    if chunk.dtype == torch.uint8:
        if chunk.shape[-1] == 3 and chunk.shape[1] != 3:
            chunk = chunk.permute(0, 3, 1, 2)
        return chunk.float().div_(255)
    return chunk.float()


def as_float_images(images: Any, device: str | torch.device = "cpu") -> Tensor:
    """uint8 N x H x W x 3 (or N x 3 x H x W) images as float N x 3 x H x W in [0,1]."""
    return _to_float_batch(images, torch.device(device))


@torch.no_grad()
def predict(
    model: nn.Module,
    images: Any,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    channels_last: bool = False,
) -> Tensor:
    """Logits for ``images`` (uint8 N x H x W x 3 / N x 3 x H x W, or float in [0,1]), in
    eval mode, batched, without gradients. Returns a CPU float tensor (N, K).

    Inside a process group each rank predicts its contiguous share and every rank gets all
    logits back, in order, so every metric equals the single-process one."""
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    rank, world = rank_and_world()
    part = shard(len(images), rank, world)
    out = []
    with eval_mode(model):
        for i in range(part.start, part.stop, batch_size):
            x = _to_float_batch(images[i : min(i + batch_size, part.stop)], dev)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out.append(model(x).float())
    if world > 1:
        k = out[0].shape[1] if out else _num_outputs(model, images, dev)
        local = torch.cat(out) if out else torch.empty((0, k), device=dev)
        return gather(local).cpu()
    return torch.cat(out).cpu() if out else torch.empty(0)


def _num_outputs(model: nn.Module, images: Any, dev: torch.device) -> int:
    with eval_mode(model):
        return int(model(_to_float_batch(images[:1], dev)).shape[1])
