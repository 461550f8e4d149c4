from __future__ import annotations

import contextlib
import dataclasses
import functools
import re

import pytest
import torch
from torch import nn

from demhec._common import DemHECError
from demhec.models import (
    CIFAR_WEIGHT_URLS,
    NORMALISATION,
    VIT_TEST_CONFIG,
    CifarRepVGG,
    CifarResNet,
    Classifier,
    ModelInfo,
    RepVGGBlock,
    get_model,
    list_models,
    model_info,
    register_model,
    register_model_info,
    reparameterize,
)

# Models above this many parameters are only checked on the meta device (ViT-L: 304M).
MAX_TEST_PARAMS = 100_000_000

# Parameter counts of model.net for 10 classes: chenyaofo/pytorch-cifar-models README
# (0.27M, 0.86M, 7.84M, 26.82M), exact values from its own model definitions.
ZOO_PARAMS = {
    "resnet20": 272_474,
    "resnet56": 855_770,
    "repvgg_a0": 7_840_874,
    "repvgg_a2": 26_815_690,
}

# Fingerprint of the zoo's state-dict layout (number of entries, a few keys with shapes, head
# key and width), read off chenyaofo/pytorch-cifar-models' resnet.py / repvgg.py.
ZOO_LAYOUT = {
    "resnet20": (
        128,
        {"conv1.weight": (16, 3, 3, 3), "layer2.0.downsample.0.weight": (32, 16, 1, 1)},
        ("fc.weight", 64),
    ),
    "resnet56": (
        344,
        {"layer1.8.bn2.running_var": (16,), "layer3.0.downsample.1.weight": (64,)},
        ("fc.weight", 64),
    ),
    "repvgg_a0": (
        356,
        {
            "stage0.rbr_dense.conv.weight": (48, 3, 3, 3),
            "stage1.0.rbr_identity.weight": (48,),
            "stage4.0.rbr_1x1.conv.weight": (1280, 192, 1, 1),
        },
        ("linear.weight", 1280),
    ),
    "repvgg_a2": (
        351,
        {
            "stage0.rbr_dense.conv.weight": (64, 3, 3, 3),
            "stage3.13.rbr_1x1.bn.bias": (384,),
            "stage4.0.rbr_1x1.conv.weight": (1408, 384, 1, 1),
        },
        ("linear.weight", 1408),
    ),
}

ZOO = "https://github.com/chenyaofo/pytorch-cifar-models/releases/download"


@functools.cache
def param_count(name: str) -> int:
    with torch.device("meta"):
        model = get_model(name, num_classes=10)
    return sum(p.numel() for p in model.net.parameters())


def zoo_net(name: str, num_classes: int) -> nn.Module:
    """The bare architecture, as the zoo's own constructors build it (no wrapper)."""
    if name.startswith("resnet"):
        return CifarResNet({"resnet20": 3, "resnet56": 9}[name], num_classes)
    widths = {"repvgg_a0": (0.75, 0.75, 0.75, 2.5), "repvgg_a2": (1.5, 1.5, 1.5, 2.75)}
    return CifarRepVGG(widths[name], num_classes)


def randomise_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine parameters, as a trained network has."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
            m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(c, generator=g))
            m.bias.data.copy_(0.2 * torch.randn(c, generator=g))


def test_registry_lists_the_paper_backbones():
    names = list_models()
    assert names == sorted(names)
    paper = {"resnet20", "resnet56", "repvgg_a0", "repvgg_a2", "resnet18", "resnet50"}
    assert paper | {"vit_large_patch16_384", "vit_test", "alexnet"} <= set(names)


@pytest.mark.parametrize("name", list_models())
def test_forward_head_and_stages(name):
    # A model above MAX_TEST_PARAMS is built and run on the meta device: shapes, no values.
    meta = param_count(name) > MAX_TEST_PARAMS
    with torch.device("meta") if meta else contextlib.nullcontext():
        _forward_head_and_stages(name, meta)


def _forward_head_and_stages(name, meta):
    torch.manual_seed(0)
    model = get_model(name, num_classes=7).eval()
    assert isinstance(model, Classifier) and model.arch == name
    modules = dict(model.named_modules())
    assert model.stages[-1] == model.head_name
    assert isinstance(modules[model.head_name], nn.Linear)

    outputs, head_inputs = {}, []
    handles = [
        modules[s].register_forward_hook(lambda m, i, o, s=s: outputs.__setitem__(s, o))
        for s in model.stages
    ]
    handles.append(
        modules[model.head_name].register_forward_pre_hook(lambda m, i: head_inputs.append(i[0]))
    )
    size = model.min_input_size
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        logits = model(x)
    for h in handles:
        h.remove()

    assert logits.shape == (2, 7)
    assert meta or torch.isfinite(logits).all()
    assert len(head_inputs) == 1 and head_inputs[0].shape == (2, model.feature_dim)
    assert set(outputs) == set(model.stages)
    for s, out in outputs.items():
        assert isinstance(out, torch.Tensor) and out.shape[0] == 2, s
    assert outputs[model.head_name].shape == logits.shape if meta else torch.equal(outputs[model.head_name], logits)


