"""Push-pull layers and the push-pull ResNet-20s (Strisciuglio et al., 2020; Ranabhat et al.,
2025) against computations written out by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from demhec import freeze_parameters
from demhec._common import DemHECError
from demhec.entropy import layer_entropy
from demhec.models import (
    MultiScalePushPullConv2d,
    PushPullConv2d,
    get_model,
    pull_kernel_size,
)

PUSHPULL_MODELS = ["resnet20_pushpull", "resnet20_pushpull_single"]


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: a second thread only adds synchronisation, which on a busy
    machine makes gradcheck's thousands of small calls tens of times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def bilinear_by_hand(w: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize with align_corners=True, one output pixel at a time: output pixel i
    samples the input at i * (k - 1) / (size - 1)."""
    k = w.shape[-1]
    out = torch.empty(*w.shape[:2], size, size, dtype=w.dtype)
    step = (k - 1) / (size - 1)
    for i in range(size):
        y0 = min(int(i * step), k - 2)
        fy = i * step - y0
        for j in range(size):
            x0 = min(int(j * step), k - 2)
            fx = j * step - x0
            top = (1 - fx) * w[..., y0, x0] + fx * w[..., y0, x0 + 1]
            bottom = (1 - fx) * w[..., y0 + 1, x0] + fx * w[..., y0 + 1, x0 + 1]
            out[..., i, j] = (1 - fy) * top + fy * bottom
    return out


def se_by_hand(z: torch.Tensor, attention: torch.nn.Module) -> torch.Tensor:
    """Squeeze-and-excitation with the layer's weights as plain matrices."""
    w1, b1 = attention.reduce.weight[:, :, 0, 0], attention.reduce.bias
    w2, b2 = attention.expand.weight[:, :, 0, 0], attention.expand.bias
    hidden = torch.relu(z.mean(dim=(2, 3)) @ w1.T + b1)
    return z * torch.sigmoid(hidden @ w2.T + b2)[:, :, None, None]


@pytest.mark.parametrize(
    ("push", "scale", "size"),
    [(3, 1.0, 3), (3, 1.5, 5), (3, 2.0, 7), (3, 3.0, 9), (5, 1.5, 7), (5, 2.0, 11)],
)
def test_pull_kernel_size_is_the_papers_formula(push, scale, size):
    n = int(push * scale)
    assert pull_kernel_size(push, scale) == n + 1 - n % 2 == size


@pytest.mark.parametrize(("scale", "stride", "train_alpha"),
                         [(2.0, 1, False), (1.5, 2, False), (3.0, 1, True)])
