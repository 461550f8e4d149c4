"""Small shared helpers: boundary validation and atomic file writes.

Every user-facing name (dataset, backbone, corruption, suite, profile, ...) goes through
:func:`check_choice`, so a typo fails with one line that lists the valid values. Every file the
project writes (results, caches, checkpoints) goes through :func:`atomic_write`, so a crash never
leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any


class DemHECError(ValueError):
    """A bad user input or a missing prerequisite; its message is one line meant for a human."""


def check_choice(kind: str, value: Any, choices: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``; otherwise raise naming the valid ones."""
    choices = list(choices)
    if value not in choices:
        valid = ", ".join(str(c) for c in choices)
        raise DemHECError(f"unknown {kind} {value!r}; valid {kind}s: {valid}")
    return value


def check_range(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    integer: bool = False,
    low_open: bool = False,
) -> Any:
    """Check that a number lies in [low, high] (or (low, high] with ``low_open``)."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value != value:
        want = "an integer" if integer else "a number"
        raise DemHECError(f"{name} must be {want}, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        bound = f"> {low}" if low_open else f">= {low}"
        raise DemHECError(f"{name} must be {bound}, got {value!r}")
    if high is not None and value > high:
        raise DemHECError(f"{name} must be <= {high}, got {value!r}")
    return value


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` and rename it over ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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