@pytest.mark.parametrize("name", ["resnet20", "repvgg_a0", "resnet18", "vit_test"])
def test_normalisation_lives_inside_and_out_of_state_dict(name):
    model = get_model(name, num_classes=10).eval()
    sd = model.state_dict()
    assert "mean" not in sd and "std" not in sd
    assert all(k.startswith("net.") for k in sd)
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in model.net.parameters()
    )
    x = torch.rand(2, 3, 32, 32)
    mean, std = model.mean.view(1, 3, 1, 1), model.std.view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.net((x - mean) / std))
        assert not torch.allclose(model(x), model.net(x))


def test_normalisation_constants_follow_dataset():
    assert tuple(get_model("resnet20", 10).mean.tolist()) == pytest.approx((0.4914, 0.4822, 0.4465))
    c100 = get_model("resnet20", 100)
    assert tuple(c100.std.tolist()) == pytest.approx((0.2673, 0.2564, 0.2761))
    forced = get_model("resnet20", 100, dataset="cifar10")
    assert tuple(forced.std.tolist()) == pytest.approx(NORMALISATION["cifar10"].std)
    assert tuple(get_model("resnet18", 200).mean.tolist()) == pytest.approx((0.485, 0.456, 0.406))
    with pytest.raises(DemHECError, match="valid datasets: cifar10, cifar100"):
        get_model("resnet20", 10, dataset="imagenet")


@pytest.mark.parametrize("name", sorted(ZOO_PARAMS))
def test_zoo_parameter_counts(name):
    assert sum(p.numel() for p in get_model(name, 10).net.parameters()) == ZOO_PARAMS[name]
    assert param_count(name) == ZOO_PARAMS[name]


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", sorted(ZOO_PARAMS))
def test_zoo_layout_loads_strict(name, num_classes):
    torch.manual_seed(1)
    sd = zoo_net(name, num_classes).state_dict()
    n_keys, shapes, (head_key, width) = ZOO_LAYOUT[name]
    assert len(sd) == n_keys
    assert {k: tuple(sd[k].shape) for k in shapes} == shapes
    assert tuple(sd[head_key].shape) == (num_classes, width)
    model = get_model(name, num_classes)
    model.net.load_state_dict(sd, strict=True)
    model.load_state_dict_any(sd)
    model.load_state_dict_any({"state_dict": model.state_dict()})
    head = model.head.weight
    assert head.shape[0] == num_classes
    assert torch.equal(head, sd[model.head_name.removeprefix("net.") + ".weight"])


def test_load_state_dict_any_accepts_dataparallel_and_checkpoint_dicts():
    src = get_model("resnet20", 10)
    sd = {"module." + k: v + 1 for k, v in src.net.state_dict().items()}
    dst = get_model("resnet20", 10)
    dst.load_state_dict_any({"model": sd, "epoch": 3})
    assert torch.equal(dst.net.fc.bias, src.net.fc.bias + 1)


@pytest.mark.parametrize(
    ("source", "num_classes"), [("resnet20", 100), ("resnet56", 10), ("repvgg_a0", 10)]
)
def test_foreign_checkpoint_raises_one_line(source, num_classes):
    sd = get_model(source, num_classes).state_dict()
    with pytest.raises(DemHECError) as err:
        get_model("resnet20", 10).load_state_dict_any(sd)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("checkpoint does not fit resnet20 with 10 classes: ")
    if source == "resnet20":
        assert "size mismatch for fc.weight" in msg
    else:
        assert "unexpected keys" in msg


def test_not_a_state_dict_raises():
    with pytest.raises(DemHECError, match="not a state dict"):
        get_model("resnet20").load_state_dict_any([1, 2])


@pytest.mark.parametrize("name", ["repvgg_a0", "repvgg_a2"])
def test_repvgg_deploy_form_matches_training_form(name):
    torch.manual_seed(0)
    model = get_model(name, 10)
    randomise_bn(model)
    model.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        assert reparameterize(model) is model
        after = model(x)
    blocks = [m for m in model.modules() if isinstance(m, RepVGGBlock)]
    assert len(blocks) == 22
    for b in blocks:
        assert isinstance(b.rbr_reparam, nn.Conv2d) and b.rbr_reparam.kernel_size == (3, 3)
        assert not hasattr(b, "rbr_dense") and not hasattr(b, "rbr_identity")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    scale = before.abs().max()
    assert scale > 1e-3
    assert (after - before).abs().max() <= 1e-5 * scale


