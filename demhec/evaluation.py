"""Corruption-robustness evaluation (paper eq. 1) and its summaries.

:func:`evaluate` returns a tidy table, one row per (corruption, severity) plus the clean
row, with the corrupted accuracy CAcc of eq. 1 in percent, the image count and the
expected calibration error. Corrupted splits come from the seeded, cached generators of
:mod:`demhec.corruptions` or, for CIFAR-10/100-C, from the official files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ._common import DemHECError, check_choice, eval_mode
from .distributed import barrier, gather, is_main, rank_and_world, shard

log = logging.getLogger(__name__)

__all__ = [
    "as_float_images",
    "cell_logits",
    "evaluate",
    "expected_calibration_error",
    "family_means",
    "mean_corruption_error",
    "paired_difference",
    "paired_gain",
    "predict",
    "scored_rows",
]


def _to_float_batch(chunk: Any, device: torch.device) -> Tensor:
    if isinstance(chunk, np.ndarray):
        chunk = torch.from_numpy(np.array(chunk))  # a copy: cached splits are read-only maps
    chunk = chunk.to(device, non_blocking=True)
    if chunk.dtype == torch.uint8:
        if chunk.shape[-1] == 3 and chunk.shape[1] != 3:
            chunk = chunk.permute(0, 3, 1, 2)
        return chunk.float().div_(255)
    return chunk.float()


def as_float_images(images: Any, device: str | torch.device = "cpu") -> Tensor:
    """uint8 N x H x W x 3 (or N x 3 x H x W) images as float N x 3 x H x W in [0,1]."""
    return _to_float_batch(images, torch.device(device))


@torch.no_grad()
def predict(
    model: nn.Module,
    images: Any,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    channels_last: bool = False,
) -> Tensor:
    """Logits for ``images`` (uint8 N x H x W x 3 / N x 3 x H x W, or float in [0,1]), in
    eval mode, batched, without gradients. Returns a CPU float tensor (N, K).

    Inside a process group each rank predicts its contiguous share and every rank gets all
    logits back, in order, so every metric equals the single-process one."""
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    rank, world = rank_and_world()
    part = shard(len(images), rank, world)
    out = []
    with eval_mode(model):
        for i in range(part.start, part.stop, batch_size):
            x = _to_float_batch(images[i : min(i + batch_size, part.stop)], dev)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out.append(model(x).float())
    if world > 1:
        k = out[0].shape[1] if out else _num_outputs(model, images, dev)
        local = torch.cat(out) if out else torch.empty((0, k), device=dev)
        return gather(local).cpu()
    return torch.cat(out).cpu() if out else torch.empty(0)


def _num_outputs(model: nn.Module, images: Any, dev: torch.device) -> int:
    with eval_mode(model):
        return int(model(_to_float_batch(images[:1], dev)).shape[1])


def expected_calibration_error(logits: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """ECE with ``n_bins`` equal-width confidence bins (Guo et al., 2017), in [0, 1]."""
    probs = logits.float().softmax(1)
    conf, pred = probs.max(1)
    correct = pred.eq(labels).float()
    edges = torch.linspace(0, 1, n_bins + 1)
    ece = torch.zeros(())
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.float().mean() * (conf[in_bin].mean() - correct[in_bin].mean()).abs()
    return float(ece)


def _row(corruption: str, severity: int, logits: Tensor, labels: Tensor) -> dict:
    from .corruptions import FAMILIES

    family = next((f for f, cs in FAMILIES.items() if corruption in cs), "other")
    correct = int(logits.argmax(1).eq(labels).sum())
    n = len(labels)
    return {
        "corruption": corruption, "severity": severity,
        "family": "clean" if corruption == "clean" else family,
        "accuracy": 100.0 * correct / max(n, 1), "correct": correct, "n": n,
        "ece": 100.0 * expected_calibration_error(logits, labels),
    }


def evaluate(
    model: nn.Module,
    data: Any,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] | None = None,
    suite: str = "cifar-c",
    *,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    key: str | None = None,
    data_root: str | os.PathLike | None = None,
    download: bool = False,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    channels_last: bool = False,
    workers: int | None = None,
    progress: bool = False,
    adapt: str | None = None,
    adapt_config: Any = None,
) -> pd.DataFrame:
    """Eq. 1 on clean data and on every (corruption, severity) cell.

    ``data`` is an :class:`~demhec.data.ImageArrays` or a pair (uint8 N x H x W x 3 images,
    labels). Corrupted images are generated by ``suite`` ("cifar-c", "imagecorruptions") with
    ``seed`` and cached under ``cache_dir`` (see :func:`demhec.corruptions.corrupt_split`), or,
    for a released suite ("cifar10-c", "cifar100-c", "tinyimagenet-c"), read from the released
    files under ``data_root`` (memory-mapped; downloaded with ``download``), and then ``data``
    supplies the clean test set only. Defaults: the paper's seven corruptions at severities 1, 3, 5.

    ``adapt``: None (the model as it is), ``"bn"`` (BatchNorm statistics adaptation,
    Schneider et al., 2020) or ``"tent"`` (TENT, Wang et al., 2021), with settings from
    ``adapt_config`` (a :class:`~demhec.adaptation.AdaptConfig`; its method is set from
    ``adapt``). The adaptation starts afresh from ``model`` on every set, clean included, and
    leaves ``model`` unchanged; see :mod:`demhec.adaptation`.
    """
    from .corruptions import (
        ALL_SUITES,
        PAPER_CORRUPTIONS,
        PAPER_SEVERITIES,
        RELEASED_SUITES,
        check_corruption,
        check_severity,
        corrupted_sets,
        corruption_grid,
    )

    check_choice("suite", suite, ALL_SUITES)
    corruptions = list(PAPER_CORRUPTIONS if corruptions is None else corruptions)
    severities = list(PAPER_SEVERITIES if severities is None else severities)
    for c in corruptions:
        check_corruption(c, suite)
    for s in severities:
        check_severity(s)
    images, labels = (data.images, data.labels) if hasattr(data, "images") else data
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4
            and images.shape[-1] == 3):
        raise DemHECError("evaluate needs uint8 images of shape N x H x W x 3 (see demhec.data)")
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if len(images) == 0:
        raise DemHECError("evaluate got no images (an empty dataset)")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DemHECError(f"evaluate got {len(images)} images but {len(labels)} labels")
    kw = dict(batch_size=batch_size, device=device, channels_last=channels_last)
    score = predict
    if adapt is not None:
        score = _adaptive_scorer(adapt, adapt_config)
        kw.pop("batch_size")  # the adaptation's batch is part of its config

    cells = [(c, s) for c in corruptions for s in severities]
    bar = None
    if progress and is_main():
        from tqdm.auto import tqdm

        bar = tqdm(total=len(cells) + 1, desc="evaluate", unit="cell", dynamic_ncols=True)
    clean = score(model, images, **kw)
    outside = labels[(labels < 0) | (labels >= clean.shape[1])]
    if len(outside):
        raise DemHECError(f"{len(outside)} labels outside the model's {clean.shape[1]} classes "
                          f"({', '.join(str(int(v)) for v in outside.unique()[:5])}); is this the "
                          "dataset the model was trained on?")
    rows = [_row("clean", 0, clean, labels)]
    if bar is not None:
        bar.update(1)
    if suite not in RELEASED_SUITES and rank_and_world()[1] > 1 and cache_dir is not None:
        # Rank 0 fills the cache; the others then read it instead of racing to write it.
        if is_main():
            for _ in corruption_grid(images, corruptions, severities, suite=suite, seed=seed,
                                     cache_dir=cache_dir, key=key, workers=workers):
                pass
        barrier()

    # One worker pool for the whole grid: starting one per cell costs seconds each.
    for c, s, x, y in corrupted_sets(images, labels, corruptions, severities, suite, seed=seed,
                                     cache_dir=cache_dir, key=key, workers=workers, data_root=data_root,
                                     download=download, classes=getattr(data, "classes", None)):
        rows.append(_row(c, s, score(model, x, **kw), torch.as_tensor(np.asarray(y), dtype=torch.long)))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return pd.DataFrame(rows)


def _adaptive_scorer(adapt: str, adapt_config: Any) -> Any:
    """``predict``'s stand-in that adapts a copy of the model to each set it scores."""
    import dataclasses

    from .adaptation import ADAPT_METHODS, AdaptConfig, adaptive_predict

    check_choice("adapt", adapt, ADAPT_METHODS)
    cfg = dataclasses.replace(adapt_config or AdaptConfig(), method=adapt)
    return lambda model, x, **kw: adaptive_predict(model, x, cfg, **kw)


