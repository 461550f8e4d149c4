"""The images of an experiment: its training and evaluation data, and how its corrupted
evaluation sets are made, cached and scored (every result that reads them sees the same images)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._common import DemHECError
from ..data import ImageArrays, jpeg_source, load_named, subset
from ..runs import EvalRun
from .profiles import CORRUPTION_SEED, SUBSET_SEED, Experiment, Profile


def _limit(exp: Experiment, split: str) -> int | None:
    return exp.prof.train_limit if split == "train" else exp.prof.eval_limit


def _load(exp: Experiment, split: str) -> ImageArrays:
    arrays = load_named(exp.effective_dataset, split, exp.data_root, download=exp.download,
                        cache_dir=Path(exp.results_dir) / "cache", progress=exp.progress,
                        eval_per_class=exp.prof.eval_per_class)
    return subset(arrays, _limit(exp, split), seed=SUBSET_SEED)


def train_data(exp: Experiment) -> ImageArrays:
    """The experiment's training images (the profile's substitute dataset and limit)."""
    return _load(exp, "train")


def eval_data(exp: Experiment) -> ImageArrays:
    """The experiment's evaluation images (the profile's substitute dataset and limit)."""
    return _load(exp, "test")


def data_request(exp: Experiment, split: str) -> dict[str, Any]:
    """Which images a split of the experiment is, as a cache fingerprint records it: known
    without reading the data, so a cached result is checked (and the committed ones load) where
    the data is absent."""
    out = {"dataset": exp.effective_dataset, "split": split, "limit": _limit(exp, split),
           "subset_seed": SUBSET_SEED}
    if exp.prof.eval_per_class != Profile.eval_per_class:  # recorded where it differs (smoke)
        out["eval_per_class"] = exp.prof.eval_per_class
    return out


def provenance(arrays: ImageArrays) -> dict:
    """What a result records of the images it saw: their provenance and count."""
    prov = dict(arrays.provenance)
    prov["count"] = str(len(arrays))
    return prov


def data_unavailable(exp: Experiment) -> str:
    """Why the experiment's images cannot be read on this machine ("" when they can): the
    ``cpu`` profile's JPEG archive of real CIFAR-10 images is on the development machines only."""
    if exp.effective_dataset != "cifar10_jpeg":
        return ""
    source = jpeg_source(exp.data_root)
    if source.exists():
        return ""
    return (f"The real CIFAR-10 images of the {exp.profile!r} profile are not on this machine: {source.name} "
            "was not found (the JPEG archive is on the development machines only; -p data_root takes the "
            "archive or its extracted folder), so the images cannot be shown here.")


def corrupted_eval_kw(exp: Experiment) -> dict[str, Any]:
    """Where and how the experiment's corrupted evaluation sets are made, cached and scored
    (every result that reads them must see the same images), and how every evaluation entry
    point runs (:class:`~demhec.runs.EvalRun`)."""
    run = EvalRun(batch_size=exp.prof.eval_batch_size, device=exp.device,
                  channels_last=exp.channels_last, progress=exp.progress)
    return dict(seed=CORRUPTION_SEED, cache_dir=Path(exp.results_dir) / "cache" / "corruptions",
                key=f"{exp.effective_dataset}-eval", data_root=exp.data_root, download=exp.download,
                **run.keywords())


def build_eval_cache(exp: Experiment, suite: str = "cifar-c",
                     corruptions: Sequence[str] | None = None,
                     severities: Sequence[int] | None = None, workers: int | None = None) -> None:
    """Generate the experiment's corrupted evaluation sets into the cache that
    :func:`.pipeline.robustness_result` reads, ahead of the models that need them (several
    processes then read one cache instead of each building it)."""
    from ..corruptions import PAPER_CORRUPTIONS, PAPER_SEVERITIES, corruption_grid

    kw = corrupted_eval_kw(exp)
    for _ in corruption_grid(eval_data(exp).images, corruptions or PAPER_CORRUPTIONS,
                             severities or PAPER_SEVERITIES, suite=suite, seed=kw["seed"],
                             cache_dir=kw["cache_dir"], key=kw["key"], workers=workers,
                             progress=exp.progress):
        pass


