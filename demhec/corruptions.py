"""Common corruptions (paper Sec. 2.1 and A.1): synthesis, official benchmark files, a disk cache.

Two *suites* generate the 15 benchmark corruptions of Hendrycks & Dietterich (2019) plus their four
extra (validation) corruptions, at severities 1..5:

* ``"cifar-c"``: the constants of the official CIFAR-10-C generator for 32 x 32 images
  (``ImageNet-C/create_c/make_cifar_c.py`` in github.com/hendrycks/robustness). These are much
  milder than the ImageNet-C constants (e.g. Gaussian sigma 0.04..0.10 instead of 0.08..0.38) and
  are what the paper's CIFAR10-C / CIFAR100-C numbers (Tables 1, 4, 5) refer to.
* ``"imagecorruptions"``: the paper's stated tool (footnote 1, github.com/bethgelab/imagecorruptions),
  i.e. the ImageNet-C constants, usable at any resolution >= 32 px.

The released CIFAR-10-C / CIFAR-100-C ``.npy`` files and the Tiny-ImageNet-C JPEG tree are read by
:func:`load_cifar_c` and :func:`load_tiny_imagenet_c`; the paper evaluates on these.

Every random draw is seeded from (seed, corruption, severity, image index) only, so an image's
corruption never depends on batching, chunking or the number of worker processes.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import hashlib
import importlib.resources
import io
import json
import logging
import math
import multiprocessing as mp
import os
import re
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import imagecorruptions
import numpy as np
import skimage as sk
import torch
from imagecorruptions.corruptions import (
    _motion_blur,
    _shuffle_pixels_njit_glass_blur,
    disk,
    plasma_fractal,
)
from PIL import Image
from scipy.ndimage import map_coordinates
from scipy.ndimage import zoom as scizoom
from skimage.filters import gaussian
from torch.utils.data import Dataset
from torchvision.datasets.utils import download_and_extract_archive
from tqdm import tqdm

from demhec._common import DemHECError, atomic_write, check_choice, check_range

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Name tables
# --------------------------------------------------------------------------------------------

SUITES = ("cifar-c", "imagecorruptions")

# The 15 benchmark corruptions in ImageNet-C order (Hendrycks & Dietterich 2019, Fig. 1).
CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
# The four held-out "validation" corruptions, shipped in CIFAR-10-C and imagecorruptions.
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL_CORRUPTIONS = CORRUPTIONS + EXTRA_CORRUPTIONS
# The seven corruptions of the paper (Sec. 2.1, Fig. 2, Tables 1, 2, 4, 5).
PAPER_CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "snow", "frost", "pixelate", "jpeg_compression",
)
# The four families of paper Table 3 (same grouping as ImageNet-C).
FAMILIES = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
SEVERITIES = (1, 2, 3, 4, 5)
PAPER_SEVERITIES = (1, 3, 5)  # S1 / S3 / S5 of Tables 1, 2, 5

# --------------------------------------------------------------------------------------------
# CIFAR-10-C constants. Source of every row: github.com/hendrycks/robustness,
# ImageNet-C/create_c/make_cifar_c.py, the function of the same name (one entry per severity 1..5).
# --------------------------------------------------------------------------------------------

CIFAR_C_SIZE = 32  # the generator hard-codes 32 x 32 (glass_blur loop, fog map, frost crop, ...)
CIFAR_C_PARAMS: dict[str, tuple[Any, ...]] = {
    # gaussian_noise(): c = noise std on [0, 1]
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    # shot_noise(): c = Poisson photon count scale
    "shot_noise": (500, 250, 100, 75, 50),
    # impulse_noise(): c = s&p amount
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    # speckle_noise(): c = multiplicative noise std
    "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),
    # gaussian_blur(): c = sigma
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1),
    # glass_blur(): (sigma, max_delta, iterations)
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    # defocus_blur(): (disk radius, alias blur)
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    # motion_blur(): (radius, sigma) of ImageMagick's MotionBlurImage
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    # zoom_blur(): np.arange(start, stop, step) of zoom factors
    "zoom_blur": ((1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01),
                  (1, 1.26, 0.01)),
    # snow(): (loc, scale, zoom, threshold, blur radius, blur sigma, image blend)
    "snow": ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
             (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
             (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
    # frost(): (image weight, frost weight)
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
    # fog(): (fog strength, plasma wibble decay)
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
    # brightness(): c = added HSV value
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    # contrast(): c = contrast factor around the channel mean
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    # elastic_transform(): IMSIZE * (alpha, sigma, affine jitter) with IMSIZE = 32
    "elastic_transform": ((32 * 0, 32 * 0, 32 * 0.08), (32 * 0.05, 32 * 0.2, 32 * 0.07),
                          (32 * 0.08, 32 * 0.06, 32 * 0.06), (32 * 0.1, 32 * 0.04, 32 * 0.05),
                          (32 * 0.1, 32 * 0.03, 32 * 0.03)),
    # pixelate(): c = down-sampling factor (BOX down, BOX up)
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    # jpeg_compression(): c = PIL JPEG quality
    "jpeg_compression": (80, 65, 58, 50, 40),
    # spatter(): (loc, scale, sigma, threshold, intensity, mode 0 = water / 1 = mud)
    "spatter": ((0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0),
                (0.65, 0.3, 1, 0.69, 0.5, 0), (0.65, 0.1, 0.7, 0.69, 0.6, 1),
                (0.65, 0.1, 0.5, 0.68, 0.6, 1)),
    # saturate(): (saturation factor, saturation offset)
    "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
}
# frost(): the generator draws np.random.randint(5) (so only the first five of the six frost
# pictures) and shrinks them with cv2.resize(fx=fy=0.2); the pictures ship with imagecorruptions.
CIFAR_C_FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")
CIFAR_C_FROST_SCALE = 0.2

# --------------------------------------------------------------------------------------------
# Official benchmark archives
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Archive:
    """One released benchmark archive: the folder it extracts to, its URL and MD5."""

    folder: str
    url: str
    md5: str | None


# Zenodo records 2535967 / 3555552 (Hendrycks & Dietterich); MD5s as listed on Zenodo and used by
# torchvision-style loaders (e.g. torch-uncertainty's CIFAR10C / CIFAR100C).
CIFAR_C_ARCHIVES = {
    "cifar10": Archive("CIFAR-10-C", "https://zenodo.org/records/2535967/files/CIFAR-10-C.tar",
                       "56bf5dcef84df0e2308c6dcbcbbd8499"),
    "cifar100": Archive("CIFAR-100-C", "https://zenodo.org/records/3555552/files/CIFAR-100-C.tar",
                        "11f0ed0f1191edbf9fa23466ae6021d3"),
}
# Zenodo record 2536630. MD5 of Tiny-ImageNet-C.tar (1,794,775,040 bytes) as listed by
# torch-uncertainty (its mirror, Zenodo 8206060) and an independent audit of the 15-corruption tar;
# pass md5=None to download_tiny_imagenet_c if Zenodo ever serves a different file.
TINY_IMAGENET_C_ARCHIVE = Archive(
    "Tiny-ImageNet-C", "https://zenodo.org/records/2536630/files/Tiny-ImageNet-C.tar",
    "f9c9a9dbdc11469f0b850190f7ad8be1",
)
_IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")

# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def check_corruption(name: str, suite: str = "cifar-c") -> str:
    """Validate a suite and a corruption name of that suite (both suites cover all 19)."""
    check_choice("suite", suite, SUITES)
    return check_choice("corruption", name, ALL_CORRUPTIONS)


def check_severity(severity: int) -> int:
    """Validate a severity: a Python/numpy integer in 1..5 (not a bool, str or float)."""
    if isinstance(severity, (bool, np.bool_)) or not isinstance(severity, (int, np.integer)):
        raise DemHECError(f"severity must be an integer in 1..5, got {severity!r}")
    return int(check_choice("severity", int(severity), SEVERITIES))


def _check_images(images: np.ndarray, suite: str, batch_only: bool = False) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise DemHECError("images must be a uint8 numpy array of shape (H, W, 3) or (N, H, W, 3)")
    ndims = (4,) if batch_only else (3, 4)
    if images.ndim not in ndims or images.shape[-1] != 3:
        want = "(N, H, W, 3)" if batch_only else "(H, W, 3) or (N, H, W, 3)"
        raise DemHECError(f"images must have shape {want}, got {images.shape}")
    h, w = images.shape[-3:-1]
    if suite == "cifar-c" and (h, w) != (CIFAR_C_SIZE, CIFAR_C_SIZE):
        raise DemHECError(f"suite 'cifar-c' reproduces CIFAR-10-C and needs 32x32 images, got "
                          f"{h}x{w}; use suite='imagecorruptions' for other sizes")
    if h < 32 or w < 32:
        raise DemHECError(f"imagecorruptions needs images of at least 32x32, got {h}x{w}")


# --------------------------------------------------------------------------------------------
# Seeding
# --------------------------------------------------------------------------------------------


def _image_seed(seed: int, corruption: str, severity: int, index: int) -> int:
    """A 32-bit seed that depends only on (seed, corruption, severity, image index)."""
    entropy = [seed, zlib.crc32(corruption.encode()), severity, index]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint32)[0])


def _child_seed(rs: np.random.RandomState) -> int:
    """A seed for helpers that take one (skimage rng, numba's RNG, the global numpy RNG)."""
    return int(rs.randint(2**31))


@contextlib.contextmanager
def _seeded_global_numpy(seed: int) -> Iterator[None]:
    """Seed numpy's global RNG for third-party code that draws from it, then restore it."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


# --------------------------------------------------------------------------------------------
# CIFAR-10-C corruptions: make_cifar_c.py with its constants. x is uint8 H x W x 3; each returns
# floats in [0, 255] (truncated to uint8 by the caller, as the generator's np.uint8(...) does).
# ImageMagick's motion blur (used by motion_blur and snow) is replaced by imagecorruptions' numpy
# re-implementation, _motion_blur; all other helpers are the generator's own.
# --------------------------------------------------------------------------------------------


def _clipped_zoom_square(img: np.ndarray, zoom_factor: float) -> np.ndarray:
    """make_cifar_c.py's clipped_zoom: zoom the centre crop, trim back to the input size."""
    h = img.shape[0]
    ch = int(np.ceil(h / zoom_factor))
    top = (h - ch) // 2
    img = scizoom(img[top:top + ch, top:top + ch], (zoom_factor, zoom_factor, 1), order=1)
    trim = (img.shape[0] - h) // 2
    return img[trim:trim + h, trim:trim + h]


def _read_frost_picture(filename: str) -> np.ndarray:
    """One of the frost photographs shipped with ``imagecorruptions`` (BGR, as cv2 reads it)."""
    ref = importlib.resources.files("imagecorruptions") / "frost" / filename
    with importlib.resources.as_file(ref) as path:
        return cv2.imread(str(path))


@functools.cache
def _cifar_frost_picture(index: int) -> np.ndarray:
    picture = _read_frost_picture(CIFAR_C_FROST_FILES[index])
    return cv2.resize(picture, (0, 0), fx=CIFAR_C_FROST_SCALE, fy=CIFAR_C_FROST_SCALE)


def _c_gaussian_noise(x: np.ndarray, c: float, rs: np.random.RandomState) -> np.ndarray:
    x = x / 255.0
    return np.clip(x + rs.normal(size=x.shape, scale=c), 0, 1) * 255


def _c_shot_noise(x: np.ndarray, c: float, rs: np.random.RandomState) -> np.ndarray:
    x = x / 255.0
    return np.clip(rs.poisson(x * c) / c, 0, 1) * 255


def _c_impulse_noise(x: np.ndarray, c: float, rs: np.random.RandomState) -> np.ndarray:
    # random_noise ignores numpy's global seed: it needs its own rng to be reproducible.
    x = sk.util.random_noise(x / 255.0, mode="s&p", rng=_child_seed(rs), amount=c)
    return np.clip(x, 0, 1) * 255


def _c_speckle_noise(x: np.ndarray, c: float, rs: np.random.RandomState) -> np.ndarray:
    x = x / 255.0
    return np.clip(x + x * rs.normal(size=x.shape, scale=c), 0, 1) * 255


def _c_gaussian_blur(x: np.ndarray, c: float, rs: np.random.RandomState) -> np.ndarray:
    return np.clip(gaussian(x / 255.0, sigma=c, channel_axis=-1), 0, 1) * 255


def _c_glass_blur(x: np.ndarray, c: tuple, rs: np.random.RandomState) -> np.ndarray:
    x = np.uint8(gaussian(x / 255.0, sigma=c[0], channel_axis=-1) * 255)
    # imagecorruptions' numba port of the generator's local pixel-shuffling loop.
    x = _shuffle_pixels_njit_glass_blur(x.shape[0], x.shape[1], x, c, _child_seed(rs))
    return np.clip(gaussian(x / 255.0, sigma=c[0], channel_axis=-1), 0, 1) * 255


def _c_defocus_blur(x: np.ndarray, c: tuple, rs: np.random.RandomState) -> np.ndarray:
    x = x / 255.0
    kernel = disk(radius=c[0], alias_blur=c[1])
    channels = np.stack([cv2.filter2D(x[:, :, d], -1, kernel) for d in range(3)], axis=-1)
    return np.clip(channels, 0, 1) * 255


def _c_motion_blur(x: np.ndarray, c: tuple, rs: np.random.RandomState) -> np.ndarray:
    return np.clip(_motion_blur(x, radius=c[0], sigma=c[1], angle=rs.uniform(-45, 45)), 0, 255)


def _c_zoom_blur(x: np.ndarray, c: tuple, rs: np.random.RandomState) -> np.ndarray:
    x = (x / 255.0).astype(np.float32)
    factors = np.arange(*c)
    out = np.zeros_like(x)
    for zoom_factor in factors:
        out += _clipped_zoom_square(x, zoom_factor)
    return np.clip((x + out) / (len(factors) + 1), 0, 1) * 255


def _c_snow(x: np.ndarray, c: tuple, rs: np.random.RandomState) -> np.ndarray:
    x = x.astype(np.float32) / 255.0
    layer = rs.normal(size=x.shape[:2], loc=c[0], scale=c[1])
    layer = _clipped_zoom_square(layer[..., np.newaxis], c[2])
    layer[layer < c[3]] = 0
    # The generator round-trips the layer through an 8-bit PNG around ImageMagick's blur.
    layer = (np.clip(layer.squeeze(), 0, 1) * 255).astype(np.uint8).astype(np.float32)
    layer = _motion_blur(layer, radius=c[4], sigma=c[5], angle=rs.uniform(-135, -45))
    layer = (np.round(np.clip(layer, 0, 255)) / 255.0)[..., np.newaxis]
    gray = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)[..., np.newaxis]
    x = c[6] * x + (1 - c[6]) * np.maximum(x, gray * 1.5 + 0.5)
    return np.clip(x + layer + np.rot90(layer, k=2), 0, 1) * 255


