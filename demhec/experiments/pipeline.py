"""The result producers: a run's model scored on the corruption suites, on each half of the
evaluation split, and its per-layer entropies (Figures 3-4).

The pipeline is cached at two levels: models (:mod:`.model_cache`) and one JSON result per table
cell, each where :func:`.layout.result_path` says. Each carries a fingerprint of what made it
(:func:`.model_cache.model_spec`, :func:`result_spec`) and is reused only for the same request.
Everything is computed only when ``allow_train`` is set; otherwise a missing file is named in the
error, and a file made for another request names the fields that differ.

A result is asked for by its run: a :class:`~.runs.Run`, or a phase name, "before" (the base
model), "after" (the profile's Dem-HEC config, or ``config`` under the file name ``tag``) or
"baseline:<method>" (:func:`as_run`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._common import DemHECError, check_choice
from ..adaptation import AdaptConfig
from ..data import subset
from ..entropy import layer_entropy, layer_widths
from ..evaluation import as_float_images, cell_logits, evaluate, scored_rows
from ..results import fingerprint, get_or_compute
from ..training import DemHECConfig
from .halves import EVAL_HALVES, HALF_SEED, eval_halves, half_description, pack_outcomes
from .inputs import (
    build_eval_cache,
    checked_corrupted_sets,
    corrupted_eval_kw,
    data_request,
    eval_data,
    provenance,
    scored_on,
)
from .layout import Request, result_path
from .model_cache import run_model, run_spec
from .profiles import Experiment, experiment_config
from .runs import BASE, Run, baseline, changed_fields, of_config


def as_run(exp: Experiment, phase: Run | str, config: DemHECConfig | None = None, tag: str | None = None) -> Run:
    """The run a request names: ``phase`` itself when it is a :class:`~.runs.Run`; "before" the
    base model; "baseline:<method>" a Table 3 baseline; "after" the fine-tune with ``config``
    (default: the profile's), named ``tag`` in its result files and checkpoint alike when given,
    else after its changes to the profile's config (:func:`.runs.of_config`)."""
    if isinstance(phase, Run):
        if config is not None or tag is not None:
            raise DemHECError("a run carries its own config and file names: give config and tag with a phase name only")
        return phase
    if phase == "after":
        if tag is None:
            return of_config(exp.demhec_config, config)
        return Run(tag, tag, "", changed_fields(exp.demhec_config, config), stem=tag, model_name=tag)
    if config is not None or tag is not None:
        raise DemHECError(f"config and tag name a fine-tune; phase {phase!r} is not one")
    if phase == "before":
        return BASE
    if phase.startswith("baseline:"):
        return baseline(phase.split(":", 1)[1])
    raise DemHECError(f"unknown phase {phase!r}; valid: before, after, baseline:<method>")


def result_spec(exp: Experiment, kind: str, model: dict[str, Any] | None, **scored: Any) -> dict[str, Any]:
    """The fingerprint of a result: its kind, the model's spec (:func:`.model_cache.model_spec`),
    the evaluation images and how they were corrupted and scored (``scored``: suite, corruptions,
    severities, corruption seed, ...)."""
    return fingerprint({"kind": kind, "experiment": {"profile": exp.profile, "seed": exp.seed},
                        "model": model, "data": data_request(exp, "test"), **scored})


def _grid(corruptions: Sequence[str] | None, severities: Sequence[int] | None) -> tuple[list[str], list[int]]:
    from ..corruptions import PAPER_CORRUPTIONS, PAPER_SEVERITIES

    return (list(PAPER_CORRUPTIONS if corruptions is None else corruptions),
            list(PAPER_SEVERITIES if severities is None else severities))


def _scored(suite: str, corruptions: list[str], severities: list[int], adapt: str | None) -> dict[str, Any]:
    scored = scored_on(suite, corruptions=corruptions, severities=severities)
    if adapt is not None:
        scored["adapt"] = dataclasses.replace(AdaptConfig(), method=adapt)
    return scored


def robustness_result(exp: Experiment, phase: Run | str = "before", suite: str = "cifar-c",
                      corruptions: Sequence[str] | None = None, severities: Sequence[int] | None = None, *,
                      config: DemHECConfig | None = None, tag: str | None = None, adapt: str | None = None) -> dict:
    """The JSON result of evaluating a run's model (:func:`as_run`: a Run, or "before", "after",
    "baseline:<method>") on clean data and on every corruption cell; with ``adapt`` ("bn",
    "tent"), adapted at test time (:mod:`demhec.adaptation`, its default settings) and timed
    against a plain evaluation of the same model on the same cached sets."""
    run = as_run(exp, phase, config, tag)
    corruptions, severities = _grid(corruptions, severities)
    path = result_path(exp, run, Request(suite=suite, corruptions=corruptions, adapt=adapt))
    spec = run_spec(exp, run)
    scored = _scored(suite, corruptions, severities, adapt)
    kind = f"robustness/{run.phase}" + (f"+{adapt}" if adapt else "")

    def compute() -> dict:
        data = eval_data(exp)
        sets = checked_corrupted_sets(exp, suite, corruptions, severities)
        model = run_model(exp, run, len(data.classes))
        score = functools.partial(evaluate, model, data, corruptions, severities, suite, **corrupted_eval_kw(exp))
        extra_config, extra_metrics = {}, {}
        if adapt is not None:
            build_eval_cache(exp, suite, corruptions, severities)  # so neither timing includes it
            t0 = time.perf_counter()
            score()
            plain = time.perf_counter() - t0
            t0 = time.perf_counter()
            table = score(adapt=adapt)
            adapted = time.perf_counter() - t0
            extra_config = {"torch_threads": torch.get_num_threads()}
            extra_metrics = {"seconds_plain": plain, "seconds_adapted": adapted,
                             "relative_cost": adapted / plain}
        else:
            table = score()
        return dict(kind=kind, profile=exp.profile,
                    config={"experiment": experiment_config(exp), "model": spec["config"], **scored,
                            **extra_config},
                    metrics={"clean_accuracy": float(table.loc[table.corruption == "clean", "accuracy"].iloc[0]),
                             "table": table, **extra_metrics},
                    data=_scored_images(data, sets), seed=exp.seed)

    return get_or_compute(path, compute, fingerprint=result_spec(exp, kind, spec, **scored),
                          allow_train=exp.allow_train, recompute=exp.recompute,
                          what=f"{run.stem}{' + ' + adapt if adapt else ''} on {suite}")


def _scored_images(data: Any, sets: str | None) -> dict[str, str]:
    """A result's ``data``: the evaluation images' provenance and, for generated corrupted sets,
    the digest of those it scored (:func:`.inputs.sets_digest`)."""
    return {**provenance(data), **({"corrupted_sets_sha256": sets} if sets else {})}


def halves_result(exp: Experiment, phase: Run | str = "before", suite: str = "cifar-c",
                  corruptions: Sequence[str] | None = None, severities: Sequence[int] | None = None, *,
                  config: DemHECConfig | None = None, tag: str | None = None, run: str | None = None,
                  adapt: str | None = None) -> dict[str, dict]:
    """A run's model (:func:`as_run`: a Run, "before" or "after") scored on each half of the
    evaluation split: {"selection": record, "report": record}, each a robustness result of its
    half (``split`` names it, at the top level and in its config) with, per cell, every image's
    outcome (``metrics.correct``, :func:`.halves.pack_outcomes`) for paired comparisons. ``run``
    is the name the records give the run (default: a Run's own name). Both halves come from one
    scoring of the whole split on the same corrupted images as :func:`robustness_result`, so the
    two halves' correct counts add up to its counts. With ``adapt`` ("bn", "tent":
    :mod:`demhec.adaptation` at its default settings) the model is adapted at test time to each
    half of each set separately, so neither half's images shape the other's predictions."""
    model_run = as_run(exp, phase, config, tag)
    check_choice("phase of a halves result", model_run.phase, ("before", "after"))
    recorded = run if run is not None or not isinstance(phase, Run) else phase.name
    corruptions, severities = _grid(corruptions, severities)
    spec = run_spec(exp, model_run)
    scored = _scored(suite, corruptions, severities, adapt)
    kind = f"robustness/{model_run.phase}" + (f"+{adapt}" if adapt else "")

    @functools.cache
    def scored_all() -> tuple[Any, dict, np.ndarray, str | None]:
        data = eval_data(exp)
        sets = checked_corrupted_sets(exp, suite, corruptions, severities)
        model = run_model(exp, model_run, len(data.classes))
        groups = list(eval_halves(data.labels).values()) if adapt is not None else None
        return data, cell_logits(model, data, corruptions, severities, suite, adapt=adapt, groups=groups,
                                 **corrupted_eval_kw(exp)), data.labels, sets

    def compute(half: str) -> dict:
        data, logits, labels, sets = scored_all()
        idx = eval_halves(labels)[half]
        table = scored_rows(logits, labels, idx)
        y = np.asarray(labels)[idx]
        correct = {f"{c}/{s}": pack_outcomes(z.argmax(1).numpy()[idx] == y) for (c, s), z in logits.items()}
        return dict(kind=kind, profile=exp.profile, split=half,
                    config={"experiment": experiment_config(exp), "model": spec["config"], **scored,
                            "run": recorded, "split": half, "split_seed": HALF_SEED},
                    metrics={"clean_accuracy": float(table.loc[table.corruption == "clean", "accuracy"].iloc[0]),
                             "table": table, "correct": correct, "n": len(idx)},
                    data={**_scored_images(data, sets), "half": half_description(half), "count": str(len(idx)),
                          "split_count": str(len(labels))},
                    seed=exp.seed)

    out = {}
    for half in EVAL_HALVES:
        path = result_path(exp, model_run, Request(suite=suite, corruptions=corruptions, adapt=adapt, half=half))
        out[half] = get_or_compute(path, functools.partial(compute, half),
                                   fingerprint=result_spec(exp, kind, spec, **scored, split=half,
                                                           split_seed=HALF_SEED),
                                   allow_train=exp.allow_train, recompute=exp.recompute,
                                   what=f"{model_run.stem} on {suite}, {half} half")
    return out


def halves_path(exp: Experiment, tag: str, suite: str, half: str, *,
                corruptions: Sequence[str] | None = None, adapt: str | None = None) -> Path:
    """Where :func:`halves_result` keeps the ``half`` of the run whose files carry ``tag``
    (:func:`.layout.result_path`)."""
    return result_path(exp, tag, Request(suite=suite, corruptions=corruptions, adapt=adapt, half=half))


def entropy_result(exp: Experiment, phase: Run | str, corruption: str, severity: int,
                   suite: str = "cifar-c", pooled: bool = False, *, config: DemHECConfig | None = None,
                   tag: str | None = None, half: str | None = None) -> dict:
    """Per-layer entropies (eq. 4) of clean vs corrupted evaluation images (Figures 3-4) of a
    run's model (:func:`as_run`: a Run, "before" or "after"), with each layer's log(width)
    (``metrics.log_width``) so that layers of different widths can be compared on one scale
    (:func:`.tables.entropy_summary` with ``normalised=True``). ``half`` ("selection" or
    "report") draws the images from that half of the evaluation split, so that the entropy of a
    configuration chosen on one half is shown on the other."""
    from ..corruptions import SUITES, corrupt_split

    # Figures 3-4 corrupt a subset of the evaluation images, which the released files (the
    # whole test set, corrupted) do not hold by index.
    check_choice("suite of the entropy figures", suite, SUITES)
    run = as_run(exp, phase, config, tag)
    check_choice("phase of an entropy result", run.phase, ("before", "after"))
    if half is not None:
        check_choice("half of the evaluation split", half, EVAL_HALVES)
    path = result_path(exp, run, Request("entropy", suite, half=half, corruption=corruption, severity=severity,
                                         pooled=pooled))
    spec = run_spec(exp, run)
    scored = scored_on(suite, corruption=corruption, severity=severity, pooled=pooled,
                       images=exp.prof.entropy_images, images_seed=1, log_width=True)
    split = {"split": half, "split_seed": HALF_SEED} if half else {}

    def compute() -> dict:
        data = eval_data(exp)
        if half is not None:
            idx = eval_halves(data.labels)[half]
            data = dataclasses.replace(data, images=data.images[idx], labels=data.labels[idx],
                                       provenance={**data.provenance, "half": half_description(half)})
        data = subset(data, exp.prof.entropy_images, seed=scored["images_seed"])
        model = run_model(exp, run, len(data.classes))
        corrupted = corrupt_split(data.images, corruption, severity, suite=suite, seed=scored["corruption_seed"])

        def entropies(images: np.ndarray) -> dict:
            x = as_float_images(images, exp.device)
            ent = layer_entropy(model, x, pooled=pooled, batch_size=exp.prof.eval_batch_size)
            return {n: [round(float(v), 6) for v in e] for n, e in ent.items()}

        clean = entropies(data.images)
        widths = layer_widths(model, as_float_images(data.images[:1], exp.device), list(clean), pooled=pooled)
        return dict(kind=f"entropy/{run.phase}", profile=exp.profile, **({"split": half} if half else {}),
                    config={"experiment": experiment_config(exp), "model": spec["config"],
                            "corruption": corruption, "severity": severity, "suite": suite, "pooled": pooled,
                            **split},
                    metrics={"clean": clean, "corrupted": entropies(corrupted),
                             "log_width": {n: round(math.log(d), 6) for n, d in widths.items()}},
                    data=provenance(data), seed=exp.seed)

    return get_or_compute(path, compute, fingerprint=result_spec(exp, f"entropy/{run.phase}", spec, **scored, **split),
                          allow_train=exp.allow_train, recompute=exp.recompute,
                          what=f"entropy {run.stem} {corruption} S{severity}{f' ({half} half)' if half else ''}")
