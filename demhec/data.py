"""Datasets of the paper (section 4.1, appendix A.2).

Two forms, one per use:

* :func:`get_dataset` returns a ``torch.utils.data.Dataset`` of (float 3xHxW image in [0,1],
  int label) with a ``.classes`` list: CIFAR-10/100 and ImageNette through torchvision,
  Tiny-ImageNet (ImageNet200) from its official archive, any ImageFolder (the paper's 5%
  class-balanced ImageNet subset via ``fraction``) and scikit-learn's bundled 8x8 digits, the
  one dataset that works offline.
* :func:`load_arrays` returns :class:`ImageArrays` (uint8 N x H x W x 3 numpy), the form the
  corruption builders (imagecorruptions works on uint8 HWC) and the fast training loops use
  (batched by :class:`demhec.batches.TensorBatches`).

:func:`cifar10_jpeg_split` builds the CPU-profile train/eval split from the JPEG mirror of the
CIFAR-10 training images; its provenance says so, because JPEG re-encoding changes the pixels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import datasets as tvd
from torchvision import transforms as T
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from tqdm import tqdm

from ._common import (
    DemHECError,
    atomic_write,
    check_choice,
    check_range,
    download_archive,
    download_failed,
    file_sha256,
    load_array,
    network_errors,
    safe_extract,
    words,
)

__all__ = [
    "CIFAR10_CLASSES",
    "DATASETS",
    "DATASETS_BY_PROFILE",
    "SPLITS",
    "ImageArrays",
    "cifar10_jpeg_split",
    "dataset_to_arrays",
    "get_dataset",
    "jpeg_source",
    "load_arrays",
    "load_named",
    "subset",
    "tinyimagenet_classes",
]

logger = logging.getLogger(__name__)

DATASETS = ("cifar10", "cifar100", "tinyimagenet", "imagenette", "imagefolder", "digits")
SPLITS = ("train", "test")

# Keyword options each dataset accepts besides (split, root, download).
_OPTIONS: dict[str, tuple[str, ...]] = {
    "cifar10": (),
    "cifar100": (),
    "tinyimagenet": ("image_size",),
    "imagenette": ("size", "image_size"),
    "imagefolder": ("fraction", "seed", "image_size"),
    "digits": (),
}

# CIFAR-10's label order (batches.meta of the official release); it is also alphabetical.
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

# Official Tiny-ImageNet archive (cs231n, Stanford) and its published md5.
TINYIMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINYIMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
_TINY_DIR = "tiny-imagenet-200"

# Folders torchvision.datasets.Imagenette extracts each size into (the archive stems).
IMAGENETTE_DIRS = {"full": "imagenette2", "320px": "imagenette2-320", "160px": "imagenette2-160"}

# Digits split: 80/20 stratified with a fixed seed, so "test" is the same 360 images everywhere.
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
DIGITS_SIZE = 32
_DIGITS_MAX = 16.0  # load_digits pixel values are counts 0..16

JPEG_MIRROR_SOURCE = "CIFAR-10 train images from a JPEG quality-75 mirror"


@dataclass(frozen=True)
class ImageArrays:
    """A small dataset held in memory: uint8 N x H x W x 3 images, int64 labels, class names.

    ``provenance`` (str -> str) travels into results so a number can be traced to its data.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    provenance: dict[str, str]

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise DemHECError(
                f"images must be uint8 N x H x W x 3, got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.dtype != np.int64 or self.labels.shape != (len(self.images),):
            raise DemHECError(
                f"labels must be int64 of shape ({len(self.images)},), "
                f"got {self.labels.dtype} {self.labels.shape}"
            )
        if len(self.labels) and not 0 <= self.labels.min() <= self.labels.max() < len(self.classes):
            raise DemHECError(f"labels must lie in [0, {len(self.classes)})")

    def __len__(self) -> int:
        return len(self.labels)


# --------------------------------------------------------------------------------------------
# Datasets


class _FileDataset(Dataset):
    """Images on disk as (path, label) pairs, decoded to RGB with PIL on access."""

    def __init__(
        self, samples: Sequence[tuple[str, int]], classes: list[str], transform: Callable
    ) -> None:
        self.samples = list(samples)
        self.classes = classes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        return self.transform(_load_rgb(path)), label


class _TensorDataset(Dataset):
    """Float images already in memory (the digits)."""

    def __init__(self, images: Tensor, labels: Tensor, classes: list[str]) -> None:
        self.images = images
        self.labels = labels
        self.classes = classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])