def test_pushpull_matches_hand_computation(scale, stride, train_alpha):
    torch.manual_seed(0)
    layer = PushPullConv2d(3, 4, stride=stride, scale=scale, alpha=0.7,
                           train_alpha=train_alpha).double()
    if train_alpha:  # one negative value: the layer must clamp it to 0
        layer.alpha.data = torch.tensor([0.3, -0.2, 1.1, 0.6]).double().view(1, 4, 1, 1)
    x = torch.randn(2, 3, 9, 9, dtype=torch.double)
    w = layer.push.weight.detach()
    n = pull_kernel_size(3, scale)
    push = F.conv2d(x, w, stride=stride, padding=1)
    pull = F.conv2d(x, -bilinear_by_hand(w, n), stride=stride, padding=n // 2)
    alpha = layer.alpha.detach().clamp(min=0) if train_alpha else 0.7
    expected = torch.relu(push) - alpha * torch.relu(pull)
    with torch.no_grad():
        out = layer(x)
    assert out.shape == push.shape
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("stride", "train_alpha"), [(1, False), (2, True)])
def test_multiscale_pushpull_matches_hand_computation(stride, train_alpha):
    torch.manual_seed(1)
    layer = MultiScalePushPullConv2d(3, 8, stride=stride, train_alpha=train_alpha).double()
    if train_alpha:
        layer.alpha.data = torch.randn(3, 8, dtype=torch.double)
    x = torch.randn(2, 3, 10, 10, dtype=torch.double)
    w = layer.push.weight.detach()
    push = F.conv2d(x, w, stride=stride, padding=1)
    z = push
    for s, n in enumerate((5, 7, 9)):  # the 3x3 kernel at scales 1.5, 2 and 3
        pull = F.conv2d(x, -bilinear_by_hand(w, n), stride=stride, padding=n // 2)
        a = layer.alpha.detach()[s].clamp(min=0).view(1, -1, 1, 1) if train_alpha else 1.0
        z = z - a * pull / 3  # unrectified: no ReLU on push or pull
    with torch.no_grad():
        out = layer(x)
        expected = se_by_hand(z, layer.attention)
    assert out.shape == push.shape
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    assert (z < 0).any() and (z > 0).any()  # nothing rectified it


@pytest.mark.parametrize("cls", [PushPullConv2d, MultiScalePushPullConv2d])
def test_gradients_reach_the_push_kernel_and_learned_alpha(cls):
    torch.manual_seed(2)
    fixed = cls(3, 4)
    assert [n for n, _ in fixed.named_parameters()][0] == "push.weight"
    assert "alpha" not in dict(fixed.named_parameters()) and "alpha" not in fixed.state_dict()

    layer = cls(2, 2, train_alpha=True).double()
    x = torch.randn(1, 2, 6, 6, dtype=torch.double, requires_grad=True)
    w = layer.push.weight.detach().clone().requires_grad_(True)
    a = layer.alpha.detach().clone().requires_grad_(True)

    def f(x, w, a):
        return torch.func.functional_call(layer, {"push.weight": w, "alpha": a}, (x,))

    assert torch.autograd.gradcheck(f, (x, w, a))
    f(x, w, a).square().sum().backward()
    assert w.grad.abs().sum() > 0 and a.grad.abs().sum() > 0


def test_bad_settings_raise():
    with pytest.raises(DemHECError, match="odd kernel_size"):
        PushPullConv2d(3, 4, kernel_size=4)
    with pytest.raises(DemHECError, match="scale"):
        PushPullConv2d(3, 4, scale=0.5)
    with pytest.raises(DemHECError, match="at least one"):
        MultiScalePushPullConv2d(3, 4, scales=())


@pytest.mark.parametrize("name", PUSHPULL_MODELS)
def test_pushpull_resnet20_logits_hooks_and_freeze(name):
    torch.manual_seed(3)
    model = get_model(name, num_classes=10).eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()
    entropy = layer_entropy(model, x)
    assert set(entropy) == set(model.stages) and all(v.shape == (4,) for v in entropy.values())

    frozen = freeze_parameters(model, "auto")
    assert "net.conv1.push.weight" in frozen
    assert all(n.startswith(("net.conv1.", "net.bn1.", "net.layer1.")) for n in frozen)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    later = ("net.layer2.", "net.layer3.", "net.fc.")
    assert trainable and all(n.startswith(later) for n in trainable)


def test_pushpull_resnet20_keeps_the_zoo_layout_but_conv1():
    plain = get_model("resnet20").net.state_dict()
    pp = get_model("resnet20_pushpull_single").net.state_dict()
    assert {k: v.shape for k, v in pp.items() if k != "conv1.push.weight"} == {
        k: v.shape for k, v in plain.items() if k != "conv1.weight"}
    assert pp["conv1.push.weight"].shape == plain["conv1.weight"].shape


@pytest.mark.parametrize("name", PUSHPULL_MODELS)
def test_pushpull_resnet20_state_dict_round_trip(name, tmp_path):
    torch.manual_seed(4)
    model = get_model(name, num_classes=10)
    torch.save(model.state_dict(), tmp_path / "wrapper.pt")
    torch.save(model.net.state_dict(), tmp_path / "bare.pt")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.eval()(x)
    for path in (tmp_path / "wrapper.pt", str(tmp_path / "bare.pt")):
        again = get_model(name, num_classes=10, pretrained=path).eval()
        with torch.no_grad():
            torch.testing.assert_close(again(x), expected, rtol=0, atol=0)
    with pytest.raises(DemHECError, match=f"does not fit {name} with 100 classes"):
        get_model(name, num_classes=100, pretrained=tmp_path / "bare.pt")


@pytest.mark.parametrize("name", PUSHPULL_MODELS)
def test_pushpull_resnet20_has_no_published_weights(name):
    with pytest.raises(DemHECError, match="no published weights") as err:
        get_model(name, num_classes=10, pretrained=True)
    assert "\n" not in str(err.value)
