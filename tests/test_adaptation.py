"""Test-time adaptation (demhec.adaptation): BatchNorm statistics adaptation (Schneider et al.,
2020, eq. 2) and TENT (Wang et al., 2021) against references computed by hand, step by step."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from demhec import DemHECError
from demhec.adaptation import AdaptConfig, adapted_model, adaptive_predict
from demhec.evaluation import evaluate


def _images(n: int = 12, seed: int = 0, size: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def _with_source_stats(net: nn.Module) -> nn.Module:
    """Give every BatchNorm running statistics and affine parameters far from 0/1, so that a
    formula that ignores or mis-weights them gives other numbers."""
    g = torch.Generator().manual_seed(1)
    for bn in net.modules():
        if isinstance(bn, nn.BatchNorm2d):
            c = bn.num_features
            bn.running_mean.copy_(torch.randn(c, generator=g))
            bn.running_var.copy_(torch.rand(c, generator=g) * 3 + 0.5)
            bn.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            bn.bias.data.copy_(torch.randn(c, generator=g))
    return net.eval()


def _reference_forward(net: nn.Module, x: torch.Tensor, prior: float) -> torch.Tensor:
    """TinyNet's forward written out, each BatchNorm as eq. 2 of Schneider et al. says:
    mix the source statistics (weight N / (N + n)) with the batch's mean and biased variance
    over images and positions (weight n / (N + n)), normalise, scale and shift."""
    n = x.shape[0]

    def bn(z: torch.Tensor, layer: nn.BatchNorm2d) -> torch.Tensor:
        count = z.shape[0] * z.shape[2] * z.shape[3]
        mu_t = z.sum(dim=(0, 2, 3)) / count
        var_t = ((z - mu_t[None, :, None, None]) ** 2).sum(dim=(0, 2, 3)) / count
        w = prior / (prior + n)
        mu = w * layer.running_mean + (1 - w) * mu_t
        var = w * layer.running_var + (1 - w) * var_t
        zn = (z - mu[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + layer.eps)
        return zn * layer.weight[None, :, None, None] + layer.bias[None, :, None, None]

    h = x - 0.5
    for block in (net.stem, net.layer1, net.layer2):
        h = torch.relu(bn(block[0](h), block[1]))
    return net.fc(h.mean(dim=(2, 3)))


def _float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


@pytest.mark.parametrize("prior", [0.0, 16.0])
def test_bn_adaptation_follows_eq2_of_schneider(tiny_net, prior):
    net = _with_source_stats(tiny_net)
    images = _images(12)
    cfg = AdaptConfig(method="bn", prior=prior, batch_size=12)
    with torch.no_grad():
        want = _reference_forward(net, _float(images), prior)
    got = adaptive_predict(net, images, cfg)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # Neither the source statistics alone (eval mode) nor, with N > 0, the batch's alone.
    with torch.no_grad():
        assert not torch.allclose(got, net(_float(images)), atol=1e-3)
        if prior:
            assert not torch.allclose(got, _reference_forward(net, _float(images), 0.0), atol=1e-3)


def test_bn_adaptation_uses_each_batch_of_the_seeded_stream(tiny_net):
    net = _with_source_stats(tiny_net)
    images = _images(10)
    cfg = AdaptConfig(method="bn", prior=4.0, batch_size=4, order_seed=3)
    order = np.random.default_rng(3).permutation(10)
    want = torch.empty(10, 4)
    with torch.no_grad():
        for i in range(0, 10, 4):  # batches of 4, 4 and 2 images, n = each batch's size
            idx = order[i : i + 4]
            want[torch.as_tensor(idx)] = _reference_forward(net, _float(images[idx]), 4.0)
    torch.testing.assert_close(adaptive_predict(net, images, cfg), want, rtol=1e-4, atol=1e-4)


def test_tent_updates_only_the_affine_parameters_one_adam_step_per_batch(tiny_net):
    net = _with_source_stats(tiny_net)
    images = _images(8)
    cfg = AdaptConfig(method="tent", batch_size=4, order_seed=0, lr=0.05)
    order = np.random.default_rng(0).permutation(8)
    got = adaptive_predict(net, images, cfg)

    # By hand: batch 1 predicted with the initial parameters (N = 0: batch statistics); one
    # Adam step on its mean prediction entropy, over the BatchNorm weights and biases only;
    # batch 2 predicted with the updated parameters.
    ref = copy.deepcopy(net)
    affine = [p for m in ref.modules() if isinstance(m, nn.BatchNorm2d) for p in (m.weight, m.bias)]
    opt = torch.optim.Adam(affine, lr=0.05, betas=(0.9, 0.999))
    want = torch.empty(8, 4)
    for i in (0, 4):
        idx = order[i : i + 4]
        logits = _reference_forward(ref, _float(images[idx]), 0.0)
        want[torch.as_tensor(idx)] = logits.detach()
        p = logits.softmax(1)
        entropy = -(p * p.log()).sum(1).mean()
        opt.zero_grad()
        entropy.backward()
        opt.step()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # The second batch saw updated parameters: plain BN adaptation differs on it.
    bn_only = adaptive_predict(net, images, AdaptConfig(method="bn", batch_size=4))
    second = torch.as_tensor(order[4:])
    assert not torch.allclose(got[second], bn_only[second], atol=1e-4)
    torch.testing.assert_close(got[torch.as_tensor(order[:4])], bn_only[torch.as_tensor(order[:4])])

    # Which parameters the adapted copy may change, and that it does change them.
    copy_, opt2 = adapted_model(net, cfg)
    trainable = {n for n, p in copy_.named_parameters() if p.requires_grad}
    assert trainable == {n for n, m in copy_.named_modules() if isinstance(m, nn.BatchNorm2d)
                         for n in (f"{n}.weight", f"{n}.bias")}
    before = copy.deepcopy(copy_.state_dict())
    loss = copy_(_float(images[:4])).softmax(1).max(1).values.sum()  # any loss
    opt2.zero_grad()
    (-loss).backward()
    opt2.step()
    after = copy_.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= trainable  # running statistics and conv/linear weights stay


@pytest.mark.parametrize("method", ["bn", "tent"])
def test_evaluate_with_adaptation_leaves_the_callers_model_unchanged(tiny_net, method):
    net = _with_source_stats(tiny_net)
    net.layer1[1].train()  # a submodule mode the caller chose must survive too
    state = copy.deepcopy(net.state_dict())
    grads = {n: p.requires_grad for n, p in net.named_parameters()}
    images, labels = _images(16, size=32), np.arange(16) % 4  # cifar-c needs 32x32
    df = evaluate(net, (images, labels), ["gaussian_noise"], [5], adapt=method,
                  adapt_config=AdaptConfig(batch_size=8, lr=0.05), workers=1)
    assert list(df.corruption) == ["clean", "gaussian_noise"]
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert {n: p.requires_grad for n, p in net.named_parameters()} == grads
    assert net.layer1[1].training and not net.stem[1].training
    assert "forward" not in vars(net.stem[1])  # the adapted forward lives on a copy only
    # The clean row is the adapted prediction of the clean images.
    logits = adaptive_predict(net, images, AdaptConfig(method=method, batch_size=8, lr=0.05))
    assert df.accuracy[0] == pytest.approx(100 * float((logits.argmax(1) == torch.as_tensor(labels)).float().mean()))


def test_adaptation_errors_name_the_valid_values(tiny_net):
    images, labels = _images(4), np.zeros(4, dtype=np.int64)
    with pytest.raises(DemHECError, match="valid adapts: bn, tent"):
        evaluate(tiny_net, (images, labels), ["gaussian_noise"], [1], adapt="tta")
    with pytest.raises(DemHECError, match="prior must be >= 0"):
        AdaptConfig(prior=-1)
    no_bn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(DemHECError, match="no BatchNorm layers"):
        adaptive_predict(no_bn, images, AdaptConfig())


@pytest.mark.parametrize("method, prior", [("bn", 0.0), ("bn", 8.0), ("tent", 0.0)])
def test_every_call_adapts_afresh_from_the_model(tiny_net, method, prior):
    """A second call on the same images gives the same logits, and adapting on one set never
    changes another's: each call starts from the model as the caller holds it (for TENT, a
    fresh copy and a fresh optimiser), whatever ran before with the same model and config."""
    net = _with_source_stats(tiny_net)
    a, b = _images(8, seed=0), _images(8, seed=1)
    cfg = AdaptConfig(method=method, prior=prior, batch_size=4, lr=0.05)
    first_a = adaptive_predict(net, a, cfg)
    first_b = adaptive_predict(net, b, cfg)  # after adapting on a
    again_a = adaptive_predict(net, a, cfg)  # after adapting on a and b
    assert torch.equal(again_a, first_a)
    assert torch.equal(first_b, adaptive_predict(copy.deepcopy(net), b, cfg))  # b alone, on a fresh model
    if method == "tent":  # the adaptation does move the predictions: the checks above can fail
        assert not torch.allclose(first_a, adaptive_predict(net, a, AdaptConfig(method="bn", batch_size=4)))


def test_every_cell_and_every_half_adapts_afresh(tiny_net):
    """TENT through evaluate and cell_logits: each corrupted set (and each group of images within
    it, the halves of the selection protocol) gets the predictions of adapting a fresh copy of
    the model on that set alone, whatever the sets scored before it."""
    from demhec.corruptions import corrupt_split
    from demhec.evaluation import cell_logits, expected_calibration_error

    net = _with_source_stats(tiny_net)
    images, labels = _images(16, size=32), np.arange(16) % 4
    cfg = AdaptConfig(method="tent", batch_size=4, lr=0.05)
    cells = [("gaussian_noise", 5), ("contrast", 5)]
    sets = {("clean", 0): images, **{(c, s): corrupt_split(images, c, s, seed=0) for c, s in cells}}
    groups = [np.arange(0, 16, 2), np.arange(1, 16, 2)]
    logits = cell_logits(net, (images, labels), ["gaussian_noise", "contrast"], [5], adapt="tent",
                         adapt_config=cfg, groups=groups, seed=0, workers=1)
    assert list(logits) == list(sets)
    for cell, x in sets.items():
        for g in groups:
            assert torch.equal(logits[cell][torch.as_tensor(g)], adaptive_predict(copy.deepcopy(net), x[g], cfg)), cell
    df = evaluate(net, (images, labels), ["gaussian_noise", "contrast"], [5], adapt="tent", adapt_config=cfg,
                  workers=1).set_index(["corruption", "severity"])
    y = torch.as_tensor(labels)
    for cell, x in sets.items():
        alone = adaptive_predict(copy.deepcopy(net), x, cfg)
        assert df.loc[cell, "ece"] == pytest.approx(100 * expected_calibration_error(alone, y), abs=1e-9), cell
        assert df.loc[cell, "correct"] == int((alone.argmax(1) == y).sum()), cell