def uncached_sets(exp: Experiment, suite: str = "cifar-c", corruptions: Sequence[str] | None = None,
                  severities: Sequence[int] | None = None) -> list[str]:
    """The experiment's corrupted evaluation sets (``"<corruption>/<severity>"``) that
    :func:`build_eval_cache` would generate rather than read: not in the cache, or cached with
    other settings or by an older cache format (:func:`demhec.corruptions.engine.is_cached`; a
    file whose bytes were altered is rebuilt there too, unlisted here)."""
    from ..corruptions import PAPER_CORRUPTIONS, PAPER_SEVERITIES
    from ..corruptions.engine import is_cached

    kw = corrupted_eval_kw(exp)
    images = eval_data(exp).images
    return [f"{c}/{s}" for c in corruptions or PAPER_CORRUPTIONS for s in severities or PAPER_SEVERITIES
            if not is_cached(images, c, s, suite, kw["seed"], kw["cache_dir"], kw["key"])]


def corrupted_set_digests(exp: Experiment, suite: str = "cifar-c",
                          corruptions: Sequence[str] | None = None,
                          severities: Sequence[int] | None = None,
                          workers: int | None = None) -> dict[str, str]:
    """The sha256 of each of the experiment's corrupted evaluation sets, keyed
    ``"<corruption>/<severity>"`` (each built into the cache when missing). The corruptions run on
    numpy, SciPy, scikit-image and OpenCV, whose versions differ between machines: two machines
    score the same images exactly where their digests agree."""
    from ..corruptions import PAPER_CORRUPTIONS, PAPER_SEVERITIES, corruption_grid

    kw = corrupted_eval_kw(exp)
    return {f"{c}/{s}": hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()
            for c, s, x in corruption_grid(eval_data(exp).images, corruptions or PAPER_CORRUPTIONS,
                                           severities or PAPER_SEVERITIES, suite=suite, seed=kw["seed"],
                                           cache_dir=kw["cache_dir"], key=kw["key"], workers=workers,
                                           progress=exp.progress)}


def record_corrupted_sets(exp: Experiment, suite: str = "cifar-c",
                          corruptions: Sequence[str] | None = None,
                          severities: Sequence[int] | None = None, workers: int | None = None) -> dict:
    """Build the experiment's corrupted evaluation sets and record their digests
    (:func:`corrupted_set_digests`) with the library versions that made them, at
    :func:`.layout.corrupted_sets_path`: results scored on another machine are compared with
    this machine's on the same images only where the two records agree.

    A record already there for the same sets is kept as it is. One that differs at any set is
    never overwritten: the results of the profile were scored on its images, and this machine
    makes others (:func:`checked_corrupted_sets` names them); delete the record to start afresh."""
    from ..corruptions import PAPER_CORRUPTIONS, PAPER_SEVERITIES
    from ..results import write_result
    from .layout import corrupted_sets_path

    corruptions = list(corruptions or PAPER_CORRUPTIONS)
    severities = list(severities or PAPER_SEVERITIES)
    digests = corrupted_set_digests(exp, suite, corruptions, severities, workers)
    path = corrupted_sets_path(exp, suite)
    if path.is_file():
        recorded = json.loads(path.read_text())
        _refuse_other_sets(digests, recorded["metrics"]["sha256"], path)
        if recorded["metrics"]["sha256"] == digests:
            return recorded
    return write_result(path, kind="corrupted_sets", profile=exp.profile,
                        config=scored_on(suite, corruptions=corruptions, severities=severities,
                                         images=data_request(exp, "test")),
                        metrics={"sha256": digests, "cells": len(digests)},
                        data={**provenance(eval_data(exp)), "made_with": _corruption_libraries()},
                        seed=CORRUPTION_SEED)


def sets_digest(digests: dict[str, str]) -> str:
    """One digest of several corrupted sets (:func:`corrupted_set_digests`' per-set digests):
    what a result records of the images it scored, comparable with the cells of a record."""
    return hashlib.sha256("".join(f"{k} {digests[k]}\n" for k in sorted(digests)).encode()).hexdigest()


