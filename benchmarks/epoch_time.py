"""Wall time of one Dem-HEC epoch of ResNet-20 on N CIFAR-size images held on the device.

    python benchmarks/epoch_time.py --device cuda --images 50000
"""

from __future__ import annotations

import argparse
import time

import torch

import demhec
from demhec.batches import TensorBatches
from demhec.models import get_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=50000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cuda")
    p.add_argument("--no-amp", action="store_true")
    args = p.parse_args()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (args.images,), generator=g)
    batches = TensorBatches(x, y, args.batch_size, augment="crop_flip", device=args.device,
                            drop_last=True, channels_last=True)
    model = get_model("resnet20", num_classes=10)
    cfg = demhec.DemHECConfig(epochs=1, batch_size=args.batch_size)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    demhec.finetune(model, batches, cfg, device=args.device, channels_last=True,
                    amp=not args.no_amp)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    print(f"one Dem-HEC epoch (T_he=5, {len(batches)} steps of {args.batch_size}): "
          f"{time.perf_counter() - t:.1f} s on {args.device}")


if __name__ == "__main__":
    main()