def _load_rgb(path: str | os.PathLike) -> Image.Image:
    # Tiny-ImageNet and ImageNet contain grayscale and CMYK JPEGs; everything becomes RGB.
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for a damaged image file
        raise DemHECError(f"cannot read image {path}: {exc}".splitlines()[0] + "; delete or "
                          "replace the file") from exc


def _to_uint8_hwc(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.uint8)


def _image_transform(image_size: int | None, as_array: bool) -> Callable:
    """PIL -> (resize + centre crop to a square) -> float CHW tensor, or uint8 HWC array."""
    steps: list[Callable] = []
    if image_size is not None:
        steps += [T.Resize(image_size), T.CenterCrop(image_size)]
    steps.append(_to_uint8_hwc if as_array else T.ToTensor())
    return T.Compose(steps)


def _missing(what: str, path: Path, hint: str) -> DemHECError:
    return DemHECError(f"{what} not found at {path}; {hint}")


def _download_hint(folder: str) -> str:
    return (
        f"pass {words('download=True', '--download')} to fetch it, or point "
        f"{words('root', '--data-root')} at a local copy (the folder that holds {folder}/)"
    )


def _check_options(name: str, kw: dict[str, Any]) -> None:
    allowed = _OPTIONS[name]
    for key in kw:
        if key not in allowed:
            valid = ", ".join(allowed) if allowed else "none"
            raise DemHECError(
                f"unknown option {key!r} for dataset {name!r}; valid options: {valid}"
            )
    if kw.get("image_size") is not None:
        check_range("image_size", kw["image_size"], 1, integer=True)


def _cifar(name: str, split: str, root: Path, download: bool, transform: Callable | None):
    cls, folder = (
        (tvd.CIFAR10, "cifar-10-batches-py")
        if name == "cifar10"
        else (tvd.CIFAR100, "cifar-100-python")
    )
    if not download and not (root / folder).is_dir():
        raise _missing(cls.__name__, root / folder, _download_hint(folder))
    try:
        return cls(str(root), train=split == "train", download=download, transform=transform)
    except network_errors() as e:
        raise download_failed(cls.url, e, root, cls.filename) from None
    except RuntimeError as e:
        raise DemHECError(f"{cls.__name__} at {root / folder}: {e}") from e


def _tiny_dir(root: Path) -> Path:
    return root if (root / "wnids.txt").is_file() else root / _TINY_DIR


def tinyimagenet_classes(root: str | os.PathLike = "data") -> list[str]:
    """The Tiny-ImageNet class order used everywhere: the 200 wnids, sorted.

    ``root`` is the folder holding ``tiny-imagenet-200/`` (or that folder itself). Tiny-ImageNet-C
    uses the same wnid folder names, so label indices agree between clean and corrupted sets.
    """
    wnids = _tiny_dir(Path(root)) / "wnids.txt"
    if not wnids.is_file():
        raise _missing("Tiny-ImageNet wnids.txt", wnids, _download_hint(_TINY_DIR))
    return sorted(line.strip() for line in wnids.read_text().splitlines() if line.strip())


def _tinyimagenet(split: str, root: Path, download: bool, transform: Callable) -> _FileDataset:
    """Tiny-ImageNet; split "test" is the official val set (its test set has no labels).

    Val images are read through ``val/val_annotations.txt`` rather than moved into class
    folders, so the extracted tree is never modified and loading is idempotent.
    """
    if download and not _tiny_dir(root).is_dir():
        download_archive(TINYIMAGENET_URL, root, TINYIMAGENET_MD5)
    base = _tiny_dir(root)
    if not base.is_dir():
        raise _missing("Tiny-ImageNet", root / _TINY_DIR, _download_hint(_TINY_DIR))
    classes = tinyimagenet_classes(base)
    index = {wnid: i for i, wnid in enumerate(classes)}
    samples: list[tuple[str, int]] = []
    if split == "train":
        for wnid in classes:
            folder = base / "train" / wnid / "images"
            if not folder.is_dir():
                raise _missing(
                    f"Tiny-ImageNet train class {wnid}", folder, _download_hint(_TINY_DIR)
                )
            samples += [(str(p), index[wnid]) for p in sorted(folder.glob("*.JPEG"))]
    else:
        annotations = base / "val" / "val_annotations.txt"
        if not annotations.is_file():
            raise _missing("Tiny-ImageNet val annotations", annotations, _download_hint(_TINY_DIR))
        for line in annotations.read_text().splitlines():
            if not line.strip():
                continue
            filename, wnid = line.split("\t")[:2]
            if wnid not in index:
                raise DemHECError(f"{annotations}: wnid {wnid!r} is not in wnids.txt")
            samples.append((str(base / "val" / "images" / filename), index[wnid]))
        samples.sort()
    return _FileDataset(samples, classes, transform)


