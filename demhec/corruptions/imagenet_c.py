"""The ``"imagecorruptions"`` suite: the paper's stated tool (footnote 1,
github.com/bethgelab/imagecorruptions), i.e. the ImageNet-C constants at any size >= 32 px, with
its random draws seeded per image and its frost pictures rescaled once per process."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import cv2
import imagecorruptions
import imagecorruptions.corruptions
import numpy as np

from .cifar_c import CIFAR_C_FROST_FILES, read_frost_picture
from .common import motion_blur, seeded_global_numpy

# imagecorruptions functions that take an explicit seed (they do not use np.random's global state).
_IMAGECORRUPTIONS_SEEDED = ("impulse_noise", "glass_blur")
IMAGECORRUPTIONS_FROST = ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))
_IMAGECORRUPTIONS_FROST_FILES = (*CIFAR_C_FROST_FILES, "frost6.jpg")  # the package draws from all six
_MOTION_BLURRED = ("motion_blur", "snow")  # the package's corruptions that call its _motion_blur


@functools.lru_cache(maxsize=32)
def _ic_frost_picture(index: int, height: int, width: int) -> np.ndarray:
    """imagecorruptions' frost picture ``index`` rescaled for a ``height`` x ``width`` image.

    The package reads and bicubically rescales a large photograph for every image, which is
    three quarters of the time of the paper's 7-corruption grid on 32x32 images; both steps
    depend only on (index, image size), so they are done once per process.
    """
    picture = read_frost_picture(_IMAGECORRUPTIONS_FROST_FILES[index])
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


@contextlib.contextmanager
def _machine_independent_motion_blur() -> Iterator[None]:
    """Run the package with :func:`.common.motion_blur` in place of its ``_motion_blur`` (whose
    kernel depends on numpy's AVX-512 code), restored afterwards."""
    module = imagecorruptions.corruptions
    original, module._motion_blur = module._motion_blur, motion_blur
    try:
        yield
    finally:
        module._motion_blur = original


def corrupt_image(image: np.ndarray, corruption: str, severity: int, image_seed: int) -> np.ndarray:
    """One uint8 H x W x 3 image through imagecorruptions' ``corruption`` at ``severity``, its
    draws from numpy's global RNG (restored afterwards) and its explicit seed set to ``image_seed``."""
    kwargs = {"seed": image_seed} if corruption in _IMAGECORRUPTIONS_SEEDED else {}
    with seeded_global_numpy(image_seed):
        if corruption == "frost":
            return _ic_frost(image, severity)
        if corruption in _MOTION_BLURRED:
            with _machine_independent_motion_blur():
                return imagecorruptions.corrupt(image, corruption_name=corruption, severity=severity, **kwargs)
        return imagecorruptions.corrupt(image, corruption_name=corruption, severity=severity, **kwargs)