def paired_difference(correct_a: Tensor, correct_b: Tensor) -> dict[str, float]:
    """Accuracy of b minus accuracy of a on the same images, in points, with its standard error.

    ``correct_*`` are 0/1 per image, shaped (N,) or (N, C) for C cells of the same images (e.g.
    three noises at one severity); each image's C outcomes are averaged first, so the error of a
    mean over cells treats an image, not a cell, as the unit. Because both models see the same
    images, only the images they disagree on contribute to the error: far smaller than that of
    two independent accuracies, and the right one for "did fine-tuning change the accuracy"."""
    a, b = torch.as_tensor(correct_a, dtype=torch.float64), torch.as_tensor(correct_b, dtype=torch.float64)
    if a.shape != b.shape or a.ndim not in (1, 2) or len(a) < 2:
        raise DemHECError(f"need two equal (N,) or (N, C) outcome arrays with N >= 2, got {tuple(a.shape)} "
                          f"and {tuple(b.shape)}")
    d = b - a if a.ndim == 1 else (b - a).mean(dim=1)
    return {"diff": 100 * float(d.mean()), "se": 100 * float(d.std() / len(d) ** 0.5), "n": len(d)}


def _run_options(kw: dict[str, Any]) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Split keywords into an :class:`~demhec.runs.EvalRun`, where the corrupted images come from
    (the rest) and :func:`predict`'s keywords."""
    import dataclasses

    from .runs import EvalRun

    run_keys = {f.name for f in dataclasses.fields(EvalRun)}
    options = EvalRun(**{k: v for k, v in kw.items() if k in run_keys})
    where = {k: v for k, v in kw.items() if k not in run_keys}
    return options, where, dict(batch_size=options.batch_size, device=options.device,
                                channels_last=options.channels_last)


