"""Corruptions (paper Sec. 2.1, A.1): both suites, defining properties, seeding, cache, loaders."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from demhec import corruptions as C
from demhec._common import DemHECError
from demhec.corruptions import common, engine, released

# Published anchors, typed in independently of the module's tables (so a typo there fails here).
# CIFAR-10-C: make_cifar_c.py; ImageNet-C: imagecorruptions/corruptions.py.
GAUSS_SIGMA = {"cifar-c": (0.04, 0.06, 0.08, 0.09, 0.10),
               "imagecorruptions": (0.08, 0.12, 0.18, 0.26, 0.38)}
JPEG_QUALITY = {"cifar-c": (80, 65, 58, 50, 40), "imagecorruptions": (25, 18, 15, 10, 7)}
PIXELATE_FACTOR = {"cifar-c": (0.95, 0.9, 0.85, 0.75, 0.65),
                   "imagecorruptions": (0.6, 0.5, 0.4, 0.3, 0.25)}
IMPULSE_AMOUNT = {"cifar-c": (0.01, 0.02, 0.03, 0.05, 0.07),
                  "imagecorruptions": (0.03, 0.06, 0.09, 0.17, 0.27)}

# Corruptions whose original constants are not monotone in "mean |out - in|":
NOT_MONOTONE = {
    "cifar-c": {
        "glass_blur": "sigma falls from 0.4 (S3) to 0.25 (S4)",
        "frost": "S5 lowers the image weight 0.85 -> 0.75 but the frost weight only 0.4 -> 0.45",
        "elastic_transform": "the affine jitter shrinks (0.08 -> 0.03 x 32) as alpha grows",
        "spatter": "S4/S5 switch from water to mud blobs",
        "saturate": "S1/S2 desaturate (x0.3, x0.1), S3 saturates (x1.5)",
    },
    "imagecorruptions": {
        "glass_blur": "S2 has 1 shuffling iteration vs 2 at S1; S4 2 vs 3 at S3",
        "frost": "image weight 1 -> 0.6 traded against frost weight 0.4 -> 0.75",
        "fog": "S3 and S4 share the fog strength 2.5 (only the wibble decay changes)",
        "snow": "S3 raises the flake threshold 0.5 -> 0.9 (fewer, larger flakes than S2)",
        "spatter": "S4/S5 switch from water to mud blobs",
    },
}
NOISES = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise")


def textured(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Smooth blobs + stripes + fine noise in [20, 235]: no corruption is the identity on these."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        base = gaussian_filter(rng.normal(size=(size, size, 3)), sigma=(3, 3, 0))
        base = (base - base.min()) / (base.max() - base.min())
        stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * rng.uniform(2, 5) + yy * rng.uniform(1, 4)))
        out.append(20 + 215 * (0.55 * base + 0.3 * stripes[..., None]
                               + 0.15 * rng.random((size, size, 3))))
    return np.stack(out).astype(np.uint8)


IMAGES = textured(4)


def _strength(out: np.ndarray, images: np.ndarray) -> float:
    return float(np.abs(out.astype(np.float64) - images).mean())


def _cases(severities=C.SEVERITIES):
    for suite in C.SUITES:
        for name in C.ALL_CORRUPTIONS:
            # glass_blur compiles a numba kernel on first use (several seconds).
            marks = [pytest.mark.slow] if name == "glass_blur" else []
            for s in severities:
                yield pytest.param(suite, name, s, marks=marks, id=f"{suite}-{name}-{s}")


# --------------------------------------------------------------------------------------------
# Name tables
# --------------------------------------------------------------------------------------------


def test_name_tables():
    assert len(C.CORRUPTIONS) == 15 and len(set(C.ALL_CORRUPTIONS)) == 19
    assert C.CORRUPTIONS[:3] == ("gaussian_noise", "shot_noise", "impulse_noise")
    assert C.CORRUPTIONS[-1] == "jpeg_compression"
    family_members = [c for members in C.FAMILIES.values() for c in members]
    assert sorted(family_members) == sorted(C.CORRUPTIONS)
    assert set(C.PAPER_CORRUPTIONS) <= set(C.CORRUPTIONS) and len(C.PAPER_CORRUPTIONS) == 7
    assert C.PAPER_SEVERITIES == (1, 3, 5)
    assert set(C.CIFAR_C_PARAMS) == set(C.ALL_CORRUPTIONS)
    assert all(len(v) == 5 for v in C.CIFAR_C_PARAMS.values())
    assert C.CIFAR_C_PARAMS["gaussian_noise"] == GAUSS_SIGMA["cifar-c"]
    assert C.CIFAR_C_PARAMS["jpeg_compression"] == JPEG_QUALITY["cifar-c"]


# --------------------------------------------------------------------------------------------
# Every corruption of both suites at every severity
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suite,corruption,severity", list(_cases()))
def test_every_corruption(suite, corruption, severity):
    out = C.corrupt(IMAGES, corruption, severity, suite=suite, seed=3)
    assert out.shape == IMAGES.shape and out.dtype == np.uint8
    for i in range(len(IMAGES)):
        assert not np.array_equal(out[i], IMAGES[i]), f"image {i} unchanged"
    again = C.corrupt(IMAGES, corruption, severity, suite=suite, seed=3)
    np.testing.assert_array_equal(out, again)
    single = C.corrupt(IMAGES[0], corruption, severity, suite=suite, seed=3)
    assert single.shape == IMAGES[0].shape
    np.testing.assert_array_equal(single, out[0])


@pytest.mark.slow
@pytest.mark.parametrize("suite", C.SUITES)
@pytest.mark.parametrize("corruption", C.ALL_CORRUPTIONS)
def test_monotone_in_severity(suite, corruption):
    images = textured(16, seed=1)
    strength = [_strength(C.corrupt(images, corruption, s, suite), images) for s in C.SEVERITIES]
    if corruption in NOT_MONOTONE[suite]:
        assert strength[0] != strength[-1]
        return
    for lo, hi in zip(strength, strength[1:]):
        assert hi >= 0.98 * lo, strength
    assert strength[-1] > 1.1 * strength[0], strength


# --------------------------------------------------------------------------------------------
# Defining properties
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", C.SUITES)
@pytest.mark.parametrize("severity", C.SEVERITIES)
def test_gaussian_noise_std(suite, severity):
    grey = np.full((8, 32, 32, 3), 128, np.uint8)
    diff = (C.corrupt(grey, "gaussian_noise", severity, suite).astype(np.float64) - 128) / 255
    sigma = GAUSS_SIGMA[suite][severity - 1]
    # Expected std after clipping to [0, 1] and truncation to uint8, by simulation.
    sim = np.random.default_rng(1).normal(128 / 255, sigma, 10**6)
    expected = ((np.floor(np.clip(sim, 0, 1) * 255) - 128) / 255).std()
    assert abs(diff.std() - expected) < 0.03 * expected
    assert abs(diff.mean()) < 0.15 * sigma


@pytest.mark.parametrize("suite", C.SUITES)
@pytest.mark.parametrize("severity", C.SEVERITIES)
def test_jpeg_is_pil_round_trip(suite, severity):
    out = C.corrupt(IMAGES, "jpeg_compression", severity, suite)
    for image, got in zip(IMAGES, out):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=JPEG_QUALITY[suite][severity - 1])
        np.testing.assert_array_equal(got, np.asarray(Image.open(buffer)))


@pytest.mark.parametrize("suite", C.SUITES)
@pytest.mark.parametrize("severity", C.SEVERITIES)
def test_pixelate_is_down_up_sampling(suite, severity):
    factor = PIXELATE_FACTOR[suite][severity - 1]
    small = int(32 * factor)
    up = Image.BOX if suite == "cifar-c" else Image.NEAREST
    out = C.corrupt(IMAGES, "pixelate", severity, suite)
    for image, got in zip(IMAGES, out):
        ref = Image.fromarray(image).resize((small, small), Image.BOX).resize((32, 32), up)
        np.testing.assert_array_equal(got, np.asarray(ref))
        if suite == "imagecorruptions":  # nearest up-sampling: only `small` distinct columns
            changes = np.any(got[:, 1:] != got[:, :-1], axis=(0, 2)).sum()
            assert changes + 1 <= small


@pytest.mark.parametrize("suite", C.SUITES)
@pytest.mark.parametrize("severity", C.SEVERITIES)
def test_impulse_fraction(suite, severity):
    grey = np.full((16, 32, 32, 3), 128, np.uint8)
    out = C.corrupt(grey, "impulse_noise", severity, suite)
    amount = IMPULSE_AMOUNT[suite][severity - 1]
    changed = out != 128
    assert set(np.unique(out[changed])) <= {0, 255}
    assert abs(changed.mean() - amount) < 4 * np.sqrt(amount * (1 - amount) / out.size) + 1e-3


@pytest.mark.parametrize("corruption", ["gaussian_noise", "jpeg_compression"])
@pytest.mark.parametrize("severity", C.SEVERITIES)
def test_cifar_c_milder_than_imagecorruptions(corruption, severity):
    mild = _strength(C.corrupt(IMAGES, corruption, severity, "cifar-c"), IMAGES)
    harsh = _strength(C.corrupt(IMAGES, corruption, severity, "imagecorruptions"), IMAGES)
    assert mild < harsh


# --------------------------------------------------------------------------------------------
# Seeding and parallel generation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", C.SUITES)
@pytest.mark.parametrize("corruption", NOISES)
def test_seed_changes_noise(suite, corruption):
    a = C.corrupt(IMAGES, corruption, 3, suite, seed=0)
    b = C.corrupt(IMAGES, corruption, 3, suite, seed=1)
    assert not np.array_equal(a, b)
    # images of one batch get different noise (index enters the seed)
    same = np.repeat(IMAGES[:1], 2, axis=0)
    out = C.corrupt(same, corruption, 3, suite)
    assert not np.array_equal(out[0], out[1])


@pytest.mark.parametrize("suite,corruption", [("imagecorruptions", "frost"),
                                              ("imagecorruptions", "snow"),
                                              ("cifar-c", "fog")])
def test_global_numpy_rng_untouched(suite, corruption):
    np.random.seed(123)
    expected = np.random.random(3)
    np.random.seed(123)
    C.corrupt(IMAGES, corruption, 2, suite)
    np.testing.assert_array_equal(np.random.random(3), expected)


@pytest.mark.parametrize("suite", C.SUITES)
def test_split_equals_corrupt(suite):
    for corruption in ("impulse_noise", "snow"):
        np.testing.assert_array_equal(
            C.corrupt_split(IMAGES, corruption, 5, suite, seed=7, workers=1),
            C.corrupt(IMAGES, corruption, 5, suite, seed=7))


@pytest.mark.slow
def test_workers_do_not_change_result(monkeypatch):
    images = textured(engine._MIN_PARALLEL + 7, seed=2)  # large enough to use the process pool
    cells = dict(corruptions=["gaussian_noise", "impulse_noise", "frost"], severities=[1, 5])
    serial = {(c, s): a for c, s, a in C.corruption_grid(images, workers=1, **cells)}
    started = []
    executor = engine._LazyPool.executor

    def spy(self):
        started.append(self.workers)
        return executor(self)

    monkeypatch.setattr(engine._LazyPool, "executor", spy)
    parallel = {(c, s): a for c, s, a in C.corruption_grid(images, workers=2, **cells)}
    assert started and set(started) == {2}
    assert serial.keys() == parallel.keys() and len(serial) == 6
    for cell, array in serial.items():
        np.testing.assert_array_equal(parallel[cell], array, err_msg=str(cell))


# --------------------------------------------------------------------------------------------
# The same pixels on every machine
# --------------------------------------------------------------------------------------------

# Flat 8 x 8 patches: a blur whose kernel sums to one ulp under 1 turns grey level v into v - 1
# there, so they expose a last-bit difference that smooth images hide.
PATCHES = np.repeat(np.repeat(np.random.default_rng(5).integers(0, 256, (4, 4, 4, 3), dtype=np.uint8),
                              8, axis=1), 8, axis=2)


def _without_avx512(code: str, tmp_path) -> dict:
    """Run ``code`` (which writes ``out.npz`` in its working directory) in a Python whose numpy
    does not use its AVX-512 code: the C library's float64 exp, as on a machine without it."""
    from numpy._core._multiarray_umath import __cpu_dispatch__

    off = " ".join(f for f in __cpu_dispatch__ if "AVX512" in f or f == "X86_V4")
    env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": off}
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, timeout=600)
    with np.load(tmp_path / "out.npz") as f:
        return dict(f)


