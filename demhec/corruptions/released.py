"""The released benchmark files: CIFAR-10-C / CIFAR-100-C ``.npy`` stacks and the Tiny-ImageNet-C
JPEG tree (Hendrycks & Dietterich 2019, Zenodo), read from disk and downloaded with checksums; the
suites ``cifar10-c``, ``cifar100-c`` and ``tinyimagenet-c`` (:func:`released_split`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .._common import DemHECError, check_choice, download_archive, load_array
from .common import CORRUPTIONS, RELEASED_SUITES, SEVERITIES, check_corruption, check_severity

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
# Official benchmark files
# --------------------------------------------------------------------------------------------


def _download_hint(function: str) -> str:
    from .._common import words

    return words(f"download it with demhec.corruptions.{function}(root)",
                 "pass --download to fetch it, or point --data-root at a local copy")


def _cifar_c_folder(root: Path, archive: Archive, corruption: str) -> Path:
    for folder in (root / archive.folder, root):
        if (folder / f"{corruption}.npy").is_file():
            return folder
    raise DemHECError(f"{archive.folder} file {corruption}.npy not found under {root}; "
                      + _download_hint("download_cifar_c"))


def _cifar_c_rows(root: str | os.PathLike, corruption: str, severity: int,
                  dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """One severity of a released CIFAR-10-C / CIFAR-100-C corruption as read-only memory maps:
    uint8 N x H x W x 3 images and their labels."""
    archive = CIFAR_C_ARCHIVES[check_choice("dataset", dataset, CIFAR_C_ARCHIVES)]
    check_corruption(corruption)
    severity = check_severity(severity)
    folder = _cifar_c_folder(Path(root), archive, corruption)
    labels_path = folder / "labels.npy"
    if not labels_path.is_file():
        raise DemHECError(f"{labels_path} not found; " + _download_hint("download_cifar_c"))
    data = load_array(folder / f"{corruption}.npy", f"{archive.folder} file", mmap=True)
    labels = load_array(labels_path, f"{archive.folder} labels file", mmap=True)
    if data.ndim != 4 or data.shape[-1] != 3 or data.dtype != np.uint8 or len(data) % len(SEVERITIES):
        raise DemHECError(f"{folder / corruption}.npy has shape {data.shape} ({data.dtype}); expected "
                          "uint8 (5 * n, H, W, 3) with the five severities stacked")
    n = len(data) // len(SEVERITIES)
    if len(labels) not in (n, len(data)):
        raise DemHECError(f"{labels_path} has {len(labels)} labels for {len(data)} images")
    rows = slice((severity - 1) * n, severity * n)
    return data[rows], labels[rows] if len(labels) == len(data) else labels


def load_cifar_c(root: str | os.PathLike, corruption: str, severity: int,
                 dataset: str = "cifar10") -> tuple[torch.Tensor, torch.Tensor]:
    """Read one severity of a released CIFAR-10-C / CIFAR-100-C corruption (paper Tables 1, 5).

    ``root`` holds the extracted ``CIFAR-10-C`` (``CIFAR-100-C``) folder or is that folder. Each
    ``<corruption>.npy`` stacks the test set at severities 1..5 (rows ``(s-1)*n:s*n``, n = 10000);
    only that slice is read (memory map). Returns float images in [0, 1], N x 3 x 32 x 32, and
    int64 labels.
    """
    data, labels = _cifar_c_rows(root, corruption, severity, dataset)
    images = torch.from_numpy(np.array(data, dtype=np.uint8))
    targets = torch.from_numpy(np.array(labels, dtype=np.int64))
    return images.permute(0, 3, 1, 2).float().div_(255).contiguous(), targets


def released_available(suite: str, root: str | os.PathLike) -> bool:
    """Whether the released files of ``suite`` are under ``root`` (extracted)."""
    root = Path(root)
    if RELEASED_SUITES[check_choice("released suite", suite, RELEASED_SUITES)] == "tinyimagenet":
        return any((b / c).is_dir() for b in (root / TINY_IMAGENET_C_ARCHIVE.folder, root) for c in CORRUPTIONS)
    archive = CIFAR_C_ARCHIVES[RELEASED_SUITES[suite]]
    return any((b / "labels.npy").is_file() for b in (root / archive.folder, root))


def released_split(suite: str, root: str | os.PathLike | None, corruption: str, severity: int, *,
                   download: bool = False, classes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One (corruption, severity) set of a released suite (``cifar10-c``, ``cifar100-c``,
    ``tinyimagenet-c``) under ``root``, downloaded (checksummed) first with ``download``: uint8
    N x H x W x 3 images (a read-only memory map for the CIFAR files) and int64 labels
    (Tiny-ImageNet-C: indices into ``classes``, the clean loader's class list)."""
    dataset = RELEASED_SUITES[check_choice("suite", suite, RELEASED_SUITES)]
    check_corruption(corruption, suite)
    if root is None:
        from .._common import words

        raise DemHECError(f"suite {suite!r} reads the released files: give the folder that holds them "
                          f"({words('data_root', '--data-root')})")
    if download and not released_available(suite, root):
        if dataset == "tinyimagenet":
            download_tiny_imagenet_c(root)
        else:
            download_cifar_c(root, dataset)
    if dataset != "tinyimagenet":
        images, labels = _cifar_c_rows(root, corruption, severity, dataset)
        return images, np.array(labels, dtype=np.int64)  # a copy: labels are small, and writable
    folder = load_tiny_imagenet_c(root, corruption, severity, classes)
    images = np.stack([_read_uint8(path) for path, _ in folder.samples])
    return images, np.asarray(folder.targets, dtype=np.int64)


def _read_uint8(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image.convert("RGB"), dtype=np.uint8)


def download_cifar_c(root: str | os.PathLike, dataset: str = "cifar10") -> Path:
    """Download and extract the CIFAR-10-C / CIFAR-100-C archive (MD5-checked) under ``root``."""
    archive = CIFAR_C_ARCHIVES[check_choice("dataset", dataset, CIFAR_C_ARCHIVES)]
    folder = Path(root) / archive.folder
    if (folder / "labels.npy").is_file():
        return folder
    download_archive(archive.url, root, archive.md5)
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
        return torch.from_numpy(_read_uint8(path)).permute(2, 0, 1).float().div_(255), label


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
    download_archive(TINY_IMAGENET_C_ARCHIVE.url, root, md5)
    return folder
