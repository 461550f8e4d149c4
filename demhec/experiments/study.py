"""The CPU reproduction's study of its controls and ablations, run by name: each run of
:mod:`.runs` fine-tuned from the experiment's base model with its seed and scored like the main
run, on the whole evaluation split or on its two halves; what exists of them, read without
computing anything; the divergences recorded as outcomes; and the committed exports."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from .._common import atomic_write
from ..evaluation import paired_gain
from ..results import get_or_compute, git_commit, read_result, versions, write_result
from .halves import EVAL_HALVES
from .inputs import corrupted_eval_kw, eval_data, provenance, scored_on, train_data
from .layout import Request, model_path, result_path
from .model_cache import base_model, run_model, run_spec
from .pipeline import entropy_result, halves_result, result_spec, robustness_result
from .profiles import Experiment, experiment_config
from .runs import BASE, CONTROL_RUNS, NOISE, Run, control_of, get


def _run(name: str) -> Run:
    return BASE if name == "before" else get(name)


def ablation_checkpoint(exp: Experiment, run: str) -> Path:
    """Where :func:`ablation_model` keeps the fine-tuned state dict of ``run`` for this seed (a
    script asks whether it exists to tell a fine-tune from a re-scoring of a kept model)."""
    return model_path(exp, get(run))


def ablation_model(exp: Experiment, run: str) -> nn.Module:
    """The model of the study's ``run`` (:func:`.runs.get`), fine-tuned from the base model
    (cached like :func:`ablation_result`'s, which then only evaluates it)."""
    return run_model(exp, get(run))


def ablation_result(exp: Experiment, run: str, suite: str = "cifar-c",
                    severities: Sequence[int] | None = None) -> dict:
    """The robustness result of the study's ``run`` fine-tuned from the experiment's base model
    with its seed; "demhec" is the profile's run."""
    return robustness_result(exp, get(run), suite, severities=severities)


def ablation_halves(exp: Experiment, run: str, suite: str = "cifar-c",
                    severities: Sequence[int] | None = None) -> dict[str, dict]:
    """The study's ``run`` scored on each half of the evaluation split
    (:func:`.pipeline.halves_result`): {"selection": record, "report": record}."""
    return halves_result(exp, get(run), suite, severities=severities)


def ablation_entropy(exp: Experiment, run: str, corruption: str, severity: int, suite: str = "cifar-c",
                     half: str | None = "report", pooled: bool = False) -> dict:
    """Figures 3-4's per-layer entropies (:func:`.pipeline.entropy_result`) of ``run``: "before"
    is the base model, any other name a run of the study ("demhec" the profile's config); by
    default on the report half, the one no configuration is chosen on."""
    return entropy_result(exp, _run(run), corruption, severity, suite, pooled, half=half)


def entropy_records(exp: Experiment, runs: Sequence[str], corruptions: Sequence[str], severity: int = 5,
                    suite: str = "cifar-c", half: str | None = "report"
                    ) -> tuple[dict[tuple[str, str], dict], list[tuple[str, str]]]:
    """Figures 3-4's records (:func:`ablation_entropy`) of each (run, corruption): computed where
    ``exp.allow_train`` allows it, otherwise read where the file exists; the rest are returned as
    missing, so a notebook shows what there is and names what is not there yet."""
    got, missing = {}, []
    for run in runs:
        for corruption in corruptions:
            request = Request("entropy", suite, half=half, corruption=corruption, severity=severity)
            if exp.allow_train or result_path(exp, _run(run), request).exists():
                got[(run, corruption)] = ablation_entropy(exp, run, corruption, severity, suite, half)
            else:
                missing.append((run, corruption))
    return got, missing


def existing_halves(exp: Experiment, runs: Sequence[str], seeds: Sequence[int] = (0,), suite: str = "cifar-c"
                    ) -> tuple[dict[str, dict] | None, dict[tuple[str, int], dict[str, dict]]]:
    """The halves results of the base model and of each (run, seed) whose two files exist, read
    (fingerprints checked, nothing computed): ``(base, {(run, seed): {"selection": .., "report": ..}})``,
    base None when its files are missing. What a notebook shows of runs still in progress."""
    exp = dataclasses.replace(exp, allow_train=False)

    def present(run: Run, seed: int) -> bool:
        at = dataclasses.replace(exp, seed=seed)
        return all(result_path(at, run, Request(suite=suite, half=h)).exists() for h in EVAL_HALVES)

    first = dataclasses.replace(exp, seed=0)  # one base model for every seed
    base = halves_result(first, "before", suite) if present(BASE, 0) else None
    runs_out = {}
    for seed in seeds:
        for run in runs:
            if present(get(run), seed):
                runs_out[(run, seed)] = ablation_halves(dataclasses.replace(exp, seed=seed), run, suite)
    return base, runs_out


def same_base_halves(exp: Experiment, other_base: dict[str, dict] | None) -> dict[str, dict] | None:
    """``other_base`` (another profile's base halves, as :func:`existing_halves` returns them) when
    that profile starts from ``exp``'s committed base checkpoint: its results record the state
    dict's sha256 (``Profile.base_weights``), so they score the same model on the same images;
    None otherwise."""
    path = exp.checkpoint("base")
    if other_base is None or not path.exists():
        return None
    recorded = other_base["report"]["config"]["experiment"].get("base_weights", {}).get("sha256")
    return other_base if recorded == hashlib.sha256(path.read_bytes()).hexdigest() else None


def paired_gain_result(exp: Experiment, run: str, suite: str = "cifar-c", severity: int = 5) -> dict:
    """The acceptance quantities of ``run`` (its change from the base model on clean images and
    on the three noises' mean at ``severity``) with the standard errors that the finite
    evaluation set puts on them (:func:`demhec.evaluation.paired_gain`): is a target met by more
    than the evaluation set's noise? Uses the same checkpoints as :func:`ablation_result`."""
    from ..corruptions import check_severity

    check_severity(severity)
    the_run = get(run)
    spec = run_spec(exp, the_run)
    scored = {"run": run, **scored_on(suite, corruptions=list(NOISE), severity=severity)}

    def compute() -> dict:
        data = eval_data(exp)
        k = len(data.classes)
        gains = paired_gain(base_model(exp, k), run_model(exp, the_run, k), data, NOISE, severity, suite,
                            **corrupted_eval_kw(exp))
        return dict(kind="paired/after", profile=exp.profile,
                    config={"experiment": experiment_config(exp), "model": spec["config"], **scored},
                    metrics=gains, data=provenance(data), seed=exp.seed)

    path = result_path(exp, the_run, Request("paired", suite, severity=severity))
    return get_or_compute(path, compute, fingerprint=result_spec(exp, "paired/after", spec, **scored),
                          allow_train=exp.allow_train, recompute=exp.recompute,
                          what=f"{run} vs base, paired, on {suite}")


def export_checkpoints(exp: Experiment, run: str) -> dict[str, Path]:
    """Copy the seed-``exp.seed`` state dicts of ``run`` (the recommended configuration) and of
    its controls (:func:`.runs.control_of`) to ``<checkpoints>/<backbone>_<name>.pt`` for each
    name of :data:`.runs.EXPORTED`, each with its fingerprint and a manifest
    (``<backbone>_recommended.json``: which run each file holds, its config and sha256), so a
    file can be checked on other images without this repository's caches. The models are trained
    where missing (like :func:`ablation_model`)."""
    sources = {"recommended": run, **{c: control_of(c, run) for c in CONTROL_RUNS}}
    manifest = {}
    out = {}
    for name, source in sources.items():
        ablation_model(exp, source)  # trains it where its checkpoint is missing
        cfg = get(source).config(exp.demhec_config)
        cached = ablation_checkpoint(exp, source)
        target = exp.checkpoint(name)
        shutil.copyfile(cached, target)
        shutil.copyfile(cached.with_suffix(".fingerprint.json"), target.with_suffix(".fingerprint.json"))
        manifest[name] = {"run": source, "label": get(source).label, "seed": exp.seed,
                          "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
                          "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}}
        out[name] = target
    record = {"kind": "checkpoints", "profile": exp.profile, "seed": exp.seed, "files": manifest,
              "data": provenance(train_data(exp)),
              "versions": versions(), "git_commit": git_commit()}
    with atomic_write(exp.checkpoint("recommended").with_suffix(".json"), "w") as f:
        json.dump(record, f, indent=1, default=str)
    return out


def divergence_path(exp: Experiment, run: str, suite: str = "cifar-c") -> Path:
    """Where :func:`record_divergence` writes that ``run``'s fine-tune diverged."""
    return result_path(exp, get(run), Request("diverged", suite))


def _divergence_spec(exp: Experiment, run: str, suite: str) -> dict[str, Any]:
    return result_spec(exp, "diverged", run_spec(exp, get(run)), suite=suite)


def record_divergence(exp: Experiment, run: str, error: Any, suite: str = "cifar-c") -> dict:
    """Write that ``run``'s fine-tune diverged (``error``, a :class:`~demhec._common.TrainingDiverged`:
    the step, what was non-finite, the loss terms of that step) as its result, so the tables list
    the run as diverged instead of leaving it out."""
    return write_result(divergence_path(exp, run, suite), kind="diverged", profile=exp.profile,
                        config={"experiment": experiment_config(exp), "model": run_spec(exp, get(run))["config"],
                                "run": run, "suite": suite},
                        metrics={"step": error.step, "what": error.what, "losses": error.parts, "message": str(error)},
                        data=provenance(train_data(exp)), seed=exp.seed,
                        fingerprint=_divergence_spec(exp, run, suite))


def existing_divergences(exp: Experiment, runs: Sequence[str], suite: str = "cifar-c") -> dict[str, dict]:
    """The divergence records of ``runs`` (seed ``exp.seed``) whose file exists and was made with
    the run's current config (a record of another config is not this run's)."""
    out = {}
    for run in runs:
        path = divergence_path(exp, run, suite)
        if path.exists():
            rec = read_result(path)
            if rec.get("fingerprint") == _divergence_spec(exp, run, suite):
                out[run] = rec
    return out
