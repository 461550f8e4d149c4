"""Data-parallel training, fine-tuning and evaluation on top of ``torch.distributed``.

The engine is PyTorch's own: processes launched by ``torchrun`` (or by the user), a process
group, and :class:`~torch.nn.parallel.DistributedDataParallel` around the student. This module
holds the few pieces the training loops need on top of it:

* :func:`setup` joins the process group that ``torchrun`` describes in the environment and
  picks each rank's device;
* :func:`rank_and_world` / :func:`is_main` say who we are (0 and 1 without a process group, so
  every caller works unchanged in one process);
* :func:`gather_with_grad` concatenates a batch-sharded tensor across ranks with gradients, so
  InfoNCE (eq. 10) sees the global batch's negatives, as in one process;
* :func:`gather` / :func:`mean_over_ranks` collect evaluation outputs and logged metrics;
* :func:`data_parallel` wraps the student in DDP inside a process group (and compiles it
  when asked), leaving it unchanged in one process.

Design: rank ``r`` of ``W`` takes the ``r``-th contiguous ``1/W`` of every global batch (see
:class:`~demhec.batches.TensorBatches`), so ``W`` processes with per-rank batch ``B`` see exactly
the images (and augmentations) one process sees with batch ``W*B``; gradients are averaged by
DDP; checkpoints and results are written by rank 0 only.
"""

from __future__ import annotations

import datetime
import logging
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ._common import DemHECError
from .runs import TrainRun

log = logging.getLogger(__name__)

__all__ = ["barrier", "data_parallel", "gather", "gather_with_grad", "is_main", "mean_over_ranks",
           "rank_and_world", "setup", "shard", "teardown"]


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process writes checkpoints, results and progress bars (rank 0)."""
    return rank_and_world()[0] == 0


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if rank_and_world()[1] > 1:
        dist.barrier()


def setup(device: str | None = None, backend: str | None = None,
          timeout_minutes: float = 30.0) -> str:
    """Join the process group described by ``torchrun``'s environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) and return this rank's device.

    Without those variables (a plain ``python`` run) nothing happens and ``device`` (default
    "cuda" when available, else "cpu") is returned. Under ``torchrun`` each rank gets
    ``cuda:<LOCAL_RANK>`` and NCCL when CUDA is available, else the CPU and gloo; an explicit
    ``device="cpu"`` forces gloo on CPU.
    """
    default = device or ("cuda" if torch.cuda.is_available() else "cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return default
    if not dist.is_available():
        raise DemHECError("this PyTorch build has no torch.distributed; run in one process")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = default.startswith("cuda")
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise DemHECError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) "
                              "are visible; lower --nproc_per_node")
        torch.cuda.set_device(local_rank)
        dev = f"cuda:{local_rank}"
    elif default == "cpu":
        dev = "cpu"
    else:
        raise DemHECError(f"data-parallel runs support cpu and cuda devices, got {default!r}")
    if not dist.is_initialized():
        _bind_no_group()
        dist.init_process_group(backend or ("nccl" if use_cuda else "gloo"),
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    log.info("rank %d/%d on %s (%s)", dist.get_rank(), dist.get_world_size(), dev, dist.get_backend())
    return dev


def _bind_no_group() -> None:
    """Import ``torch.distributed.nn`` before the process group exists.

    Its functions take ``group=group.WORLD`` as a default argument, evaluated when the module is
    first imported. Imported after ``init_process_group`` (torchvision imports it through
    ``torch._dynamo``, and the CLI imports torchvision lazily, after :func:`setup`), ten function
    defaults hold the default group, so ``destroy_process_group`` cannot free it: gloo's threads
    (``gloo_tcp_loop``, ``pt_gloo_runloop``) then outlive :func:`teardown` and are torn down
    with the interpreter, where rank 1 of ``demhec evaluate`` was seen to abort with "terminate
    called without an active exception". Imported first, those defaults are None."""
    import torch.distributed.nn  # noqa: F401


def teardown() -> None:
    """Leave the process group, if one was joined (safe to call in any case): its backend's
    threads are joined here, not at interpreter exit (see :func:`_bind_no_group`)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(n: int, rank: int, world: int) -> slice:
    """The contiguous part of ``n`` items that ``rank`` of ``world`` handles (sizes differ by at
    most one, earlier ranks larger)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        world = dist.get_world_size()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.n = dist.get_rank(), len(x)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        # Every rank's loss depends on every rank's slice: sum the gradients of all ranks'
        # losses, then keep this rank's slice. With DDP's averaging this gives the gradient of
        # the loss one process computes on the global batch.
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate equally sized per-rank batches along dim 0, differentiably (identity in one
    process). Used for InfoNCE's in-batch negatives."""
    if rank_and_world()[1] == 1:
        return x
    return _GatherWithGrad.apply(x)


def gather(x: Tensor) -> Tensor:
    """Concatenate per-rank tensors (sizes may differ by rank) along dim 0 on every rank, in
    rank order; identity in one process."""
    rank, world = rank_and_world()
    if world == 1:
        return x
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([len(x)], device=x.device))
    sizes = [int(s.item()) for s in sizes]
    pad = max(sizes) - len(x)
    padded = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]) if pad else x.contiguous()
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def mean_over_ranks(values: dict[str, float], device: torch.device | str = "cpu") -> dict[str, float]:
    """The mean over ranks of each logged value (one all-reduce); unchanged in one process."""
    if rank_and_world()[1] == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def data_parallel(module: nn.Module, dev: torch.device, run: TrainRun) -> nn.Module:
    """``module`` wrapped in DDP inside a process group (else unchanged), then compiled with
    ``torch.compile`` when ``run.compile`` is True or a backend name."""
    sync_bn, compile = run.sync_bn, run.compile
    if compile is not False and not isinstance(compile, (bool, str)):
        raise DemHECError(f"compile must be True, False or a torch.compile backend name, got {compile!r}")
    net = _wrap_ddp(module, dev, sync_bn)
    if compile:
        net = torch.compile(net) if compile is True else torch.compile(net, backend=compile)
    return net


def _wrap_ddp(module: nn.Module, dev: torch.device, sync_bn: bool) -> nn.Module:
    if rank_and_world()[1] == 1:
        if sync_bn:
            log.warning("sync_bn has no effect in a single process")
        return module
    if sync_bn:
        if dev.type != "cuda":
            raise DemHECError("sync_bn needs CUDA devices (SyncBatchNorm has no CPU kernel)")
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    ids = [dev.index] if dev.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)
