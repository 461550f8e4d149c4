"""Robustness reports: several evaluated models (with or without test-time adaptation) side by
side, as notebook 13 (test-time adaptation) and notebook 14 ("your own model") show them.

Each input is a robustness result (the JSON record of
:func:`demhec.experiments.pipeline.robustness_result` or any record whose ``metrics.table`` is an
:func:`demhec.evaluation.evaluate` table), keyed by the label it should carry in the report ("base", "base + BN", "Dem-HEC + TENT", ...).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from ._common import DemHECError
from .evaluation import mean_corruption_error

if TYPE_CHECKING:  # experiments is imported lazily: it is the heavier module
    from .experiments.notebook import NotebookContext

log = logging.getLogger(__name__)

__all__ = ["NOISE_CORRUPTIONS", "cost_table", "per_corruption_table", "robustness_summary", "your_model_setup"]

# The paper's noise family, the corruptions Dem-HEC targets most (the CPU reproduction's target).
NOISE_CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise")


def _table(record: Mapping) -> pd.DataFrame:
    try:
        return pd.DataFrame(record["metrics"]["table"])
    except (KeyError, TypeError) as exc:
        raise DemHECError("a report needs robustness results with metrics.table") from exc


def _mean(df: pd.DataFrame, corruptions: Sequence[str] | None, severity: int | None,
          column: str = "accuracy") -> float:
    rows = df[df.corruption != "clean"]
    if corruptions is not None:
        rows = rows[rows.corruption.isin(corruptions)]
    if severity is not None:
        rows = rows[rows.severity == severity]
    return float(rows[column].mean()) if len(rows) else float("nan")


def robustness_summary(records: Mapping[str, Mapping], reference: str | None = None,
                       severity: int = 5) -> pd.DataFrame:
    """One row per labelled result: clean accuracy, noise mean and all-corruption mean at
    ``severity``, the mean over every corrupted cell, the mean corruption error relative to
    ``reference`` (Hendrycks & Dietterich's mCE with the reference in AlexNet's place: the
    reference scores 100), the expected calibration error on clean and (mean) corrupted sets,
    the wall time of evaluation relative to a plain evaluation (``relative_cost``: 1 for a
    plain evaluation, the result's measured ratio for test-time adaptation), and each
    accuracy's change from ``reference`` (default: the first label), in points."""
    if not records:
        raise DemHECError("robustness_summary needs at least one result")
    labels = list(records)
    reference = reference if reference is not None else labels[0]
    if reference not in records:
        raise DemHECError(f"unknown reference {reference!r}; valid references: {', '.join(labels)}")
    ref = _table(records[reference])
    rows = []
    for label, record in records.items():
        df = _table(record)
        clean = df[df.corruption == "clean"]
        metrics = record["metrics"]
        rows.append({
            "label": label,
            "clean": float(clean["accuracy"].iloc[0]),
            f"noise_s{severity}": _mean(df, NOISE_CORRUPTIONS, severity),
            f"all_s{severity}": _mean(df, None, severity),
            "all_cells": _mean(df, None, None),
            "mce": mean_corruption_error(df, baseline=ref),
            "ece_clean": float(clean["ece"].iloc[0]),
            "ece_corrupted": _mean(df, None, None, "ece"),
            "relative_cost": float(metrics.get("relative_cost", 1.0)),
        })
    out = pd.DataFrame(rows)
    for col in ("clean", f"noise_s{severity}", f"all_s{severity}", "all_cells"):
        out[f"d_{col}"] = out[col] - float(out.loc[out.label == reference, col].iloc[0])
    return out


def per_corruption_table(records: Mapping[str, Mapping], severities: Sequence[int] | None = None) -> pd.DataFrame:
    """Accuracy per corruption (rows, clean first; the mean over ``severities``, default all
    in the results) for each labelled result (columns)."""
    cols = {}
    for label, record in records.items():
        df = _table(record)
        corrupted = df[df.corruption != "clean"]
        if severities is not None:
            corrupted = corrupted[corrupted.severity.isin(list(severities))]
        clean = df.loc[df.corruption == "clean", "accuracy"]
        per = corrupted.groupby("corruption", sort=False)["accuracy"].mean()
        cols[label] = pd.concat([pd.Series({"clean": float(clean.iloc[0])}), per])
    return pd.DataFrame(cols)


def your_model_setup(*, profile: str, backbone: str, data_root: str, weights: str,
                     **kw: Any) -> NotebookContext:
    """Notebook 14's parameters validated into an experiment: in the ``smoke`` and ``demo``
    profiles the embedded digits set (``data_root`` unused), otherwise the ImageFolder at
    ``data_root`` (class sub-folders, or ``train/`` and ``val/``); ``weights`` (a state dict in
    the backbone's layout) replaces the profile's trained base model. ``kw`` goes to
    :func:`demhec.experiments.notebook.notebook_setup`; ``smoke`` keeps only the highest severity."""
    import dataclasses

    from .experiments.notebook import notebook_setup, resolve_path

    if not isinstance(data_root, str) or not isinstance(weights, str):
        raise DemHECError("data_root and weights must be strings (\"\" for none)")
    digits = profile in ("smoke", "demo")
    if not digits and not data_root:
        raise DemHECError(f"profile {profile!r} needs data_root: an ImageFolder of your images "
                          "(smoke and demo use the embedded digits set)")
    ctx = notebook_setup(profile=profile, dataset="digits" if digits else "imagefolder",
                         backbone=backbone, data_root=data_root or "data", **kw)
    if profile == "smoke":  # the tests check the pipeline: one severity is enough
        ctx = dataclasses.replace(ctx, severities=(max(ctx.severities),))
    if weights:
        path = resolve_path(weights)
        if not path.is_file():
            raise DemHECError(f"weights file {path} does not exist")
        ctx = dataclasses.replace(ctx, exp=dataclasses.replace(ctx.exp, weights=str(path)))
    log.info("your model: %s on %s", ctx.exp.effective_backbone, ctx.exp.effective_dataset)
    return ctx


def cost_table(record: Mapping) -> pd.DataFrame:
    """The cost measurement of ``benchmarks/tta_cost.py`` (:func:`demhec.adaptation.adaptation_cost`
    per model and image set) as one row per (model, set, method): seconds of process CPU time
    and of wall time, and each as a multiple of the plain evaluation's."""
    rows = []
    for key, methods in record["metrics"].items():
        phase, _, images = key.partition("/")
        plain = methods["plain"]
        for method, m in methods.items():
            rows.append({"model": phase, "set": images, "method": method, "cpu_s": m["cpu_s"],
                         "wall_s": m["wall_s"], "cpu_ratio": m["cpu_s"] / plain["cpu_s"],
                         "wall_ratio": m["wall_s"] / plain["wall_s"]})
    return pd.DataFrame(rows)