def checked_corrupted_sets(exp: Experiment, suite: str, corruptions: Sequence[str],
                           severities: Sequence[int]) -> str | None:
    """The :func:`sets_digest` of the corrupted sets a result is about to score (built into the
    cache when missing), after checking them against the profile's record
    (:func:`record_corrupted_sets`) where there is one: a machine that makes other images than
    those the profile's results were scored on stops here, naming the sets, instead of mixing
    scores of different images in one table. None for a released suite (fixed files)."""
    from ..corruptions import RELEASED_SUITES
    from .layout import corrupted_sets_path

    if suite in RELEASED_SUITES:
        return None
    digests = corrupted_set_digests(exp, suite, corruptions, severities)
    path = corrupted_sets_path(exp, suite)
    if path.is_file():
        _refuse_other_sets(digests, json.loads(path.read_text())["metrics"]["sha256"], path)
    return sets_digest(digests)


def scored_other_sets(result: dict, record: dict) -> bool | None:
    """Whether ``result`` scored other corrupted images than ``record``
    (:func:`record_corrupted_sets`) holds for its cells; None where that cannot be told: the
    result does not say which it scored (it was written before results recorded it) or the
    record lacks one of its sets."""
    scored = result.get("data", {}).get("corrupted_sets_sha256")
    config = result["config"]
    cells = [f"{c}/{s}" for c in config["corruptions"] for s in config["severities"]]
    recorded = record["metrics"]["sha256"]
    if scored is None or not all(k in recorded for k in cells):
        return None
    return scored != sets_digest({k: recorded[k] for k in cells})


def _refuse_other_sets(digests: dict[str, str], recorded: dict[str, str], path: Path) -> None:
    differ = [k for k in digests if k in recorded and recorded[k] != digests[k]]
    if differ:
        raise DemHECError(
            f"this machine's corrupted evaluation sets differ from those recorded in {path.name} at "
            f"{len(differ)} of {len(digests)} sets ({', '.join(differ[:6])}{', ...' if len(differ) > 6 else ''}): "
            "the profile's results were scored on other images. Compare the library versions in its "
            "'made_with' with this machine's; delete the record only to start the profile's results afresh")


def _corruption_libraries() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("numpy", "scipy", "scikit-image", "opencv-python", "opencv-python-headless", "numba",
                 "imagecorruptions-imaug", "Wand"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


def same_corrupted_sets(a: dict, b: dict) -> dict[str, Any]:
    """How two :func:`record_corrupted_sets` records agree: the cells both hold, those whose
    images are identical, and those that differ."""
    da, db = a["metrics"]["sha256"], b["metrics"]["sha256"]
    both = sorted(set(da) & set(db))
    differ = [k for k in both if da[k] != db[k]]
    return {"cells": len(both), "identical": len(both) - len(differ), "differ": differ}


def scored_on(suite: str, **how: Any) -> dict[str, Any]:
    """How a result's corrupted images are made, for its fingerprint: the suite, the corruption
    seed, ``how`` (corruptions, severities, ...), and for a released suite the archive its files
    come from (a corruption seed does not apply to them, but stays recorded alike)."""
    from ..corruptions import CIFAR_C_ARCHIVES, RELEASED_SUITES, TINY_IMAGENET_C_ARCHIVE

    out = {"suite": suite, **how, "corruption_seed": CORRUPTION_SEED}
    if suite in RELEASED_SUITES:
        dataset = RELEASED_SUITES[suite]
        archive = TINY_IMAGENET_C_ARCHIVE if dataset == "tinyimagenet" else CIFAR_C_ARCHIVES[dataset]
        out["released_files"] = {"url": archive.url, "md5": archive.md5}
    return out


def corruption_examples(exp: Experiment, suite: str, corruptions: Sequence[str],
                        severities: Sequence[int], n_images: int = 7) -> tuple[np.ndarray, dict]:
    """Clean evaluation images and their corrupted versions (Figure 2 inputs); a released
    suite shows its own files' images at the same indices of the test set."""
    from ..corruptions import RELEASED_SUITES, corrupt_split, released_split

    data = eval_data(exp)
    # One image per class where possible, so the figure shows varied content.
    idx = [int(np.flatnonzero(data.labels == c)[0]) for c in np.unique(data.labels)][:n_images]
    clean = data.images[idx]

    def corrupted(c: str, s: int) -> np.ndarray:
        if suite in RELEASED_SUITES:
            return released_split(suite, exp.data_root, c, s, download=exp.download, classes=data.classes)[0][idx]
        return corrupt_split(clean, c, s, suite=suite, seed=CORRUPTION_SEED)

    return clean, {(c, s): np.asarray(corrupted(c, s)) for c in corruptions for s in severities}
