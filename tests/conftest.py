from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

# One thread, here and in every process a test starts: on a 2-core machine that is busy with
# something else, two threads wait at each op's barrier for the core they share, and the tests
# ran about three times slower than with one; on an idle machine the two take the same time
# (benchmarks/thread_load.py measures the mechanism on a training step).
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import torch  # noqa: E402
from torch import nn  # noqa: E402

torch.set_num_threads(1)

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module (the scripts are not a package), so tests call main()."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TinyNet(nn.Module):
    """A small conv net shaped like a registry model (stages, head_name, [0,1] inputs)."""

    head_name = "fc"
    stages = ("stem", "layer1", "layer2", "pool", "fc")

    def __init__(self, num_classes: int = 4, width: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(width), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
                                    nn.BatchNorm2d(2 * width), nn.ReLU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.layer2(self.layer1(self.stem(x - 0.5)))))


@pytest.fixture
def tiny_net():
    torch.manual_seed(0)
    return TinyNet()


def jpeg_archive(path: Path, per_class: int) -> Path:
    """A miniature of the CIFAR-10 JPEG mirror (train/<class>/NNNN.jpg) whose classes differ in
    colour, so the models have something to learn."""
    import io
    import tarfile

    import numpy as np
    from PIL import Image

    from demhec.data import CIFAR10_CLASSES

    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for c, name in enumerate(CIFAR10_CLASSES):
            for i in range(per_class):
                pixels = rng.integers(0, 60, (32, 32, 3)) + np.array([20 * c, 200 - 20 * c, 100])
                buf = io.BytesIO()
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=75)
                info = tarfile.TarInfo(f"train/{name}/{i:04d}.jpg")
                info.size = buf.tell()
                buf.seek(0)
                tar.addfile(info, buf)
    return path
