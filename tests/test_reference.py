"""The method and the metrics against references written independently of the library: hand
formulas on tiny models and hand-computed values."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch import nn

from demhec.evaluation import expected_calibration_error, family_means, mean_corruption_error
from demhec.generation import high_entropy_samples
from demhec.training import DemHECConfig, finetune

torch.set_default_dtype(torch.float32)


# --- Alg. 2: projected sign ascent on the prediction entropy ------------------------------------


def _entropy_grad_linear(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """d/dx of the batch-mean entropy of softmax(W x + b), by hand: dH/dz_k = -p_k (log p_k + H)."""
    z = x.flatten(1).double() @ w.double().t() + b.double()
    p = torch.exp(z - z.logsumexp(1, keepdim=True))
    h = -(p * p.log()).sum(1, keepdim=True)
    dz = -p * (p.log() + h) / len(x)
    return (dz @ w.double()).reshape(x.shape)


def _hand_ascent(w, b, x, start, eps, step, steps):
    x = x.double()
    xa = start.double()
    for _ in range(steps):
        xa = xa + step * torch.sign(_entropy_grad_linear(w, b, xa))
        xa = torch.minimum(torch.maximum(xa, x - eps), x + eps).clamp(0, 1)
    return xa


@pytest.mark.parametrize("random_start", [False, True])
def test_alg2_is_a_two_step_projected_sign_ascent(random_start):
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(3, 12, generator=g))
        model[1].bias.copy_(torch.randn(3, generator=g))
    x = torch.rand(5, 3, 2, 2, generator=g)
    x[0, 0, 0, 0] = 0.02  # a pixel the [0, 1] clip must hold
    eps, step = 0.1, 0.07  # the second step leaves the eps-ball: the projection must act
    noise = torch.rand(x.shape, generator=g)
    start = (x + (2 * noise - 1) * eps).clamp(0, 1) if random_start else x
    ours = high_entropy_samples(model, x, eps, step, 2, random_start, noise=noise if random_start else None)
    ref = _hand_ascent(model[1].weight.detach(), model[1].bias.detach(), x, start, eps, step, 2)
    torch.testing.assert_close(ours.double(), ref, atol=1e-6, rtol=0)
    assert (ours - x).abs().max() > step  # it went further than one step: both steps count


# --- Alg. 1 / eq. 12: one Dem-HEC step -------------------------------------------------------


class _Net(nn.Module):
    """g(x) = relu(feat(x)) is the input of ``fc``; no BatchNorm, so train/eval modes agree."""

    head_name = "fc"
    stages = ("feat", "fc")

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.feat = nn.Linear(12, 6)
        self.fc = nn.Linear(6, 3)

    def features(self, x):
        return torch.relu(self.feat(x.flatten(1)))

    def forward(self, x):
        return self.fc(self.features(x))


def _hand_ascent_net(model, x, eps, step, steps):
    """Alg. 2 on ``model`` (no random start), entropy written out by hand."""
    xa = x.clone()
    for _ in range(steps):
        xa.requires_grad_(True)
        p = model(xa).softmax(1)
        h = -(p * p.log()).sum(1).mean()
        (grad,) = torch.autograd.grad(h, xa)
        xa = (xa.detach() + step * grad.sign())
        xa = torch.minimum(torch.maximum(xa, x - eps), x + eps).clamp(0, 1)
    return xa.detach()


def _hand_step(student, teacher, x, y, cfg):
    """Eq. 12 written out, one SGD step (no momentum, no weight decay, lr factor 1 at step 0)."""
    x_he = _hand_ascent_net(student, x, cfg.eps, cfg.step_size, cfg.steps)
    z, v = student(x), student.features(x)
    z_he, v_he = student(x_he), student.features(x_he)

    def ce(logits):
        return -(logits.log_softmax(1)[torch.arange(len(y)), y]).mean()

    a, b = nn.functional.normalize(v, dim=1), nn.functional.normalize(v_he, dim=1)
    sim = a @ b.t() / cfg.tau
    info_nce = -(sim.log_softmax(1).diag().mean() + sim.t().log_softmax(1).diag().mean()) / 2
    t = cfg.kd_temperature
    with torch.no_grad():
        p_t = (teacher(x) / t).softmax(1)
    kd = t * t * (p_t * (p_t.log() - (z / t).log_softmax(1))).sum(1).mean()
    loss = (1 - cfg.alpha) * ce(z) + cfg.alpha * ce(z_he) + cfg.lambda_c * info_nce + cfg.lambda_kd * kd
    grads = torch.autograd.grad(loss, list(student.parameters()))
    with torch.no_grad():
        for p, gr in zip(student.parameters(), grads):
            p -= cfg.lr * gr
    return student


def test_one_demhec_step_equals_eq12_by_hand():
    """A swapped alpha, KD on x', InfoNCE on logits or on x' from the teacher each fails this:
    alpha != 1 - alpha, g(x) has 6 dimensions and the logits 3, the teacher differs from the
    student, and the loss weights are all distinct."""
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (8, 3, 2, 2), dtype=torch.uint8, generator=g)  # batches are uint8 / 255
    x = images.float() / 255
    y = torch.randint(0, 3, (8,), generator=g)
    cfg = DemHECConfig(epochs=1, batch_size=8, max_steps=1, lr=0.5, momentum=0.0, weight_decay=0.0,
                       warmup_epochs=0.0, alpha=0.3, lambda_c=0.7, lambda_kd=0.4, tau=0.5,
                       kd_temperature=2.0, eps=0.2, step_size=0.08, steps=2, random_start=False,
                       freeze="none", augment="none")
    ours = finetune(_Net(seed=2), (images, y), cfg, teacher=_Net(seed=3))
    ref = _hand_step(_Net(seed=2), _Net(seed=3), x, y, cfg)
    before = _Net(seed=2)
    for (name, p), q, p0 in zip(ours.named_parameters(), ref.parameters(), before.parameters()):
        assert not torch.allclose(p, p0), name  # the step moved it
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=name)


# --- metrics against hand-computed values ----------------------------------------------------


def _two_class_logits(confidences):
    return torch.tensor([[math.log(c), math.log(1 - c)] for c in confidences])


def test_expected_calibration_error_by_hand():
    # confidences 0.9, 0.9 (bin 14 of 15: one right, one wrong), 0.62 (bin 10, right),
    # 0.55 (bin 9, wrong): ECE = 2/4 |0.9 - 0.5| + 1/4 |0.62 - 1| + 1/4 |0.55 - 0| = 0.4325
    logits = _two_class_logits([0.9, 0.9, 0.62, 0.55])
    labels = torch.tensor([0, 1, 0, 1])
    assert expected_calibration_error(logits, labels) == pytest.approx(0.4325, abs=1e-6)


TABLE = pd.DataFrame([
    {"corruption": "clean", "severity": 0, "family": "clean", "accuracy": 90.0},
    {"corruption": "gaussian_noise", "severity": 1, "family": "noise", "accuracy": 80.0},
    {"corruption": "gaussian_noise", "severity": 5, "family": "noise", "accuracy": 40.0},
    {"corruption": "snow", "severity": 1, "family": "weather", "accuracy": 70.0},
])
BASELINE = pd.DataFrame([
    {"corruption": "clean", "severity": 0, "family": "clean", "accuracy": 70.0},
    {"corruption": "gaussian_noise", "severity": 1, "family": "noise", "accuracy": 60.0},
    {"corruption": "gaussian_noise", "severity": 5, "family": "noise", "accuracy": 20.0},
    {"corruption": "snow", "severity": 1, "family": "weather", "accuracy": 50.0},
])


def test_mean_corruption_error_by_hand():
    # errors: noise 20 + 60 = 80 against 40 + 80 = 120 -> 66.67; snow 30 / 50 -> 60; mean 63.33
    assert mean_corruption_error(TABLE, BASELINE) == pytest.approx((80 / 120 * 100 + 60) / 2)
    # unnormalised: the mean error over the three corrupted cells, clean left out
    assert mean_corruption_error(TABLE) == pytest.approx((20 + 60 + 30) / 3)


def test_family_means_by_hand():
    means = family_means(TABLE)
    assert dict(means) == pytest.approx({"noise": 60.0, "weather": 70.0})