def _c_frost(x: np.ndarray, c: tuple, rs: np.random.RandomState) -> np.ndarray:
    frost = _cifar_frost_picture(rs.randint(len(CIFAR_C_FROST_FILES)))
    h, w = x.shape[:2]
    top, left = rs.randint(0, frost.shape[0] - h), rs.randint(0, frost.shape[1] - w)
    frost = frost[top:top + h, left:left + w][..., [2, 1, 0]]
    return np.clip(c[0] * x + c[1] * frost, 0, 255)


def _c_fog(x: np.ndarray, c: tuple, rs: np.random.RandomState) -> np.ndarray:
    x = x / 255.0
    max_val = x.max()
    h, w = x.shape[:2]
    with _seeded_global_numpy(_child_seed(rs)):  # plasma_fractal draws from np.random
        fractal = plasma_fractal(mapsize=CIFAR_C_SIZE, wibbledecay=c[1])
    x = x + c[0] * fractal[:h, :w][..., np.newaxis]
    return np.clip(x * max_val / (max_val + c[0]), 0, 1) * 255


def _c_brightness(x: np.ndarray, c: float, rs: np.random.RandomState) -> np.ndarray:
    x = sk.color.rgb2hsv(x / 255.0)
    x[:, :, 2] = np.clip(x[:, :, 2] + c, 0, 1)
    return np.clip(sk.color.hsv2rgb(x), 0, 1) * 255


