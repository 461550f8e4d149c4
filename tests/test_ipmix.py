"""IPMix (demhec.baselines.ipmix): each mixing level against a hand computation of the same
draws, the procedural mixing set, the batch view, and training through both loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from demhec import DemHECConfig, finetune
from demhec._common import DemHECError
from demhec.baselines import METHODS, Step
from demhec.baselines.ipmix import (
    IMAGE_OPS,
    IPMIX,
    PIXEL_MIXINGS,
    IPMixSettings,
    draw_mixing_pictures,
    fractal_pictures,
    image_op,
    ipmix_image,
    ipmix_view,
    mixing_set,
    patch_mix,
    pixel_mix,
)
from demhec.losses import js_divergence_loss
from demhec.training import TrainConfig, train_baseline
from tests.conftest import TinyNet


def _floats(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8).float() / 255


def _u() -> float:
    return torch.rand(()).item()


def _ri(low: int, high: int) -> int:  # inclusive, as the module's draws
    return int(torch.randint(low, high + 1, ()))


def _hand_weights(beta: float) -> tuple[float, float, bool]:
    """get_ab of IPMix_utils through inverse CDFs, redrawn in the documented order."""
    first = _u() < 0.5
    u1, u2 = _u(), _u()
    if first:
        return u1 ** (1 / beta), 1 - u2 ** (1 / beta), first
    return 1 + (1 - u1 ** (1 / beta)), -(1 - u2 ** (1 / beta)), first


def _hand_pixel(a: np.ndarray, b: np.ndarray, op: str, beta: float) -> tuple[np.ndarray, bool]:
    branch = False
    if op in ("add", "multiply"):
        wa, wb, branch = _hand_weights(beta)
        if op == "add":
            out = ((2 * a - 1) * wa + (2 * b - 1) * wb + 1) / 2
        else:
            out = np.power(2 * a, wa) * np.power(np.maximum(2 * b, 1e-37), wb) / 2
    else:
        c = 1 if op == "random_pixels" else a.shape[0]
        noise = torch.rand(c, *a.shape[1:]).numpy()
        r = _u()
        out = np.where(noise < r, a, b)
    return np.clip(out, 0, 1), branch


# --- (a) each level against a hand computation ------------------------------------------------

@pytest.mark.parametrize("op", PIXEL_MIXINGS)
def test_pixel_level_matches_hand_computation(op):
    a, b = _floats((3, 4, 5), 1), _floats((3, 4, 5), 2)
    branches = set()
    for seed in range(8):
        torch.manual_seed(seed)
        out = pixel_mix(a, b, op, beta=3.0)
        torch.manual_seed(seed)
        expected, branch = _hand_pixel(a.numpy().astype(np.float64), b.numpy().astype(np.float64),
                                       op, 3.0)
        branches.add(branch)
        np.testing.assert_allclose(out.numpy(), expected, atol=2e-6)
        assert out.min() >= 0 and out.max() <= 1
    if op in ("add", "multiply"):
        assert branches == {True, False}  # both get_ab branches were checked


def test_patch_level_matches_hand_computation():
    img, pic = _floats((3, 8, 8), 3), _floats((3, 8, 8), 4)
    shapes = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out = patch_mix(img, pic, 4, "random_elems", beta=3.0)
        torch.manual_seed(seed)
        left, top = _ri(0, 4), _ri(0, 4)
        square = _u() < 0.5
        pw, ph = (4, 4) if square else (_ri(2, 4), _ri(2, 4))
        shapes.add(square)
        expected = img.numpy().copy()
        a = expected[:, top:top + ph, left:left + pw].copy()
        b = pic.numpy()[:, top:top + ph, left:left + pw]
        expected[:, top:top + ph, left:left + pw], _ = _hand_pixel(a, b, "random_elems", 3.0)
        np.testing.assert_array_equal(out.numpy(), expected)
    assert shapes == {True, False}
    assert torch.equal(img, _floats((3, 8, 8), 3))  # the input is left as it was


def _hand_translate(img: np.ndarray, dx: int) -> np.ndarray:
    out = np.zeros_like(img)
    for x in range(img.shape[-1]):
        if 0 <= x + dx < img.shape[-1]:
            out[..., x] = img[..., x + dx]
    return out


def test_image_level_operations_match_hand_computation():
    img = (_floats((3, 6, 40), 5) * 255).to(torch.uint8)
    a = img.numpy().astype(np.int64)
    shifts = set()
    for seed in range(10):
        torch.manual_seed(seed)
        out = image_op(img, "translate_x", 3.0)
        torch.manual_seed(seed)
        level = 0.1 + 2.9 * _u()
        dx = int(level * 40 / 30)
        dx = -dx if _u() > 0.5 else dx
        shifts.add(dx)
        np.testing.assert_array_equal(out.numpy(), _hand_translate(a, dx))

        torch.manual_seed(seed)
        out = image_op(img, "posterize", 3.0)
        torch.manual_seed(seed)
        bits = 4 - int((0.1 + 2.9 * _u()) * 0.4)
        np.testing.assert_array_equal(out.numpy(), a & (256 - 2 ** (8 - bits)))

        torch.manual_seed(seed)
        out = image_op(img, "solarize", 3.0)
        torch.manual_seed(seed)
        threshold = 256 - int((0.1 + 2.9 * _u()) * 25.6)
        np.testing.assert_array_equal(out.numpy(), np.where(a >= threshold, 255 - a, a))
    assert len(shifts) >= 3 and any(s < 0 for s in shifts) and any(s > 0 for s in shifts)
    np.testing.assert_array_equal(image_op(img, "invert").numpy(), 255 - a)
    np.testing.assert_array_equal(image_op(img, "mirror").numpy(), a[..., ::-1])
    for op in IMAGE_OPS:
        out = image_op(img, op)
        assert out.dtype == torch.uint8 and out.shape == img.shape


def test_image_level_mixing_matches_hand_computation():
    # Image chains of at most one invert: the Dirichlet weights, m and the chain draws by hand.
    settings = IPMixSettings(k=3, t=1, p_patch_chain=0.0, ops=("invert",))
    img, pic = _floats((3, 5, 5), 6), _floats((3, 5, 5), 7)
    x = img.numpy().astype(np.float64)
    lengths = []
    for seed in range(6):
        torch.manual_seed(seed)
        out = ipmix_image(img, pic, settings)
        torch.manual_seed(seed)
        e = -np.log1p(-torch.rand(3, dtype=torch.float64).numpy())
        w = e / e.sum()
        m = _u()
        mix = np.zeros_like(x)
        for wi in w:
            assert not _u() < 0.0  # the chain's kind: image level
            length = _ri(0, 1)
            lengths.append(length)
            chain = x
            for _ in range(length):
                int(torch.randint(1, ()))  # the operation's pick
                chain = 1 - x
            mix += wi * chain
        np.testing.assert_allclose(out.numpy(), (1 - m) * x + m * mix, atol=1e-6)
    assert set(lengths) == {0, 1}
    # A patch chain of whole-image random pixel mixings, the other extreme.
    settings = IPMixSettings(k=1, t=1, p_patch_chain=1.0, patch_fractions=(1.0,),
                             mixings=("random_pixels",))
    for seed in range(6):
        torch.manual_seed(seed)
        out = ipmix_image(img, pic, settings)
        torch.manual_seed(seed)
        torch.rand(1, dtype=torch.float64)  # the one chain's weight, 1
        m = _u()
        _u()
        chain = x
        lengths.append(_ri(0, 1))
        if lengths[-1]:
            int(torch.randint(1, ())), int(torch.randint(1, ()))  # side and mixing picks
            left, top = _ri(0, 0), _ri(0, 0)
            pw, ph = (5, 5) if _u() < 0.5 else (_ri(2, 5), _ri(2, 5))
            chain = x.copy()
            chain[:, top:top + ph, left:left + pw], _ = _hand_pixel(
                x[:, :ph, :pw], pic.numpy()[:, :ph, :pw].astype(np.float64), "random_pixels", 3.0)
        np.testing.assert_allclose(out.numpy(), (1 - m) * x + m * chain, atol=1e-6)
    assert set(lengths[-6:]) == {0, 1}


def test_mixing_pictures_are_random_crops_of_the_set():
    pool = mixing_set()
    torch.manual_seed(0)
    pictures = draw_mixing_pictures(5, 32, 32)
    torch.manual_seed(0)
    index = torch.randint(len(pool), (5,))
    tops, lefts = torch.randint(5, (5,)), torch.randint(5, (5,))
    for p, i, t, s in zip(pictures, index, tops, lefts):
        assert torch.equal(p, pool[i, :, t:t + 32, s:s + 32])
    small = draw_mixing_pictures(4, 16, 12)  # other sizes: the set resized to 9/8, then cropped
    assert small.shape == (4, 3, 16, 12) and 0 <= small.min() and small.max() <= 1


# --- (b) the mixing set -----------------------------------------------------------------------

def test_mixing_set_is_deterministic_in_range_and_varied():
    a, b = fractal_pictures(24, 36, seed=0), fractal_pictures(24, 36, seed=0)
    assert torch.equal(a, b)
    assert not torch.equal(a, fractal_pictures(24, 36, seed=1))
    pool = mixing_set()
    assert pool is mixing_set()  # generated once per process
    assert pool.shape == (IPMIX.mixing_set_size, 3, IPMIX.mixing_side, IPMIX.mixing_side)
    assert pool.dtype == torch.float32 and pool.min() >= 0 and pool.max() <= 1
    lit = (pool.amax(1) > 0.05).flatten(1).float().mean(1)  # share of non-black pixels
    assert lit.min() > 0.03 and lit.max() < 1 and lit.std() > 0.05
    assert pool.flatten(1).std(1).min() > 0.05
    # Pictures differ from each other, in shape and in colour.
    flat = pool.flatten(1)
    gaps = torch.cdist(flat[:60], flat[:60]) / math.sqrt(flat.shape[1])
    assert gaps[~torch.eye(60, dtype=torch.bool)].min() > 0.05
    dominant = pool.sum((2, 3)).argmax(1)
    assert all((dominant == c).sum() > len(pool) // 10 for c in range(3))


# --- (c) the view -----------------------------------------------------------------------------

def test_view_stays_in_range_changes_images_and_is_reproducible():
    x = _floats((8, 3, 32, 32), 8)
    torch.manual_seed(0)
    out = ipmix_view(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, (out * 255).round() / 255)
    assert (out != x).flatten(1).any(1).sum() >= 6
    assert (out - x).abs().mean() > 0.01
    torch.manual_seed(0)
    assert torch.equal(ipmix_view(x), out)
    assert not torch.equal(ipmix_view(x), out)  # the next draws differ
    small = x[:4, :, :16, :16].contiguous(memory_format=torch.channels_last)
    view = ipmix_view(small)
    assert view.shape == small.shape and view.is_contiguous(memory_format=torch.channels_last)


def test_loss_is_cross_entropy_plus_weighted_jsd():
    x, y = _floats((6, 3, 16, 16), 9), torch.arange(6) % 4
    seen = []
    weight = torch.randn(3, 4)

    def forward(images, *, update_stats=True):
        seen.append(images)
        return images.mean((2, 3)) @ weight * 10

    value, parts = METHODS["ipmix"].loss(Step(forward=forward, ce=F.cross_entropy), x, y)
    (views,) = seen
    assert views.shape == (18, 3, 16, 16) and torch.equal(views[:6], x)
    assert not torch.equal(views[6:12], views[12:])
    logits = views.mean((2, 3)) @ weight * 10
    ce = F.cross_entropy(logits[:6], y)
    jsd = js_divergence_loss(*logits.split(6))
    assert value.item() == pytest.approx((ce + 12 * jsd).item(), rel=1e-6)
    assert parts == pytest.approx({"ce": ce.item(), "jsd": jsd.item()}, rel=1e-6)


def test_registration_and_settings():
    method = METHODS["ipmix"]
    assert (method.label, method.passes, method.crops) == ("IPMix", 3.0, False)
    assert method.settings is IPMIX
    assert (IPMIX.k, IPMIX.t, IPMIX.beta, IPMIX.severity) == (3, 3, 3.0, 3.0)
    assert IPMIX.jsd_weight == 12.0
    with pytest.raises(DemHECError, match="IPMix k must be >= 1"):
        IPMixSettings(k=0)
    with pytest.raises(DemHECError, match="valid IPMix operations: equalize"):
        IPMixSettings(ops=("blur",))
    with pytest.raises(DemHECError, match="IPMix beta must be > 0"):
        IPMixSettings(beta=0.0)


# --- (d) training -----------------------------------------------------------------------------

def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8), np.arange(16, dtype=np.int64) % 4


def _run(kind: str) -> tuple[list[dict[str, float]], dict[str, torch.Tensor]]:
    parts: list[dict[str, float]] = []
    torch.manual_seed(0)
    net = TinyNet()
    if kind == "baseline":
        train_baseline(net, _data(), "ipmix", TrainConfig(epochs=1, batch_size=8),
                       on_step=lambda step, p: parts.append(p))
    else:
        cfg = DemHECConfig(epochs=1, batch_size=8, warmup_epochs=0, alpha=0.0, lambda_c=0.0,
                           lambda_kd=0.0, method="ipmix", freeze="none")
        finetune(net, _data(), cfg, on_step=lambda step, p: parts.append(p))
    return parts, {k: v.clone() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("kind", ["baseline", "finetune"])
def test_training_is_finite_and_reproducible(kind):
    parts, state = _run(kind)
    assert len(parts) == 2
    assert all(math.isfinite(p["loss"]) and p["jsd"] > 0 and math.isfinite(p["ce"]) for p in parts)
    again, state2 = _run(kind)
    assert again == parts
    assert all(torch.equal(state[k], state2[k]) for k in state)
