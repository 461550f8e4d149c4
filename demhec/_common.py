"""Small shared helpers: boundary validation and atomic file writes.

Every user-facing name (dataset, backbone, corruption, suite, profile, ...) goes through
:func:`check_choice`, so a typo fails with one line that lists the valid values. Every file the
project writes (results, caches, checkpoints) goes through :func:`atomic_write`, so a crash never
leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import errno
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
