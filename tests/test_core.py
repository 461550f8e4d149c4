"""Method core: entropy, generation, losses, fine-tuning step, public names."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import demhec
from demhec import (
    DemHECConfig,
    finetune,
    high_entropy_samples,
    info_nce,
    kd_loss,
    layer_entropy,
    prediction_entropy,
)
from demhec._common import DemHECError
from tests.conftest import TinyNet


def np_entropy(a: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    p = np.exp(a - a.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return -(p * np.log(p)).sum(1)


def test_prediction_entropy_matches_numpy():
    z = torch.randn(7, 10) * 3
    np.testing.assert_allclose(prediction_entropy(z).numpy(), np_entropy(z.numpy()), rtol=1e-5)
    assert torch.allclose(prediction_entropy(torch.zeros(3, 10)), torch.full((3,), math.log(10)))


@pytest.mark.parametrize("pooled", [False, True])
def test_layer_entropy_matches_numpy(tiny_net, pooled):
    x = torch.rand(5, 3, 8, 8)
    acts = {}
    hooks = [getattr(tiny_net, n).register_forward_hook(
        lambda m, i, o, n=n: acts.__setitem__(n, o.detach().clone())) for n in tiny_net.stages]
    tiny_net.eval()
    tiny_net(x)
    for h in hooks:
        h.remove()
    tiny_net.train()
    got = layer_entropy(tiny_net, x, pooled=pooled)
    assert list(got) == list(tiny_net.stages)
    assert tiny_net.training  # mode restored
    for n, a in acts.items():
        if pooled and a.dim() == 4:
            a = a.mean((2, 3))
        np.testing.assert_allclose(got[n].numpy(), np_entropy(a.numpy()), rtol=1e-4, atol=1e-5)


def test_layer_entropy_constant_is_log_d():
    class Const(torch.nn.Module):
        def forward(self, x):
            return torch.full((len(x), 4, 3, 3), 2.0)

    m = torch.nn.Sequential(Const())
    h = layer_entropy(m, torch.rand(2, 3, 3, 3), layers=["0"])["0"]
    assert torch.allclose(h, torch.full((2,), math.log(36)))
    h = layer_entropy(m, torch.rand(2, 3, 3, 3), layers=["0"], pooled=True)["0"]
    assert torch.allclose(h, torch.full((2,), math.log(4)))


def test_layer_entropy_unknown_layer(tiny_net):
    with pytest.raises(DemHECError, match="unknown layer"):
        layer_entropy(tiny_net, torch.rand(1, 3, 8, 8), layers=["nope"])


def _trained_tiny(steps: int = 60) -> TinyNet:
    torch.manual_seed(0)
    net = TinyNet(num_classes=2)
    x = torch.rand(64, 3, 8, 8)
    y = (x[:, 0].mean((1, 2)) > 0.5).long()
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return net


@pytest.mark.parametrize("objective", ["output", "features"])
def test_generator_bounds_entropy_and_leaves_model_untouched(objective):
    net = _trained_tiny()
    net.train()
    net.stem[0].weight.requires_grad_(False)  # a caller's mixed flags must survive
    net.zero_grad(set_to_none=True)
    net.fc.weight.grad = torch.ones_like(net.fc.weight)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flags = [p.requires_grad for p in net.parameters()]
    x = torch.rand(32, 3, 8, 8)
    eps = 8 / 255
    xh = high_entropy_samples(net, x, eps=eps, step_size=2 / 255, steps=5, objective=objective,
                              generator=torch.Generator().manual_seed(0))
    assert not xh.requires_grad
    assert (xh - x).abs().max() <= eps + 1e-6
    assert xh.min() >= 0 and xh.max() <= 1
    assert net.training
    assert [p.requires_grad for p in net.parameters()] == flags
    assert torch.equal(net.fc.weight.grad, torch.ones_like(net.fc.weight))
    assert [n for n, p in net.named_parameters() if p.grad is not None] == ["fc.weight"]
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k  # parameters and BN running statistics
    net.eval()
    with torch.no_grad():
        h0 = prediction_entropy(net(x)).mean()
        h1 = prediction_entropy(net(xh)).mean()
    assert h1 > h0 + 0.05


def test_generator_low_direction_lowers_entropy():
    net = _trained_tiny().eval()
    x = torch.rand(32, 3, 8, 8)
    xl = high_entropy_samples(net, x, direction="low", random_start=False)
    with torch.no_grad():
        assert prediction_entropy(net(xl)).mean() < prediction_entropy(net(x)).mean()


def test_generator_fp32_under_autocast():
    net = _trained_tiny().eval()
    x = torch.rand(4, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        xh = high_entropy_samples(net, x, generator=torch.Generator().manual_seed(1))
    ref = high_entropy_samples(net, x, generator=torch.Generator().manual_seed(1))
    assert xh.dtype == torch.float32
    assert torch.equal(xh, ref)


def test_info_nce_equals_loop():
    torch.manual_seed(0)
    v, w = torch.randn(6, 5), torch.randn(6, 5)
    tau = 0.2
    vn, wn = F.normalize(v, dim=1), F.normalize(w, dim=1)
    total = 0.0
    for i in range(6):
        a = math.exp(float(vn[i] @ wn[i]) / tau) / sum(math.exp(float(vn[i] @ wn[j]) / tau) for j in range(6))
        b = math.exp(float(wn[i] @ vn[i]) / tau) / sum(math.exp(float(wn[i] @ vn[j]) / tau) for j in range(6))
        total += math.log(a) + math.log(b)
    assert info_nce(v, w, tau).item() == pytest.approx(-total / 12, rel=1e-5)
    assert info_nce(v, v, tau) < info_nce(v, w, tau)


def test_kd_loss():
    z = torch.randn(4, 3)
    assert kd_loss(z, z).item() == pytest.approx(0.0, abs=1e-6)
    s, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    T = 2.0
    ps = np.exp([0.5, 0.0]) / np.exp([0.5, 0.0]).sum()
    pt = np.exp([0.0, 0.5]) / np.exp([0.0, 0.5]).sum()
    assert kd_loss(s, t, T).item() == pytest.approx(T * T * (pt * np.log(pt / ps)).sum(), rel=1e-5)
    assert kd_loss(s, t, T, "student_teacher").item() == pytest.approx(
        T * T * (ps * np.log(ps / pt)).sum(), rel=1e-5)


def test_finetune_step_changes_only_unfrozen(tiny_net):
    x = (torch.rand(16, 3, 8, 8) * 255).to(torch.uint8)
    y = torch.randint(0, 4, (16,))
    before = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    teacher = TinyNet()
    teacher.load_state_dict(before)
    t_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    cfg = DemHECConfig(epochs=1, batch_size=8, max_steps=2, warmup_epochs=0, augment="none")
    finetune(tiny_net, (x, y), cfg, teacher=teacher)
    after = tiny_net.state_dict()
    for k in before:
        frozen = k.startswith(("stem.", "layer1."))
        assert torch.equal(before[k], after[k]) == frozen or "num_batches" in k, k
    for k in t_before:
        assert torch.equal(t_before[k], teacher.state_dict()[k])
    frozen_params = [p for n, p in tiny_net.named_parameters() if n.startswith(("stem", "layer1"))]
    assert all(not p.requires_grad and p.grad is None for p in frozen_params)


def _bn_stats(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}


@pytest.mark.parametrize("bn", ["train", "clean", "frozen"])
def test_batchnorm_modes(bn):
    """One fine-tuning step from the same weights: "clean" leaves the running statistics where
    the clean pass alone puts them (a plain fine-tune's), "train" lets the high-entropy pass move
    them too, "frozen" keeps the pretrained ones while the BatchNorm weights still train."""
    g = torch.Generator().manual_seed(0)
    data = ((torch.rand(16, 3, 8, 8, generator=g) * 255).to(torch.uint8), torch.randint(0, 4, (16,), generator=g))
    torch.manual_seed(0)
    init = TinyNet().state_dict()

    def one_step(**kw):
        model = TinyNet()
        model.load_state_dict(init)
        cfg = DemHECConfig(epochs=1, batch_size=16, max_steps=1, warmup_epochs=0, augment="none",
                           freeze="none", eps=0.25, step_size=0.1, **kw)
        return finetune(model, data, cfg)

    model = one_step(bn=bn)
    stats, plain = _bn_stats(model), _bn_stats(one_step(alpha=0.0, lambda_c=0.0, lambda_kd=0.0))
    pretrained = {k: v for k, v in init.items() if k in stats}
    moved = [k for k in stats if "running_" in k and not torch.allclose(stats[k], plain[k], atol=1e-6)]
    if bn == "clean":
        assert not moved
        assert all(torch.equal(stats[k], plain[k]) for k in stats if "num_batches" in k)
    elif bn == "train":
        assert moved
    else:
        assert all(torch.equal(stats[k], pretrained[k]) for k in stats)
        bn_weights = [f"{name}.weight" for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert bn_weights and all(not torch.equal(init[n], model.state_dict()[n]) for n in bn_weights)


def test_config_validation():
    for bad in [dict(alpha=1.5), dict(alpha=-0.1), dict(eps=-1 / 255), dict(eps=2.0),
                dict(steps=0), dict(lr=-0.1), dict(batch_size=0), dict(objective="logits"),
                dict(bn="eval")]:
        with pytest.raises(DemHECError):
            DemHECConfig(**bad)


def test_public_names():
    for name in ["layer_entropy", "prediction_entropy", "high_entropy_samples", "info_nce",
                 "kd_loss", "DemHECConfig", "finetune", "train", "evaluate", "TrainConfig",
                 "get_model", "list_models", "register_model"]:
        assert hasattr(demhec, name), name


@pytest.mark.slow
def test_finetune_raises_accuracy_on_gaussian_noise():
    """End to end on a small real image task (sklearn's 8x8 digits, offline): Dem-HEC makes
    the model more accurate on Gaussian-noised inputs without costing clean accuracy, and more
    so than a plain fine-tune (clean cross-entropy only) of the same budget and schedule, so the
    gain is the method's and not that of more training."""
    import copy

    from sklearn.datasets import load_digits

    from demhec import TrainConfig, predict, train

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32)[:, None].repeat(1, 3, 1, 1)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1400], perm[1400:]
    noise = torch.randn(x[te].shape, generator=torch.Generator().manual_seed(1))
    noisy = (x[te] + 0.35 * noise).clamp(0, 1)

    def acc(m, xx):
        return (predict(m, xx).argmax(1) == y[te]).float().mean().item()

    torch.manual_seed(0)
    model = TinyNet(num_classes=10, width=16)
    train(model, (x[tr], y[tr]), TrainConfig(epochs=15, batch_size=64, lr=0.05, augment="none"))
    clean0, noisy0 = acc(model, x[te]), acc(model, noisy)
    cfg = DemHECConfig(epochs=5, batch_size=64, lr=0.02, augment="none", warmup_epochs=0.5,
                       eps=16 / 255, step_size=4 / 255)
    plain = finetune(copy.deepcopy(model), (x[tr], y[tr]), replace(cfg, alpha=0.0, lambda_c=0.0, lambda_kd=0.0))
    finetune(model, (x[tr], y[tr]), cfg)
    clean1, noisy1 = acc(model, x[te]), acc(model, noisy)
    assert clean0 > 0.9
    assert noisy1 > noisy0 + 0.03, (noisy0, noisy1)
    assert clean1 > clean0 - 0.03, (clean0, clean1)
    assert noisy1 > acc(plain, noisy) + 0.03, (acc(plain, noisy), noisy1)