def _c_contrast(x: np.ndarray, c: float, rs: np.random.RandomState) -> np.ndarray:
    x = x / 255.0
    means = np.mean(x, axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def _c_elastic_transform(x: np.ndarray, c: tuple, rs: np.random.RandomState) -> np.ndarray:
    image = x.astype(np.float32) / 255.0
    shape = image.shape
    size = shape[:2]
    # Random affine of three points around the centre, then a smooth random displacement field.
    center = np.float32(size) // 2
    square = min(size) // 3
    pts1 = np.float32([center + square, [center[0] + square, center[1] - square],
                       center - square])
    pts2 = pts1 + rs.uniform(-c[2], c[2], size=pts1.shape).astype(np.float32)
    affine = cv2.getAffineTransform(pts1, pts2)
    image = cv2.warpAffine(image, affine, size[::-1], borderMode=cv2.BORDER_REFLECT_101)
    dx = (gaussian(rs.uniform(-1, 1, size=size), sigma=c[1], mode="reflect", truncate=3)
          * c[0]).astype(np.float32)[..., np.newaxis]
    dy = (gaussian(rs.uniform(-1, 1, size=size), sigma=c[1], mode="reflect", truncate=3)
          * c[0]).astype(np.float32)[..., np.newaxis]
    gx, gy, gz = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
    indices = (np.reshape(gy + dy, (-1, 1)), np.reshape(gx + dx, (-1, 1)), np.reshape(gz, (-1, 1)))
    warped = map_coordinates(image, indices, order=1, mode="reflect").reshape(shape)
    return np.clip(warped, 0, 1) * 255


def _c_pixelate(x: np.ndarray, c: float, rs: np.random.RandomState) -> np.ndarray:
    h, w = x.shape[:2]
    small = Image.fromarray(x).resize((int(w * c), int(h * c)), Image.BOX)
    return np.asarray(small.resize((w, h), Image.BOX))


def _c_jpeg_compression(x: np.ndarray, c: int, rs: np.random.RandomState) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(x).save(buffer, "JPEG", quality=c)
    return np.asarray(Image.open(buffer))


def _c_spatter(x: np.ndarray, c: tuple, rs: np.random.RandomState) -> np.ndarray:
    x = x.astype(np.float32) / 255.0
    liquid = rs.normal(size=x.shape[:2], loc=c[0], scale=c[1])
    liquid = gaussian(liquid, sigma=c[2])
    liquid[liquid < c[3]] = 0
    if c[5] == 0:  # water drops: a shaded, pale-turquoise liquid layer
        liquid = (liquid * 255).astype(np.uint8)
        dist = 255 - cv2.Canny(liquid, 50, 150)
        dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
        _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
        dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
        ker = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
        dist = cv2.blur(cv2.filter2D(dist, cv2.CV_8U, ker), (3, 3)).astype(np.float32)
        m = cv2.cvtColor(liquid * dist, cv2.COLOR_GRAY2BGRA)
        m /= np.max(m, axis=(0, 1))
        m *= c[4]
        color = np.concatenate([v / 255.0 * np.ones_like(m[..., :1]) for v in (175, 238, 238)],
                               axis=2)
        color = cv2.cvtColor(color, cv2.COLOR_BGR2BGRA)
        x = cv2.cvtColor(x, cv2.COLOR_BGR2BGRA)
        return cv2.cvtColor(np.clip(x + m * color, 0, 1), cv2.COLOR_BGRA2BGR) * 255
    # mud: opaque brown blobs
    m = gaussian(np.where(liquid > c[3], 1, 0).astype(np.float32), sigma=c[4])
    m[m < 0.8] = 0
    color = np.concatenate([v / 255.0 * np.ones_like(x[..., :1]) for v in (63, 42, 20)], axis=2)
    color *= m[..., np.newaxis]
    x *= 1 - m[..., np.newaxis]
    return np.clip(x + color, 0, 1) * 255


def _c_saturate(x: np.ndarray, c: tuple, rs: np.random.RandomState) -> np.ndarray:
    x = sk.color.rgb2hsv(x / 255.0)
    x[:, :, 1] = np.clip(x[:, :, 1] * c[0] + c[1], 0, 1)
    return np.clip(sk.color.hsv2rgb(x), 0, 1) * 255


_CIFAR_C_FUNCTIONS: dict[str, Callable[[np.ndarray, Any, np.random.RandomState], np.ndarray]] = {
    "gaussian_noise": _c_gaussian_noise, "shot_noise": _c_shot_noise,
    "impulse_noise": _c_impulse_noise, "defocus_blur": _c_defocus_blur,
    "glass_blur": _c_glass_blur, "motion_blur": _c_motion_blur, "zoom_blur": _c_zoom_blur,
    "snow": _c_snow, "frost": _c_frost, "fog": _c_fog, "brightness": _c_brightness,
    "contrast": _c_contrast, "elastic_transform": _c_elastic_transform, "pixelate": _c_pixelate,
    "jpeg_compression": _c_jpeg_compression, "speckle_noise": _c_speckle_noise,
    "gaussian_blur": _c_gaussian_blur, "spatter": _c_spatter, "saturate": _c_saturate,
}

# imagecorruptions functions that take an explicit seed (they do not use np.random's global state).
_IMAGECORRUPTIONS_SEEDED = ("impulse_noise", "glass_blur")
IMAGECORRUPTIONS_FROST = ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))
_IMAGECORRUPTIONS_FROST_FILES = (*CIFAR_C_FROST_FILES, "frost6.jpg")  # the package draws from all six