def test_reparameterize_rejects_models_without_repvgg_blocks():
    with pytest.raises(DemHECError, match="no RepVGG blocks"):
        reparameterize(get_model("resnet20"))


def test_unknown_name_lists_valid_names():
    with pytest.raises(DemHECError) as err:
        get_model("resnet21")
    msg = str(err.value)
    assert "unknown backbone 'resnet21'" in msg
    for name in list_models():
        assert name in msg


def test_duplicate_registration_raises():
    with pytest.raises(DemHECError, match="already registered"):
        register_model("resnet20")(lambda **kw: None)
    assert list_models().count("resnet20") == 1


def test_each_backbone_is_one_read_only_record_that_its_model_follows():
    """A registered backbone's facts (head, stages, sizes, weights) live in one ModelInfo; the
    model built from it carries them, and the older per-fact tables are views of the records."""
    for name in list_models():
        info = model_info(name)
        assert info.name == name
        with torch.device("meta"):
            model = get_model(name, num_classes=10)
        assert model.head_name == info.head
        assert model.stages == (info.stages or model.stages) and model.stages[-1] == info.head
        assert model.input_size == (info.input_size or model.input_size)
        assert model.min_input_size == (info.min_input_size or model.min_input_size)
    for (arch, dataset), url in CIFAR_WEIGHT_URLS.items():
        assert model_info(arch).weights_urls[dataset] == url
    info = model_info("resnet20")
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.head = "net.layer3"
    with pytest.raises(TypeError):
        info.weights_urls["cifar10"] = "elsewhere"
    with pytest.raises(DemHECError, match="already registered"):
        register_model_info(ModelInfo("resnet20", info.builder))
    with pytest.raises(DemHECError, match="unknown backbone 'resnet21'"):
        model_info("resnet21")


def test_bad_arguments_raise():
    with pytest.raises(DemHECError, match="num_classes"):
        get_model("resnet20", num_classes=0)
    with pytest.raises(DemHECError, match="pretrained"):
        get_model("resnet20", pretrained=1)
    with pytest.raises(DemHECError, match="expects images"):
        get_model("resnet20")(torch.rand(2, 1, 32, 32))


# -- pretrained=True: published weights, with the download replaced by a local state dict ---


class FakeHub:
    """Stands in for torch.hub.load_state_dict_from_url; returns a locally built zoo dict."""

    def __init__(self, sd):
        self.sd, self.calls = sd, []

    def __call__(self, url, *args, **kwargs):
        self.calls.append((url, kwargs))
        return self.sd


@pytest.mark.parametrize(
    ("name", "num_classes", "url"),
    [
        ("resnet20", 10, f"{ZOO}/resnet/cifar10_resnet20-4118986f.pt"),
        ("resnet56", 100, f"{ZOO}/resnet/cifar100_resnet56-f2eff4c8.pt"),
        ("repvgg_a0", 10, f"{ZOO}/repvgg/cifar10_repvgg_a0-ef08a50e.pt"),
        ("repvgg_a2", 100, f"{ZOO}/repvgg/cifar100_repvgg_a2-8e71b1f8.pt"),
    ],
)
def test_pretrained_downloads_published_cifar_weights(monkeypatch, name, num_classes, url):
    sd = zoo_net(name, num_classes).state_dict()
    hub = FakeHub(sd)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", hub)
    model = get_model(name, num_classes, pretrained=True)
    assert len(hub.calls) == 1
    requested, kwargs = hub.calls[0]
    assert requested == url
    assert kwargs["check_hash"] is True
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_published_url_table_is_complete_and_hash_named():
    cifar = ["resnet20", "resnet32", "resnet44", "resnet56", "repvgg_a0", "repvgg_a1", "repvgg_a2"]
    assert set(CIFAR_WEIGHT_URLS) == {(a, d) for a in cifar for d in ("cifar10", "cifar100")}
    for (arch, dataset), url in CIFAR_WEIGHT_URLS.items():
        family = arch.split("_")[0].rstrip("0123456789")
        assert re.fullmatch(rf"{ZOO}/{family}/{dataset}_{arch}-[0-9a-f]{{8}}\.pt", url), url
    assert len(set(CIFAR_WEIGHT_URLS.values())) == len(CIFAR_WEIGHT_URLS)


def test_pretrained_cifar_needs_10_or_100_classes(monkeypatch):
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", FakeHub({}))
    with pytest.raises(DemHECError, match="10 \\(cifar10\\) or 100 \\(cifar100\\)"):
        get_model("resnet20", 7, pretrained=True)
    with pytest.raises(DemHECError, match="num_classes=100 with dataset='cifar10'"):
        get_model("resnet20", 100, pretrained=True, dataset="cifar10")