@pytest.mark.parametrize("loop", ["train", "finetune"])
def test_compiled_passes_give_the_eager_result(loop):
    """``compile`` wires torch.compile around the training passes; the "eager" backend runs the
    captured graph with the same kernels, so the weights must match the uncompiled run."""
    g = torch.Generator().manual_seed(0)
    data = (torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8, generator=g),
            torch.randint(0, 4, (32,), generator=g))
    if loop == "train":
        run = lambda model, **kw: demhec.train(model, data, demhec.TrainConfig(epochs=1, batch_size=16), **kw)  # noqa: E731
    else:
        cfg = DemHECConfig(epochs=1, batch_size=16, steps=2, warmup_epochs=0)
        run = lambda model, **kw: demhec.finetune(model, data, cfg, **kw)  # noqa: E731
    states = []
    for compile in (False, "eager"):
        torch.manual_seed(0)
        states.append(run(TinyNet(), compile=compile).state_dict())
    for name in states[0]:
        torch.testing.assert_close(states[1][name], states[0][name], atol=1e-6, rtol=1e-5)
    with pytest.raises(DemHECError, match="compile must be"):
        run(TinyNet(), compile=3)


def test_paired_difference_takes_images_as_the_unit():
    from demhec.evaluation import paired_difference

    a, b = torch.tensor([1, 1, 0, 0]), torch.tensor([1, 0, 1, 1])
    out = paired_difference(a, b)  # per-image differences 0, -1, 1, 1
    assert out["diff"] == pytest.approx(25.0) and out["n"] == 4
    assert out["se"] == pytest.approx(100 * np.std([0, -1, 1, 1], ddof=1) / 2)
    # Two cells per image: each image's mean outcome is one observation, not two.
    two = paired_difference(torch.stack([a, a], 1), torch.stack([b, a], 1))
    assert two["diff"] == pytest.approx(12.5) and two["n"] == 4
    assert two["se"] == pytest.approx(100 * np.std([0, -0.5, 0.5, 0.5], ddof=1) / 2)
    assert paired_difference(a, a) == {"diff": 0.0, "se": 0.0, "n": 4}
    with pytest.raises(DemHECError, match="equal"):
        paired_difference(a, b[:3])


def test_paired_gain_agrees_with_evaluate(tmp_path, tiny_net):
    import copy

    from demhec.evaluation import evaluate, paired_gain

    rng = np.random.default_rng(0)
    data = (rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8), rng.integers(0, 4, 24))
    other = copy.deepcopy(tiny_net)
    with torch.no_grad():
        other.fc.bias.add_(torch.linspace(-1, 1, 4))
    noises = ["gaussian_noise", "shot_noise"]
    kw = dict(cache_dir=tmp_path, key="t", seed=0)
    gain = paired_gain(tiny_net, other, data, noises, 5, **kw)
    ta = evaluate(tiny_net, data, noises, [5], **kw).set_index("corruption").accuracy
    tb = evaluate(other, data, noises, [5], **kw).set_index("corruption").accuracy
    assert gain["clean"]["diff"] == pytest.approx(tb["clean"] - ta["clean"])
    assert gain["corrupted"]["diff"] == pytest.approx((tb[noises] - ta[noises]).mean())
    assert gain["clean"]["diff"] != 0  # the check above compares something
    same = paired_gain(tiny_net, tiny_net, data, noises, 5, **kw)
    assert same["corrupted"] == {"diff": 0.0, "se": 0.0, "n": 24}
