"""The run keywords (demhec.runs) are defined once and every entry point takes all of them."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest
import torch

from demhec.evaluation import evaluate, paired_gain
from demhec.runs import EvalRun, TrainRun
from demhec.training import DemHECConfig, TrainConfig, finetune, train, train_baseline
from tests.conftest import TinyNet

DATA = ((torch.rand(16, 3, 8, 8) * 255).to(torch.uint8), torch.randint(0, 4, (16,)))


def _every_train_keyword(tmp_path, steps):
    kw = dict(device="cpu", channels_last=True, checkpoint=tmp_path / "run.ckpt", checkpoint_every=1,
              progress=False, on_step=lambda step, _: steps.append(step), sync_bn=True, compile=False)
    # A new TrainRun field fails here until it is given a value above (and so checked below).
    assert set(kw) == {f.name for f in dataclasses.fields(TrainRun)}
    return kw


@pytest.mark.parametrize("entry", ["train", "finetune", "train_baseline"])
def test_training_entry_points_take_every_run_keyword(tmp_path, entry):
    steps: list[int] = []
    kw = _every_train_keyword(tmp_path, steps)
    run = {"train": lambda: train(TinyNet(), DATA, TrainConfig(epochs=1, batch_size=8), **kw),
           "finetune": lambda: finetune(TinyNet(), DATA, DemHECConfig(epochs=1, batch_size=8, steps=1), **kw),
           "train_baseline": lambda: train_baseline(TinyNet(), DATA, "autoaugment",
                                                    TrainConfig(epochs=1, batch_size=8), **kw)}[entry]
    model = run()
    assert steps == [1, 2] and (tmp_path / "run.ckpt").exists()
    assert isinstance(model, TinyNet)
    with pytest.raises(TypeError, match="unexpected keyword argument 'workers'"):
        train(TinyNet(), DATA, TrainConfig(epochs=1, batch_size=8), workers=2)


def test_evaluation_entry_points_take_every_run_keyword():
    for f in dataclasses.fields(EvalRun):
        param = inspect.signature(evaluate).parameters.get(f.name)
        assert param is not None and param.default == f.default, f"evaluate lacks {f.name}={f.default!r}"
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(8) % 4
    kw = {f.name: f.default for f in dataclasses.fields(EvalRun)} | dict(batch_size=4, channels_last=True,
                                                                       workers=1, device="cpu")
    model = TinyNet()
    out = paired_gain(model, model, (images, labels), ["gaussian_noise"], 5, **kw)
    assert out["clean"]["diff"] == 0 and out["corrupted"]["diff"] == 0  # the same model twice
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        paired_gain(TinyNet(), TinyNet(), (images, labels), ["gaussian_noise"], 5, checkpoint_every=2)