# (radius, sigma) of every motion blur and snow setting of both suites
MOTION_BLURS = sorted({(c[0], c[1]) for c in C.CIFAR_C_PARAMS["motion_blur"]}
                      | {(c[4], c[5]) for c in C.CIFAR_C_PARAMS["snow"]}
                      | {(10, 3), (15, 5), (15, 8), (15, 12), (20, 15), (10, 4), (20, 6), (15, 10)})
ANGLES = (-45.0, -12.3, 30.7, -100.1)


def test_motion_blur_is_the_packages_without_avx512(tmp_path):
    """common.motion_blur equals imagecorruptions' _motion_blur computed with the C library's exp,
    on this machine whatever numpy dispatches to (the package's own differs on AVX-512 CPUs)."""
    np.save(tmp_path / "patches.npy", PATCHES[0])
    reference = _without_avx512(
        "import numpy as np; from imagecorruptions.corruptions import _motion_blur as mb\n"
        "x = np.load('patches.npy')\n"
        f"np.savez('out.npz', **{{f'{{r}}_{{s}}_{{a}}': mb(x, r, s, a) for r, s in {MOTION_BLURS!r} "
        f"for a in {ANGLES!r}}})", tmp_path)
    assert len(reference) == len(MOTION_BLURS) * len(ANGLES)
    for (r, s) in MOTION_BLURS:
        for a in ANGLES:
            np.testing.assert_array_equal(common.motion_blur(PATCHES[0], r, s, a), reference[f"{r}_{s}_{a}"],
                                          err_msg=f"radius {r}, sigma {s}, angle {a}")