@functools.lru_cache(maxsize=32)
def _ic_frost_picture(index: int, height: int, width: int) -> np.ndarray:
    """imagecorruptions' frost picture ``index`` rescaled for a ``height`` x ``width`` image.

    The package reads and bicubically rescales a large photograph for every image, which is
    three quarters of the time of the paper's 7-corruption grid on 32x32 images; both steps
    depend only on (index, image size), so they are done once per process.
    """
    picture = _read_frost_picture(_IMAGECORRUPTIONS_FROST_FILES[index])
    ph, pw = picture.shape[:2]
    # The package's scaling rule, branch for branch, so the rescaled size is the same.
    if ph >= height and pw >= width:
        factor = 1
    elif ph < height and pw >= width:
        factor = height / ph
    elif ph >= height and pw < width:
        factor = width / pw
    else:
        factor = np.maximum(height / ph, width / pw)
    factor *= 1.1
    size = (int(np.ceil(pw * factor)), int(np.ceil(ph * factor)))
    out = cv2.resize(picture, dsize=size, interpolation=cv2.INTER_CUBIC)
    out.flags.writeable = False
    return out


def _ic_frost(x: np.ndarray, severity: int) -> np.ndarray:
    """``imagecorruptions`` frost (same draws from np.random, same pixels once the caller
    truncates to uint8) with the rescaled frost picture cached; x is uint8 H x W x 3."""
    c = IMAGECORRUPTIONS_FROST[severity - 1]
    index = np.random.randint(len(_IMAGECORRUPTIONS_FROST_FILES))
    frost = _ic_frost_picture(index, x.shape[0], x.shape[1])
    top = np.random.randint(0, frost.shape[0] - x.shape[0])
    left = np.random.randint(0, frost.shape[1] - x.shape[1])
    frost = frost[top:top + x.shape[0], left:left + x.shape[1]][..., [2, 1, 0]]
    return np.clip(c[0] * x + c[1] * frost, 0, 255)


