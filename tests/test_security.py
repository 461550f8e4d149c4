"""No file the project reads can run code, and no archive writes outside its folder.

Every loader gets a file crafted to run code (a pickle whose ``__reduce__`` creates a marker
file when unpickled) or an archive member that escapes its target: it must be refused with one
line, and the marker must never appear.
"""

from __future__ import annotations

import importlib.util
import io
import json
import pathlib
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import demhec
from demhec._common import DemHECError, safe_extract
from demhec.models import get_model

ROOT = Path(__file__).resolve().parents[1]


class RunsCode:
    """Unpickling this calls ``Path.touch(marker)``: code chosen by whoever wrote the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _crafted_torch_file(path: Path, marker: Path, **state) -> Path:
    torch.save({"fingerprint": {}, "step": 1, "model": {}, "payload": RunsCode(marker), **state}, path)
    return path


def _one_line_refusal(exc: BaseException, path: Path) -> None:
    text = str(exc)
    assert "\n" not in text and str(path.name) in text
    assert "weights_only=False" not in text  # never the advice that would run the file


def _tiny_data(n: int = 32):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(n) % 10


def test_the_library_resume_refuses_a_checkpoint_that_runs_code(tmp_path):
    marker = tmp_path / "marker"
    ckpt = _crafted_torch_file(tmp_path / "run.ckpt", marker)
    cfg = demhec.DemHECConfig(epochs=1, batch_size=16, max_steps=1, warmup_epochs=0, steps=1)
    with pytest.raises(DemHECError, match="not a PyTorch checkpoint file") as info:
        demhec.finetune(get_model("resnet20", num_classes=10), _tiny_data(), cfg, checkpoint=ckpt)
    _one_line_refusal(info.value, ckpt)
    assert not marker.exists()


@pytest.mark.parametrize("command", ["train", "finetune"])
def test_the_cli_refuses_a_resume_checkpoint_or_weights_that_run_code(tmp_path, capsys, command):
    """The CLI resumes from ``<out>/<dataset>_<backbone>_<kind>.ckpt`` and fine-tunes the state
    dict given by ``--weights``: a crafted file in either place is refused in one line."""
    from demhec.cli import main

    marker = tmp_path / "marker"
    out = tmp_path / "o"
    out.mkdir()
    args = [command, "--dataset", "digits", "--limit", "32", "--epochs", "1", "--batch-size", "16",
            "--out", str(out), "--no-progress"]
    if command == "finetune":
        args += ["--max-steps", "1", "--steps", "1"]
        torch.save(get_model("resnet20", num_classes=10).state_dict(), out / "digits_resnet20_base.pt")
    _crafted_torch_file(out / f"digits_resnet20_{'base' if command == 'train' else 'demhec'}.ckpt", marker)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"demhec {command}: error: cannot read training checkpoint") and "\n" not in err
    if command == "finetune":
        weights = tmp_path / "w.pt"
        torch.save({"conv.weight": RunsCode(marker)}, weights)
        assert main([*args, "--weights", str(weights)]) == 2
        err = capsys.readouterr().err.strip()
        assert "which are not loaded for safety" in err and "\n" not in err
    assert not marker.exists()


def test_pretrained_weights_that_run_code_are_refused(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "w.pt"
    torch.save({"conv.weight": RunsCode(marker)}, path)
    with pytest.raises(DemHECError, match="not loaded for safety|not a PyTorch state dict") as info:
        get_model("resnet20", num_classes=10, pretrained=str(path))
    _one_line_refusal(info.value, path)
    assert not marker.exists()


def test_a_checkpoint_of_an_older_demhec_says_how_to_go_on_and_converts(tmp_path, capsys):
    """Format 1 pickled numpy's RNG state: refused by the safe loader with the two ways on; the
    conversion command (numpy's array reconstruction allowed, nothing else) makes it resumable."""
    from demhec.cli import main
    from demhec.training import read_checkpoint

    ckpt = tmp_path / "run.ckpt"
    # A current checkpoint of a run's first epoch, turned into the old format.
    demhec.finetune(get_model("resnet20", num_classes=10), _tiny_data(),
                    demhec.DemHECConfig(epochs=1, batch_size=16, warmup_epochs=0, steps=1), checkpoint=ckpt)
    state = read_checkpoint(ckpt)
    state["rng"]["numpy"] = np.random.get_state()  # what format 1 stored
    torch.save(state, ckpt)
    with pytest.raises(DemHECError, match="older demhec") as info:
        read_checkpoint(ckpt)
    assert "convert-checkpoint" in str(info.value) and "delete it" in str(info.value)
    assert main(["convert-checkpoint", str(ckpt)]) == 0
    assert read_checkpoint(ckpt)["rng"]["numpy"]["keys"].dtype == torch.int64
    # The conversion refuses what is more than an old checkpoint.
    marker = tmp_path / "marker"
    evil = _crafted_torch_file(tmp_path / "evil.ckpt", marker)
    assert main(["convert-checkpoint", str(evil)]) == 2
    assert "not a PyTorch checkpoint file" in capsys.readouterr().err
    assert not marker.exists()


def test_a_resumed_run_restores_the_global_rng_states(tmp_path):
    from demhec.checkpoints import rng_state, set_rng_state

    torch.manual_seed(3)
    np.random.seed(4)
    state = rng_state()
    expected = (torch.rand(3), np.random.rand(3))
    torch.manual_seed(5)
    np.random.seed(6)
    set_rng_state(state)
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])


