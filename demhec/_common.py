"""Small shared helpers: boundary validation and atomic file writes.

Every user-facing name (dataset, backbone, corruption, suite, profile, ...) goes through
:func:`check_choice`, so a typo fails with one line that lists the valid values. Every file the
project writes (results, caches, checkpoints) goes through :func:`atomic_write`, so a crash never
leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import hashlib
import math
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any


class DemHECError(ValueError):
    """A bad user input or a missing prerequisite; its message is one line meant for a human."""


class TrainingDiverged(DemHECError):
    """Training stopped on non-finite losses, gradients or weights at ``step``; ``parts`` holds
    the loss terms of that step, so a study can record the divergence as its outcome."""

    def __init__(self, message: str, step: int, what: str, parts: dict[str, float]) -> None:
        super().__init__(message)
        self.step, self.what, self.parts = step, what, dict(parts)


# Messages name what a reader sets in the words of the interface they use: the library's keywords
# (``download=True``) by default, the command line's flags (``--download``) while ``demhec.cli``
# runs a command inside :func:`cli_words`.
_CLI_WORDS: contextvars.ContextVar[bool] = contextvars.ContextVar("demhec_cli_words", default=False)


@contextlib.contextmanager
def cli_words() -> Iterator[None]:
    """Within this block :func:`words` gives the command line's wording."""
    token = _CLI_WORDS.set(True)
    try:
        yield
    finally:
        _CLI_WORDS.reset(token)


def words(api: str, cli: str) -> str:
    """``api`` (a keyword of the library, ``download=True``) or, inside :func:`cli_words`, ``cli``
    (its flag, ``--download``)."""
    return cli if _CLI_WORDS.get() else api


def network_errors() -> tuple[type[BaseException], ...]:
    """What a download raises when the address cannot be reached (offline, DNS, refused, timed
    out, an HTTP error status)."""
    import http.client
    import urllib.error

    return (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException)


def download_failed(url: str, error: BaseException, root: str | os.PathLike, filename: str,
                    root_word: str = "root") -> DemHECError:
    """One line for a download that could not reach ``url``: the address, the reason, and where
    to put ``filename`` by hand (``root_word``: the argument that names that folder)."""
    reason = str(getattr(error, "reason", None) or error).strip() or type(error).__name__
    return DemHECError(f"could not download {url} ({reason.splitlines()[0]}); check the network, or place "
                       f"{filename} under {words(root_word, '--data-root')} ({root}) yourself")


