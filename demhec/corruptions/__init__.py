"""Common corruptions (paper Sec. 2.1 and A.1): synthesis, official benchmark files, a disk cache.

Two *suites* generate the 15 benchmark corruptions of Hendrycks & Dietterich (2019) plus their four
extra (validation) corruptions, at severities 1..5:

* ``"cifar-c"`` (:mod:`.cifar_c`): the constants of the official CIFAR-10-C generator for 32 x 32
  images (``ImageNet-C/create_c/make_cifar_c.py`` in github.com/hendrycks/robustness). These are
  much milder than the ImageNet-C constants (e.g. Gaussian sigma 0.04..0.10 instead of 0.08..0.38)
  and are what the paper's CIFAR10-C / CIFAR100-C numbers (Tables 1, 4, 5) refer to.
* ``"imagecorruptions"`` (:mod:`.imagenet_c`): the paper's stated tool (footnote 1,
  github.com/bethgelab/imagecorruptions), i.e. the ImageNet-C constants, usable at any resolution
  >= 32 px.

:mod:`.engine` corrupts images and whole splits (worker processes, verified disk cache);
:mod:`.released` reads the released CIFAR-10-C / CIFAR-100-C ``.npy`` files and the
Tiny-ImageNet-C JPEG tree, which the paper evaluates on: the suites ``"cifar10-c"``,
``"cifar100-c"`` and ``"tinyimagenet-c"``. :func:`corrupted_sets` serves every suite alike. :mod:`.common` holds the name tables.

Every random draw is seeded from (seed, corruption, severity, image index) only, so an image's
corruption never depends on batching, chunking or the number of worker processes.
"""

from __future__ import annotations

from .cifar_c import CIFAR_C_PARAMS
from .common import (
    ALL_CORRUPTIONS,
    ALL_SUITES,
    CIFAR_C_SIZE,
    CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    FAMILIES,
    PAPER_CORRUPTIONS,
    PAPER_SEVERITIES,
    RELEASED_SUITES,
    SEVERITIES,
    SUITES,
    check_corruption,
    check_severity,
)
from .engine import corrupt, corrupt_split, corrupted_sets, corruption_grid, images_key
from .imagenet_c import IMAGECORRUPTIONS_FROST
from .released import (
    CIFAR_C_ARCHIVES,
    TINY_IMAGENET_C_ARCHIVE,
    CorruptedImageFolder,
    download_cifar_c,
    download_tiny_imagenet_c,
    load_cifar_c,
    load_tiny_imagenet_c,
    released_available,
    released_split,
)

__all__ = [
    "ALL_CORRUPTIONS",
    "ALL_SUITES",
    "CIFAR_C_ARCHIVES",
    "CIFAR_C_PARAMS",
    "CIFAR_C_SIZE",
    "CORRUPTIONS",
    "CorruptedImageFolder",
    "EXTRA_CORRUPTIONS",
    "FAMILIES",
    "IMAGECORRUPTIONS_FROST",
    "PAPER_CORRUPTIONS",
    "PAPER_SEVERITIES",
    "RELEASED_SUITES",
    "SEVERITIES",
    "SUITES",
    "TINY_IMAGENET_C_ARCHIVE",
    "check_corruption",
    "check_severity",
    "corrupt",
    "corrupt_split",
    "corrupted_sets",
    "corruption_grid",
    "download_cifar_c",
    "download_tiny_imagenet_c",
    "images_key",
    "load_cifar_c",
    "load_tiny_imagenet_c",
    "released_available",
    "released_split",
]
