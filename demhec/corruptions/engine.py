"""Corrupting images and whole splits: the dispatch to a suite, parallel generation in worker
processes and the verified on-disk cache of corrupted splits."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import hashlib
import json
import logging
import math
import multiprocessing as mp
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from .._common import DemHECError, atomic_write, check_choice, check_range, file_sha256, load_array
from . import cifar_c, imagenet_c
from .common import (
    PAPER_CORRUPTIONS,
    PAPER_SEVERITIES,
    RELEASED_SUITES,
    SUITES,
    check_corruption,
    check_images,
    check_severity,
    image_seed,
)
from .released import released_split

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Public corruption entry points
# --------------------------------------------------------------------------------------------


def _corrupt_one(image: np.ndarray, corruption: str, severity: int, suite: str,
                 seed: int) -> np.ndarray:
    if suite == "cifar-c":
        out = cifar_c.corrupt_image(image, corruption, severity, np.random.RandomState(seed))
    else:
        out = imagenet_c.corrupt_image(image, corruption, severity, seed)
    # Truncation (not rounding) to uint8, like both reference generators.
    return np.asarray(out).astype(np.uint8)


def _corrupt_range(images: np.ndarray, corruption: str, severity: int, suite: str, seed: int,
                   start: int) -> np.ndarray:
    """Corrupt ``images``, which are images ``start, start + 1, ...`` of a split."""
    out = np.empty_like(images)
    for j, image in enumerate(images):
        out[j] = _corrupt_one(np.ascontiguousarray(image), corruption, severity, suite,
                              image_seed(seed, corruption, severity, start + j))
    return out


def corrupt(image_or_batch: np.ndarray, corruption: str, severity: int, suite: str = "cifar-c",
            seed: int = 0) -> np.ndarray:
    """Corrupt one uint8 H x W x 3 image or an N x H x W x 3 batch (paper Eq. 1's g_c at s).

    Deterministic: image i of a batch is corrupted with randomness drawn only from
    (seed, corruption, severity, i), so the result equals :func:`corrupt_split` on the same batch.
    """
    check_choice("suite", suite, SUITES)
    check_corruption(corruption, suite)
    severity = check_severity(severity)
    check_range("seed", seed, 0, integer=True)
    check_images(image_or_batch, suite)
    if image_or_batch.ndim == 3:
        return _corrupt_range(image_or_batch[None], corruption, severity, suite, seed, 0)[0]
    return _corrupt_range(image_or_batch, corruption, severity, suite, seed, 0)


# --------------------------------------------------------------------------------------------
# Whole splits: parallel generation and an on-disk cache
# --------------------------------------------------------------------------------------------

_CACHE_FORMAT = 2  # bump when the generated pixels of any corruption change (2: machine-independent motion blur)
_MAX_CHUNK = 256  # images per task: small enough to balance load and bound memory
_MIN_PARALLEL = 64  # smaller splits are done in-process: starting workers would cost more
_KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def images_key(images: np.ndarray) -> str:
    """A short content hash of a clean split (shape + bytes), the default cache ``key``."""
    digest = hashlib.sha256(f"{images.shape}|{images.dtype}".encode())
    for i in range(0, len(images), 1024):  # bounded memory for memory-mapped splits
        digest.update(np.ascontiguousarray(images[i:i + 1024]).data)
    return digest.hexdigest()[:16]


_PR_SET_PDEATHSIG = 1  # prctl(2)


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core; OpenCV's own threads would oversubscribe
    # Die with the parent, even one killed by SIGKILL, instead of holding memory as an orphan.
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    # A parent that died while this worker was still importing (seconds on a busy machine)
    # sent no signal: its pid is no longer ours.
    parent = mp.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        os._exit(1)


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


def cache_paths(cache_dir: str | os.PathLike, suite: str, key: str, corruption: str,
                severity: int) -> tuple[Path, Path]:
    """Where one corrupted set is cached: the array and its JSON sidecar."""
    folder = Path(cache_dir) / suite / key
    stem = f"{corruption}_s{severity}"
    return folder / f"{stem}.npy", folder / f"{stem}.json"


def _cache_settings(images: np.ndarray, corruption: str, severity: int, suite: str, seed: int,
                    key: str) -> dict[str, Any]:
    # The clean images' hash too: a key names a split ("digits-eval"), and a split of other
    # images under the same name (another image limit) must not get the old corrupted images.
    return {"format": _CACHE_FORMAT, "suite": suite, "corruption": corruption, "severity": severity,
            "seed": seed, "key": key, "clean": images_key(images)}


def is_cached(images: np.ndarray, corruption: str, severity: int, suite: str, seed: int,
              cache_dir: str | os.PathLike, key: str) -> bool:
    """Whether the cache holds this corrupted set as the current code makes it: its files exist
    and its sidecar records the same settings and cache format (without hashing the array, which
    :func:`corrupt_split` does when it reads it). A set that fails here is generated on reading."""
    path, meta_path = cache_paths(cache_dir, suite, key, corruption, severity)
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return False
    expected = _cache_settings(images, corruption, severity, suite, seed, key)
    return path.exists() and isinstance(meta, dict) and all(meta.get(k) == v for k, v in expected.items())


def _load_cached(path: Path, meta_path: Path, expected: dict[str, Any]) -> np.ndarray | None:
    """The cached array if it is complete and unaltered; None (with a warning if bad) otherwise."""
    if not path.exists() and not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict):
            raise ValueError(f"its sidecar {meta_path.name} holds {type(meta).__name__}, not a record")
        stale = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
        if stale:
            logger.info("corruption cache %s was built with other settings %s; regenerating",
                        path, stale)
            return None
        if path.stat().st_size != meta["file_size"]:
            raise ValueError(f"size {path.stat().st_size} != recorded {meta['file_size']}")
        if file_sha256(path) != meta["sha256"]:
            raise ValueError("sha256 checksum mismatch")
        array = load_array(path, "corruption cache", mmap=True)
        if list(array.shape) != meta["shape"] or str(array.dtype) != meta["dtype"]:
            raise ValueError(f"array {array.shape}/{array.dtype} != recorded "
                             f"{meta['shape']}/{meta['dtype']}")
        return array
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SyntaxError) as err:
        logger.warning("corruption cache %s is invalid (%s); regenerating it", path, err)
        return None


def _remove_stale_temp_files(path: Path) -> None:
    """Temporary files of builders that were killed: their process is gone (``.<stem>.<pid>.*``)."""
    for tmp in path.parent.glob(f".{path.stem}.*.tmp.npy"):
        pid = tmp.name[len(path.stem) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                logger.info("removed %s, left by an interrupted build", tmp.name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _build_cached(images: np.ndarray, path: Path, meta_path: Path, expected: dict[str, Any],
                  pool: _LazyPool, progress: bool) -> np.ndarray:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temp_files(path)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.{os.getpid()}.",
                                        suffix=".tmp.npy")
    except PermissionError:
        raise DemHECError(f"the corruption cache {path} must be (re)built but {path.parent} is not "
                          "writable; make it writable or pass another cache_dir") from None
    os.close(fd)
    tmp = Path(tmp_name)
    # A memory map on a full disk (or tmpfs) dies with SIGBUS at the first write: check first.
    needed = images.nbytes + (1 << 20)
    free = shutil.disk_usage(path.parent).free
    if free < needed:
        tmp.unlink()
        raise DemHECError(f"no space left to write {path}: {needed / 1e6:.1f} MB needed, "
                          f"{free / 1e6:.1f} MB free; free some space or pass another cache_dir")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=images.shape)
        _fill(out, images, expected["corruption"], expected["severity"], expected["suite"],
              expected["seed"], pool, progress)
        out.flush()
        del out
        meta = dict(expected, shape=list(images.shape), dtype="uint8",
                    file_size=tmp.stat().st_size, sha256=file_sha256(tmp))
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    with atomic_write(meta_path, "w") as f:
        json.dump(meta, f, indent=1)
    return load_array(path, "corruption cache", mmap=True)


def _split_cell(images: np.ndarray, corruption: str, severity: int, suite: str, seed: int,
                cache_dir: str | os.PathLike | None, key: str | None, pool: _LazyPool,
                progress: bool) -> np.ndarray:
    if cache_dir is None:
        out = np.empty_like(images)
        _fill(out, images, corruption, severity, suite, seed, pool, progress)
        out.flags.writeable = False
        return out
    path, meta_path = cache_paths(cache_dir, suite, key, corruption, severity)
    expected = _cache_settings(images, corruption, severity, suite, seed, key)
    cached = _load_cached(path, meta_path, expected)
    if cached is not None:
        logger.debug("corruption cache hit: %s", path)
        return cached
    logger.info("generating %s (%d images) into %s", path.stem, len(images), path)
    return _build_cached(images, path, meta_path, expected, pool, progress)


def _check_split_args(images: np.ndarray, suite: str, seed: int, cache_dir: Any, key: str | None,
                      workers: int | None) -> tuple[str | None, int]:
    check_choice("suite", suite, SUITES)
    check_images(images, suite, batch_only=True)
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


def corrupted_sets(images: np.ndarray, labels: Any, corruptions: Iterable[str], severities: Iterable[int],
                   suite: str = "cifar-c", *, seed: int = 0, cache_dir: str | os.PathLike | None = None,
                   key: str | None = None, workers: int | None = None, progress: bool = False,
                   data_root: str | os.PathLike | None = None, download: bool = False,
                   classes: list[str] | None = None) -> Iterator[tuple[str, int, np.ndarray, Any]]:
    """Yield ``(corruption, severity, images, labels)`` for every cell, from any suite: generated
    from the clean ``images`` (:func:`corruption_grid`, which ``seed`` ... ``progress`` go to) or
    read from the released files under ``data_root`` (:func:`~demhec.corruptions.released.released_split`,
    ``download`` and ``classes`` go there), whose own images and labels replace the clean ones."""
    if suite in RELEASED_SUITES:
        for corruption in corruptions:
            for severity in severities:
                x, y = released_split(suite, data_root, corruption, severity, download=download,
                                      classes=classes)
                yield corruption, severity, x, y
        return
    for corruption, severity, x in corruption_grid(images, corruptions, severities, suite=suite, seed=seed,
                                                   cache_dir=cache_dir, key=key, workers=workers,
                                                   progress=progress):
        yield corruption, severity, x, labels
