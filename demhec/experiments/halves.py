"""The evaluation split's two halves: a configuration is chosen on "selection" and reported on
"report", so the number a reader is shown was not used to pick what is shown. A halves result
keeps every image's 0/1 outcome, so that any two results of one half compare paired over images
without their models (:func:`outcomes`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._common import DemHECError

# Per class, a permutation seeded by HALF_SEED puts the first half (rounded down) of that class's
# images in "selection" and the rest in "report" (250 and 250 of each class's 500 in the cpu
# profile); the halves depend on the labels alone, never on a model.
EVAL_HALVES = ("selection", "report")
HALF_SEED = 0


def eval_halves(labels: Any, seed: int = HALF_SEED) -> dict[str, np.ndarray]:
    """The sorted indices of each half of the evaluation images (see :data:`EVAL_HALVES`)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {h: [] for h in EVAL_HALVES}
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        out["selection"].append(idx[:len(idx) // 2])
        out["report"].append(idx[len(idx) // 2:])
    return {h: np.sort(np.concatenate(v)) if v else np.zeros(0, int) for h, v in out.items()}


def half_description(half: str) -> str:
    """How a result's provenance names the images of ``half``."""
    return f"{half} half of the evaluation split (half of each class, seed {HALF_SEED})"


def pack_outcomes(correct: np.ndarray) -> str:
    """Per-image 0/1 outcomes as a hex string (one bit per image), stored in a half's result so
    that any two results of one half are compared paired over images without their models."""
    return np.packbits(np.asarray(correct, dtype=bool)).tobytes().hex()


def unpack_outcomes(text: str, n: int) -> np.ndarray:
    """The inverse of :func:`pack_outcomes` for ``n`` images."""
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8))[:n].astype(bool)


def outcomes(record: dict, corruption: str, severity: int) -> np.ndarray:
    """Per-image 0/1 outcomes of one cell of a half's result (:func:`.pipeline.halves_result`)."""
    key = f"{corruption}/{severity}"
    correct = record["metrics"].get("correct")
    if correct is None or key not in correct:
        raise DemHECError(f"result holds no per-image outcomes of {key} (is it a halves result?)")
    return unpack_outcomes(correct[key], int(record["metrics"]["n"]))