def test_the_gpu_script_resume_step_never_unpickles_code(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_reproduction", ROOT / "scripts" / "gpu_reproduction.py")
    gpu = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, gpu)  # its dataclasses look their module up
    spec.loader.exec_module(gpu)
    marker = tmp_path / "marker"
    ckpt = _crafted_torch_file(tmp_path / "a.ckpt", marker, step=7)
    assert gpu._resume_step(ckpt) is None
    assert not marker.exists()


def _tar(path: Path, members: dict[str, bytes], *, link: str | None = None, fifo: str | None = None) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        if fifo:
            info = tarfile.TarInfo(fifo)
            info.type = tarfile.FIFOTYPE
            tar.addfile(info)
    return path


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "link", "fifo"])
def test_the_gpu_unpack_refuses_an_escaping_member_a_link_or_a_device(tmp_path, kind):
    out = tmp_path / "out"
    out.mkdir()
    members = {"gpu/run.json": b"{}"}
    if kind == "dotdot":
        members["gpu/../../escaped.json"] = b"{}"
    if kind == "absolute":
        members[str(tmp_path / "escaped.json")] = b"{}"
    _tar(out / "gpu_results.tar", members, link="gpu/link.json" if kind == "link" else None,
         fifo="gpu/fifo" if kind == "fifo" else None)
    results = tmp_path / "results"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_reproduction.py"), "--unpack", str(out),
                        "--results-dir", str(results)], capture_output=True, text=True)
    assert r.returncode != 0
    assert "refusing to extract gpu_results.tar" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "escaped.json").exists() and not (results / "gpu").exists()


def test_the_gpu_unpack_verifies_files_before_using_them(tmp_path):
    """A resume checkpoint crafted to run code inside an otherwise well-formed archive is refused
    by the verification, and nothing reaches the results folder."""
    marker = tmp_path / "marker"
    ckpt = _crafted_torch_file(tmp_path / "x.ckpt", marker)
    out = tmp_path / "out"
    out.mkdir()
    _tar(out / "gpu_resume_a.tar", {"gpu/cpu_base/checkpoints/resnet20_demhec.ckpt": ckpt.read_bytes(),
                                    "gpu/run.json": json.dumps({"calls": 1}).encode()})
    results = tmp_path / "results"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_reproduction.py"), "--unpack", str(out),
                        "--results-dir", str(results)], capture_output=True, text=True)
    assert r.returncode != 0 and "refusing the returned file gpu/cpu_base/checkpoints/resnet20_demhec.ckpt" in r.stderr
    assert not marker.exists() and not list(results.rglob("*.ckpt")) and not list(results.rglob("run.json"))


