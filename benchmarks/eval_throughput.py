"""Evaluation throughput over a cached corruption grid vs the bare forward (benchmark 3).

``demhec.evaluate`` over the paper's grid (7 corruptions x S1/S3/S5, cached beforehand) against
the bare model forward over the same images already in memory as float tensors, both batched
the same way; the ratio of images per second is printed last.

    python benchmarks/eval_throughput.py --n 2000
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from corruption_build import images

from demhec import evaluate
from demhec.corruptions import PAPER_CORRUPTIONS, PAPER_SEVERITIES, corruption_grid
from demhec.models import get_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    x = images(args.n)
    y = np.zeros(args.n, dtype=np.int64)
    model = get_model("resnet20", num_classes=10).to(args.device).eval()
    with tempfile.TemporaryDirectory() as cache:
        grids = [np.asarray(a) for _c, _s, a in corruption_grid(x, suite="cifar-c", cache_dir=cache, key="bench")]
        tensors = [torch.from_numpy(np.array(g)).permute(0, 3, 1, 2).float().div(255).to(args.device)
                   for g in [x, *grids]]
        t = time.perf_counter()
        evaluate(model, (x, y), PAPER_CORRUPTIONS, PAPER_SEVERITIES, "cifar-c", cache_dir=cache,
                 key="bench", batch_size=args.batch_size, device=args.device)
        t_eval = time.perf_counter() - t
    with torch.no_grad():
        t = time.perf_counter()
        for tensor in tensors:
            for i in range(0, len(tensor), args.batch_size):
                model(tensor[i:i + args.batch_size])
        t_bare = time.perf_counter() - t
    total = sum(len(t) for t in tensors)
    print(f"{total} images: evaluate {total / t_eval:.0f} img/s, bare forward {total / t_bare:.0f} img/s")
    print(f"ratio: {t_bare / t_eval:.2f}")


if __name__ == "__main__":
    main()
