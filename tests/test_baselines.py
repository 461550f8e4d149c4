from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from demhec._common import DemHECError
from demhec.baselines import BASELINES, METHODS, augment_batch
from demhec.batches import TensorBatches
from demhec.losses import js_divergence_loss
from demhec.training import TrainConfig, train_baseline
from tests.conftest import TinyNet

CONFIG = TrainConfig(epochs=1, batch_size=8, lr=0.05, seed=3)
EXTRA = [m for m in BASELINES if METHODS[m].augment is not None]  # methods with a per-image augmentation


def _data(n: int = 16, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return images, np.arange(n, dtype=np.int64) % 4


def _trained(method: str, **kw) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = TinyNet()
    train_baseline(net, _data(), method, CONFIG, **kw)
    return {k: v.clone() for k, v in net.state_dict().items()}


def _float_batch(n: int = 12, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8).float() / 255


@pytest.mark.parametrize("method", BASELINES)
def test_baseline_trains_and_is_reproducible(method):
    torch.manual_seed(0)
    before = TinyNet().state_dict()
    parts: list[dict[str, float]] = []
    first = _trained(method, on_step=lambda step, p: parts.append(p))
    assert len(parts) == 2 and all(math.isfinite(p["loss"]) for p in parts)
    if method == "augmix":
        assert {"ce", "jsd"} <= set(parts[0]) and parts[0]["jsd"] > 0
    assert any(not torch.equal(before[k], first[k]) for k in before if k.endswith("weight"))
    second = _trained(method)
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("method", BASELINES)
def test_baseline_resume_matches_uninterrupted(method, tmp_path):
    ckpt = tmp_path / f"{method}.ckpt"

    def stop(step, parts):
        if step == 2:  # after step 1's checkpoint, before the epoch-end one
            raise KeyboardInterrupt

    cfg = TrainConfig(epochs=1, batch_size=4, lr=0.05, seed=3)
    torch.manual_seed(0)
    uninterrupted = TinyNet()
    train_baseline(uninterrupted, _data(), method, cfg)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train_baseline(TinyNet(), _data(), method, cfg, checkpoint=ckpt, checkpoint_every=1,
                       on_step=stop)
    torch.manual_seed(123)  # resuming must not depend on the caller's RNG state
    resumed = TinyNet()
    train_baseline(resumed, _data(), method, cfg, checkpoint=ckpt, checkpoint_every=1)
    a, b = uninterrupted.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_baseline_accepts_tensor_batches_and_float_pairs():
    images, labels = _data(size=32)
    batches = TensorBatches(images, labels, batch_size=8, augment="crop_flip", seed=3,
                            drop_last=True)
    torch.manual_seed(0)
    a = train_baseline(TinyNet(), batches, "trivialaugment", CONFIG).state_dict()
    floats = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    torch.manual_seed(0)
    b = train_baseline(TinyNet(), (floats, labels), "trivialaugment", CONFIG).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_of_another_method_is_refused(tmp_path):
    ckpt = tmp_path / "run.ckpt"
    train_baseline(TinyNet(), _data(), "pad_crop", CONFIG, checkpoint=ckpt)
    with pytest.raises(DemHECError, match="different config"):
        train_baseline(TinyNet(), _data(), "augmix", CONFIG, checkpoint=ckpt)


def test_unknown_method_lists_valid_names():
    with pytest.raises(DemHECError) as e:
        train_baseline(TinyNet(), _data(), "mixup", CONFIG)
    assert "mixup" in str(e.value) and all(m in str(e.value) for m in BASELINES)
    with pytest.raises(DemHECError, match="valid training methods"):
        augment_batch(_float_batch(), "cutout")


def test_baselines_require_crop_flip():
    with pytest.raises(DemHECError, match="crop_flip"):
        train_baseline(TinyNet(), _data(), "pad_crop", TrainConfig(epochs=1, augment="none"))
    images, labels = _data()
    plain = TensorBatches(images, labels, batch_size=8, augment="none")
    with pytest.raises(DemHECError, match="crop_flip"):
        train_baseline(TinyNet(), plain, "autoaugment", CONFIG)


@pytest.mark.parametrize("method", EXTRA)
def test_augmentation_changes_images_within_range(method):
    x = _float_batch()
    torch.manual_seed(0)
    out = augment_batch(x, method)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, (out * 255).round() / 255)  # still on the uint8 grid
    changed = (out != x).flatten(1).any(1)
    assert changed.sum() >= len(x) // 2
    torch.manual_seed(0)
    assert torch.equal(augment_batch(x, method), out)  # randomness is the global RNG's


@pytest.mark.parametrize("method", EXTRA)
def test_each_image_draws_its_own_augmentation(method):
    x = _float_batch(1).expand(12, -1, -1, -1).contiguous()
    torch.manual_seed(0)
    out = augment_batch(x, method)
    assert len({tuple(img.flatten().tolist()) for img in out}) > 3


def test_augmentation_keeps_channels_last():
    x = _float_batch(4, 32).contiguous(memory_format=torch.channels_last)
    out = augment_batch(x, "autoaugment")
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_pad_crop_adds_nothing_to_the_batches():
    x = _float_batch()
    assert augment_batch(x, "pad_crop") is x


def _hand_js(logits: list[torch.Tensor]) -> float:
    ps = [np.exp(z.double().numpy()) for z in logits]
    ps = [p / p.sum(1, keepdims=True) for p in ps]
    m = sum(ps) / 3
    per_image = sum((p * np.log(p / m)).sum(1) for p in ps) / 3
    return float(per_image.mean())


def test_js_divergence_loss():
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(5, 7, generator=g) * 2 for _ in range(3))
    assert js_divergence_loss(a, a, a).abs().item() < 1e-6
    value = js_divergence_loss(a, b, c)
    assert value.item() > 0
    assert value.item() == pytest.approx(_hand_js([a, b, c]), rel=1e-5)
    for perm in itertools.permutations((a, b, c)):
        assert js_divergence_loss(*perm).item() == pytest.approx(value.item(), rel=1e-6)
    # bounded by log 3 (three distributions); a small disagreement gives a small value
    assert value.item() < math.log(3)
    one_off = js_divergence_loss(a, a, a + 0.1 * torch.randn(5, 7, generator=g))
    assert 0 < one_off.item() < value.item()
