"""Run by ``torchrun`` from tests/test_distributed.py (and importable for its model and data).

Each rank fine-tunes and trains the same small model on its share of the same data through the
Python API; rank 0 writes the resulting state dicts to the folder given as argv[1].
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch
from torch import nn

from demhec import distributed
from demhec.checkpoints import read_checkpoint
from demhec.training import DemHECConfig, TrainConfig, finetune, train

PER_RANK_BATCH = 64
# A wide ascent radius so the random start visibly matters to the result.
FT = DemHECConfig(epochs=2, batch_size=PER_RANK_BATCH, lr=0.05, warmup_epochs=0.5, steps=2,
                  eps=0.25, step_size=0.05, freeze="none")
TR = TrainConfig(epochs=2, batch_size=PER_RANK_BATCH, lr=0.05)


class GNNet(nn.Module):
    """A small conv net with GroupNorm: no batch statistics, so ranks must match one process."""

    head_name = "fc"
    stages = ("stem", "layer1", "pool", "fc")

    def __init__(self, num_classes: int = 4, width: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.GroupNorm(2, width), nn.ReLU())
        self.layer1 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
                                    nn.GroupNorm(2, 2 * width), nn.ReLU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.layer1(self.stem(x - 0.5))))


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return GNNet()


def make_data(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)
    labels = (images.float().mean(dim=(1, 2, 3)) > 127.5).long() + 2 * (images[:, 0, 0, 0] > 127).long()
    return images, labels


class _Stop(Exception):
    pass


def main(out: Path) -> None:
    distributed.setup("cpu")
    data = make_data()
    states = {"finetune": finetune(make_model(), data, FT).state_dict(),
              "train": train(make_model(), data, TR).state_dict()}

    # Interrupted during step 3, after the checkpoint of step 2 (on_step runs before a step's
    # checkpoint is written, so stopping at step 2 would leave none), then resumed by a re-run.
    ckpt = out / "resume.ckpt"

    def stop(step: int, parts: dict) -> None:
        if step == 3:
            raise _Stop

    try:
        finetune(make_model(), data, FT, checkpoint=ckpt, checkpoint_every=2, on_step=stop)
    except _Stop:
        pass
    distributed.barrier()
    taken: list[int] = []
    states["resumed"] = finetune(make_model(), data, FT, checkpoint=ckpt,
                                 on_step=lambda step, _: taken.append(step)).state_dict()
    states["resumed_steps"] = taken

    # SIGTERM reaching rank 1 only, after step 1: both ranks finish step 2 (where the all-reduce
    # tells rank 0), write its checkpoint and stop; the re-run takes the rest.
    ckpt = out / "signalled.ckpt"
    done: list[int] = []

    def signal_rank1(step: int, parts: dict) -> None:
        done.append(step)
        if step == 1 and distributed.rank_and_world()[0] == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    try:
        finetune(make_model(), data, FT, checkpoint=ckpt, on_step=signal_rank1)
        stopped = False
    except KeyboardInterrupt:
        stopped = True
    (out / f"signalled_rank{distributed.rank_and_world()[0]}.json").write_text(
        json.dumps({"stopped": stopped, "steps": done}))
    distributed.barrier()
    if distributed.is_main():
        states["signalled_checkpoint_step"] = read_checkpoint(ckpt)["step"]
    taken = []
    states["signalled_resumed"] = finetune(make_model(), data, FT, checkpoint=ckpt,
                                           on_step=lambda step, _: taken.append(step)).state_dict()
    states["signalled_resumed_steps"] = taken
    if distributed.is_main():
        torch.save(states, out / "states.pt")
    distributed.teardown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
