"""What an unfriendly user breaks: divergence, resume with other data, devices, the
corruption cache, full disks and bad inputs through the Python API and the command line."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from demhec import DemHECConfig, TrainConfig, evaluate, finetune, high_entropy_samples, train
from demhec._common import DemHECError, TrainingDiverged, atomic_write, check_choice, check_device
from demhec.cli import main
from tests.conftest import TinyNet

ROOT = Path(__file__).resolve().parents[1]


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
    with pytest.raises(DemHECError, match="diverged.*no checkpoint was being written") as info:
        train(model, (x, y), TrainConfig(epochs=1, batch_size=8))
    # a study can record the divergence as the run's outcome (the controls' bn_frozen)
    assert isinstance(info.value, TrainingDiverged) and info.value.step >= 0 and "loss" in info.value.parts


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


@pytest.mark.parametrize("content,match", [
    (b"", "the file is empty"),
    (b"just some text\n", "not a PyTorch state dict file .a text file"),
    (bytes(range(256)) * 4, "not a PyTorch state dict file .unrecognised bytes"),
])
def test_unreadable_weights_files_say_why_and_never_suggest_unsafe_loading(tmp_path, content, match):
    from demhec.models import get_model

    path = tmp_path / "w.pt"
    path.write_bytes(content)
    with pytest.raises(DemHECError, match=match) as info:
        get_model("resnet20", num_classes=10, pretrained=str(path))
    assert "weights_only" not in str(info.value) and str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_weights_of_another_architecture_are_named(tmp_path):
    from demhec.models import get_model

    path = tmp_path / "r32.pt"
    torch.save(get_model("resnet32", num_classes=10).state_dict(), path)
    with pytest.raises(DemHECError, match="does not fit resnet20"):
        get_model("resnet20", num_classes=10, pretrained=str(path))


def test_a_damaged_image_in_an_imagefolder_is_named(tmp_path):
    from PIL import Image

    from demhec.data import load_arrays

    for c in ("a", "b"):
        (tmp_path / "train" / c).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / "train" / c / f"{i}.png")
    (tmp_path / "train" / "b" / "1.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DemHECError, match=r"cannot read image .*b/1\.png"):
        load_arrays("imagefolder", "train", tmp_path)


class _Interrupt(Exception):
    pass


def _interrupted_finetune(tmp_path, data, model):
    """A fine-tune stopped after its second step (as a kill would), leaving its checkpoint."""
    ckpt = tmp_path / "f.ckpt"

    def stop(step, parts):
        if step == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        finetune(model, data, DemHECConfig(epochs=1, batch_size=8, steps=1, warmup_epochs=0),
                 checkpoint=ckpt, checkpoint_every=1, on_step=stop)
    return ckpt


def _base(seed=0):
    torch.manual_seed(seed)
    return TinyNet()


# Other starting weights make another default teacher (a copy of them) too.
@pytest.mark.parametrize("change,field", [("data", "'data'"), ("weights", "'start_weights', 'teacher'"),
                                          ("teacher", "'teacher'")])
def test_resume_refuses_other_data_weights_or_teacher(tmp_path, change, field):
    data = _data()
    ckpt = _interrupted_finetune(tmp_path, data, _base())
    cfg = DemHECConfig(epochs=1, batch_size=8, steps=1, warmup_epochs=0)
    kw = {}
    if change == "data":
        data = (data[0][:24], data[1][:24])  # a --limit 24 instead of 32
    if change == "teacher":
        kw["teacher"] = _base(seed=5)
    with pytest.raises(DemHECError, match=rf"different config or data \(differs in \[{field}\]\)"):
        finetune(_base(seed=1) if change == "weights" else _base(), data, cfg, checkpoint=ckpt, **kw)


def test_resume_of_the_same_run_is_accepted(tmp_path):
    data = _data()
    ckpt = _interrupted_finetune(tmp_path, data, _base())
    steps = []
    finetune(_base(), data, DemHECConfig(epochs=1, batch_size=8, steps=1, warmup_epochs=0), checkpoint=ckpt,
             checkpoint_every=1, on_step=lambda step, _: steps.append(step))
    assert steps == [2, 3, 4]  # the checkpoint of step 1 (the stop came before step 2's)


# --- the command line: outputs, locks -------------------------------------------------------------

CLI = ["--dataset", "digits", "--limit", "48", "--no-progress"]


def test_a_result_of_other_settings_is_not_silently_replaced(tmp_path, capsys):
    assert main(["train", *CLI, "--epochs", "1", "--batch-size", "16", "--out", str(tmp_path)]) == 0
    before = (tmp_path / "digits_resnet20_base.json").read_bytes()
    capsys.readouterr()
    code = main(["train", *CLI, "--epochs", "1", "--batch-size", "16", "--lr", "0.2", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "other settings (differs in ['lr'])" in err[0]
    assert (tmp_path / "digits_resnet20_base.json").read_bytes() == before
    # The same command again is no other setting: it runs.
    assert main(["train", *CLI, "--epochs", "1", "--batch-size", "16", "--out", str(tmp_path)]) == 0


def test_a_second_run_into_the_same_outputs_refuses_naming_the_holder(tmp_path, capsys):
    import fcntl

    tmp_path.mkdir(exist_ok=True)
    lock = tmp_path / ".finetune-digits-resnet20.lock"
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 4242: demhec finetune --eps 8/255")
        held.flush()
        code = main(["finetune", *CLI, "--eps", "4/255", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pid 4242: demhec finetune --eps 8/255" in err[0]
    assert not list(tmp_path.glob("*.json"))


# --- the corruption cache ----------------------------------------------------------------------------


def _grid(images, cache_dir, workers=1):
    from demhec.corruptions import corruption_grid

    return {(c, s): np.asarray(x) for c, s, x in corruption_grid(
        images, ["gaussian_noise"], [1], suite="imagecorruptions", cache_dir=cache_dir, key="k",
        workers=workers)}


@pytest.mark.parametrize("sidecar", ["[]", "null", "{", '"text"'])
def test_a_malformed_sidecar_is_damage_and_is_rebuilt(tmp_path, sidecar, caplog):
    images, _ = _eval_arrays(8)
    images = np.repeat(np.repeat(images, 4, axis=1), 4, axis=2)  # 32 x 32, imagecorruptions' minimum
    first = _grid(images, tmp_path)
    (meta,) = tmp_path.glob("imagecorruptions/k/*.json")
    meta.write_text(sidecar)
    again = _grid(images, tmp_path)
    assert np.array_equal(first[("gaussian_noise", 1)], again[("gaussian_noise", 1)])
    assert "invalid" in caplog.text and json.loads(meta.read_text())["corruption"] == "gaussian_noise"


def test_a_read_only_cache_that_must_be_rebuilt_says_so(tmp_path, monkeypatch):
    import tempfile

    images, _ = _eval_arrays(8)
    images = np.repeat(np.repeat(images, 4, axis=1), 4, axis=2)

    def refuse(*a, **k):  # what a read-only folder answers (root, running the tests, is not refused)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(DemHECError, match=r"must be \(re\)built but .* is not writable"):
        _grid(images, tmp_path)


def test_stale_temporary_files_of_dead_builders_are_removed(tmp_path):
    images, _ = _eval_arrays(8)
    images = np.repeat(np.repeat(images, 4, axis=1), 4, axis=2)
    folder = tmp_path / "imagecorruptions" / "k"
    folder.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = folder / f".gaussian_noise_s1.{dead.pid}.abc.tmp.npy"
    live = folder / f".gaussian_noise_s1.{os.getpid()}.abc.tmp.npy"  # a builder still at work
    stale.write_bytes(b"x")
    live.write_bytes(b"x")
    _grid(images, tmp_path)
    assert not stale.exists() and live.exists()


def test_building_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    import shutil

    images, _ = _eval_arrays(8)
    images = np.repeat(np.repeat(images, 4, axis=1), 4, axis=2)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 1000))
    with pytest.raises(DemHECError, match=r"no space left to write .*gaussian_noise_s1\.npy: [0-9.]+ MB needed, 0\.0 MB free"):
        _grid(images, tmp_path)
    assert not list((tmp_path / "imagecorruptions" / "k").glob(".*tmp*"))


ORPHAN_SCRIPT = """
import os, time
from demhec.corruptions import engine

