"""Dataset loaders on miniature copies of the real on-disk layouts, and TensorBatches."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from demhec import data
from demhec._common import DemHECError
from demhec.batches import TensorBatches, random_crop_flip
from demhec.data import (
    CIFAR10_CLASSES,
    DATASETS,
    ImageArrays,
    cifar10_jpeg_split,
    dataset_to_arrays,
    get_dataset,
    load_arrays,
    tinyimagenet_classes,
)

# ------------------------------------------------------------------------------------ helpers


def _flat_image(value: int, size: int = 32) -> Image.Image:
    # A flat grey survives JPEG almost exactly, so the decoded mean identifies the image.
    return Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8))


def _image_id(img: np.ndarray) -> int:
    return round((float(img.mean()) - 20) / 4)


def _write_jpeg(path: Path, value: int, size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _flat_image(value, size).save(path, quality=95)


def _pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))


@pytest.fixture
def no_md5(monkeypatch):
    """Skip torchvision's md5 check of the (miniature) CIFAR files; nothing else changes."""
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)


def _cifar_rows(labels: list[int]) -> np.ndarray:
    # Row i is a flat image of value 10*i, stored channel-planar as in the pickled batches.
    return np.stack([np.full(3 * 32 * 32, 10 * i, dtype=np.uint8) for i in range(len(labels))])


# ------------------------------------------------------------------------------------ names


@pytest.mark.parametrize("name", [n for n in DATASETS if n != "digits"])  # digits: no root
def test_missing_root_names_path_and_download(tmp_path, name):
    missing = tmp_path / "nowhere"
    with pytest.raises(DemHECError, match="nowhere") as err:
        get_dataset(name, root=missing)
    if name != "imagefolder":
        assert "download=True" in str(err.value)


def test_bad_name_split_and_option_list_valid_values():
    with pytest.raises(DemHECError, match="cifar10, cifar100, tinyimagenet"):
        get_dataset("mnist")
    with pytest.raises(DemHECError, match="train, test"):
        get_dataset("digits", split="validation")
    with pytest.raises(DemHECError, match="valid options: none"):
        get_dataset("digits", image_size=32)
    with pytest.raises(DemHECError, match="full, 320px, 160px"):
        get_dataset("imagenette", size="80px", download=False)
    with pytest.raises(DemHECError, match="valid augments: none, crop_flip"):
        TensorBatches(np.zeros((2, 4, 4, 3), np.uint8), [0, 1], augment="cutout")


# ------------------------------------------------------------------------------------ CIFAR


def test_cifar10_torchvision_layout(tmp_path, no_md5):
    base = tmp_path / "cifar-10-batches-py"
    for b in range(1, 6):
        labels = [b % 10, (b + 1) % 10]
        _pickle(base / f"data_batch_{b}", {"data": _cifar_rows(labels), "labels": labels})
    _pickle(base / "test_batch", {"data": _cifar_rows([3, 7, 9]), "labels": [3, 7, 9]})
    _pickle(base / "batches.meta", {"label_names": list(CIFAR10_CLASSES)})

    train = get_dataset("cifar10", "train", root=tmp_path)
    test = get_dataset("cifar10", "test", root=tmp_path)
    assert (len(train), len(test)) == (10, 3)
    assert train.classes == list(CIFAR10_CLASSES)
    x, y = test[1]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 7
    assert torch.allclose(x, torch.full_like(x, 10 / 255))

    arrays = load_arrays("cifar10", "test", root=tmp_path)
    assert arrays.images.shape == (3, 32, 32, 3) and arrays.images.dtype == np.uint8
    assert arrays.labels.tolist() == [3, 7, 9]
    assert arrays.images[2].max() == 20
    assert arrays.provenance["dataset"] == "cifar10" and arrays.provenance["split"] == "test"