# --------------------------------------------------------------------------------------------
# Public corruption entry points
# --------------------------------------------------------------------------------------------


def _corrupt_one(image: np.ndarray, corruption: str, severity: int, suite: str,
                 image_seed: int) -> np.ndarray:
    if suite == "cifar-c":
        params = CIFAR_C_PARAMS[corruption][severity - 1]
        out = _CIFAR_C_FUNCTIONS[corruption](image, params, np.random.RandomState(image_seed))
    else:
        kwargs = {"seed": image_seed} if corruption in _IMAGECORRUPTIONS_SEEDED else {}
        with _seeded_global_numpy(image_seed):
            if corruption == "frost":
                out = _ic_frost(image, severity)
            else:
                out = imagecorruptions.corrupt(image, corruption_name=corruption,
                                               severity=severity, **kwargs)
    # Truncation (not rounding) to uint8, like both reference generators.
    return np.asarray(out).astype(np.uint8)


def _corrupt_range(images: np.ndarray, corruption: str, severity: int, suite: str, seed: int,
                   start: int) -> np.ndarray:
    """Corrupt ``images``, which are images ``start, start + 1, ...`` of a split."""
    out = np.empty_like(images)
    for j, image in enumerate(images):
        out[j] = _corrupt_one(np.ascontiguousarray(image), corruption, severity, suite,
                              _image_seed(seed, corruption, severity, start + j))
    return out


def corrupt(image_or_batch: np.ndarray, corruption: str, severity: int, suite: str = "cifar-c",
            seed: int = 0) -> np.ndarray:
    """Corrupt one uint8 H x W x 3 image or an N x H x W x 3 batch (paper Eq. 1's g_c at s).

    Deterministic: image i of a batch is corrupted with randomness drawn only from
    (seed, corruption, severity, i), so the result equals :func:`corrupt_split` on the same batch.
    """
    check_corruption(corruption, suite)
    severity = check_severity(severity)
    check_range("seed", seed, 0, integer=True)
    _check_images(image_or_batch, suite)
    if image_or_batch.ndim == 3:
        return _corrupt_range(image_or_batch[None], corruption, severity, suite, seed, 0)[0]
    return _corrupt_range(image_or_batch, corruption, severity, suite, seed, 0)


