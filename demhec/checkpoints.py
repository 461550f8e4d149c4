"""Resume checkpoints of the training loops (:func:`demhec.training.run_steps`): the global RNG
states they carry, reading one safely, and converting one written by an older demhec.

A checkpoint holds only what torch's safe unpickler accepts (tensors, numbers, strings and plain
containers): checkpoints are exchanged between machines, and loading one must never run code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._common import DemHECError, atomic_write, load_tensors

__all__ = ["CHECKPOINT_FORMAT", "convert_checkpoint", "load_checkpoint", "read_checkpoint", "rng_state",
           "set_rng_state"]

CHECKPOINT_FORMAT = 2  # 1: numpy's RNG state as a pickled tuple (refused by the safe unpickler)


def rng_state() -> dict[str, Any]:
    """The global RNG states as tensors and numbers (numpy's MT19937 state split into fields)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A resume checkpoint of :func:`~demhec.training.run_steps`, read with torch's safe
    unpickler: a file crafted to run code is refused before anything in it runs, and a checkpoint
    of an older demhec (which pickled numpy's RNG state) is refused with how to go on."""
    path = Path(path)
    try:
        state = load_tensors(path, "training checkpoint", holds="checkpoint")
    except DemHECError as e:
        if _is_legacy_checkpoint(path):
            raise DemHECError(
                f"checkpoint {path} was written by an older demhec in a format that is not loaded for "
                f"safety; delete it to restart the run, or if you trust the file, convert it once with "
                f"`demhec convert-checkpoint {path}`") from e
        raise DemHECError(f"{e}; the checkpoint is unreadable, delete it to start over") from e
    if not isinstance(state, dict) or "fingerprint" not in state:
        raise DemHECError(f"{path} is not a demhec training checkpoint")
    return state


# numpy's array reconstruction, which format-1 checkpoints need for the RNG state they pickled;
# allowed only by convert_checkpoint, which the user runs knowingly on a file they trust.
def _numpy_globals() -> list[Any]:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct

    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def _is_legacy_checkpoint(path: Path) -> bool:
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # noqa: BLE001 - not a torch.save archive at all
        return False
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in _numpy_globals()}
    return bool(unsafe) and all(u.replace("numpy.core.", "numpy._core.") in allowed for u in unsafe)


def convert_checkpoint(path: str | Path) -> Path:
    """Rewrite a resume checkpoint of an older demhec (numpy's RNG state pickled) in the current
    format, in place. It reads the file with the safe unpickler plus numpy's array reconstruction
    (no other code can run), so only a file that needs nothing more is converted."""
    path = Path(path)
    if not _is_legacy_checkpoint(path):
        read_checkpoint(path)  # a current checkpoint passes; anything else says what it is
        return path
    with torch.serialization.safe_globals(_numpy_globals()):
        state = torch.load(path, map_location="cpu", weights_only=True)
    kind, keys, pos, has_gauss, cached = state["rng"]["numpy"]
    state["rng"]["numpy"] = {"kind": kind, "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)),
                             "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    with atomic_write(path) as f:
        torch.save(state, f)
    return path


def load_checkpoint(path: Path, fingerprint: dict) -> dict:
    """The checkpoint at ``path`` (:func:`read_checkpoint`) when it was written by a run of the
    same ``fingerprint`` (config and data); otherwise an error naming the fields that differ."""
    state = read_checkpoint(path)
    if state["fingerprint"] != fingerprint:
        diff = sorted(k for k in fingerprint if state["fingerprint"].get(k) != fingerprint[k])
        raise DemHECError(
            f"checkpoint {path} was written by a run with a different config or data (differs in {diff}); "
            "delete it or choose another checkpoint path"
        )
    return state