if __name__ == "__main__":
    pool = engine._LazyPool(2)
    executor = pool.executor()
    pids = set()
    while len(pids) < 2:  # both workers started (their initializer has run)
        pids |= {f.result() for f in [executor.submit(os.getpid) for _ in range(4)]}
    busy = [executor.submit(time.sleep, 120) for _ in range(2)]
    print(" ".join(map(str, sorted(pids))), flush=True)
    time.sleep(120)
"""


@pytest.mark.slow
def test_corruption_workers_die_with_a_killed_parent(tmp_path):
    script = tmp_path / "orphan.py"
    script.write_text(ORPHAN_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    workers = [int(p) for p in proc.stdout.readline().split()]
    assert len(workers) == 2
    proc.kill()
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(_running(p) for p in workers):
        time.sleep(0.2)
    assert not [p for p in workers if _running(p)]


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def test_torch_save_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    """torch.save's zip writer reports a full disk as a RuntimeError ("unexpected pos ...")."""
    import demhec._common as common

    def failing_save(obj, f):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 987840 vs 987736")

    monkeypatch.setattr(common, "_nearly_full", lambda folder: True)
    with pytest.raises(DemHECError, match=r"no space left to write .*w\.pt"):
        with atomic_write(tmp_path / "w.pt") as f:
            failing_save({}, f)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(common, "_nearly_full", lambda folder: False)
    with pytest.raises(RuntimeError, match="unexpected pos"):  # not a full disk: torch's own error
        with atomic_write(tmp_path / "w.pt") as f:
            failing_save({}, f)