def check_choice(kind: str, value: Any, choices: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``; otherwise raise naming the valid ones."""
    choices = list(choices)
    if value not in choices:
        valid = ", ".join(str(c) for c in choices)
        raise DemHECError(f"unknown {kind} {value!r}; valid {_plural(kind)}: {valid}")
    return value


def _plural(noun: str) -> str:
    # "severity" -> "severities", "BatchNorm mode" -> "BatchNorm modes", "loss" -> "losses"
    if re.search(r"[^aeiou]y$", noun):
        return noun[:-1] + "ies"
    return noun + ("es" if re.search(r"(s|x|ch|sh)$", noun) else "s")


def check_range(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    integer: bool = False,
    low_open: bool = False,
) -> Any:
    """Check that a finite number lies in [low, high] (or (low, high] with ``low_open``)."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        want = "an integer" if integer else "a finite number"
        raise DemHECError(f"{name} must be {want}, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        bound = f"> {low}" if low_open else f">= {low}"
        raise DemHECError(f"{name} must be {bound}, got {value!r}")
    if high is not None and value > high:
        raise DemHECError(f"{name} must be <= {high}, got {value!r}")
    return value


def check_device(device: Any) -> str:
    """``device`` as a string, if this machine has it: "cpu", "cuda", "cuda:N" (N below the
    number of visible GPUs) or "mps"; otherwise one line saying what is wrong."""
    import torch

    text = str(device)
    m = re.fullmatch(r"(cpu|cuda|mps)(?::(\d+))?", text)
    if not m or (m[1] != "cuda" and m[2] is not None):
        raise DemHECError(f"unknown device {text!r}; valid devices: cpu, cuda, cuda:N, mps")
    if m[1] == "cuda":
        if not torch.cuda.is_available():
            raise DemHECError(f"device {text!r} was requested, but this PyTorch sees no CUDA GPU; "
                              "use --device cpu")
        if m[2] is not None and int(m[2]) >= torch.cuda.device_count():
            raise DemHECError(f"device {text!r} was requested, but only {torch.cuda.device_count()} "
                              "GPU(s) are visible (cuda:0 ...)")
    if m[1] == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise DemHECError("device 'mps' was requested, but this PyTorch has no MPS backend here; use --device cpu")
    return text


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in blocks (bounded memory for large archives)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _free_space_error(path: Path, err: OSError, needed: int | None = None) -> DemHECError:
    free = f"{os.statvfs(path.parent).f_bavail * os.statvfs(path.parent).f_frsize / 1e6:.1f} MB free"
    size = f"; at least {needed / 1e6:.1f} MB are needed" if needed else ""
    return DemHECError(f"no space left to write {path} ({free}{size}); free some space or "
                       f"choose another folder ({err.strerror})")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` and rename it over ``path`` only on success; a full
    disk ends in one :class:`DemHECError` naming the path, with nothing left behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _free_space_error(path, e) from None
        raise
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            written = f.tell()
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as e:
        # torch.save reports a full disk as a RuntimeError of its zip writer ("unexpected pos",
        # "file write failed"): judge by the disk, before the partial file is removed.
        full = isinstance(e, RuntimeError) and _nearly_full(path.parent)
        with contextlib.suppress(FileNotFoundError):
            written = written or os.stat(tmp).st_size
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _free_space_error(path, e, written or None) from None
        if full:
            raise _free_space_error(path, OSError(errno.ENOSPC, "No space left on device"), written or None) from None
        raise


def _nearly_full(folder: Path) -> bool:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize < (1 << 20)


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Put ``model`` in eval mode and restore every submodule's own mode afterwards.

    ``model.train(was_training)`` would not do: it would also switch submodules that the
    caller keeps in eval mode (frozen BatchNorm layers in partial fine-tuning) back to train.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.train(mode)


def parse_number(name: str, value: Any) -> float:
    """A number given as a float, an int or a string such as ``"8/255"`` or ``"0.03"``.

    Papermill passes ``-p eps 8/255`` as the string "8/255"; the CLI passes strings too.
    """
    if isinstance(value, bool):
        raise DemHECError(f"{name} must be a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            if "/" in text:
                num, den = text.split("/", 1)
                return float(num) / float(den)
            return float(text)
        except (ValueError, ZeroDivisionError):
            pass
    raise DemHECError(f"{name} must be a number or a fraction like 8/255, got {value!r}")


# --- reading files that may come from elsewhere ------------------------------------------------
# Checkpoints, resume archives and caches are exchanged between machines and researchers: no file
# the project reads may run code. Tensors load through torch's safe unpickler, arrays without
# pickles, and archives only as regular files and folders inside their target.


def _unsafe_reason(path: Path) -> str:
    """The likely cause of an unreadable torch file, in words (never torch's advice to load it
    unsafely, which would run code from the file)."""
    import torch

    head = path.read_bytes()[:4]
    if head.startswith(b"PK"):
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:  # noqa: BLE001 - not even a readable archive
            unsafe = []
        if unsafe:
            return (f"it holds Python objects ({', '.join(unsafe[:3])}{', ...' if len(unsafe) > 3 else ''}), "
                    "which are not loaded for safety")
        return "a damaged or truncated torch.save archive"
    if head[:1] == b"\x80":
        return "a pickle of objects other than tensors, which is not loaded for safety"
    try:
        path.read_bytes()[:512].decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "unrecognised bytes"


def load_tensors(path: str | os.PathLike, what: str, holds: str = "state dict") -> Any:
    """``torch.load`` of ``path`` with the safe unpickler (``weights_only=True``): tensors, numbers,
    strings and plain containers only, so a file crafted to run code is refused, in one line
    naming ``what`` it was read as, before anything in it runs."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise DemHECError(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise DemHECError(f"cannot read {what} {path}: the file is empty")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a corrupt or foreign file
        raise DemHECError(f"cannot read {what} {path}: not a PyTorch {holds} file "
                          f"({_unsafe_reason(path)})") from exc


def load_array(path: str | os.PathLike, what: str, mmap: bool = False) -> Any:
    """``np.load`` of an ``.npy`` file that must hold plain numbers: a file of Python objects (a
    pickle) is refused in one line instead of loaded, as is a damaged one."""
    import numpy as np

    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as exc:  # numpy's refusal of object arrays, or a damaged header
        reason = ("it holds Python objects, which are not loaded for safety"
                  if "allow_pickle" in str(exc) or "Python objects" in str(exc) else f"damaged ({exc})")
        raise DemHECError(f"cannot read {what} {path}: {reason}; delete it to rebuild it") from exc


def _member_problem(name: str, kind: str) -> str:
    parts = Path(name).parts
    if name.startswith(("/", "\\")) or (parts and ":" in parts[0]) or ".." in parts:
        return "would be written outside the target folder"
    if kind not in ("file", "dir"):
        return f"is a {kind}, not a regular file or folder"
    return ""


def _is_zip(archive: Path) -> bool:
    import tarfile
    import zipfile

    # A plain tar whose last member is a zip (a torch.save file) also passes is_zipfile.
    return not tarfile.is_tarfile(archive) and zipfile.is_zipfile(archive)


def archive_members(archive: str | os.PathLike) -> list[tuple[str, str]]:
    """(name, kind) of every member of a tar or zip ``archive``; kind is "file", "dir", "link"
    or "device/fifo"."""
    import stat
    import tarfile
    import zipfile

    archive = Path(archive)
    if _is_zip(archive):
        with zipfile.ZipFile(archive) as z:
            out = []
            for info in z.infolist():
                mode = info.external_attr >> 16
                # Zip writers often record only permission bits (no file type) for a file.
                kind = ("link" if stat.S_ISLNK(mode) else "dir" if info.is_dir() else
                        "file" if stat.S_IFMT(mode) in (0, stat.S_IFREG) else "device/fifo")
                out.append((info.filename, kind))
            return out
    with tarfile.open(archive) as tar:
        return [(m.name, "file" if m.isfile() else "dir" if m.isdir() else
                 "link" if m.issym() or m.islnk() else "device/fifo") for m in tar.getmembers()]


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Extract a tar or zip ``archive`` into ``target`` after checking every member: one that
    would land outside ``target`` (an absolute path, ``..``), a link or a device file refuses the
    whole archive, in one line, before anything is written."""
    import tarfile
    import zipfile

    archive, target = Path(archive), Path(target)
    for name, kind in archive_members(archive):
        problem = _member_problem(name, kind)
        if problem:
            raise DemHECError(f"refusing to extract {archive.name}: its member {name!r} {problem}")
    target.mkdir(parents=True, exist_ok=True)
    if _is_zip(archive):
        with zipfile.ZipFile(archive) as z:
            z.extractall(target)
    else:
        with tarfile.open(archive) as tar:
            # The checks above refuse what the "data" filter would; where Python has the filter
            # (3.10.12 and later) it stays as a second guard.
            kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(target, **kw)
    return target


def download_archive(url: str, root: str | os.PathLike, md5: str | None) -> Path:
    """Download ``url`` into ``root`` (checked against ``md5``) and extract it there through
    :func:`safe_extract`; a network failure is one line naming the address."""
    from torchvision.datasets.utils import download_url

    root = Path(root)
    filename = url.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
    try:
        download_url(url, str(root), filename=filename, md5=md5)
    except (*network_errors(), OSError) as e:
        raise download_failed(url, e, root, filename) from None
    archive = root / filename
    if md5 is not None:
        from torchvision.datasets.utils import check_integrity

        if not check_integrity(str(archive), md5):
            raise DemHECError(f"{archive} does not match its published MD5 {md5}; delete it and retry")
    return safe_extract(archive, root)