# --------------------------------------------------------------------------------------------
# Whole splits: parallel generation and an on-disk cache
# --------------------------------------------------------------------------------------------

_CACHE_FORMAT = 1  # bump when the generated pixels of any corruption change
_MAX_CHUNK = 256  # images per task: small enough to balance load and bound memory
_MIN_PARALLEL = 64  # smaller splits are done in-process: starting workers would cost more
_KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def images_key(images: np.ndarray) -> str:
    """A short content hash of a clean split (shape + bytes), the default cache ``key``."""
    digest = hashlib.sha256(f"{images.shape}|{images.dtype}".encode())
    for i in range(0, len(images), 1024):  # bounded memory for memory-mapped splits
        digest.update(np.ascontiguousarray(images[i:i + 1024]).data)
    return digest.hexdigest()[:16]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core; OpenCV's own threads would oversubscribe


class _LazyPool:
    """A process pool shared by all cells of a grid, started only if something must be built."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor: cf.ProcessPoolExecutor | None = None

    def executor(self) -> cf.ProcessPoolExecutor:
        if self._executor is None:
            # 'spawn': forked workers deadlocked on locks held by the parent's torch/OpenMP
            # threads (seen in CI). A script without a __main__ guard breaks spawned workers;
            # _fill then falls back to in-process generation.
            self._executor = cf.ProcessPoolExecutor(
                self.workers, mp_context=mp.get_context("spawn"), initializer=_init_worker)
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(cancel_futures=True)
            self._executor = None


def _fill(out: np.ndarray, images: np.ndarray, corruption: str, severity: int, suite: str,
          seed: int, pool: _LazyPool, progress: bool) -> None:
    n = len(images)
    chunk = max(1, min(_MAX_CHUNK, math.ceil(n / (4 * pool.workers))))
    starts = range(0, n, chunk)
    bar = tqdm(total=n, desc=f"{corruption} s{severity}", disable=not progress)
    try:
        if pool.workers == 1 or n < _MIN_PARALLEL:
            for s in starts:
                out[s:s + chunk] = _corrupt_range(images[s:s + chunk], corruption, severity,
                                                  suite, seed, s)
                bar.update(min(chunk, n - s))
            return
        try:
            _fill_parallel(out, images, corruption, severity, suite, seed, pool, bar, chunk)
        except cf.process.BrokenProcessPool:
            logger.warning("corruption workers could not start (a script without "
                        "`if __name__ == '__main__':`?); generating in this process instead")
            pool.close()
            pool.workers = 1
            bar.reset()
            _fill(out, images, corruption, severity, suite, seed, pool, False)
    finally:
        bar.close()


def _fill_parallel(out: np.ndarray, images: np.ndarray, corruption: str, severity: int,
                   suite: str, seed: int, pool: _LazyPool, bar: Any, chunk: int) -> None:
    n = len(images)
    executor = pool.executor()
    pending: dict[cf.Future, int] = {}
    todo = iter(range(0, n, chunk))
    # At most two chunks per worker in flight, so memory stays bounded for large splits.
    while True:
        while len(pending) < 2 * pool.workers and (s := next(todo, None)) is not None:
            task = executor.submit(_corrupt_range, np.ascontiguousarray(images[s:s + chunk]),
                                   corruption, severity, suite, seed, s)
            pending[task] = s
        if not pending:
            break
        done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
        for task in done:
            s = pending.pop(task)
            out[s:s + chunk] = task.result()
            bar.update(min(chunk, n - s))


def _cache_paths(cache_dir: str | os.PathLike, suite: str, key: str, corruption: str,
                 severity: int) -> tuple[Path, Path]:
    folder = Path(cache_dir) / suite / key
    stem = f"{corruption}_s{severity}"
    return folder / f"{stem}.npy", folder / f"{stem}.json"


def _load_cached(path: Path, meta_path: Path, expected: dict[str, Any]) -> np.ndarray | None:
    """The cached array if it is complete and unaltered; None (with a warning if bad) otherwise."""
    if not path.exists() and not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        stale = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
        if stale:
            logger.info("corruption cache %s was built with other settings %s; regenerating",
                        path, stale)
            return None
        if path.stat().st_size != meta["file_size"]:
            raise ValueError(f"size {path.stat().st_size} != recorded {meta['file_size']}")
        if _sha256(path) != meta["sha256"]:
            raise ValueError("sha256 checksum mismatch")
        array = np.load(path, mmap_mode="r")
        if list(array.shape) != meta["shape"] or str(array.dtype) != meta["dtype"]:
            raise ValueError(f"array {array.shape}/{array.dtype} != recorded "
                             f"{meta['shape']}/{meta['dtype']}")
        return array
    except (OSError, ValueError, KeyError, TypeError, SyntaxError) as err:
        logger.warning("corruption cache %s is invalid (%s); regenerating it", path, err)
        return None


def _build_cached(images: np.ndarray, path: Path, meta_path: Path, expected: dict[str, Any],
                  pool: _LazyPool, progress: bool) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp.npy")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=images.shape)
        _fill(out, images, expected["corruption"], expected["severity"], expected["suite"],
              expected["seed"], pool, progress)
        out.flush()
        del out
        meta = dict(expected, shape=list(images.shape), dtype="uint8",
                    file_size=tmp.stat().st_size, sha256=_sha256(tmp))
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    with atomic_write(meta_path, "w") as f:
        json.dump(meta, f, indent=1)
    return np.load(path, mmap_mode="r")


def _split_cell(images: np.ndarray, corruption: str, severity: int, suite: str, seed: int,
                cache_dir: str | os.PathLike | None, key: str | None, pool: _LazyPool,
                progress: bool) -> np.ndarray:
    if cache_dir is None:
        out = np.empty_like(images)
        _fill(out, images, corruption, severity, suite, seed, pool, progress)
        out.flags.writeable = False
        return out
    path, meta_path = _cache_paths(cache_dir, suite, key, corruption, severity)
    expected = {"format": _CACHE_FORMAT, "suite": suite, "corruption": corruption,
                "severity": severity, "seed": seed, "key": key}
    cached = _load_cached(path, meta_path, expected)
    if cached is not None:
        logger.debug("corruption cache hit: %s", path)
        return cached
    logger.info("generating %s (%d images) into %s", path.stem, len(images), path)
    return _build_cached(images, path, meta_path, expected, pool, progress)


def _check_split_args(images: np.ndarray, suite: str, seed: int, cache_dir: Any, key: str | None,
                      workers: int | None) -> tuple[str | None, int]:
    check_choice("suite", suite, SUITES)
    _check_images(images, suite, batch_only=True)
    check_range("seed", seed, 0, integer=True)
    if workers is None:
        workers = os.cpu_count() or 1
    check_range("workers", workers, 1, integer=True)
    if cache_dir is not None:
        key = images_key(images) if key is None else key
        if not isinstance(key, str) or not _KEY_PATTERN.match(key):
            raise DemHECError(f"cache key must be letters, digits, '.', '_' or '-', got {key!r}")
    return key, workers


def corrupt_split(images: np.ndarray, corruption: str, severity: int, suite: str = "cifar-c",
                  seed: int = 0, cache_dir: str | os.PathLike | None = None,
                  key: str | None = None, workers: int | None = None,
                  progress: bool = False) -> np.ndarray:
    """Corrupt a whole uint8 N x H x W x 3 split on all cores, optionally through a disk cache.

    Image i depends only on (seed, corruption, severity, i), so neither ``workers`` nor chunking
    changes the result (it equals :func:`corrupt` on the same array). With ``cache_dir`` the result
    is stored as ``<cache_dir>/<suite>/<key>/<corruption>_s<severity>.npy`` with a JSON sidecar
    (shape, dtype, size, sha256, seed) and reused while it verifies; a truncated or altered file is
    logged and rebuilt. ``key`` names the clean split (default: a hash of its bytes). The result is
    a read-only array (a memory map when cached). ``workers=None`` uses every CPU; 1 (or a split of
    fewer than 64 images) runs in-process.
    """
    check_corruption(corruption, suite)
    severity = check_severity(severity)
    key, workers = _check_split_args(images, suite, seed, cache_dir, key, workers)
    pool = _LazyPool(workers)
    try:
        return _split_cell(images, corruption, severity, suite, seed, cache_dir, key, pool,
                           progress)
    finally:
        pool.close()


def corruption_grid(images: np.ndarray, corruptions: Iterable[str] = PAPER_CORRUPTIONS,
                    severities: Iterable[int] = PAPER_SEVERITIES, suite: str = "cifar-c",
                    seed: int = 0, cache_dir: str | os.PathLike | None = None,
                    key: str | None = None, workers: int | None = None,
                    progress: bool = False) -> Iterator[tuple[str, int, np.ndarray]]:
    """Yield ``(corruption, severity, corrupted split)`` for every cell of a grid, lazily.

    Same arguments and guarantees as :func:`corrupt_split`; one process pool serves the whole grid
    (started only if some cell is not cached). Defaults: the paper's 7 corruptions x S1/S3/S5.
    """
    corruptions = [check_corruption(c, suite) for c in corruptions]
    severities = [check_severity(s) for s in severities]
    key, workers = _check_split_args(images, suite, seed, cache_dir, key, workers)
    pool = _LazyPool(workers)
    try:
        for corruption in corruptions:
            for severity in severities:
                yield corruption, severity, _split_cell(images, corruption, severity, suite,
                                                        seed, cache_dir, key, pool, progress)
    finally:
        pool.close()


# --------------------------------------------------------------------------------------------
# Official benchmark files
# --------------------------------------------------------------------------------------------


def _download_hint(function: str) -> str:
    return f"download it with demhec.corruptions.{function}(root)"


def _cifar_c_folder(root: Path, archive: Archive, corruption: str) -> Path:
    for folder in (root / archive.folder, root):
        if (folder / f"{corruption}.npy").is_file():
            return folder
    raise DemHECError(f"{archive.folder} file {corruption}.npy not found under {root}; "
                      + _download_hint("download_cifar_c"))


def load_cifar_c(root: str | os.PathLike, corruption: str, severity: int,
                 dataset: str = "cifar10") -> tuple[torch.Tensor, torch.Tensor]:
    """Read one severity of a released CIFAR-10-C / CIFAR-100-C corruption (paper Tables 1, 5).

    ``root`` holds the extracted ``CIFAR-10-C`` (``CIFAR-100-C``) folder or is that folder. Each
    ``<corruption>.npy`` stacks the test set at severities 1..5 (rows ``(s-1)*n:s*n``, n = 10000);
    only that slice is read (memory map). Returns float images in [0, 1], N x 3 x 32 x 32, and
    int64 labels.
    """
    archive = CIFAR_C_ARCHIVES[check_choice("dataset", dataset, CIFAR_C_ARCHIVES)]
    check_corruption(corruption)
    severity = check_severity(severity)
    folder = _cifar_c_folder(Path(root), archive, corruption)
    labels_path = folder / "labels.npy"
    if not labels_path.is_file():
        raise DemHECError(f"{labels_path} not found; " + _download_hint("download_cifar_c"))
    data = np.load(folder / f"{corruption}.npy", mmap_mode="r")
    labels = np.load(labels_path, mmap_mode="r")
    if data.ndim != 4 or data.shape[-1] != 3 or len(data) % len(SEVERITIES):
        raise DemHECError(f"{folder / corruption}.npy has shape {data.shape}; expected "
                          "(5 * n, H, W, 3) with the five severities stacked")
    n = len(data) // len(SEVERITIES)
    if len(labels) not in (n, len(data)):
        raise DemHECError(f"{labels_path} has {len(labels)} labels for {len(data)} images")
    rows = slice((severity - 1) * n, severity * n)
    images = torch.from_numpy(np.array(data[rows], dtype=np.uint8))
    targets = torch.from_numpy(np.array(labels[rows] if len(labels) == len(data) else labels,
                                        dtype=np.int64))
    return images.permute(0, 3, 1, 2).float().div_(255).contiguous(), targets


def download_cifar_c(root: str | os.PathLike, dataset: str = "cifar10") -> Path:
    """Download and extract the CIFAR-10-C / CIFAR-100-C archive (MD5-checked) under ``root``."""
    archive = CIFAR_C_ARCHIVES[check_choice("dataset", dataset, CIFAR_C_ARCHIVES)]
    folder = Path(root) / archive.folder
    if (folder / "labels.npy").is_file():
        return folder
    download_and_extract_archive(archive.url, download_root=str(root), md5=archive.md5)
    return folder


class CorruptedImageFolder(Dataset):
    """Images of one ``<corruption>/<severity>`` folder of Tiny-ImageNet-C.

    Items are (float image in [0, 1], 3 x H x W, class index); ``classes`` gives the wnid order.
    """

    def __init__(self, samples: list[tuple[str, int]], classes: list[str]) -> None:
        self.samples = samples
        self.classes = classes
        self.targets = [label for _, label in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        with Image.open(path) as image:
            array = np.array(image.convert("RGB"), dtype=np.uint8)
        return torch.from_numpy(array).permute(2, 0, 1).float().div_(255), label


def load_tiny_imagenet_c(root: str | os.PathLike, corruption: str, severity: int,
                         classes: list[str] | None = None) -> CorruptedImageFolder:
    """Read one ``<root>/Tiny-ImageNet-C/<corruption>/<severity>/<wnid>/*.JPEG`` set (Table 2).

    ``root`` may also be the ``Tiny-ImageNet-C`` folder itself. Class indices follow ``classes``
    (pass the clean loader's list, i.e. the sorted wnids) or, by default, the sorted wnid folders.
    """
    check_corruption(corruption)
    severity = check_severity(severity)
    root = Path(root)
    base = next((b for b in (root / TINY_IMAGENET_C_ARCHIVE.folder, root)
                 if (b / corruption).is_dir()), None)
    if base is None:
        raise DemHECError(f"Tiny-ImageNet-C corruption folder {corruption!r} not found under "
                          f"{root}; " + _download_hint("download_tiny_imagenet_c"))
    folder = base / corruption / str(severity)
    if not folder.is_dir():
        raise DemHECError(f"Tiny-ImageNet-C severity folder {folder} not found")
    wnids = sorted(d.name for d in folder.iterdir() if d.is_dir())
    classes = wnids if classes is None else list(classes)
    unknown = sorted(set(wnids) - set(classes))
    if unknown:
        raise DemHECError(f"{folder} has classes not in the given class list: "
                          f"{', '.join(unknown[:5])}")
    index = {wnid: i for i, wnid in enumerate(classes)}
    samples = [(str(p), index[wnid]) for wnid in wnids for p in sorted((folder / wnid).iterdir())
               if p.suffix.lower() in _IMAGE_SUFFIXES]
    if not samples:
        raise DemHECError(f"no images found under {folder}")
    return CorruptedImageFolder(samples, classes)


def download_tiny_imagenet_c(root: str | os.PathLike,
                             md5: str | None = TINY_IMAGENET_C_ARCHIVE.md5) -> Path:
    """Download and extract Tiny-ImageNet-C (Zenodo 2536630) under ``root``; returns its folder."""
    folder = Path(root) / TINY_IMAGENET_C_ARCHIVE.folder
    if folder.is_dir() and any((folder / c).is_dir() for c in CORRUPTIONS):
        return folder
    download_and_extract_archive(TINY_IMAGENET_C_ARCHIVE.url, download_root=str(root), md5=md5)
    return folder