def paired_gain(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Any,
    corruptions: Sequence[str],
    severity: int,
    suite: str = "cifar-c",
    **kw: Any,
) -> dict[str, dict[str, float]]:
    """How much ``model_b`` changes the accuracy of ``model_a`` (points, with standard errors
    from :func:`paired_difference`), on the clean images and on the mean over ``corruptions`` at
    ``severity``: the uncertainty that the finite evaluation set puts on a before/after gain,
    which the spread over training seeds does not show (every seed sees the same images).
    ``kw``: where the corrupted images come from, as for :func:`evaluate` (``seed``,
    ``cache_dir``, ``key``, ``data_root``, ``download``), and the keywords of
    :class:`~demhec.runs.EvalRun`."""
    from .corruptions import corrupted_sets

    options, where, how = _run_options(kw)
    images, labels = (data.images, data.labels) if hasattr(data, "images") else data

    def correct(model: nn.Module, x: Any, y: Any) -> Tensor:
        y = torch.as_tensor(np.asarray(y), dtype=torch.long)
        return (predict(model, x, **how).argmax(1) == y).to(torch.float64)

    out = {"clean": paired_difference(correct(model_a, images, labels), correct(model_b, images, labels))}
    cells = [(correct(model_a, x, y), correct(model_b, x, y))
             for _, _, x, y in corrupted_sets(images, labels, corruptions, [severity], suite, workers=options.workers,
                                              progress=options.progress, classes=getattr(data, "classes", None),
                                              **where)]
    out["corrupted"] = paired_difference(torch.stack([a for a, _ in cells], 1), torch.stack([b for _, b in cells], 1))
    return out


