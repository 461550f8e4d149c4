"""Operator calls and FLOPs of one plain and one Dem-HEC step (the GPU script's time estimate).

On a GPU, ResNet-20 at batch 128 is too small to keep the chip busy: a step costs roughly one
kernel launch per ATen operator call, so the count of calls (forward, backward and optimizer,
as dispatched, measured here on the CPU with a dispatch mode) prices a step better than its
FLOPs do. The count does not depend on the batch size; the FLOPs are reported at ``--batch-size``.

    python benchmarks/op_count.py --batch-size 128
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import demhec
from demhec.models import get_model


class CountOps(TorchDispatchMode):
    """Counts every ATen operator call that reaches a kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def one_step(kind: str, batch_size: int, mode: TorchDispatchMode) -> None:
    """Two optimizer steps of ``kind`` (plain / demhec), the second under ``mode``."""
    torch.manual_seed(0)
    n = batch_size * 2
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (n,))
    model = get_model("resnet20", num_classes=10)
    entered: list[bool] = []

    def on_step(step: int, parts: dict) -> None:
        if step == 1:  # step 0 ran unmeasured (lazy initialisation)
            mode.__enter__()
            entered.append(True)

    try:
        if kind == "plain":
            demhec.train(model, (x, y), demhec.TrainConfig(epochs=1, batch_size=batch_size, augment="none"),
                         on_step=on_step)
        else:
            demhec.finetune(model, (x, y), demhec.DemHECConfig(epochs=1, batch_size=batch_size, augment="none",
                                                               warmup_epochs=0, freeze="none"),
                            on_step=on_step)
    finally:
        if entered:
            mode.__exit__(None, None, None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args()
    # FlopCounterMode cannot follow the ascent's torch.autograd.grad, so the Dem-HEC step's FLOPs
    # are the plain step's scaled by the (2 T_he + 7) / 3 forward-equivalents (docs/distributed.md).
    flops = FlopCounterMode(display=False)
    one_step("plain", args.batch_size, flops)
    plain_gflop = flops.get_total_flops() / 1e9
    for kind, gflop in (("plain", plain_gflop), ("demhec", plain_gflop * (2 * 5 + 7) / 3)):
        counter = CountOps()
        one_step(kind, 4, counter)
        total = sum(counter.calls.values())
        top = ", ".join(f"{k} {v}" for k, v in counter.calls.most_common(6))
        print(f"{kind}: {total} operator calls per step ({top}); {gflop:.0f} GFLOP per step at batch "
              f"{args.batch_size}")


if __name__ == "__main__":
    main()
