"""Training batches: uint8 images kept on the device, drawn per (seed, epoch) as float batches with
the CIFAR zoo's crop + flip augmentation, shared out across data-parallel ranks; and the checks
that turn a user's data (arrays, a dataset, ready batches) into them."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import DemHECError, check_choice, check_range
from .data import ImageArrays, dataset_to_arrays
from .distributed import rank_and_world

__all__ = ["AUGMENTS", "CROP_PADDING", "TensorBatches", "as_batches", "as_uint8", "check_labels",
           "num_classes_of", "random_crop_flip"]

AUGMENTS = ("none", "crop_flip")
# CIFAR zoo training recipe (chenyaofo/pytorch-cifar-models): RandomCrop(32, padding=4) with
# zero fill + RandomHorizontalFlip.
CROP_PADDING = 4


def _crop_flip(x: Tensor, padding: int, dy: Tensor, dx: Tensor, flip: Tensor) -> Tensor:
    """Crop each zero-padded image at (dy, dx) and mirror it where ``flip``, as one gather."""
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = dy[:, None] + torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    cols = dx[:, None] + torch.where(flip[:, None], w - 1 - cols, cols)
    ni = torch.arange(n, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[ni, ci, rows[:, None, :, None], cols[:, None, None, :]]


def _draw_crop_flip(
    n: int, padding: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor, Tensor]:
    device = generator.device if generator is not None else "cpu"
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device=device)
    flip = torch.randint(0, 2, (n,), generator=generator, device=device).bool()
    return offsets[0], offsets[1], flip


def random_crop_flip(
    x: Tensor, padding: int = CROP_PADDING, generator: torch.Generator | None = None
) -> Tensor:
    """Random crop after ``padding`` zero pixels per side, then a random horizontal flip.

    The CIFAR zoo training augmentation, applied to an N x C x H x W batch (any dtype) with
    batched tensor ops on ``x``'s device; the randomness comes from ``generator``.
    """
    check_range("padding", padding, 0, integer=True)
    dy, dx, flip = (t.to(x.device) for t in _draw_crop_flip(len(x), padding, generator))
    return _crop_flip(x, padding, dy, dx, flip)


def _epoch_seed(seed: int, epoch: int) -> int:
    # SeedSequence mixes (seed, epoch) so neighbouring epochs get unrelated streams.
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0])


class TensorBatches:
    """Mini-batches from uint8 images held on the device, reproducible per (seed, epoch).

    ``epoch(e)`` draws the permutation and all augmentation randomness of epoch ``e`` up front
    from a CPU ``torch.Generator`` seeded by (seed, e): the batches do not depend on the device,
    on earlier epochs, or on ``skip``, so a run resumed mid-epoch gets the identical remaining
    batches.

    Data-parallel runs (``world_size`` > 1) play the role of a ``DistributedSampler``: every
    rank draws the same permutation, a global batch holds ``batch_size * world_size`` images,
    and ``rank`` takes its contiguous ``batch_size`` of them, so the ranks together see exactly
    the batches (and augmentations) of one process with batch ``batch_size * world_size``.
    """

    def __init__(
        self,
        images: Tensor | np.ndarray,
        labels: Tensor | np.ndarray | Sequence[int],
        batch_size: int = 128,
        *,
        shuffle: bool = True,
        augment: str = "none",
        seed: int = 0,
        device: str | torch.device = "cpu",
        drop_last: bool = False,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if isinstance(images, np.ndarray):
            if images.ndim != 4 or images.shape[-1] != 3:
                raise DemHECError(f"numpy images must be N x H x W x 3, got {images.shape}")
            images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise DemHECError(
                f"images must be uint8 N x C x H x W, got {images.dtype} {tuple(images.shape)}"
            )
        # A tensor (e.g. another loader's, already on the GPU) is kept as one: numpy cannot read CUDA memory.
        labels = (labels.to(torch.long) if isinstance(labels, torch.Tensor)
                  else torch.as_tensor(np.asarray(labels), dtype=torch.long))
        if labels.shape != (len(images),):
            raise DemHECError(f"labels must have shape ({len(images)},), got {tuple(labels.shape)}")
        self.batch_size = check_range("batch_size", batch_size, 1, integer=True)
        self.augment = check_choice("augment", augment, AUGMENTS)
        self.seed = check_range("seed", seed, 0, integer=True)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.channels_last = channels_last
        self.world_size = check_range("world_size", world_size, 1, integer=True)
        self.rank = check_range("rank", rank, 0, world_size - 1, integer=True)
        if world_size > 1 and not drop_last:
            raise DemHECError("data-parallel batches need drop_last=True (every rank the same count)")
        self.device = torch.device(device)
        self.images = images.contiguous().to(self.device)
        self.labels = labels.to(self.device)
        if drop_last and len(self.images) < self.global_batch_size:
            raise DemHECError(f"drop_last with {len(self.images)} images < one global batch "
                              f"({batch_size} x {world_size} ranks)")

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def __len__(self) -> int:
        n, b = self.num_samples, self.global_batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield (float images in [0,1], labels) for ``epoch``, starting at batch ``skip``."""
        check_range("epoch", epoch, 0, integer=True)
        check_range("skip", skip, 0, len(self), integer=True)
        n = self.num_samples
        g = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        order = order.to(self.device)
        if self.augment == "crop_flip":
            dy, dx, flip = (t.to(self.device) for t in _draw_crop_flip(n, CROP_PADDING, g))
        for k in range(skip, len(self)):
            start = k * self.global_batch_size + self.rank * self.batch_size
            sl = slice(start, start + self.batch_size)
            x = self.images[order[sl]]
            if self.augment == "crop_flip":
                x = _crop_flip(x, CROP_PADDING, dy[sl], dx[sl], flip[sl])
            x = x.float().div_(255)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[order[sl]]


