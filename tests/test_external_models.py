"""Any timm / torchvision classifier by name (get_model("timm:...") / ("torchvision:...")):
heads, stages and normalisation found automatically, and the whole method on them (entropy,
Dem-HEC fine-tuning with freezing by stage, evaluation with and without test-time adaptation).
Random weights only: nothing is downloaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import demhec
from demhec import DemHECError
from demhec.data import ImageArrays
from demhec.entropy import layer_entropy
from demhec.evaluation import evaluate
from demhec.models import get_model
from demhec.training import freeze_parameters


def _data(n: int = 16, classes: int = 10, seed: int = 0) -> ImageArrays:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(n) % classes
    return ImageArrays(images, labels, [str(c) for c in range(classes)], {"source": "random"})


def test_timm_model_found_automatically():
    import timm

    model = get_model("timm:test_resnet", num_classes=10)
    net = timm.create_model("test_resnet", num_classes=10)
    # Head: timm's get_classifier(); stages: the stem and stages timm's feature_info names,
    # then the head's input (the penultimate feature), then the head.
    assert model.head_name == "net.fc" and model.head.out_features == 10
    assert model.stages == ("net.act1", *(f"net.layer{i}" for i in range(1, 5)),
                            "net.global_pool.flatten", "net.fc")
    # Normalisation from pretrained_cfg: test_resnet's is 0.5/0.5, not ImageNet's default.
    assert tuple(model.mean.tolist()) == pytest.approx(net.pretrained_cfg["mean"])
    assert tuple(model.std.tolist()) == pytest.approx(net.pretrained_cfg["std"])
    assert model.input_size == net.pretrained_cfg["input_size"][-1]
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_timm_model_without_a_stem_feature_gets_its_first_module_as_stem():
    model = get_model("timm:test_convnext", num_classes=3)  # feature_info starts at stages.0
    assert model.stages[:2] == ("net.stem", "net.stages.0") and model.head_name == "net.head.fc"


def test_torchvision_model_found_automatically():
    import torchvision.models as tvm

    model = get_model("torchvision:resnet18", num_classes=10)
    assert model.head_name == "net.fc" and model.head.out_features == 10
    assert model.stages == ("net.maxpool", *(f"net.layer{i}" for i in range(1, 5)), "net.avgpool", "net.fc")
    t = tvm.ResNet18_Weights.DEFAULT.transforms()
    assert model.mean.tolist() == pytest.approx(t.mean) and model.std.tolist() == pytest.approx(t.std)
    # A head that is not the model's last child: MobileNetV3's is classifier.3, and its input
    # is the Hardswish output classifier.1 (the Dropout between passes it through).
    mobile = get_model("torchvision:mobilenet_v3_small", num_classes=5)
    assert mobile.head_name == "net.classifier.3" and mobile.stages[-2:] == ("net.classifier.1", "net.classifier.3")
    assert mobile.stages[0] == "net.features.0"


def test_overrides_and_errors_name_what_to_pass():
    model = get_model("timm:test_resnet", num_classes=4, stages=("act1", "layer1", "layer4", "fc"),
                      mean=(0.1, 0.2, 0.3), std=(1.0, 1.0, 1.0))
    assert model.stages == ("net.act1", "net.layer1", "net.layer4", "net.fc")
    assert model.mean.tolist() == pytest.approx([0.1, 0.2, 0.3])
    with pytest.raises(DemHECError, match="pass head="):
        get_model("torchvision:squeezenet1_1", num_classes=4)  # a conv head, no Linear
    with pytest.raises(DemHECError, match="pass stages="):
        get_model("torchvision:mnasnet0_5", num_classes=4)  # not a known layout
    assert get_model("torchvision:mnasnet0_5", num_classes=4,
                     stages=("layers.0", "layers.8", "layers.16", "classifier.1")).head_name == "net.classifier.1"
    with pytest.raises(DemHECError, match="unknown timm model 'no_such_net'"):
        get_model("timm:no_such_net")
    with pytest.raises(DemHECError, match="valid backbones: .*timm:<name>, torchvision:<name>"):
        get_model("resnet57")
    with pytest.raises(DemHECError, match="no module named"):
        get_model("timm:test_resnet", head="fc", stages=("act1", "nope", "fc"))


@pytest.mark.parametrize("name", ["timm:test_resnet", "torchvision:resnet18"])
def test_entropy_demhec_and_evaluation_on_external_models(name):
    torch.manual_seed(0)
    model = get_model(name, num_classes=10)
    data = _data(16)
    x = demhec.as_float_images(data.images[:4])
    ent = layer_entropy(model, x)
    assert list(ent) == list(model.stages)
    assert all(torch.isfinite(v).all() and v.shape == (4,) for v in ent.values())

    # Freezing by stage: "stages:1" = the stem and the first stage, found without module names.
    frozen = set(freeze_parameters(get_model(name, num_classes=10), "stages:1"))
    assert any(n.startswith("net.layer1.") for n in frozen)
    assert not any(n.startswith(("net.layer2.", "net.fc.")) for n in frozen)

    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = demhec.DemHECConfig(epochs=1, batch_size=8, max_steps=1, steps=1, warmup_epochs=0.0)
    tuned = demhec.finetune(model, data, cfg)
    after = tuned.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("net.layer1.") and "weight" in k)
    assert not torch.equal(before["net.fc.weight"], after["net.fc.weight"])

    for adapt in (None, "tent"):  # "bn" is TENT without its step: tests/test_adaptation.py
        df = evaluate(tuned, data, ["gaussian_noise"], [5], adapt=adapt, workers=1)
        assert list(df.corruption) == ["clean", "gaussian_noise"] and df["n"].tolist() == [16, 16]


def test_cli_trains_a_timm_backbone(tmp_path):
    from demhec.cli import main

    out = tmp_path / "out"
    common = ["--dataset", "digits", "--backbone", "timm:test_resnet", "--limit", "16", "--out",
              str(out), "--no-progress"]
    assert main(["train", *common, "--epochs", "1", "--batch-size", "8"]) == 0
    assert (out / "digits_timm-test_resnet_base.pt").exists()
    model = get_model("timm:test_resnet", num_classes=10,
                      pretrained=str(out / "digits_timm-test_resnet_base.pt"))
    assert isinstance(model.head, nn.Linear)
