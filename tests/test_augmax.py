from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.transforms import v2

from demhec._common import DemHECError
from demhec.baselines import METHODS, Step
from demhec.baselines.augmax import (
    AUGMAX,
    AugMaxSettings,
    ascend_mixing,
    augmax_loss,
    augmix_chains,
    augmix_view,
    mix_chains,
)
from demhec.training import DemHECConfig, TrainConfig, finetune, train_baseline
from tests.conftest import TinyNet

CLASSES = 5


def _linear_problem(n: int = 6, k: int = 3, seed: int = 0):
    """A linear classifier on 4 x 4 images with fixed chain outputs, in float64."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 4, 4, generator=g, dtype=torch.float64)
    chains = torch.rand(n, k, 3, 4, 4, generator=g, dtype=torch.float64)
    lin = nn.Linear(48, CLASSES).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(CLASSES, 48, generator=g, dtype=torch.float64))
        lin.bias.copy_(torch.randn(CLASSES, generator=g, dtype=torch.float64))
    q0 = torch.rand(n, k, generator=g, dtype=torch.float64)
    m0 = torch.tensor([0.02, 0.5, 0.97, 0.3, 0.7, 0.99], dtype=torch.float64)[:n]
    return x, chains, lin, q0, m0


def _forward(net: nn.Module):
    def forward(images: torch.Tensor, *, update_stats: bool = True) -> torch.Tensor:
        return net(images.flatten(1) if isinstance(net, nn.Linear) else images)

    return forward


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _hand_step(x, chains, lin, y, q0, m0, step_size, active):
    """One sign step of the summed cross-entropy's gradient in (q, m), derived by hand for
    logits = W x_mix + b with x_mix = (1 - m) x + m sum_k softmax(q)_k c_k."""
    n, k = chains.shape[:2]
    X, C = x.numpy().reshape(n, -1), chains.numpy().reshape(n, k, -1)
    W, b = lin.weight.detach().numpy(), lin.bias.detach().numpy()
    q, m = q0.numpy(), m0.numpy()
    w = _softmax(q)
    aug = np.einsum("nk,nkd->nd", w, C)
    logits = ((1 - m)[:, None] * X + m[:, None] * aug) @ W.T + b
    g = (_softmax(logits) - np.eye(CLASSES)[y.numpy()]) @ W  # dL/dx_mix
    grad_m = (g * (aug - X)).sum(1)
    gc = np.einsum("nd,nkd->nk", g, C)
    grad_q = m[:, None] * w * (gc - (w * gc).sum(1, keepdims=True))  # softmax's Jacobian
    assert np.all(grad_m != 0) and np.all(grad_q != 0)
    q1 = q + step_size * np.sign(grad_q) * active[:, None]
    m1 = np.clip(m + step_size * np.sign(grad_m) * active, 0, 1)
    return _softmax(q1), m1, logits


def test_one_ascent_step_matches_hand_computation():
    x, chains, lin, q0, m0 = _linear_problem()
    y = torch.arange(6) % CLASSES
    w, m = ascend_mixing(_forward(lin), x, chains, y, AugMaxSettings(steps=1, attacker="pgd"),
                         q=q0, m=m0)
    w_hand, m_hand, _ = _hand_step(x, chains, lin, y, q0, m0, 0.1, np.ones(6))
    np.testing.assert_allclose(w.numpy(), w_hand, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(m.numpy(), m_hand, rtol=1e-10, atol=1e-12)
    assert not np.allclose(m_hand, m0.numpy())  # the step did move
    assert all(p.grad is None for p in lin.parameters())  # only the mixing weights got gradients


def test_fat_step_leaves_misclassified_images_where_they_start():
    x, chains, lin, q0, m0 = _linear_problem()
    pred = torch.from_numpy(_hand_step(x, chains, lin, torch.zeros(6, dtype=torch.long), q0, m0,
                                       0.1, np.ones(6))[2].argmax(1))
    y = torch.where(torch.arange(6) < 3, pred, (pred + 1) % CLASSES)  # half right, half wrong
    w, m = ascend_mixing(_forward(lin), x, chains, y, AugMaxSettings(steps=1, tau=1), q=q0, m=m0)
    right = (y == pred).numpy().astype(float)
    w_hand, m_hand, _ = _hand_step(x, chains, lin, y, q0, m0, 0.1, right)
    np.testing.assert_allclose(w.numpy(), w_hand, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(m.numpy(), m_hand, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(m[3:].numpy(), m0[3:].numpy())


def test_projection_keeps_w_on_the_simplex_and_m_in_unit_interval():
    x, chains, lin, q0, m0 = _linear_problem()
    y = torch.arange(6) % CLASSES
    w, m = ascend_mixing(_forward(lin), x, chains, y,
                         AugMaxSettings(steps=8, step_size=0.5, attacker="pgd"), q=q0, m=m0)
    assert torch.all(w >= 0) and torch.allclose(w.sum(1), torch.ones(6, dtype=w.dtype))
    assert torch.all((m >= 0) & (m <= 1)) and bool(((m == 0) | (m == 1)).any())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ascent_increases_the_loss(seed):
    torch.manual_seed(seed)
    net = TinyNet(num_classes=CLASSES).eval()
    x = torch.rand(8, 3, 8, 8)
    y = torch.arange(8) % CLASSES
    chains = augmix_chains(x)
    q0, m0 = torch.rand(8, AUGMAX.width), torch.rand(8)

    def ce(w, m):
        with torch.no_grad():
            return nn.functional.cross_entropy(net(mix_chains(x, chains, w, m)), y).item()

    w, m = ascend_mixing(_forward(net), x, chains, y, AugMaxSettings(attacker="pgd"), q=q0, m=m0)
    assert ce(w, m) > ce(q0.softmax(1), m0)


def test_chains_are_per_image_8_bit_and_reproducible():
    # The unmixed chains override this torchvision hook; were it gone, they would be mixtures.
    assert callable(getattr(v2.AugMix, "_sample_dirichlet", None))
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 16, 16), generator=g).float().div(255)
    torch.manual_seed(0)
    chains = augmix_chains(x)
    assert chains.shape == (6, AUGMAX.width, 3, 16, 16) and chains.dtype == x.dtype
    assert chains.min() >= 0 and chains.max() <= 1
    assert torch.equal(chains, (chains * 255).round() / 255)
    assert (chains != x[:, None]).flatten(2).any(2).float().mean() > 0.5
    torch.manual_seed(0)
    assert torch.equal(augmix_chains(x), chains)
    view = augmix_view(x)
    assert view.shape == x.shape and view.min() >= 0 and view.max() <= 1


def test_mix_chains_endpoints():
    x, chains, *_ = _linear_problem()
    one_hot = torch.zeros(6, 3, dtype=x.dtype)
    one_hot[:, 1] = 1
    assert torch.equal(mix_chains(x, chains, one_hot, torch.zeros(6, dtype=x.dtype)), x)
    assert torch.allclose(mix_chains(x, chains, one_hot, torch.ones(6, dtype=x.dtype)), chains[:, 1])


def test_loss_searches_without_touching_statistics_then_trains_on_three_views():
    torch.manual_seed(0)
    net = TinyNet(num_classes=CLASSES)
    calls: list[tuple[bool, int]] = []

    def forward(images: torch.Tensor, *, update_stats: bool = True) -> torch.Tensor:
        calls.append((update_stats, len(images)))
        return net(images)

    x, y = torch.rand(8, 3, 8, 8), torch.arange(8) % CLASSES
    value, parts = augmax_loss(AugMaxSettings(attacker="pgd"))(
        Step(forward=forward, ce=nn.functional.cross_entropy), x, y)
    assert calls == [(False, 8)] * AUGMAX.steps + [(True, 24)]
    assert all(p.grad is None for p in net.parameters())
    assert math.isfinite(value.item()) and {"ce", "jsd", "ce_augmax"} <= set(parts)
    assert parts["jsd"] > 0


def test_registered_method_and_settings_validation():
    method = METHODS["augmax"]
    assert method.label == "AugMax" and method.augment is None and method.settings == AUGMAX
    assert method.passes == AUGMAX.steps + 3
    with pytest.raises(DemHECError, match="valid AugMax attackers: fat, pgd"):
        AugMaxSettings(attacker="cw")
    with pytest.raises(DemHECError, match="AugMax depth"):
        AugMaxSettings(depth=0)
    with pytest.raises(DemHECError, match="step_size"):
        AugMaxSettings(step_size=0.0)


def _data(n: int = 16, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.arange(n, dtype=np.int64) % 4


def _run(train) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    torch.manual_seed(0)
    net = TinyNet()
    parts: list[dict[str, float]] = []
    train(net, lambda step, p: parts.append(p))
    return {k: v.clone() for k, v in net.state_dict().items()}, parts


@pytest.mark.parametrize("loop", ["train_baseline", "finetune"])
def test_training_is_finite_and_reproducible(loop):
    if loop == "train_baseline":
        def train(net, cb):
            train_baseline(net, _data(), "augmax", TrainConfig(epochs=1, batch_size=8), on_step=cb)
    else:
        cfg = DemHECConfig(epochs=1, batch_size=8, warmup_epochs=0, alpha=0.0, lambda_c=0.0,
                           lambda_kd=0.0, method="augmax", freeze="none")

        def train(net, cb):
            finetune(net, _data(), cfg, on_step=cb)

    first, parts = _run(train)
    assert len(parts) == 2 and all(math.isfinite(p["loss"]) and "jsd" in p for p in parts)
    second, _ = _run(train)
    assert all(torch.equal(first[k], second[k]) for k in first)