def as_batches(data: Any, cfg: Any, device: torch.device, channels_last: bool,
               shuffle: bool = True) -> TensorBatches:
    """``data`` (:class:`TensorBatches`, :class:`~demhec.data.ImageArrays`, an (images, labels)
    pair or a dataset) as this rank's batches with ``cfg``'s batch size, augmentation and seed;
    ready batches are taken as they are once they are checked to be this rank's."""
    rank, world = rank_and_world()
    if isinstance(data, TensorBatches):
        if (data.rank, data.world_size) != (rank, world):
            raise DemHECError(f"TensorBatches built for rank {data.rank} of {data.world_size}, but "
                              f"this process is rank {rank} of {world}")
        return data
    if isinstance(data, ImageArrays):
        images, labels = data.images, data.labels
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        images, labels = data
    else:
        arrays = dataset_to_arrays(data)
        images, labels = arrays.images, arrays.labels
    images = as_uint8(images)
    return TensorBatches(
        images, labels, batch_size=cfg.batch_size, shuffle=shuffle, augment=cfg.augment,
        seed=cfg.seed, device=device, drop_last=shuffle, channels_last=channels_last,
        rank=rank, world_size=world,
    )


def as_uint8(images: Any) -> Any:
    """Accept uint8 images (HWC numpy or CHW tensor) or float images in [0,1] (CHW)."""
    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        return images
    t = torch.as_tensor(images)
    if t.dtype == torch.uint8:
        return t
    if not t.is_floating_point():
        raise DemHECError(f"images must be uint8 or float in [0,1], got dtype {t.dtype}")
    if t.dim() != 4 or t.shape[1] != 3:
        raise DemHECError(f"float images must be N x 3 x H x W, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise DemHECError("images contain NaN or infinite values")
    if t.min() < 0 or t.max() > 1:
        raise DemHECError(f"float images must lie in [0,1], got range [{t.min():.3g}, {t.max():.3g}]")
    return (t * 255).round().to(torch.uint8)


def check_labels(labels: Any, num_classes: int | None) -> None:
    """Raise unless every label is a class of a ``num_classes``-way model (None: not known)."""
    y = torch.as_tensor(labels)
    if num_classes is not None and len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise DemHECError(
            f"labels must lie in [0, {num_classes - 1}] for a {num_classes}-class model, "
            f"got range [{int(y.min())}, {int(y.max())}]"
        )


def num_classes_of(model: nn.Module) -> int | None:
    """The class count of ``model``: the width of its last ``nn.Linear`` (None without one)."""
    for m in reversed(list(model.modules())):
        if isinstance(m, nn.Linear):
            return m.out_features
    return None