class _Imagenette(Dataset):
    """torchvision's Imagenette with ``.classes`` as plain names (torchvision gives tuples)."""

    def __init__(self, inner: tvd.Imagenette) -> None:
        self.inner = inner
        self.classes = [names[0] for names in inner.classes]

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.inner[index]


def _imagenette(
    split: str, root: Path, download: bool, transform: Callable, size: str
) -> _Imagenette:
    check_choice("imagenette size", size, IMAGENETTE_DIRS)
    folder = IMAGENETTE_DIRS[size]
    if not download and not (root / folder).is_dir():
        raise _missing("Imagenette", root / folder, _download_hint(folder))
    # Imagenette publishes train/val only; its val set is the paper's test set (Table 6).
    split = "val" if split == "test" else split
    try:
        inner = tvd.Imagenette(
            str(root), split=split, size=size, download=download, transform=transform
        )
    except network_errors() as e:
        url = getattr(tvd.Imagenette, "_ARCHIVES", {}).get(size, (f"the Imagenette {size} archive",))[0]
        raise download_failed(url, e, root, url.rsplit("/", 1)[-1]) from None
    return _Imagenette(inner)


def _class_balanced_subset(
    samples: list[tuple[str, int]], fraction: float, seed: int
) -> list[tuple[str, int]]:
    """Keep ``fraction`` of every class (at least one image), chosen by a seeded generator.

    This is the paper's "5% class-balanced subset" of ImageNet (A.2): each class is thinned by
    the same factor, so the class proportions of the full set are kept.
    """
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i, (_, label) in enumerate(samples):
        by_class.setdefault(label, []).append(i)
    keep: list[int] = []
    for label in sorted(by_class):
        members = by_class[label]
        k = max(1, round(fraction * len(members)))
        keep += rng.choice(members, size=k, replace=False).tolist()
    return [samples[i] for i in sorted(keep)]


def _imagefolder(
    split: str,
    root: Path,
    transform: Callable,
    fraction: float,
    seed: int,
) -> _FileDataset:
    """Any folder of class sub-folders; ``root`` may instead hold ``train/`` and ``val/``/``test/``.

    With the flat layout the folder is used as given for either split.
    """
    if not root.is_dir():
        raise _missing(
            "image folder", root, "point root at a folder of class sub-folders (or one with train/)"
        )
    folder = root
    if (root / "train").is_dir():
        names = ("train",) if split == "train" else ("val", "test")
        found = [root / n for n in names if (root / n).is_dir()]
        if not found:
            raise _missing(
                f"{split} split folder", root / names[0], f"expected {' or '.join(names)}/"
            )
        folder = found[0]
    try:
        classes, class_to_idx = find_classes(str(folder))
        samples = make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as e:
        raise DemHECError(f"image folder {folder}: {e}") from e
    if fraction < 1:
        samples = _class_balanced_subset(samples, fraction, seed)
    return _FileDataset(samples, classes, transform)