@pytest.mark.slow
def test_every_corruption_is_the_same_without_avx512(tmp_path):
    """Every corruption of both suites at every severity makes the same pixels whether numpy uses
    its AVX-512 code or not: results scored on two machines are paired over the same images."""
    images = np.concatenate([PATCHES, IMAGES])
    np.save(tmp_path / "images.npy", images)
    elsewhere = _without_avx512(
        "import numpy as np; from demhec import corruptions as C\n"
        "x = np.load('images.npy')\n"
        "np.savez('out.npz', **{f'{s}/{c}/{v}': C.corrupt(x, c, v, suite=s, seed=3) "
        "for s in C.SUITES for c in C.ALL_CORRUPTIONS for v in C.SEVERITIES})", tmp_path)
    differ = [f"{s}/{c}/{v}" for s in C.SUITES for c in C.ALL_CORRUPTIONS for v in C.SEVERITIES
              if not np.array_equal(C.corrupt(images, c, v, suite=s, seed=3), elsewhere[f"{s}/{c}/{v}"])]
    assert len(elsewhere) == 2 * len(C.ALL_CORRUPTIONS) * 5 and not differ, differ


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


@pytest.fixture
def counted(monkeypatch):
    calls = []
    original = engine._corrupt_range

    def counting(images, *args):
        calls.append(len(images))
        return original(images, *args)

    monkeypatch.setattr(engine, "_corrupt_range", counting)
    return calls