def test_download_failure_is_one_clear_line(monkeypatch):
    def offline(url, *args, **kwargs):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(DemHECError, match="cannot download .*cifar10_resnet20-4118986f.pt"):
        get_model("resnet20", 10, pretrained=True)


def test_pretrained_path_loads_zoo_and_wrapper_layouts(tmp_path):
    torch.manual_seed(2)
    net = zoo_net("resnet20", 100)
    torch.save(net.state_dict(), tmp_path / "zoo.pt")
    model = get_model("resnet20", 100, pretrained=tmp_path / "zoo.pt")
    assert torch.equal(model.net.fc.weight, net.fc.weight)
    torch.save(model.state_dict(), tmp_path / "wrapper.pt")
    again = get_model("resnet20", 100, pretrained=str(tmp_path / "wrapper.pt"))
    assert torch.equal(again.net.conv1.weight, net.conv1.weight)
    with pytest.raises(DemHECError, match="does not fit resnet20 with 10 classes"):
        get_model("resnet20", 10, pretrained=tmp_path / "zoo.pt")
    with pytest.raises(DemHECError, match="not found"):
        get_model("resnet20", 100, pretrained=tmp_path / "missing.pt")


def test_imagenet_pretrained_keeps_backbone_and_replaces_head(monkeypatch):
    import torchvision

    torch.manual_seed(3)
    imagenet = torchvision.models.resnet18(num_classes=1000)
    hub = FakeHub(imagenet.state_dict())
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", hub)
    model = get_model("resnet18", 200, pretrained=True)
    assert hub.calls[0][0] == torchvision.models.ResNet18_Weights.DEFAULT.url
    assert torch.equal(model.net.layer4[1].conv2.weight, imagenet.layer4[1].conv2.weight)
    assert model.net.fc.out_features == 200


def test_timm_pretrained_is_requested_and_offline_error_is_clear(monkeypatch):
    import timm

    real, calls = timm.create_model, []

    def fake(name, pretrained=False, **kw):
        calls.append((name, pretrained, kw))
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", fake)
    model = get_model("vit_tiny_patch16_224", 200, pretrained=True)
    assert calls == [("vit_tiny_patch16_224", True, {"num_classes": 200})]
    assert model.net.head.out_features == 200 and model.input_size == 224

    def offline(name, pretrained=False, **kw):
        raise OSError("cannot find the requested files in the local cache")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(DemHECError, match="vit_base_patch16_224 .*network"):
        get_model("vit_base_patch16_224", 10, pretrained=True)
    with pytest.raises(DemHECError, match="no pretrained weights"):
        get_model("vit_test", 10, pretrained=True)


def test_vit_large_is_the_papers_vit_l():
    with torch.device("meta"):
        model = get_model("vit_large_patch16_384", 200)
    assert model.input_size == 384
    assert 303e6 < param_count("vit_large_patch16_384") < 305e6
    assert model.stages[0] == "net.patch_embed" and model.stages[-2] == "net.norm"
    assert sum(s.startswith("net.blocks.") for s in model.stages) == 24


def test_vit_test_config_and_img_size_passthrough():
    model = get_model("vit_test", 10)
    assert model.input_size == 32 and model.feature_dim == VIT_TEST_CONFIG["embed_dim"]
    assert sum(s.startswith("net.blocks.") for s in model.stages) == VIT_TEST_CONFIG["depth"]
    small = get_model("vit_tiny_patch16_224", 10, img_size=64)
    assert small.input_size == 64
    with torch.no_grad():
        assert small.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 10)


@pytest.mark.parametrize("name", list_models())
def test_freeze_stages_grows_by_stage_and_never_reaches_the_head(name):
    """``freeze="stages:N"`` freezes the stem and the first N stages, "after:N" the rest;
    "auto" is "stages:1"."""
    from demhec import freeze_parameters

    with torch.device("meta"):
        model = get_model(name, num_classes=7)
    n_max = len(model.stages) - 2
    frozen = [set(freeze_parameters(model, f"stages:{n}")) for n in range(1, n_max + 1)]
    assert set(freeze_parameters(model, "auto")) == frozen[0]
    assert frozen[0] and all(a <= b for a, b in zip(frozen, frozen[1:])) and frozen[0] < frozen[-1]
    head = {f"{model.head_name}.{n}" for n, _ in dict(model.named_modules())[model.head_name].named_parameters()}
    assert not frozen[-1] & head
    for n in range(1, n_max + 1):  # "after:N" trains exactly what "stages:N" freezes
        assert set(freeze_parameters(model, f"after:{n}")) == set(dict(model.named_parameters())) - frozen[n - 1]
    for bad in ("stages:0", f"stages:{n_max + 1}", "stages:x", "after:0"):
        with pytest.raises(DemHECError, match="stages"):
            freeze_parameters(model, bad)