def _digits_tensors(split: str) -> tuple[Tensor, Tensor, list[str]]:
    """sklearn's 8x8 digits as 3x32x32 floats in [0,1], with a fixed stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    train_idx, test_idx = train_test_split(
        np.arange(len(bunch.target)),
        test_size=DIGITS_TEST_FRACTION,
        random_state=DIGITS_SPLIT_SEED,
        stratify=bunch.target,
    )
    idx = np.sort(train_idx if split == "train" else test_idx)
    x = torch.from_numpy(bunch.images[idx] / _DIGITS_MAX).float().unsqueeze(1)
    x = F.interpolate(x, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False)
    x = x.clamp_(0, 1).repeat(1, 3, 1, 1)
    return x, torch.from_numpy(bunch.target[idx]).long(), [str(d) for d in range(10)]


def _build(
    name: str, split: str, root: str | os.PathLike, download: bool, as_array: bool, kw: dict
) -> Dataset:
    check_choice("dataset", name, DATASETS)
    check_choice("split", split, SPLITS)
    _check_options(name, kw)
    root = Path(root)
    transform = _image_transform(kw.get("image_size"), as_array)
    if name in ("cifar10", "cifar100"):
        return _cifar(name, split, root, download, transform)
    if name == "tinyimagenet":
        return _tinyimagenet(split, root, download, transform)
    if name == "imagenette":
        return _imagenette(split, root, download, transform, kw.get("size", "full"))
    if name == "imagefolder":
        fraction = check_range("fraction", kw.get("fraction", 1.0), 0, 1, low_open=True)
        seed = check_range("seed", kw.get("seed", 0), 0, integer=True)
        return _imagefolder(split, root, transform, fraction, seed)
    return _TensorDataset(*_digits_tensors(split))


def get_dataset(
    name: str,
    split: str = "train",
    root: str | os.PathLike = "data",
    download: bool = False,
    **kw: Any,
) -> Dataset:
    """A dataset of (float 3xHxW image in [0,1], int label) with a ``.classes`` list.

    ``root`` is the folder holding the extracted dataset (torchvision's convention); for
    "imagefolder" it is the folder of class sub-folders. Options: ``image_size`` (resize the
    short side + centre crop to a square; tinyimagenet, imagenette, imagefolder), ``size``
    (imagenette archive: "full", "320px", "160px"), ``fraction`` and ``seed`` (imagefolder's
    class-balanced subset, paper A.2). "digits" ignores root: it is bundled with scikit-learn.
    """
    return _build(name, split, root, download, as_array=False, kw=kw)


# --------------------------------------------------------------------------------------------
# Arrays


def _collect(
    ds: Dataset, n: int, to_uint8: Callable[[Any], np.ndarray], progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    images: np.ndarray | None = None
    labels = np.empty(n, dtype=np.int64)
    for i in tqdm(range(n), disable=not progress, desc="decoding"):
        x, y = ds[i]
        a = to_uint8(x)
        if images is None:
            images = np.empty((n, *a.shape), dtype=np.uint8)
        elif a.shape != images.shape[1:]:
            raise DemHECError(
                f"image {i} has shape {a.shape}, image 0 has {images.shape[1:]}; "
                "pass image_size to give all images one size"
            )
        images[i] = a
        labels[i] = y
    if images is None:
        raise DemHECError("the dataset is empty")
    return images, labels


def _float_chw_to_uint8_hwc(x: Tensor) -> np.ndarray:
    return (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def load_arrays(
    name: str,
    split: str = "train",
    root: str | os.PathLike = "data",
    download: bool = False,
    *,
    progress: bool = False,
    **kw: Any,
) -> ImageArrays:
    """A whole (small) dataset as uint8 arrays; same names and options as :func:`get_dataset`.

    CIFAR comes straight from torchvision's in-memory ``.data``; folder datasets are decoded
    with PIL once (all images must share one size, so pass ``image_size`` where they do not).
    """
    ds = _build(name, split, root, download, as_array=True, kw=kw)
    provenance = {"dataset": name, "split": split}
    provenance.update({k: str(v) for k, v in sorted(kw.items())})
    if name in ("cifar10", "cifar100"):
        images = np.ascontiguousarray(ds.data, dtype=np.uint8)
        labels = np.asarray(ds.targets, dtype=np.int64)
        provenance["source"] = f"torchvision {type(ds).__name__} at {Path(root)}"
    elif name == "digits":
        images = (ds.images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
        labels = ds.labels.numpy().astype(np.int64)
        provenance["source"] = (
            "scikit-learn load_digits, 8x8 /16 bilinearly upsampled to 32x32 x 3 channels, "
            f"stratified {1 - DIGITS_TEST_FRACTION:.0%}/{DIGITS_TEST_FRACTION:.0%} split "
            f"(seed {DIGITS_SPLIT_SEED})"
        )
    else:
        images, labels = _collect(ds, len(ds), np.asarray, progress)
        provenance["source"] = f"{name} images decoded with PIL from {Path(root)}"
    return ImageArrays(images, labels, list(ds.classes), provenance)


def dataset_to_arrays(
    ds: Dataset, limit: int | None = None, *, progress: bool = False
) -> ImageArrays:
    """Any (float 3xHxW tensor in [0,1], label) dataset as :class:`ImageArrays` (first ``limit``).

    Meant for small datasets: every image is read once into memory.
    """
    n = len(ds) if limit is None else min(len(ds), check_range("limit", limit, 1, integer=True))
    images, labels = _collect(ds, n, _float_chw_to_uint8_hwc, progress)
    classes = getattr(ds, "classes", None)
    classes = list(classes) if classes is not None else [str(c) for c in range(labels.max() + 1)]
    provenance = {"source": f"{type(ds).__name__} via dataset_to_arrays", "count": str(n)}
    return ImageArrays(images, labels, classes, provenance)


# --------------------------------------------------------------------------------------------
# CIFAR-10 JPEG mirror (CPU profile)


def _fingerprint(source: Path) -> str:
    """Identity of the source for the decode cache, from what it holds: an archive's bytes (a
    copy or a remount with a new modification time reuses the cache; an edited archive does not),
    or a folder's files with their sizes and modification times (an image replaced under the same
    name is decoded again)."""
    if source.is_file():
        return file_sha256(source)[:16]
    files = [[str(p.relative_to(source)), (st := p.stat()).st_size, st.st_mtime_ns]
             for p in sorted(source.rglob("*")) if p.is_file()]
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]


def _extract_once(archive: Path, target: Path) -> Path:
    """Extract ``archive`` into ``target`` unless already done; the rename makes it all-or-nothing."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        safe_extract(archive, tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            # Another process (a torchrun rank, a parallel run) finished the same extraction.
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _jpeg_class_root(folder: Path) -> Path:
    root = folder / "train" if (folder / "train").is_dir() else folder
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if tuple(classes) != CIFAR10_CLASSES:
        raise DemHECError(
            f"{root} must hold the CIFAR-10 class folders {', '.join(CIFAR10_CLASSES)}; "
            f"found {', '.join(classes) or 'none'}"
        )
    return root