def _cache(tmp_path, **kw):
    args = dict(corruption="gaussian_noise", severity=3, suite="cifar-c", seed=0,
                cache_dir=tmp_path, workers=1)
    args.update(kw)
    return C.corrupt_split(IMAGES, **args)


def test_cache_layout_and_hit(tmp_path, counted):
    first = _cache(tmp_path)
    assert sum(counted) == len(IMAGES)
    key = C.images_key(IMAGES)
    assert len(key) == 16 and key != C.images_key(IMAGES[::-1].copy())
    path = tmp_path / "cifar-c" / key / "gaussian_noise_s3.npy"
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["shape"] == list(IMAGES.shape) and meta["dtype"] == "uint8"
    assert len(meta["sha256"]) == 64 and meta["file_size"] == path.stat().st_size
    second = _cache(tmp_path)
    assert sum(counted) == len(IMAGES)  # no regeneration
    assert isinstance(second, np.memmap) and not second.flags.writeable
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(second, C.corrupt(IMAGES, "gaussian_noise", 3))
    assert not list(path.parent.glob("*.tmp*"))


def test_cache_custom_key_and_seed_change(tmp_path, counted):
    a = _cache(tmp_path, key="cifar10-test")
    assert (tmp_path / "cifar-c" / "cifar10-test" / "gaussian_noise_s3.npy").is_file()
    b = _cache(tmp_path, key="cifar10-test", seed=1)  # same file name, other seed: rebuilt
    assert sum(counted) == 2 * len(IMAGES) and not np.array_equal(a, b)
    with pytest.raises(DemHECError, match="cache key"):
        _cache(tmp_path, key="../escape")


def test_cache_under_a_named_key_is_not_served_for_other_images(tmp_path, counted):
    """A key names a split; other clean images under the same name (another image limit) get
    their own corrupted images, not the ones cached for the first."""
    _cache(tmp_path, key="digits-eval")
    fewer = C.corrupt_split(IMAGES[:-1], "gaussian_noise", 3, cache_dir=tmp_path, key="digits-eval", workers=1)
    assert sum(counted) == 2 * len(IMAGES) - 1 and len(fewer) == len(IMAGES) - 1
    np.testing.assert_array_equal(fewer, C.corrupt(IMAGES[:-1], "gaussian_noise", 3))


@pytest.mark.parametrize("damage", ["truncate", "flip", "drop_sidecar"])
def test_cache_damage_is_detected_and_rebuilt(tmp_path, counted, caplog, damage):
    clean = np.array(_cache(tmp_path))
    path = tmp_path / "cifar-c" / C.images_key(IMAGES) / "gaussian_noise_s3.npy"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flip":
        data[-10] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        path.with_suffix(".json").unlink()
    with caplog.at_level(logging.WARNING, logger="demhec.corruptions"):
        rebuilt = _cache(tmp_path)
    assert "invalid" in caplog.text
    assert sum(counted) == 2 * len(IMAGES)
    np.testing.assert_array_equal(rebuilt, clean)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="demhec.corruptions"):
        _cache(tmp_path)
    assert sum(counted) == 2 * len(IMAGES) and "invalid" not in caplog.text


