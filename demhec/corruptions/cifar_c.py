"""The CIFAR-10-C generator (``make_cifar_c.py`` of github.com/hendrycks/robustness) ported with
its constants: the ``"cifar-c"`` suite for 32 x 32 images (paper Sec. 2.1, Tables 1, 4, 5)."""

from __future__ import annotations

import functools
import importlib.resources
import io
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import skimage as sk
from imagecorruptions.corruptions import (
    _shuffle_pixels_njit_glass_blur,
    disk,
    plasma_fractal,
)
from PIL import Image
from scipy.ndimage import map_coordinates
from scipy.ndimage import zoom as scizoom
from skimage.filters import gaussian

from .common import CIFAR_C_SIZE, child_seed, motion_blur, seeded_global_numpy

# --------------------------------------------------------------------------------------------
# CIFAR-10-C constants. Source of every row: github.com/hendrycks/robustness,
# ImageNet-C/create_c/make_cifar_c.py, the function of the same name (one entry per severity 1..5).
# --------------------------------------------------------------------------------------------

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
# CIFAR-10-C corruptions: make_cifar_c.py with its constants. x is uint8 H x W x 3; each returns
# floats in [0, 255] (truncated to uint8 by the caller, as the generator's np.uint8(...) does).
# ImageMagick's motion blur (used by motion_blur and snow) is replaced by imagecorruptions' numpy
# re-implementation (.common.motion_blur, made machine-independent); all other helpers are the
# generator's own.
# --------------------------------------------------------------------------------------------


def _clipped_zoom_square(img: np.ndarray, zoom_factor: float) -> np.ndarray:
    """make_cifar_c.py's clipped_zoom: zoom the centre crop, trim back to the input size."""
    h = img.shape[0]
    ch = int(np.ceil(h / zoom_factor))
    top = (h - ch) // 2
    img = scizoom(img[top:top + ch, top:top + ch], (zoom_factor, zoom_factor, 1), order=1)
    trim = (img.shape[0] - h) // 2
    return img[trim:trim + h, trim:trim + h]


def read_frost_picture(filename: str) -> np.ndarray:
    """One of the frost photographs shipped with ``imagecorruptions`` (BGR, as cv2 reads it)."""
    ref = importlib.resources.files("imagecorruptions") / "frost" / filename
    with importlib.resources.as_file(ref) as path:
        return cv2.imread(str(path))


@functools.cache
def _cifar_frost_picture(index: int) -> np.ndarray:
    picture = read_frost_picture(CIFAR_C_FROST_FILES[index])
    return cv2.resize(picture, (0, 0), fx=CIFAR_C_FROST_SCALE, fy=CIFAR_C_FROST_SCALE)


def _c_gaussian_noise(x: np.ndarray, c: float, rs: np.random.RandomState) -> np.ndarray:
    x = x / 255.0
    return np.clip(x + rs.normal(size=x.shape, scale=c), 0, 1) * 255


def _c_shot_noise(x: np.ndarray, c: float, rs: np.random.RandomState) -> np.ndarray:
    x = x / 255.0
    return np.clip(rs.poisson(x * c) / c, 0, 1) * 255


def _c_impulse_noise(x: np.ndarray, c: float, rs: np.random.RandomState) -> np.ndarray:
    # random_noise ignores numpy's global seed: it needs its own rng to be reproducible.
    x = sk.util.random_noise(x / 255.0, mode="s&p", rng=child_seed(rs), amount=c)
    return np.clip(x, 0, 1) * 255


def _c_speckle_noise(x: np.ndarray, c: float, rs: np.random.RandomState) -> np.ndarray:
    x = x / 255.0
    return np.clip(x + x * rs.normal(size=x.shape, scale=c), 0, 1) * 255


def _c_gaussian_blur(x: np.ndarray, c: float, rs: np.random.RandomState) -> np.ndarray:
    return np.clip(gaussian(x / 255.0, sigma=c, channel_axis=-1), 0, 1) * 255


def _c_glass_blur(x: np.ndarray, c: tuple, rs: np.random.RandomState) -> np.ndarray:
    x = np.uint8(gaussian(x / 255.0, sigma=c[0], channel_axis=-1) * 255)
    # imagecorruptions' numba port of the generator's local pixel-shuffling loop.
    x = _shuffle_pixels_njit_glass_blur(x.shape[0], x.shape[1], x, c, child_seed(rs))
    return np.clip(gaussian(x / 255.0, sigma=c[0], channel_axis=-1), 0, 1) * 255


def _c_defocus_blur(x: np.ndarray, c: tuple, rs: np.random.RandomState) -> np.ndarray:
    x = x / 255.0
    kernel = disk(radius=c[0], alias_blur=c[1])
    channels = np.stack([cv2.filter2D(x[:, :, d], -1, kernel) for d in range(3)], axis=-1)
    return np.clip(channels, 0, 1) * 255


def _c_motion_blur(x: np.ndarray, c: tuple, rs: np.random.RandomState) -> np.ndarray:
    return np.clip(motion_blur(x, radius=c[0], sigma=c[1], angle=rs.uniform(-45, 45)), 0, 255)


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
    layer = motion_blur(layer, radius=c[4], sigma=c[5], angle=rs.uniform(-135, -45))
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
    with seeded_global_numpy(child_seed(rs)):  # plasma_fractal draws from np.random
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

def corrupt_image(image: np.ndarray, corruption: str, severity: int,
                  rs: np.random.RandomState) -> np.ndarray:
    """One uint8 H x W x 3 image through the generator's ``corruption`` at ``severity``, with
    every draw from ``rs``; floats in [0, 255] (the caller truncates to uint8)."""
    return _CIFAR_C_FUNCTIONS[corruption](image, CIFAR_C_PARAMS[corruption][severity - 1], rs)