def _decode_folder(root: Path, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    samples = [
        (p, label)
        for label, name in enumerate(CIFAR10_CLASSES)
        for p in sorted((root / name).iterdir())
        if p.suffix.lower() in (".jpg", ".jpeg", ".png")
    ]
    images = np.empty((len(samples), 32, 32, 3), dtype=np.uint8)
    labels = np.fromiter((label for _, label in samples), dtype=np.int64, count=len(samples))
    for i, (path, _) in enumerate(tqdm(samples, disable=not progress, desc="decoding")):
        a = _to_uint8_hwc(_load_rgb(path))
        if a.shape != (32, 32, 3):
            raise DemHECError(f"{path}: expected a 32x32 CIFAR image, got {a.shape[:2]}")
        images[i] = a
    return images, labels


def _cached_jpeg_arrays(
    source: Path, cache_dir: Path, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    fp = _fingerprint(source)
    images_path = cache_dir / f"cifar10-jpeg-{fp}-images.npy"
    labels_path = cache_dir / f"cifar10-jpeg-{fp}-labels.npy"
    done_path = cache_dir / f"cifar10-jpeg-{fp}.json"
    if done_path.is_file():
        logger.info("loading decoded CIFAR-10 JPEG images from %s", images_path)
        return load_array(images_path, "decoded image cache"), load_array(labels_path, "decoded label cache")
    folder = source if source.is_dir() else _extract_once(source, cache_dir / f"extracted-{fp}")
    logger.info("decoding CIFAR-10 JPEG images from %s (once)", folder)
    images, labels = _decode_folder(_jpeg_class_root(folder), progress)
    for path, array in ((images_path, images), (labels_path, labels)):
        with atomic_write(path, "wb") as f:
            np.save(f, array)
    # Written last: its presence means both arrays are complete.
    with atomic_write(done_path, "w") as f:
        json.dump({"source": str(source), "count": len(labels)}, f)
    return images, labels


def cifar10_jpeg_split(
    source: str | os.PathLike,
    cache_dir: str | os.PathLike,
    eval_per_class: int = 500,
    split_seed: int = 0,
    *,
    progress: bool = False,
) -> tuple[ImageArrays, ImageArrays]:
    """(train, eval) split of the CIFAR-10 training images from the JPEG quality-75 mirror.

    ``source`` is the ``.tar.gz`` holding ``train/<class>/*.jpg`` (extracted into ``cache_dir``
    once) or an extracted folder. All images are decoded once and cached as uint8 ``.npy``.
    ``eval_per_class`` images of every class, chosen with ``split_seed``, form the eval set; the
    rest is the train set. Provenance records the mirror, since JPEG changes the pixels.
    """
    source = Path(source)
    if not source.exists():
        raise _missing(
            "CIFAR-10 JPEG mirror", source,
            f"{words('pass', 'give --data-root')} the .tar.gz or a folder of train/<class>/*.jpg",
        )
    check_range("split_seed", split_seed, 0, integer=True)
    check_range("eval_per_class", eval_per_class, 1, integer=True)
    images, labels = _cached_jpeg_arrays(source, Path(cache_dir), progress)
    counts = np.bincount(labels, minlength=len(CIFAR10_CLASSES))
    if eval_per_class >= counts.min():
        raise DemHECError(
            f"eval_per_class must be < {counts.min()} (the smallest class), got {eval_per_class}"
        )
    rng = np.random.default_rng(split_seed)
    is_eval = np.zeros(len(labels), dtype=bool)
    for c in range(len(CIFAR10_CLASSES)):
        members = np.flatnonzero(labels == c)
        is_eval[rng.choice(members, size=eval_per_class, replace=False)] = True
    base = {
        "dataset": "cifar10",
        "source": f"{JPEG_MIRROR_SOURCE} ({source})",
        "split_seed": str(split_seed),
        "eval_per_class": str(eval_per_class),
    }
    classes = list(CIFAR10_CLASSES)
    return (
        ImageArrays(images[~is_eval], labels[~is_eval], classes, {**base, "split": "train"}),
        ImageArrays(images[is_eval], labels[is_eval], classes, {**base, "split": "eval"}),
    )


# --- datasets by name, as the profiles and the command line use them ------------------------

# Every dataset a profile or ``demhec`` names: the loaders above, and the CPU profile's split of
# the CIFAR-10 JPEG mirror.
DATASETS_BY_PROFILE = (
    "cifar10", "cifar100", "tinyimagenet", "imagenette", "digits", "cifar10_jpeg", "imagefolder",
)
_REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JPEG_ARCHIVE = _REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg-train.tar.gz"


def subset(arrays: ImageArrays, limit: int | None, seed: int) -> ImageArrays:
    """``limit`` images of ``arrays`` drawn without replacement with ``seed``, in their order
    (all of them when ``limit`` is None or not smaller), the draw named in the provenance."""
    if limit is None or limit >= len(arrays):
        return arrays
    idx = np.sort(np.random.default_rng(seed).choice(len(arrays), size=limit, replace=False))
    prov = {**arrays.provenance, "subset": f"{limit} images (seed {seed})"}
    return dataclasses.replace(
        arrays, images=arrays.images[idx], labels=arrays.labels[idx], provenance=prov
    )


def jpeg_source(data_root: str | os.PathLike) -> Path:
    """Where the ``cifar10_jpeg`` images are read from: ``data_root`` unless it is the default
    (``data``, relative or as the notebooks resolve it), which means the archive beside the
    checkout."""
    if str(data_root) in ("", "data") or Path(data_root) == _REPO_ROOT / "data":
        return DEFAULT_JPEG_ARCHIVE
    return Path(data_root)


def load_named(name: str, split: str, data_root: str | os.PathLike = "data", *,
               download: bool = False, cache_dir: str | os.PathLike = "results/cache",
               progress: bool = False, eval_per_class: int = 500) -> ImageArrays:
    """Any dataset of :data:`DATASETS_BY_PROFILE`, by name, as :class:`ImageArrays`.

    ``cifar10_jpeg`` is the CPU profile's split of the CIFAR-10 JPEG mirror: ``data_root`` is
    the archive or its extracted folder (default: ``../shared/data`` beside the checkout), and
    ``eval_per_class`` images of each class are held out for evaluation.
    """
    check_choice("dataset", name, DATASETS_BY_PROFILE)
    check_choice("split", split, SPLITS)
    if name == "cifar10_jpeg":
        source = jpeg_source(data_root)
        train, held_out = cifar10_jpeg_split(source, Path(cache_dir) / "jpeg",
                                             eval_per_class=eval_per_class, split_seed=0,
                                             progress=progress)
        arrays = train if split == "train" else held_out
        named = {"source": f"{JPEG_MIRROR_SOURCE} ({source.name})"}
        return dataclasses.replace(arrays, provenance={**arrays.provenance, **named})
    kw: dict[str, Any] = {"size": "320px", "image_size": 224} if name == "imagenette" else {}
    arrays = load_arrays(name, split, data_root, download, progress=progress, **kw)
    # Results must not hold absolute paths of this machine.
    prov = {k: v.replace(str(Path(data_root).resolve()), "<data_root>").replace(str(data_root), "<data_root>")
            for k, v in arrays.provenance.items()}
    return dataclasses.replace(arrays, provenance=prov)