def test_grid_uses_cache(tmp_path, counted):
    cells = list(C.corruption_grid(IMAGES, ["gaussian_noise", "pixelate"], [1, 5],
                                   cache_dir=tmp_path, workers=1))
    assert [(c, s) for c, s, _ in cells] == [("gaussian_noise", 1), ("gaussian_noise", 5),
                                             ("pixelate", 1), ("pixelate", 5)]
    n = sum(counted)
    list(C.corruption_grid(IMAGES, ["gaussian_noise", "pixelate"], [1, 5], cache_dir=tmp_path,
                           workers=1))
    assert sum(counted) == n == 4 * len(IMAGES)


# --------------------------------------------------------------------------------------------
# Official files on disk (miniature copies in the real layout)
# --------------------------------------------------------------------------------------------


def _mini_cifar_c(folder, corruption="gaussian_noise", per_severity=5):
    folder.mkdir(parents=True)
    data = np.zeros((5 * per_severity, 32, 32, 3), np.uint8)
    for s in range(5):
        for i in range(per_severity):
            data[s * per_severity + i] = 10 * (s + 1) + i
    np.save(folder / f"{corruption}.npy", data)
    np.save(folder / "labels.npy", np.tile(np.array([3, 1, 4, 1, 5], np.uint8), 5))


@pytest.mark.parametrize("dataset,folder", [("cifar10", "CIFAR-10-C"), ("cifar100", "CIFAR-100-C")])
@pytest.mark.parametrize("severity", [1, 3, 5])
def test_load_cifar_c(tmp_path, dataset, folder, severity):
    _mini_cifar_c(tmp_path / folder)
    for root in (tmp_path, tmp_path / folder):
        x, y = C.load_cifar_c(root, "gaussian_noise", severity, dataset=dataset)
        assert x.shape == (5, 3, 32, 32) and x.dtype == torch.float32
        assert y.dtype == torch.int64 and y.tolist() == [3, 1, 4, 1, 5]
        expected = torch.tensor([10 * severity + i for i in range(5)], dtype=torch.float32) / 255
        torch.testing.assert_close(x.amax(dim=(1, 2, 3)), expected)
        torch.testing.assert_close(x.amin(dim=(1, 2, 3)), expected)


def test_load_cifar_c_errors(tmp_path):
    _mini_cifar_c(tmp_path / "CIFAR-10-C")
    with pytest.raises(DemHECError, match="download_cifar_c"):
        C.load_cifar_c(tmp_path, "shot_noise", 1)
    with pytest.raises(DemHECError, match="cifar100"):
        C.load_cifar_c(tmp_path, "gaussian_noise", 1, dataset="svhn")
    with pytest.raises(DemHECError, match="download_cifar_c"):
        C.load_cifar_c(tmp_path, "gaussian_noise", 1, dataset="cifar100")


def _mini_tiny_c(root, wnids=("n02", "n01"), corruption="frost"):
    for s in C.SEVERITIES:
        for k, wnid in enumerate(wnids):
            folder = root / "Tiny-ImageNet-C" / corruption / str(s) / wnid
            folder.mkdir(parents=True)
            for j in range(2):
                value = 40 * s + 5 * k
                Image.fromarray(np.full((64, 64, 3), value, np.uint8)).save(
                    folder / f"test_{k}{j}.JPEG")


@pytest.mark.parametrize("severity", [1, 4])
def test_load_tiny_imagenet_c(tmp_path, severity):
    _mini_tiny_c(tmp_path)
    for root in (tmp_path, tmp_path / "Tiny-ImageNet-C"):
        ds = C.load_tiny_imagenet_c(root, "frost", severity)
        assert ds.classes == ["n01", "n02"] and len(ds) == 4
        assert sorted(ds.targets) == [0, 0, 1, 1]
        for x, label in (ds[i] for i in range(len(ds))):
            assert x.shape == (3, 64, 64) and x.dtype == torch.float32
            k = 1 - label  # n02 was written first (k=0) and sorts second
            assert abs(float(x.mean()) * 255 - (40 * severity + 5 * k)) < 2
    ds = C.load_tiny_imagenet_c(tmp_path, "frost", severity, classes=["n09", "n02", "n01"])
    assert sorted(ds.targets) == [1, 1, 2, 2]
    with pytest.raises(DemHECError, match="not in the given class list"):
        C.load_tiny_imagenet_c(tmp_path, "frost", severity, classes=["n01"])
    with pytest.raises(DemHECError, match="download_tiny_imagenet_c"):
        C.load_tiny_imagenet_c(tmp_path, "fog", severity)


