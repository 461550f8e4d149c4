"""What every corruption suite shares: the names of suites, corruptions, families and severities,
their validation, and the per-image seeding that makes an image's corruption independent of
batching, chunking and worker processes."""

from __future__ import annotations

import contextlib
import math
import zlib
from collections.abc import Iterator

import numpy as np
from imagecorruptions.corruptions import shift

from .._common import DemHECError, check_choice

# --------------------------------------------------------------------------------------------
# Name tables
# --------------------------------------------------------------------------------------------

SUITES = ("cifar-c", "imagecorruptions")  # generated here (engine.py)
# The released benchmark files, read from disk (released.py): suite -> the clean dataset whose
# test (validation) images they corrupt.
RELEASED_SUITES = {"cifar10-c": "cifar10", "cifar100-c": "cifar100", "tinyimagenet-c": "tinyimagenet"}
ALL_SUITES = (*SUITES, *RELEASED_SUITES)

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
CIFAR_C_SIZE = 32  # the generator hard-codes 32 x 32 (glass_blur loop, fog map, frost crop, ...)

# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def check_corruption(name: str, suite: str = "cifar-c") -> str:
    """Validate a suite and a corruption name of that suite (every suite has all 19 but the
    released Tiny-ImageNet-C, which has the 15 benchmark corruptions)."""
    check_choice("suite", suite, ALL_SUITES)
    return check_choice("corruption", name, CORRUPTIONS if suite == "tinyimagenet-c" else ALL_CORRUPTIONS)


def check_severity(severity: int) -> int:
    """Validate a severity: a Python/numpy integer in 1..5 (not a bool, str or float)."""
    if isinstance(severity, (bool, np.bool_)) or not isinstance(severity, (int, np.integer)):
        raise DemHECError(f"severity must be an integer in 1..5, got {severity!r}")
    return int(check_choice("severity", int(severity), SEVERITIES))


def check_images(images: np.ndarray, suite: str, batch_only: bool = False) -> None:
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


def image_seed(seed: int, corruption: str, severity: int, index: int) -> int:
    """A 32-bit seed that depends only on (seed, corruption, severity, image index)."""
    entropy = [seed, zlib.crc32(corruption.encode()), severity, index]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint32)[0])


def child_seed(rs: np.random.RandomState) -> int:
    """A seed for helpers that take one (skimage rng, numba's RNG, the global numpy RNG)."""
    return int(rs.randint(2**31))


@contextlib.contextmanager
def seeded_global_numpy(seed: int) -> Iterator[None]:
    """Seed numpy's global RNG for third-party code that draws from it, then restore it."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def motion_blur(x: np.ndarray, radius: int, sigma: float, angle: float) -> np.ndarray:
    """imagecorruptions' ``_motion_blur`` (its numpy stand-in for ImageMagick's MotionBlurImage),
    the same arithmetic step for step, except that the Gaussian kernel and the direction are
    computed with Python's ``math`` (the C library) instead of numpy's float64 ``exp``.

    Why: numpy computes ``exp`` of a float64 array with its own AVX-512 code on CPUs that have it,
    and that code's last bit differs from the C library's for some inputs (exp(-1/8), in the
    kernel of sigma 2). A kernel that then sums to one ulp under 1 blurs a flat patch of grey
    level v to just under v, which truncates to v - 1: motion blur at severities 3 and 4 made
    different images on AVX-512 machines. Here every machine makes the same pixels, equal to the
    package's wherever numpy does not use AVX-512. ``x`` is H x W (x C); returns float64 values."""
    width = radius * 2 + 1
    # gauss_function(np.arange(width), 0, sigma) of the package, divided by its sum.
    kernel = np.array([math.exp(-(i * i) / (2 * (sigma**2))) for i in range(width)])
    kernel = kernel / (math.sqrt(2 * math.pi) * sigma)
    kernel = kernel / np.sum(kernel)
    rad = math.radians(angle)
    point = (width * math.sin(rad), width * math.cos(rad))
    hypot = math.hypot(point[0], point[1])
    blurred = np.zeros_like(x, dtype=np.float32)
    for i in range(width):
        dy = -math.ceil(((i * point[0]) / hypot) - 0.5)
        dx = -math.ceil(((i * point[1]) / hypot) - 0.5)
        if abs(dy) >= x.shape[0] or abs(dx) >= x.shape[1]:
            break  # the motion has left the image
        blurred = blurred + kernel[i] * shift(x, dx, dy)
    return blurred
