"""How a run runs, as opposed to what it computes: the keywords that every training entry point
(:func:`~demhec.training.train`, :func:`~demhec.training.finetune`,
:func:`~demhec.training.train_baseline`) and every evaluation entry point
(:func:`~demhec.evaluation.evaluate`, :func:`~demhec.evaluation.paired_gain`) accept.

They are defined once, here; the entry points take them as keywords and the CLI derives its
flags from these fields (``demhec.cli``), so a new one reaches every entry point and the CLI.
None of them changes the numbers a run produces, only where, how fast and how visibly it runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ._common import check_device

__all__ = ["EvalRun", "TrainRun"]


@dataclass(frozen=True)
class TrainRun:
    """The keywords shared by the training loops."""

    device: str | torch.device | None = None  # where to train (None: the model's device)
    channels_last: bool = False  # channels-last memory format: faster convolutions, same numbers
    checkpoint: str | os.PathLike | None = None  # resumable checkpoint file; a re-run resumes from it
    checkpoint_every: int = 0  # steps between resumable checkpoints (also at each epoch's end)
    progress: bool = False  # show a progress bar
    on_step: Callable[[int, dict[str, float]], None] | None = None  # called with (step, logged losses)
    sync_bn: bool = False  # under torchrun: synchronise BatchNorm statistics across ranks (CUDA)
    compile: bool | str = False  # torch.compile the forward (True, or a backend name)

    def __post_init__(self) -> None:
        _check_run(self)

    def keywords(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EvalRun:
    """The keywords shared by the evaluation entry points."""

    batch_size: int = 256  # images per forward pass
    device: str | torch.device | None = None  # where to evaluate (None: the model's device)
    channels_last: bool = False  # channels-last memory format: faster convolutions, same numbers
    workers: int | None = None  # processes generating corrupted images (None: one per CPU)
    progress: bool = False  # show a progress bar

    def __post_init__(self) -> None:
        _check_run(self)

    def keywords(self) -> dict[str, Any]:
        return asdict(self)


def _check_run(run: TrainRun | EvalRun) -> None:
    if run.device is not None:
        check_device(run.device)