def test_downloads_use_zenodo_archives(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(released, "download_archive", lambda url, root, md5: calls.append((url, md5)))
    C.download_cifar_c(tmp_path)
    C.download_cifar_c(tmp_path, dataset="cifar100")
    C.download_tiny_imagenet_c(tmp_path)
    assert calls == [
        ("https://zenodo.org/records/2535967/files/CIFAR-10-C.tar",
         "56bf5dcef84df0e2308c6dcbcbbd8499"),
        ("https://zenodo.org/records/3555552/files/CIFAR-100-C.tar",
         "11f0ed0f1191edbf9fa23466ae6021d3"),
        ("https://zenodo.org/records/2536630/files/Tiny-ImageNet-C.tar",
         "f9c9a9dbdc11469f0b850190f7ad8be1"),
    ]
    _mini_cifar_c(tmp_path / "CIFAR-10-C")
    _mini_tiny_c(tmp_path, corruption="snow")
    assert C.download_cifar_c(tmp_path) == tmp_path / "CIFAR-10-C"
    assert C.download_tiny_imagenet_c(tmp_path) == tmp_path / "Tiny-ImageNet-C"
    assert len(calls) == 3  # already present: nothing downloaded


# --------------------------------------------------------------------------------------------
# Boundary validation
# --------------------------------------------------------------------------------------------


def test_bad_names_list_valid_values():
    with pytest.raises(DemHECError, match="valid corruptions: gaussian_noise, shot_noise"):
        C.corrupt(IMAGES, "gausian_noise", 1)
    with pytest.raises(DemHECError, match="valid suites: cifar-c, imagecorruptions"):
        C.corrupt(IMAGES, "gaussian_noise", 1, suite="cifar10-c")
    with pytest.raises(DemHECError, match="valid suites"):
        C.check_corruption("snow", "imagenet-c")


@pytest.mark.parametrize("severity", [0, 6, "3", 3.5, True, None])
def test_bad_severity(severity):
    with pytest.raises(DemHECError) as info:
        C.corrupt(IMAGES, "gaussian_noise", severity)
    assert "\n" not in str(info.value) and "severity" in str(info.value)
    with pytest.raises(DemHECError):
        C.check_severity(severity)


def test_good_severity_types():
    assert C.check_severity(np.int64(2)) == 2 and C.check_severity(5) == 5


def test_bad_images():
    with pytest.raises(DemHECError, match="32x32"):
        C.corrupt(textured(1, size=64), "gaussian_noise", 1, suite="cifar-c")
    with pytest.raises(DemHECError, match="uint8"):
        C.corrupt(IMAGES.astype(np.float32), "gaussian_noise", 1)
    with pytest.raises(DemHECError, match="at least 32x32"):
        C.corrupt(np.zeros((16, 16, 3), np.uint8), "gaussian_noise", 1, suite="imagecorruptions")
    with pytest.raises(DemHECError, match=r"\(N, H, W, 3\)"):
        C.corrupt_split(IMAGES[0], "gaussian_noise", 1, workers=1)
    with pytest.raises(DemHECError, match="workers"):
        C.corrupt_split(IMAGES, "gaussian_noise", 1, workers=0)
    with pytest.raises(DemHECError, match="seed"):
        C.corrupt(IMAGES, "gaussian_noise", 1, seed=-1)


def test_imagecorruptions_suite_any_resolution():
    images = textured(2, size=48)
    for corruption in C.PAPER_CORRUPTIONS:
        out = C.corrupt(images, corruption, 3, suite="imagecorruptions")
        assert out.shape == images.shape and not np.array_equal(out, images)


@pytest.mark.parametrize("shape", [(32, 32), (48, 80), (400, 300), (300, 700), (700, 1000)])
def test_imagecorruptions_frost_with_cached_picture_equals_the_package(shape):
    """The suite's frost caches the rescaled frost picture; its pixels must stay the package's
    for every size rule of the package (picture larger, taller, wider or smaller than the image)."""
    import imagecorruptions

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, *shape, 3), dtype=np.uint8)
    for severity in (1, 5):
        ours = C.corrupt(images, "frost", severity, suite="imagecorruptions", seed=3)
        for i, image in enumerate(images):
            with common.seeded_global_numpy(common.image_seed(3, "frost", severity, i)):
                ref = imagecorruptions.corrupt(image, corruption_name="frost", severity=severity)
            np.testing.assert_array_equal(ours[i], ref)