@pytest.mark.parametrize("fmt", ["tar", "zip"])
def test_safe_extract_refuses_escapes_in_tar_and_zip(tmp_path, fmt):
    archive = tmp_path / f"a.{fmt}"
    if fmt == "tar":
        _tar(archive, {"ok.txt": b"1", "../escaped.txt": b"2"})
    else:
        with zipfile.ZipFile(archive, "w") as z:
            z.writestr("ok.txt", "1")
            z.writestr("../escaped.txt", "2")
    with pytest.raises(DemHECError, match="would be written outside the target folder"):
        safe_extract(archive, tmp_path / "target")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "target" / "ok.txt").exists()


def test_a_zip_symlink_is_refused(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as z:
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777 << 16)
        z.writestr(info, "/etc/passwd")
    with pytest.raises(DemHECError, match="is a link"):
        safe_extract(archive, tmp_path / "target")


def test_the_jpeg_archive_is_extracted_only_when_safe(tmp_path):
    from demhec.data import cifar10_jpeg_split

    archive = _tar(tmp_path / "cifar10-jpeg-train.tar", {"train/airplane/0.jpg": b"x"},
                   link="train/automobile/0.jpg")
    with pytest.raises(DemHECError, match="is a link"):
        cifar10_jpeg_split(archive, tmp_path / "cache", eval_per_class=1)
    assert not list((tmp_path / "cache").rglob("*.jpg"))


def _object_array(path: Path, marker: Path) -> Path:
    np.save(path, np.array([RunsCode(marker)], dtype=object), allow_pickle=True)
    return path


def test_released_cifar_c_files_holding_objects_are_refused(tmp_path):
    from demhec.corruptions.released import load_cifar_c

    marker = tmp_path / "marker"
    folder = tmp_path / "CIFAR-10-C"
    folder.mkdir()
    _object_array(folder / "gaussian_noise.npy", marker)
    np.save(folder / "labels.npy", np.zeros(5, dtype=np.int64))
    with pytest.raises(DemHECError, match="holds Python objects, which are not loaded for safety") as info:
        load_cifar_c(tmp_path, "gaussian_noise", 1)
    assert "\n" not in str(info.value) and not marker.exists()


def test_a_corruption_cache_holding_objects_is_rebuilt_not_loaded(tmp_path):
    """The cache's sidecar matches (size and sha256 of the crafted file): the loader still never
    unpickles it, and rebuilds the cell from the images instead."""
    import hashlib

    from demhec.corruptions import corrupt_split

    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    cache = tmp_path / "cache"
    clean = np.array(corrupt_split(images, "gaussian_noise", 1, suite="cifar-c", seed=0, cache_dir=cache, key="k"))
    (npy,) = cache.rglob("*.npy")
    meta_path = npy.with_suffix(".json")
    marker = tmp_path / "marker"
    _object_array(npy, marker)
    meta = json.loads(meta_path.read_text())
    meta.update(file_size=npy.stat().st_size, sha256=hashlib.sha256(npy.read_bytes()).hexdigest())
    meta_path.write_text(json.dumps(meta))
    again = corrupt_split(images, "gaussian_noise", 1, suite="cifar-c", seed=0, cache_dir=cache, key="k")
    assert np.array_equal(np.asarray(again), np.asarray(clean)) and not marker.exists()


def test_no_loader_in_the_package_or_scripts_unpickles_freely():
    out = subprocess.run(["git", "grep", "-n", "weights_only=False", "--", "demhec", "scripts"],
                         cwd=ROOT, capture_output=True, text=True).stdout
    assert out == ""


def test_a_download_that_fails_is_one_line_and_extracts_nothing(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets.utils as tv_utils

    from demhec._common import download_archive

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(tv_utils, "download_url", offline)
    with pytest.raises(DemHECError, match="could not download https://example.org/x.tar") as info:
        download_archive("https://example.org/x.tar", tmp_path, md5=None)
    assert "\n" not in str(info.value) and not list(tmp_path.iterdir())
