"""What an unfriendly user breaks (issue 21): divergence, resume with other data, devices, the
corruption cache, full disks and bad inputs through the Python API and the command line."""

from __future__ import annotations

import errno

import numpy as np
import pytest
import torch

from demhec import DemHECConfig, TrainConfig, evaluate, high_entropy_samples, train
from demhec._common import DemHECError, atomic_write, check_choice, check_device
from demhec.cli import main
from tests.conftest import TinyNet


def _data(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 8, 8, generator=g) * 255).to(torch.uint8), torch.randint(0, 4, (n,), generator=g)


class _Exploding(TinyNet):
    """TinyNet that can make its gradients infinite (``grad``) or a buffer non-finite while the
    loss stays finite (``buffer``): the two ways a diverging run reaches its weights."""

    mode = ""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("stat", torch.zeros(3))

    def forward(self, x):
        out = super().forward(x)
        if self.mode == "buffer" and self.training:
            self.stat.fill_(float("inf"))
        if self.mode == "grad":
            out = out + 0 * _InfGrad.apply(out)
        return out


class _InfGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return torch.full_like(g, float("inf"))


@pytest.mark.parametrize("mode,match", [("grad", "non-finite gradients"),
                                        ("buffer", r"non-finite weights or statistics in 1 tensors \(stat\)")])
def test_divergence_never_reaches_a_checkpoint(tmp_path, mode, match):
    x, y = _data()
    ckpt = tmp_path / "c.ckpt"
    torch.manual_seed(0)
    model = _Exploding()
    good = {}

    def break_after_two(step, parts):
        if step == 2:
            good.update({k: v.clone() for k, v in model.state_dict().items()})
            model.mode = mode

    with pytest.raises(DemHECError, match=rf"train diverged at step \d: {match}.*c\.ckpt \(step 2\), kept.*lower the learning rate"):
        train(model, (x, y), TrainConfig(epochs=1, batch_size=8), checkpoint=ckpt, checkpoint_every=1,
              on_step=break_after_two)
    kept = torch.load(ckpt, weights_only=False)
    assert kept["step"] == 2
    for k, v in good.items():
        assert torch.equal(kept["model"][k], v), k
        assert torch.isfinite(kept["model"][k].float()).all(), k


def test_a_finished_run_with_non_finite_weights_is_an_error():
    x, y = _data()
    model = _Exploding()
    model.mode = "buffer"
    with pytest.raises(DemHECError, match="diverged.*no checkpoint was being written"):
        train(model, (x, y), TrainConfig(epochs=1, batch_size=8))


@pytest.mark.parametrize("cfg", [lambda: DemHECConfig(lr=float("inf")), lambda: DemHECConfig(lr=1e6),
                                 lambda: TrainConfig(lr=1e3), lambda: DemHECConfig(eps=float("nan")),
                                 lambda: DemHECConfig(tau=float("inf"))])
def test_non_finite_or_absurd_hyperparameters_are_refused(cfg):
    with pytest.raises(DemHECError, match="must be"):
        cfg()


def test_cli_refuses_an_absurd_learning_rate(capsys, tmp_path):
    code = main(["finetune", "--dataset", "digits", "--limit", "64", "--lr", "1e6", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "lr must be <= 10.0" in err[0]


@pytest.mark.parametrize("device,match", [("foo", "unknown device 'foo'; valid devices: cpu, cuda, cuda:N, mps"),
                                          ("cuda:x", "unknown device"), ("cpu:1", "unknown device")])
def test_unknown_devices_are_refused(device, match):
    with pytest.raises(DemHECError, match=match):
        check_device(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_one_line(capsys, tmp_path, device):
    code = main(["evaluate", "--dataset", "digits", "--limit", "16", "--device", device, "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "sees no CUDA GPU" in err[0]
    with pytest.raises(DemHECError, match="sees no CUDA GPU"):
        train(TinyNet(), _data(), TrainConfig(epochs=1, batch_size=8), device=device)


def test_cli_unknown_device_is_one_line(capsys, tmp_path):
    code = main(["train", "--dataset", "digits", "--limit", "16", "--device", "foo", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unknown device 'foo'" in err[0]


def test_choice_messages_are_plural_english():
    with pytest.raises(DemHECError, match="valid severities: 1, 3, 5"):
        check_choice("severity", 2, [1, 3, 5])
    with pytest.raises(DemHECError, match="valid losses: a"):
        check_choice("loss", "b", ["a"])


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    real_fdopen = __import__("os").fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("os.fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    with pytest.raises(DemHECError, match=r"no space left to write .*r\.json \(.* MB free"):
        with atomic_write(tmp_path / "r.json", "w") as f:
            f.write("x" * 100)
    assert list(tmp_path.iterdir()) == []


# --- the Python API ---------------------------------------------------------------------------


def _eval_arrays(n=8, k=4):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), rng.integers(0, k, n)


@pytest.mark.parametrize("labels,match", [
    (np.array([0, 1, 2, 9, 0, 1, 2, 3]), r"labels outside the model's 4 classes \(9\)"),
    (np.array([0, 1, -1, 2, 0, 1, 2, 3]), r"labels outside the model's 4 classes \(-1\)"),
    (np.array([0, 1, 2]), "8 images but 3 labels"),
])
def test_evaluate_refuses_labels_it_cannot_score(labels, match):
    images, _ = _eval_arrays()
    with pytest.raises(DemHECError, match=match):
        evaluate(TinyNet(), (images, labels), ["gaussian_noise"], [1], "imagecorruptions")


def test_evaluate_refuses_an_empty_dataset():
    images = np.zeros((0, 8, 8, 3), np.uint8)
    with pytest.raises(DemHECError, match="no images"):
        evaluate(TinyNet(), (images, np.zeros(0, int)), ["gaussian_noise"], [1], "imagecorruptions")


def test_high_entropy_samples_converts_uint8_and_refuses_what_it_cannot_use():
    torch.manual_seed(0)
    model = TinyNet()
    x8 = (torch.rand(4, 3, 8, 8) * 255).to(torch.uint8)
    out = high_entropy_samples(model, x8, eps=4 / 255, steps=1, random_start=False)
    assert out.dtype == torch.float32 and float((out - x8.float() / 255).abs().max()) <= 4 / 255 + 1e-6
    with pytest.raises(DemHECError, match=r"in \[0, 1\].*255"):
        high_entropy_samples(model, x8.float(), eps=4 / 255, steps=1)
    bad = torch.rand(4, 3, 8, 8)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(DemHECError, match="NaN"):
        high_entropy_samples(model, bad, eps=4 / 255, steps=1)