# --- the CIFAR-10-C port against the official generator's formulas ----------------------------
# make_cifar_c.py (github.com/hendrycks/robustness, ImageNet-C/create_c/), function by function as
# published: each takes a PIL image or array x and draws from numpy's global RNG, whose seed is the
# one the port gives image i. Outputs are truncated with np.uint8, as the generator saves them.


def _official_gaussian_noise(x, severity):
    c = [0.04, 0.06, .08, .09, .10][severity - 1]
    x = np.array(x) / 255.
    return np.clip(x + np.random.normal(size=x.shape, scale=c), 0, 1) * 255


def _official_shot_noise(x, severity):
    c = [500, 250, 100, 75, 50][severity - 1]
    x = np.array(x) / 255.
    return np.clip(np.random.poisson(x * c) / c, 0, 1) * 255


def _official_speckle_noise(x, severity):
    c = [.06, .1, .12, .16, .2][severity - 1]
    x = np.array(x) / 255.
    return np.clip(x + x * np.random.normal(size=x.shape, scale=c), 0, 1) * 255


def _official_gaussian_blur(x, severity):
    c = [.4, .6, 0.7, .8, 1][severity - 1]
    from skimage.filters import gaussian

    x = gaussian(np.array(x) / 255., sigma=c, channel_axis=-1)  # multichannel=True then
    return np.clip(x, 0, 1) * 255


def _official_brightness(x, severity):
    import skimage as sk

    c = [.05, .1, .15, .2, .3][severity - 1]
    x = np.array(x) / 255.
    x = sk.color.rgb2hsv(x)
    x[:, :, 2] = np.clip(x[:, :, 2] + c, 0, 1)
    x = sk.color.hsv2rgb(x)
    return np.clip(x, 0, 1) * 255


def _official_contrast(x, severity):
    c = [.75, .5, .4, .3, 0.15][severity - 1]
    x = np.array(x) / 255.
    means = np.mean(x, axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def _official_saturate(x, severity):
    import skimage as sk

    c = [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)][severity - 1]
    x = np.array(x) / 255.
    x = sk.color.rgb2hsv(x)
    x[:, :, 1] = np.clip(x[:, :, 1] * c[0] + c[1], 0, 1)
    x = sk.color.hsv2rgb(x)
    return np.clip(x, 0, 1) * 255


def _official_pixelate(x, severity):
    c = [0.95, 0.9, 0.85, 0.75, 0.65][severity - 1]
    x = x.resize((int(32 * c), int(32 * c)), Image.BOX)
    x = x.resize((32, 32), Image.BOX)
    return x


def _official_jpeg_compression(x, severity):
    c = [80, 65, 58, 50, 40][severity - 1]
    output = io.BytesIO()
    x.save(output, 'JPEG', quality=c)
    x = Image.open(output)
    return x


OFFICIAL = {name.removeprefix("_official_"): fn for name, fn in globals().items()
            if name.startswith("_official_")}


@pytest.mark.parametrize("corruption", sorted(OFFICIAL))
@pytest.mark.parametrize("severity", C.SEVERITIES)
def test_cifar_c_port_equals_the_official_formulas(corruption, severity):
    images = np.random.default_rng(7).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    ours = C.corrupt(images, corruption, severity, suite="cifar-c", seed=5)
    for i, image in enumerate(images):
        with common.seeded_global_numpy(common.image_seed(5, corruption, severity, i)):
            ref = np.uint8(OFFICIAL[corruption](Image.fromarray(image), severity))
        np.testing.assert_array_equal(ours[i], ref, err_msg=f"{corruption} s{severity} image {i}")


# --- the released files as suites ----------------------------------------------------------------