def test_cifar100_torchvision_layout(tmp_path, no_md5):
    base = tmp_path / "cifar-100-python"
    names = [f"class{i:02d}" for i in range(100)]
    _pickle(base / "train", {"data": _cifar_rows([5, 99]), "fine_labels": [5, 99]})
    _pickle(base / "test", {"data": _cifar_rows([42]), "fine_labels": [42]})
    _pickle(base / "meta", {"fine_label_names": names})

    train = get_dataset("cifar100", "train", root=tmp_path)
    assert len(train) == 2 and train.classes == names and train[1][1] == 99
    arrays = load_arrays("cifar100", "test", root=tmp_path)
    assert arrays.labels.tolist() == [42] and len(arrays.classes) == 100


def test_cifar_root_without_dataset_folder_explains(tmp_path):
    with pytest.raises(DemHECError, match="cifar-10-batches-py"):
        get_dataset("cifar10", root=tmp_path)


# ------------------------------------------------------------------------------------ Tiny-ImageNet


WNIDS = ["n09999999", "n01443537", "n02000000"]  # deliberately unsorted, as in the real file


@pytest.fixture
def tiny_root(tmp_path) -> Path:
    base = tmp_path / "tiny-imagenet-200"
    base.mkdir()
    (base / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    for w, wnid in enumerate(WNIDS):
        for i in range(2):
            _write_jpeg(base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", 40 + 60 * w, 64)
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    # val image k belongs to WNIDS[k % 3]; its grey level encodes that wnid.
    lines = []
    for k in range(6):
        wnid = WNIDS[k % 3]
        _write_jpeg(base / "val" / "images" / f"val_{k}.JPEG", 40 + 60 * WNIDS.index(wnid), 64)
        lines.append(f"val_{k}.JPEG\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_tinyimagenet_class_order_and_val_labels(tiny_root):
    classes = tinyimagenet_classes(tiny_root)
    assert classes == sorted(WNIDS)
    assert tinyimagenet_classes(tiny_root / "tiny-imagenet-200") == classes

    train = get_dataset("tinyimagenet", "train", root=tiny_root)
    test = get_dataset("tinyimagenet", "test", root=tiny_root)
    assert train.classes == test.classes == classes
    assert (len(train), len(test)) == (6, 6)
    for ds in (train, test):
        for k in range(len(ds)):
            x, y = ds[k]
            assert x.shape == (3, 64, 64)
            grey = round(float(x.mean()) * 255)
            assert abs(grey - (40 + 60 * WNIDS.index(classes[y]))) <= 3

    arrays = load_arrays("tinyimagenet", "test", root=tiny_root)
    assert arrays.images.shape == (6, 64, 64, 3)
    assert np.bincount(arrays.labels).tolist() == [2, 2, 2]
    # Loading twice reads the same tree the same way (annotations, no re-organising).
    assert load_arrays("tinyimagenet", "test", root=tiny_root).labels.tolist() == (
        arrays.labels.tolist()
    )
    resized = get_dataset("tinyimagenet", "test", root=tiny_root, image_size=32)
    assert resized[0][0].shape == (3, 32, 32)


def test_tinyimagenet_unknown_wnid_in_annotations(tiny_root):
    ann = tiny_root / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_9.JPEG\tn00000001\t0\t0\t1\t1\n")
    with pytest.raises(DemHECError, match="n00000001"):
        get_dataset("tinyimagenet", "test", root=tiny_root)


# ------------------------------------------------------------------------------------ Imagenette


def test_imagenette_torchvision_layout(tmp_path):
    wnids = ["n01440764", "n03888257"]  # tench, parachute
    for split, count in (("train", 3), ("val", 2)):
        for w, wnid in enumerate(wnids):
            for i in range(count):
                size = 40 + 8 * i  # Imagenette images differ in size
                path = tmp_path / "imagenette2-160" / split / wnid / f"{wnid}_{i}.JPEG"
                _write_jpeg(path, 60 + 100 * w, size)

    ds = get_dataset("imagenette", "test", root=tmp_path, size="160px", image_size=24)
    assert len(ds) == 4 and ds.classes == ["tench", "parachute"]
    x, y = ds[3]
    assert x.shape == (3, 24, 24) and y == 1
    arrays = load_arrays("imagenette", "train", root=tmp_path, size="160px", image_size=24)
    assert arrays.images.shape == (6, 24, 24, 3)
    assert arrays.labels.tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(DemHECError, match="image_size"):
        load_arrays("imagenette", "train", root=tmp_path, size="160px")
    with pytest.raises(DemHECError, match="imagenette2-320"):
        get_dataset("imagenette", root=tmp_path, size="320px")


# ------------------------------------------------------------------------------------ ImageFolder


@pytest.fixture
def folder_root(tmp_path) -> Path:
    for c, name in enumerate(["cat", "dog", "emu"]):
        for i in range(10):
            _write_jpeg(tmp_path / "train" / name / f"{i:03d}.jpg", 20 + 4 * (10 * c + i), 16)
        _write_jpeg(tmp_path / "val" / name / "x.png", 20 + 4 * c, 16)
    return tmp_path


def test_imagefolder_layouts(folder_root):
    train = get_dataset("imagefolder", "train", root=folder_root)
    val = get_dataset("imagefolder", "test", root=folder_root)
    flat = get_dataset("imagefolder", root=folder_root / "train")
    assert train.classes == val.classes == flat.classes == ["cat", "dog", "emu"]
    assert (len(train), len(val), len(flat)) == (30, 3, 30)
    assert val[2][1] == 2


def test_imagefolder_fraction_is_class_balanced_and_seeded(folder_root):
    def ids(**kw):
        arrays = load_arrays("imagefolder", "train", root=folder_root, fraction=0.3, **kw)
        assert np.bincount(arrays.labels).tolist() == [3, 3, 3]
        for img, label in zip(arrays.images, arrays.labels):
            assert _image_id(img) // 10 == label
        return sorted(_image_id(img) for img in arrays.images)

    assert ids(seed=0) == ids(seed=0)
    assert ids(seed=0) != ids(seed=1)
    with pytest.raises(DemHECError, match="fraction"):
        get_dataset("imagefolder", root=folder_root, fraction=0.0)


# ------------------------------------------------------------------------------------ digits


def test_digits_offline_deterministic_split():
    train = get_dataset("digits", "train")
    test = get_dataset("digits", "test")
    assert train.classes == [str(d) for d in range(10)]
    assert len(train) + len(test) == 1797 and len(test) == 360
    x, y = test[0]
    assert x.shape == (3, 32, 32) and 0 <= x.min() and x.max() <= 1 and x.max() > 0.9
    assert torch.equal(x[0], x[2]) and isinstance(y, int)
    counts = torch.bincount(test.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~36 per class
    assert torch.equal(get_dataset("digits", "test").images, test.images)
    # No test image also appears in train.
    flat_train = {tuple(t.flatten().tolist()) for t in train.images[:, 0, ::4, ::4]}
    assert not any(tuple(t.flatten().tolist()) in flat_train for t in test.images[:, 0, ::4, ::4])

    arrays = load_arrays("digits", "test")
    assert arrays.images.shape == (360, 32, 32, 3) and arrays.images.dtype == np.uint8
    assert np.array_equal(arrays.labels, test.labels.numpy())


def test_dataset_to_arrays_roundtrip():
    ds = get_dataset("digits", "test")
    arrays = dataset_to_arrays(ds, limit=7)
    assert arrays.images.shape == (7, 32, 32, 3) and arrays.classes == ds.classes
    back = torch.from_numpy(arrays.images[3]).permute(2, 0, 1).float() / 255
    assert torch.allclose(back, ds[3][0], atol=0.5 / 255 + 1e-6)
    assert arrays.labels.tolist() == ds.labels[:7].tolist()


def test_image_arrays_validates():
    with pytest.raises(DemHECError, match="uint8"):
        ImageArrays(np.zeros((2, 4, 4, 3), np.float32), np.zeros(2, np.int64), ["a"], {})
    with pytest.raises(DemHECError, match="labels"):
        ImageArrays(np.zeros((2, 4, 4, 3), np.uint8), np.array([0, 3]), ["a", "b"], {})


# ------------------------------------------------------------------------------------ JPEG split


PER_CLASS = 5


@pytest.fixture
def jpeg_tar(tmp_path) -> Path:
    """Miniature of the CIFAR-10 JPEG mirror: train/<class>/NNNN.jpg, 5 images a class."""
    path = tmp_path / "mini-cifar10-jpeg.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for c, name in enumerate(CIFAR10_CLASSES):
            for i in range(PER_CLASS):
                buf = io.BytesIO()
                _flat_image(20 + 4 * (PER_CLASS * c + i)).save(buf, "JPEG", quality=75)
                info = tarfile.TarInfo(f"train/{name}/{i:04d}.jpg")
                info.size = buf.tell()
                buf.seek(0)
                tar.addfile(info, buf)
    return path


def test_cifar10_jpeg_split(jpeg_tar, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    train, ev = cifar10_jpeg_split(jpeg_tar, cache, eval_per_class=2, split_seed=3)
    assert train.classes == ev.classes == list(CIFAR10_CLASSES)
    assert train.images.shape == (30, 32, 32, 3) and ev.images.shape == (20, 32, 32, 3)
    assert np.bincount(ev.labels).tolist() == [2] * 10
    assert np.bincount(train.labels).tolist() == [3] * 10
    train_ids = {_image_id(i) for i in train.images}
    eval_ids = {_image_id(i) for i in ev.images}
    assert not train_ids & eval_ids and train_ids | eval_ids == set(range(50))
    for arrays in (train, ev):  # labels follow the class folders
        assert all(_image_id(i) // PER_CLASS == y for i, y in zip(arrays.images, arrays.labels))
    assert "JPEG quality-75 mirror" in ev.provenance["source"]
    assert ev.provenance["split_seed"] == "3" and ev.provenance["eval_per_class"] == "2"
    assert (
        cache / next(p.name for p in cache.iterdir() if p.name.startswith("extracted-"))
    ).is_dir()

    # The second call reads the .npy cache: decoding and extraction must not run again.
    def boom(*a, **k):
        raise AssertionError("cache not used")

    monkeypatch.setattr(data, "_load_rgb", boom)
    monkeypatch.setattr(data, "_extract_once", boom)
    train2, ev2 = cifar10_jpeg_split(jpeg_tar, cache, eval_per_class=2, split_seed=3)
    assert np.array_equal(train2.images, train.images) and np.array_equal(ev2.labels, ev.labels)
    other = cifar10_jpeg_split(jpeg_tar, cache, eval_per_class=2, split_seed=4)[1]
    assert {_image_id(i) for i in other.images} != eval_ids


def test_the_decode_cache_follows_the_images_not_the_path_or_the_clock(jpeg_tar, tmp_path, monkeypatch):
    """A copy of the archive elsewhere, with a new modification time, reads the decoded cache; an
    archive with other bytes, or a folder image replaced under the same name, is decoded again."""
    cache = tmp_path / "cache"
    first = cifar10_jpeg_split(jpeg_tar, cache, eval_per_class=2)[0]
    copy = tmp_path / "elsewhere" / "cifar10-jpeg-train.tar.gz"
    copy.parent.mkdir()
    shutil.copy(jpeg_tar, copy)
    os.utime(copy, ns=(1, 1))
    decoded = []
    real_load = data._load_rgb
    monkeypatch.setattr(data, "_load_rgb", lambda p: decoded.append(p) or real_load(p))
    assert np.array_equal(cifar10_jpeg_split(copy, cache, eval_per_class=2)[0].images, first.images)
    assert not decoded
    with tarfile.open(jpeg_tar) as tar:  # the same images, packed again: other bytes
        tar.extractall(tmp_path / "folder", filter="data")
    repacked = tmp_path / "repacked.tar.gz"
    with tarfile.open(repacked, "w:gz") as tar:
        tar.add(tmp_path / "folder" / "train", arcname="train")
    cifar10_jpeg_split(repacked, cache, eval_per_class=2)
    assert len(decoded) == 50
    folder = tmp_path / "folder"
    cifar10_jpeg_split(folder, cache, eval_per_class=2)
    decoded.clear()
    cifar10_jpeg_split(folder, cache, eval_per_class=2)
    assert not decoded  # unchanged folder: cached
    cat = folder / "train" / "cat" / "0000.jpg"
    _flat_image(20 + 4 * 55).save(cat, "JPEG", quality=75)  # image id 55
    os.utime(cat, ns=(cat.stat().st_mtime_ns + 10**9,) * 2)
    train, ev = cifar10_jpeg_split(folder, cache, eval_per_class=2)
    assert len(decoded) == 50 and 55 in {_image_id(i) for i in (*train.images, *ev.images)}


def test_extraction_finished_by_another_process(jpeg_tar, tmp_path, monkeypatch):
    """Two processes (torchrun ranks, parallel runs) extracting the same archive: the one that
    finishes second keeps the other's folder instead of failing on the rename."""
    target = tmp_path / "extracted-x"
    real_replace = os.replace

    def replace_after_the_other(src, dst):
        if Path(dst) == target:
            shutil.copytree(src, target)
        return real_replace(src, dst)

    monkeypatch.setattr(data.os, "replace", replace_after_the_other)
    assert data._extract_once(jpeg_tar, target) == target
    assert len(list((target / "train" / "cat").iterdir())) == PER_CLASS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["extracted-x", "mini-cifar10-jpeg.tar.gz"]


def test_cifar10_jpeg_split_from_folder_and_errors(jpeg_tar, tmp_path):
    folder = tmp_path / "extracted"
    with tarfile.open(jpeg_tar) as tar:
        tar.extractall(folder, filter="data")
    train, ev = cifar10_jpeg_split(folder, tmp_path / "c2", eval_per_class=1)
    assert len(train) == 40 and len(ev) == 10
    with pytest.raises(DemHECError, match="eval_per_class"):
        cifar10_jpeg_split(folder, tmp_path / "c2", eval_per_class=PER_CLASS)
    (folder / "train" / "cat").rename(folder / "train" / "kitten")
    with pytest.raises(DemHECError, match="airplane, automobile"):
        cifar10_jpeg_split(folder, tmp_path / "c3")
    with pytest.raises(DemHECError, match="missing.tar.gz"):
        cifar10_jpeg_split(tmp_path / "missing.tar.gz", tmp_path / "c4")


# ------------------------------------------------------------------------------------ batching


def _batches(n=37, **kw):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)
    return TensorBatches(images, np.arange(n) % 5, **kw), images


def test_tensor_batches_reproducible_and_resumable():
    tb, _ = _batches(batch_size=8, augment="crop_flip", seed=7)
    assert len(tb) == 5
    first = list(tb.epoch(2))
    again = list(tb.epoch(2))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    tail = list(tb.epoch(2, skip=3))
    assert len(tail) == 2
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(tail, first[3:]))
    assert list(tb.epoch(2, skip=5)) == []
    other = list(tb.epoch(3))
    assert not torch.equal(torch.cat([b[1] for b in first]), torch.cat([b[1] for b in other]))
    # A fresh object with the same seed replays the epoch; another seed does not.
    assert torch.equal(
        next(_batches(batch_size=8, augment="crop_flip", seed=7)[0].epoch(2))[0], first[0][0]
    )
    assert not torch.equal(next(_batches(batch_size=8, seed=8)[0].epoch(2))[1], first[0][1])


def test_tensor_batches_take_labels_that_numpy_cannot_read(monkeypatch):
    """A loader rebuilt from another's tensors (BA's uncropped copy) on a GPU: CUDA labels have
    no numpy view, so they must stay tensors."""
    tb, _ = _batches(batch_size=8)

    def no_numpy(self, *a, **k):
        raise TypeError("can't convert cuda:0 device type tensor to numpy")

    monkeypatch.setattr(torch.Tensor, "__array__", no_numpy)
    again = TensorBatches(tb.images, tb.labels, batch_size=8)
    assert again.labels.dtype == torch.long and torch.equal(again.labels, tb.labels)


def test_tensor_batches_covers_data_once():
    tb, images = _batches(batch_size=8)
    xs, ys = zip(*tb.epoch(0))
    x, y = torch.cat(xs), torch.cat(ys)
    assert [len(b) for b in ys] == [8, 8, 8, 8, 5]
    assert x.dtype == torch.float32 and x.shape == (37, 3, 8, 8)
    expected = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    order = [int(torch.nonzero((expected == xi).flatten(1).all(1))[0]) for xi in x]
    assert sorted(order) == list(range(37)) and order != list(range(37))
    assert torch.equal(y, torch.tensor(order) % 5)
    ordered, _ = _batches(batch_size=8, shuffle=False, drop_last=True, channels_last=True)
    batches = list(ordered.epoch(0))
    assert len(ordered) == len(batches) == 4
    assert torch.equal(batches[0][0], expected[:8])
    assert batches[0][0].is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(DemHECError, match="skip"):
        list(ordered.epoch(0, skip=5))
    # An N x 3 x H x W uint8 tensor gives the same batches as the N x H x W x 3 array.
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    from_tensor = TensorBatches(nchw, np.arange(37) % 5, 8, augment="crop_flip")
    from_numpy, _ = _batches(batch_size=8, augment="crop_flip")
    assert all(torch.equal(a[0], b[0]) for a, b in zip(from_tensor.epoch(1), from_numpy.epoch(1)))


def _matches_some_crop_flip(out: torch.Tensor, img: torch.Tensor, padding: int) -> bool:
    h, w = img.shape[-2:]
    padded = torch.nn.functional.pad(img, (padding,) * 4)
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            if torch.equal(out, crop) or torch.equal(out, crop.flip(-1)):
                return True
    return False


def test_random_crop_flip_is_a_crop_and_flip():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (12, 3, 10, 10), dtype=torch.uint8, generator=g)
    out = random_crop_flip(x, 4, g)
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert all(_matches_some_crop_flip(o, i, 4) for o, i in zip(out, x))
    assert not torch.equal(out, x)
    assert (out == 0).any()  # zero padding shows up in shifted crops
    flipped = random_crop_flip(x.float() / 255, 0, torch.Generator().manual_seed(1))
    assert flipped.min() >= 0 and flipped.max() <= 1
    kinds = [torch.equal(f, i.float() / 255) for f, i in zip(flipped, x)]
    assert any(kinds) and not all(kinds)  # some images mirrored, some not
    assert all(
        torch.equal(f, i.float() / 255) or torch.equal(f, i.float().flip(-1) / 255)
        for f, i in zip(flipped, x)
    )


def test_tensor_batches_augment_changes_images_within_range():
    plain, images = _batches(batch_size=37, shuffle=False)
    aug, _ = _batches(batch_size=37, shuffle=False, augment="crop_flip")
    x0, _ = next(plain.epoch(0))
    x1, _ = next(aug.epoch(0))
    assert x1.shape == x0.shape and 0 <= x1.min() and x1.max() <= 1
    assert not torch.equal(x0, x1)
    assert all(_matches_some_crop_flip(a, b, 4) for a, b in zip(x1, x0))
