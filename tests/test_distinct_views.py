"""DV+AP+JSD (Kim et al., 2025): the three views and the AP against hand-built references, the loss
against an independent computation, and training through both loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from demhec import DemHECConfig, finetune
from demhec._common import DemHECError
from demhec.baselines import METHODS, Step
from demhec.baselines.distinct_views import (
    DV,
    DistinctViewsSettings,
    adversarial_view,
    distinct_views,
    distinct_views_loss,
)
from demhec.training import TrainConfig, train_baseline
from tests.conftest import TinyNet

NEAREST = InterpolationMode.NEAREST


def _images(n: int = 6, size: int = 16) -> torch.Tensor:
    """Float images on the uint8 grid that span less than [0, 255] (so autocontrast and
    equalize change them): a per-image gradient plus noise."""
    g = torch.Generator().manual_seed(7)
    ramp = torch.linspace(0, 1, size)
    base = 40 + 120 * (ramp[None, :] + ramp[:, None]) / 2
    noise = torch.randint(0, 60, (n, 3, size, size), generator=g)
    return (base + noise).clamp(0, 255).round().div(255)


def _u8(x: torch.Tensor) -> torch.Tensor:
    return x.mul(255).round().to(torch.uint8)


def _translate(img: torch.Tensor, t: int, axis: int) -> torch.Tensor:
    """Shift by ``t`` pixels along x (axis 0) or y (axis 1), black coming in: by slicing."""
    out = torch.zeros_like(img)
    dim = -1 if axis == 0 else -2
    n = img.shape[dim]
    if abs(t) >= n:
        return out
    src = img.narrow(dim, max(0, -t), n - abs(t))
    out.narrow(dim, max(0, t), n - abs(t)).copy_(src)
    return out


def _op(img: torch.Tensor, name: str, level: float, sign: int) -> torch.Tensor:
    """AugMix's operations at AugMix's magnitudes; translate, posterize and solarize by hand."""
    if name in ("translate_x", "translate_y"):
        axis = 0 if name == "translate_x" else 1
        return _translate(img, sign * int(level * img.shape[-1 - axis] / 30), axis)
    if name == "posterize":
        bits = 4 - int(level * 0.4)
        return img & (0xFF << (8 - bits) & 0xFF)
    if name == "solarize":
        return torch.where(img >= 256 - int(level * 25.6), 255 - img, img)
    if name == "rotate":
        return TF.rotate(img, float(sign * int(level * 3)), interpolation=NEAREST, fill=[0.0])
    if name in ("shear_x", "shear_y"):
        deg = math.degrees(math.atan(sign * level * 0.03))
        shear = [deg, 0.0] if name == "shear_x" else [0.0, deg]
        return TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=shear,
                         interpolation=NEAREST, fill=[0.0], center=[0, 0])
    return {"autocontrast": TF.autocontrast, "equalize": TF.equalize}[name](img)


def _chain(img: torch.Tensor, ops: tuple[str, ...]) -> torch.Tensor:
    # The documented draw order: depth, then per operation its index, level and (geometric) sign.
    for _ in range(int(torch.randint(1, 4, ()))):
        name = ops[int(torch.randint(len(ops), ()))]
        level = 0.1 + 2.9 * float(torch.rand(()))
        sign = (-1 if float(torch.rand(())) < 0.5 else 1) if name.startswith(("rot", "sh", "tr")) else 1
        img = _op(img, name, level, sign)
    return img


def _reference_views(x: torch.Tensor) -> list[torch.Tensor]:
    u8 = _u8(x)
    colour = torch.stack([_chain(img, DV.colour_ops) for img in u8])
    shape = torch.stack([_chain(img, DV.shape_ops) for img in u8])
    augmix = v2.AugMix(severity=3, mixture_width=3, chain_depth=-1, alpha=1.0, all_ops=False)
    diverse = torch.stack([augmix(img) for img in u8])
    return [v.float() / 255 for v in (colour, shape, diverse)]


def test_views_match_a_hand_built_reference():
    x = _images()
    torch.manual_seed(4)
    views = distinct_views(x)
    torch.manual_seed(4)
    expected = _reference_views(x)
    for got, want in zip(views, expected, strict=True):
        assert torch.equal(got, want)


def test_colour_view_only_moves_pixels():
    x = _images(8)
    torch.manual_seed(1)
    colour, _, _ = distinct_views(x)
    for before, after in zip(_u8(x), _u8(colour), strict=True):
        palette = {tuple(p) for p in before.flatten(1).T.tolist()} | {(0, 0, 0)}
        assert {tuple(p) for p in after.flatten(1).T.tolist()} <= palette
    # translation alone: a shift by whole pixels, black coming in
    torch.manual_seed(2)
    only = DistinctViewsSettings(colour_ops=("translate_x",), depth=1)
    shifted, _, _ = distinct_views(x[:1].expand(8, -1, -1, -1).contiguous(), only)
    seen = set()
    for view in _u8(shifted):
        matches = [t for t in range(-3, 4) if torch.equal(view, _translate(_u8(x[0]), t, 0))]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 1


def test_shape_view_keeps_the_layout():
    x = _images(8)
    torch.manual_seed(3)
    _, shape, _ = distinct_views(x)
    for before, after in zip(_u8(x), _u8(shape), strict=True):
        for c in range(3):  # a per-channel function of the value: equal inputs, equal outputs
            pairs = torch.stack([before[c].flatten(), after[c].flatten()], 1).unique(dim=0)
            assert len(pairs) == len(before[c].unique())
    # posterize alone on a two-region image: both regions keep their pixels, values masked by hand
    img = torch.full((1, 3, 8, 8), 200 / 255)
    img[..., 2:6, 2:6] = 77 / 255
    torch.manual_seed(0)
    only = DistinctViewsSettings(shape_ops=("posterize",), depth=1)
    _, post, _ = distinct_views(img, only)
    bits = {(200 & m, 77 & m) for m in (0xF0, 0xE0)}  # 4 or 3 bits at severity 3
    out = _u8(post)[0]
    assert (int(out[0, 0, 0]), int(out[0, 3, 3])) in bits
    assert torch.equal(out == out[0, 0, 0], _u8(img)[0] == 200)


def test_views_stay_in_range_and_change_the_images():
    x = _images(12, 32)
    torch.manual_seed(5)
    for view in distinct_views(x):
        assert view.shape == x.shape and view.min() >= 0 and view.max() <= 1
        assert torch.equal(view, (view * 255).round() / 255)
        assert (view != x).flatten(1).any(1).sum() >= 9
    torch.manual_seed(5)
    again = distinct_views(x)
    torch.manual_seed(5)
    assert all(torch.equal(a, b) for a, b in zip(again, distinct_views(x), strict=True))


def _step(net: torch.nn.Module) -> Step:
    return Step(forward=lambda images, update_stats=True: net(images), ce=F.cross_entropy)


def _hand_js(logits: list[torch.Tensor]) -> float:
    ps = [np.exp(z.detach().double().numpy()) for z in logits]
    ps = [p / p.sum(1, keepdims=True) for p in ps]
    m = sum(ps) / len(ps)
    return float((sum((p * np.log(p / m)).sum(1) for p in ps) / len(ps)).mean())


def test_adversarial_view_is_one_fgsm_step_from_a_random_start():
    torch.manual_seed(0)
    net = TinyNet()
    x, y = _images(4), torch.tensor([0, 1, 2, 3])
    eps = 2 / 255
    torch.manual_seed(9)
    adv = adversarial_view(_step(net), x, y, eps, 1.25 * eps)
    assert all(p.grad is None for p in net.parameters())  # no gradient left on the weights
    torch.manual_seed(9)
    probe = (x + (torch.rand_like(x) * 2 - 1) * eps).clamp(0, 1).requires_grad_(True)
    F.cross_entropy(net(probe), y).backward()
    want = (x + (probe.detach() - x + 1.25 * eps * probe.grad.sign()).clamp(-eps, eps)).clamp(0, 1)
    assert torch.equal(adv, want)
    assert (adv - x).abs().max() <= eps + 1e-7 and not adv.requires_grad


@pytest.mark.parametrize("settings", [DV, DistinctViewsSettings(ap_epsilon=0.0, jsd_with_clean=False)],
                         ids=["dv_ap_jsd", "no_ap_views_only"])
def test_loss_is_clean_ce_plus_weighted_jsd(settings):
    torch.manual_seed(0)
    net = TinyNet()
    x, y = _images(4), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(11)
    value, parts = distinct_views_loss(settings)(_step(net), x, y)
    torch.manual_seed(11)
    colour, shape, diverse = _reference_views(x)
    if settings.ap_epsilon > 0:
        eps = settings.ap_epsilon
        probe = (diverse + (torch.rand_like(diverse) * 2 - 1) * eps).clamp(0, 1).requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(net(probe), y), probe)
        diverse = (diverse + (probe.detach() - diverse + 1.25 * eps * grad.sign()).clamp(-eps, eps)).clamp(0, 1)
    with torch.no_grad():
        logits = list(net(torch.cat([x, colour, shape, diverse])).split(4))
    ce = F.cross_entropy(logits[0], y).item()
    js = _hand_js(logits if settings.jsd_with_clean else logits[1:])
    assert parts["ce"] == pytest.approx(ce, rel=1e-5)
    assert parts["jsd"] == pytest.approx(js, rel=1e-4, abs=1e-7)
    assert value.item() == pytest.approx(ce + 12 * js, rel=1e-5)
    assert value.requires_grad


def test_registration_and_settings():
    method = METHODS["dv_ap_jsd"]
    assert method.label == "DV+AP+JSD" and method.settings is DV and method.augment is not None
    assert method.passes == 5.0 and DistinctViewsSettings(ap_epsilon=0.0).passes == 4.0
    with pytest.raises(DemHECError, match="valid colour-preserving operations: rotate"):
        DistinctViewsSettings(colour_ops=("solarize",))
    with pytest.raises(DemHECError, match="severity must be <= 10"):
        DistinctViewsSettings(severity=11)
    with pytest.raises(DemHECError, match="depth must be >= 1"):
        DistinctViewsSettings(depth=0)


def _data(n: int = 16, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.arange(n, dtype=np.int64) % 4


def _train(loop: str) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    parts: list[dict[str, float]] = []
    torch.manual_seed(0)
    net = TinyNet()
    if loop == "baseline":
        train_baseline(net, _data(), "dv_ap_jsd", TrainConfig(epochs=1, batch_size=8),
                       on_step=lambda step, p: parts.append(p))
    else:
        cfg = DemHECConfig(epochs=1, batch_size=8, warmup_epochs=0, alpha=0.0, lambda_c=0.0,
                           lambda_kd=0.0, method="dv_ap_jsd", freeze="none")
        finetune(net, _data(), cfg, on_step=lambda step, p: parts.append(p))
    return {k: v.clone() for k, v in net.state_dict().items()}, parts


@pytest.mark.parametrize("loop", ["baseline", "finetune"])
def test_training_is_finite_and_reproducible(loop):
    first, parts = _train(loop)
    assert len(parts) == 2
    assert all(math.isfinite(p["loss"]) and p["jsd"] > 0 for p in parts)
    second, _ = _train(loop)
    assert all(torch.equal(first[k], second[k]) for k in first)