class _MeanNet(torch.nn.Module):
    """Predicts class (mean pixel value // 10) % k: on the mini files every label is known."""

    def __init__(self, k):
        super().__init__()
        self.k = k
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        cls = ((x.mean(dim=(1, 2, 3)) * 255).round() // 10).long() % self.k
        return torch.nn.functional.one_hot(cls, self.k).float() + 0 * self.dummy


def test_released_cifar_suite_is_memory_mapped_and_scored_by_evaluate(tmp_path):
    from demhec.evaluation import evaluate

    _mini_cifar_c(tmp_path / "CIFAR-10-C")
    _mini_cifar_c(tmp_path / "CIFAR-10-C-pixelate", corruption="pixelate")
    (tmp_path / "CIFAR-10-C-pixelate" / "pixelate.npy").rename(tmp_path / "CIFAR-10-C" / "pixelate.npy")
    images, labels = C.released_split("cifar10-c", tmp_path, "gaussian_noise", 3)
    assert isinstance(images, np.memmap)  # only the severity's rows are read
    assert images.dtype == np.uint8 and images.shape == (5, 32, 32, 3) and not images.flags.writeable
    assert images[:, 0, 0, 0].tolist() == [30, 31, 32, 33, 34] and labels.tolist() == [3, 1, 4, 1, 5]
    # Clean images whose class the model reads off; the corrupted rows come from the files.
    clean = np.stack([np.full((32, 32, 3), 10 * c, np.uint8) for c in (3, 1, 4, 1, 5)])
    table = evaluate(_MeanNet(10), (clean, labels), ["gaussian_noise", "pixelate"], [1, 5], "cifar10-c",
                     data_root=tmp_path).set_index(["corruption", "severity"]).accuracy
    assert table[("clean", 0)] == 100
    # Severity s, image i holds 10 s + i: predicted class (s + i // 10) % 10 = s, right where label == s.
    for c in ("gaussian_noise", "pixelate"):
        for s in (1, 5):
            assert table[(c, s)] == pytest.approx(100 * np.mean(np.array([3, 1, 4, 1, 5]) == s)), (c, s)


def test_released_tinyimagenet_suite_follows_the_clean_class_list(tmp_path):
    _mini_tiny_c(tmp_path)
    images, labels = C.released_split("tinyimagenet-c", tmp_path, "frost", 2, classes=["n01", "n02", "n03"])
    assert images.dtype == np.uint8 and images.shape == (4, 64, 64, 3)
    assert sorted(labels.tolist()) == [0, 0, 1, 1]
    means = {int(lab): abs(float(img.mean()) - (80 + 5 * (1 - lab))) < 2 for img, lab in zip(images, labels)}
    assert all(means.values())
    with pytest.raises(DemHECError, match="unknown corruption 'speckle_noise'"):
        C.released_split("tinyimagenet-c", tmp_path, "speckle_noise", 2)  # not among its 15


def test_released_suites_download_when_asked_and_name_what_is_missing(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(released, "download_cifar_c", lambda root, dataset: calls.append(dataset)
                        or _mini_cifar_c(tmp_path / "CIFAR-100-C"))
    with pytest.raises(DemHECError, match="download_cifar_c"):
        C.released_split("cifar100-c", tmp_path, "gaussian_noise", 1)
    assert not C.released_available("cifar100-c", tmp_path)
    images, _ = C.released_split("cifar100-c", tmp_path, "gaussian_noise", 1, download=True)
    assert calls == ["cifar100"] and len(images) == 5 and C.released_available("cifar100-c", tmp_path)
    C.released_split("cifar100-c", tmp_path, "gaussian_noise", 2, download=True)
    assert calls == ["cifar100"]  # present now: not fetched again
    with pytest.raises(DemHECError, match="data_root"):
        C.released_split("cifar10-c", None, "gaussian_noise", 1)
    with pytest.raises(DemHECError, match="valid suites: cifar-c, imagecorruptions$"):
        C.corrupt(np.zeros((32, 32, 3), np.uint8), "gaussian_noise", 1, suite="cifar10-c")


def test_released_suite_by_name_in_notebooks_and_cli(tmp_path, capsys):
    from demhec.cli import main
    from demhec.experiments.notebook import notebook_setup

    _mini_cifar_c(tmp_path / "data" / "CIFAR-10-C")
    common = dict(profile="paper", dataset="cifar10", backbone="resnet20", results_dir=str(tmp_path / "r"),
                  corruptions="gaussian_noise")
    assert notebook_setup(suite="auto", data_root=str(tmp_path / "data"), **common).suite == "cifar10-c"
    assert notebook_setup(suite="auto", data_root=str(tmp_path / "none"), **common).suite == "cifar-c"
    assert notebook_setup(suite="auto", data_root=str(tmp_path / "none"), download=True, **common).suite == "cifar10-c"
    assert notebook_setup(**{**common, "profile": "smoke"}, suite="auto", data_root=str(tmp_path / "data")).suite == "cifar-c"
    assert notebook_setup(suite="cifar100-c", **common).suite == "cifar100-c"
    out = tmp_path / "out"
    assert main(["train", "--dataset", "digits", "--limit", "32", "--epochs", "1", "--batch-size", "16", "--out", str(out),
                 "--no-progress"]) == 0
    assert main(["evaluate", "--dataset", "digits", "--limit", "32", "--suite", "cifar10-c", "--corruptions",
                 "gaussian_noise", "--severities", "1,5", "--data-root", str(tmp_path / "data"), "--out", str(out),
                 "--no-progress"]) == 0
    rec = json.loads((out / "digits_resnet20_base_cifar10-c.json").read_text())
    assert [(r["corruption"], r["severity"], r["n"]) for r in rec["metrics"]["table"]] == [
        ("clean", 0, 32), ("gaussian_noise", 1, 5), ("gaussian_noise", 5, 5)]