def cell_logits(
    model: nn.Module,
    data: Any,
    corruptions: Sequence[str],
    severities: Sequence[int],
    suite: str = "cifar-c",
    *,
    adapt: str | None = None,
    adapt_config: Any = None,
    groups: Sequence[Any] | None = None,
    **kw: Any,
) -> dict[tuple[str, int], Tensor]:
    """The model's logits on every image of the clean set (key ("clean", 0)) and of every
    (corruption, severity) cell, in the images' order: what :func:`evaluate` scores, kept per
    image so that subsets of the images (the halves of a selection protocol) are scored from one
    pass. ``kw`` as for :func:`paired_gain`.

    With ``adapt`` ("bn" or "tent", settings from ``adapt_config``) the model is adapted at test
    time to each set afresh, as in :func:`evaluate`; ``groups`` (index arrays that partition the
    images) makes every group of every set a test stream of its own, so that the images of one
    group (a half) never shape the predictions on another's. The corrupted images are those of
    the whole set either way (one cache, the same images as an unadapted scoring)."""
    from .corruptions import corrupted_sets

    options, where, how = _run_options(kw)
    images, labels = (data.images, data.labels) if hasattr(data, "images") else data
    score = predict
    if adapt is not None:
        score = _adaptive_scorer(adapt, adapt_config)
        how.pop("batch_size")  # the adaptation's batch is part of its config

    def run(x: Any) -> Tensor:
        if groups is None:
            return score(model, x, **how).cpu()
        parts = [(torch.as_tensor(np.asarray(g), dtype=torch.long), score(model, x[np.asarray(g)], **how).cpu())
                 for g in groups]
        out = torch.empty((len(x), parts[0][1].shape[1]))
        for g, z in parts:
            out[g] = z
        return out

    if groups is not None:
        covered = np.sort(np.concatenate([np.asarray(g) for g in groups]))
        if not np.array_equal(covered, np.arange(len(images))):
            raise DemHECError("groups must partition the images (each index exactly once)")
    out = {("clean", 0): run(images)}
    for c, s, x, _ in corrupted_sets(images, labels, corruptions, severities, suite, workers=options.workers,
                                     progress=options.progress, classes=getattr(data, "classes", None), **where):
        out[(c, int(s))] = run(x)
    return out


def scored_rows(logits: dict[tuple[str, int], Tensor], labels: Any, index: Any = None) -> pd.DataFrame:
    """:func:`evaluate`'s table from :func:`cell_logits`, on the images ``index`` (all: None)."""
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    idx = slice(None) if index is None else torch.as_tensor(np.asarray(index), dtype=torch.long)
    return pd.DataFrame([_row(c, s, z[idx], y[idx]) for (c, s), z in logits.items()])


def family_means(df: pd.DataFrame) -> pd.Series:
    """Mean accuracy per corruption family (noise, blur, weather, digital) over all its
    corruptions and severities, as in the paper's Table 3; families absent from ``df`` are
    left out."""
    corrupted = df[df["corruption"] != "clean"]
    return corrupted.groupby("family", sort=False)["accuracy"].mean()


def mean_corruption_error(df: pd.DataFrame, baseline: pd.DataFrame | None = None) -> float:
    """Mean corruption error (Hendrycks & Dietterich, 2019), in percent.

    With a ``baseline`` table (AlexNet in the original benchmark), each corruption's error
    summed over severities is divided by the baseline's (then x100); without one, the
    unnormalised mean error over all corrupted cells is returned.
    """
    corrupted = df[df["corruption"] != "clean"].assign(err=lambda d: 100 - d["accuracy"])
    if baseline is None:
        return float(corrupted["err"].mean())
    base = baseline[baseline["corruption"] != "clean"].assign(err=lambda d: 100 - d["accuracy"])
    num = corrupted.groupby("corruption")["err"].sum()
    den = base.groupby("corruption")["err"].sum()
    missing = sorted(set(num.index) - set(den.index))
    if missing:
        raise DemHECError(f"baseline lacks corruptions {missing}")
    return float((100 * num / den[num.index]).mean())
