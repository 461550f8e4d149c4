"""Should a practitioner use Dem-HEC? The methods the paper compares against (Tables 3-4) and the
simple alternatives, each fine-tuned from one base model at A.3's full schedule on the CPU.

Every row is a :class:`Run`: a name, how tables label it, its family, and its changes to A.3's
Dem-HEC config (``DemHECConfig()``), fine-tuned from the CPU reproduction's committed ResNet-20
base with the paper's trainable layers ("auto": stem and first stage frozen). A compared method
replaces eq. 12 by its own loss (``method``, :mod:`demhec.baselines`) with Dem-HEC's terms off, as
the plain fine-tune does. The push-pull ResNet-20 (Ranabhat et al., 2025) is an architecture: its
base is trained from scratch with the committed base's own recipe and compared with that base, and
Dem-HEC on top of it is one more row.

Each model is scored on both halves of the evaluation split (:func:`~.pipeline.halves_result`):
clean and the fifteen corruptions at severities 1-5, and with BatchNorm adaptation and TENT on the
paper's seven corruptions at S1/S3/S5. Models live in ``results/cpu/checkpoints/a3/`` with a
manifest (:func:`write_manifest`) so that they can be checked on images the project never saw.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from .._common import atomic_write, check_choice
from ..training import DemHECConfig
from .halves import EVAL_HALVES
from .layout import model_path
from .model_cache import base_model, demhec_model
from .pipeline import halves_path, halves_result
from .profiles import REPO_ROOT, Experiment
from .runs import Run, gaussian_aug_sigma

__all__ = ["ADAPTATIONS", "COMPARISON", "CPU_SEEDS", "GPU_SEEDS", "GPU_TWIN", "PROFILE", "Run", "checkpoint_path", "comparison_experiment",
           "comparison_run", "is_fully_scored", "is_scored", "resume_checkpoint", "resumes", "run_config", "run_tag", "score_grid", "score_run", "stage_name", "train_run_model",
           "write_manifest"]

PROFILE = "a3"
ADAPTATIONS = ("bn", "tent")
PLAIN = {"alpha": 0.0, "lambda_c": 0.0, "lambda_kd": 0.0}  # clean cross-entropy only


def _method(name: str) -> dict[str, Any]:
    return {**PLAIN, "method": name}


COMPARISON: tuple[Run, ...] = (
    Run("base", "ResNet-20 base (no fine-tune)", "base", fine_tuned=False),
    Run("demhec", "Dem-HEC (eq. 12)", "Dem-HEC"),
    Run("plain", "Pad-Crop (plain fine-tune)", "compared method", PLAIN),
    Run("trivialaugment", "TA", "compared method", _method("trivialaugment")),
    Run("autoaugment", "AA", "compared method", _method("autoaugment")),
    Run("ba", "BA", "compared method", _method("ba")),
    Run("ba_aa", "BA (AA)", "compared method", _method("ba_aa")),
    Run("augmix", "AugMix", "compared method", _method("augmix")),
    Run("augmax", "AugMax", "compared method", _method("augmax")),
    Run("ipmix", "IPMix", "compared method", _method("ipmix")),
    Run("dv_ap_jsd", "DV+AP+JSD", "compared method", _method("dv_ap_jsd")),
    Run("gaussian_aug", "Gaussian-noise augmentation", "control",
        lambda: {**PLAIN, "noise_sigma": gaussian_aug_sigma()}),
    Run("random_noise", "random noise in the eps-ball (no ascent)", "control", {"samples": "uniform"}),
    Run("pushpull_base", "push-pull ResNet-20 (Ranabhat et al., 2025)", "architecture",
        backbone="resnet20_pushpull", fine_tuned=False),
    Run("pushpull_demhec", "Dem-HEC on the push-pull ResNet-20", "Dem-HEC", backbone="resnet20_pushpull"),
)
RUNS = {r.name: r for r in COMPARISON}


def comparison_run(name: str) -> Run:
    """The run called ``name``; a typo fails listing the valid names."""
    return RUNS[check_choice("comparison run", name, RUNS)]


# The same comparison trained on a GPU at three seeds (scripts/gpu_reproduction.py), beside each
# profile of it.
GPU_TWIN = {PROFILE: "gpu_a3", "a3_smoke": "gpu_a3_smoke"}
GPU_SEEDS = (0, 1, 2)
# The CPU comparison's seeds: the table and verdict are seed 0's; seed 1 checks them where it is run.
CPU_SEEDS = (0, 1)


def comparison_experiment(run: Run, profile: str = PROFILE, **kw: Any) -> Experiment:
    """The A.3 setting of ``run``'s backbone (``kw``: other :class:`~.pipeline.Experiment` fields;
    ``profile`` "a3_smoke" is its test-sized twin)."""
    return Experiment(profile=profile, dataset="cifar10_jpeg", backbone=run.backbone, **kw)


def run_config(exp: Experiment, run: Run) -> DemHECConfig | None:
    """``run``'s config: the experiment's (A.3's, with its seed) with the run's changes (None for
    a base)."""
    return run.config(exp.demhec_config)


def run_tag(run: Run) -> str:
    """The name of ``run``'s result files and checkpoint: a base is the "before" of its
    backbone's folder; a fine-tune is named after its run, the push-pull Dem-HEC after the method
    (its backbone's folder tells it apart)."""
    if not run.fine_tuned:
        return "before"
    return "demhec" if run.name == "pushpull_demhec" else run.name


def train_run_model(run: Run, exp: Experiment) -> Any:
    """The model of ``run`` (trained when missing and ``exp.allow_train``; resumable)."""
    if not run.fine_tuned:
        return base_model(exp, 10)
    return demhec_model(exp, run_config(exp, run), tag=run_tag(run), num_classes=10)


def score_grid(adapt: str | None = None) -> dict[str, list]:
    """The cells a run is scored on: clean and the fifteen corruptions at severities 1-5, or with
    ``adapt`` ("bn", "tent") the paper's seven corruptions at S1/S3/S5."""
    from ..corruptions import CORRUPTIONS, PAPER_CORRUPTIONS, PAPER_SEVERITIES

    if adapt is not None:
        check_choice("test-time adaptation", adapt, ADAPTATIONS)
        return dict(corruptions=list(PAPER_CORRUPTIONS), severities=list(PAPER_SEVERITIES))
    return dict(corruptions=list(CORRUPTIONS), severities=[1, 2, 3, 4, 5])


def score_run(run: Run, exp: Experiment, adapt: str | None = None) -> dict[str, dict]:
    """``run`` on both halves, on :func:`score_grid`'s cells (computed when missing and
    ``exp.allow_train``)."""
    grid = score_grid(adapt)
    if not run.fine_tuned:
        return halves_result(exp, "before", "cifar-c", **grid, run=run.name, adapt=adapt)
    return halves_result(exp, "after", "cifar-c", **grid, config=run_config(exp, run), tag=run_tag(run),
                         run=run.name, adapt=adapt)


def is_scored(run: Run, exp: Experiment, adapt: str | None = None) -> bool:
    """Whether both halves' files of ``run`` (with ``adapt``) exist (their fingerprints are checked
    when :func:`score_run` reads them)."""
    return all(halves_path(exp, run_tag(run), "cifar-c", h, corruptions=score_grid(adapt)["corruptions"],
                           adapt=adapt).exists() for h in EVAL_HALVES)


def is_fully_scored(run: Run, exp: Experiment) -> bool:
    """Whether ``run`` is scored every way (unadapted and with each of :data:`ADAPTATIONS`): its
    state dict is needed no more."""
    return all(is_scored(run, exp, adapt) for adapt in (None, *ADAPTATIONS))


def checkpoint_path(run: Run, exp: Experiment) -> Path:
    """Where ``run``'s state dict lives for ``exp``'s seed (the committed base for the ResNet-20
    base): where :func:`train_run_model` writes it, ``_seedN`` for a seed other than 0."""
    if not run.fine_tuned:
        return REPO_ROOT / exp.base_weights_path if exp.base_weights_path else exp.checkpoint("base")
    return model_path(exp, run_tag(run))


def resume_checkpoint(run: Run, exp: Experiment) -> Path | None:
    """The resume checkpoint training ``run`` continues from, or None: the ``.ckpt`` beside where
    :func:`checkpoint_path` puts the state dict, while the state dict is not written yet."""
    path = checkpoint_path(run, exp)
    resume = path.with_suffix(".ckpt")
    return resume if resume.is_file() and not path.exists() else None


def resumes(run: Run, exp: Experiment) -> bool:
    """Whether training ``run`` continues from a resume checkpoint (:func:`resume_checkpoint`): a
    resumed run's wall time covers only the steps that were left."""
    return resume_checkpoint(run, exp) is not None


def stage_name(run: Run, exp: Experiment, what: str) -> str:
    """The name under which the queue records the wall time of ``what`` (e.g. "model (A.3)") for
    ``run`` at ``exp``'s seed: one record per run, seed and stage (a seed other than 0 is named,
    so that a second seed's times never replace the first's)."""
    who = run.name if exp.seed == 0 else f"{run.name} seed {exp.seed}"
    return f"{who} {what}"


def write_manifest(exp: Experiment) -> Path:
    """``manifest.json`` in ``exp``'s checkpoint folder (``results/cpu/checkpoints/a3/``): every
    comparison run whose state dict exists, as ``{"model": <name for demhec.get_model>, "file":
    <path from the repository root>, "sha256": ...}``, each loading with
    ``demhec.get_model(model, num_classes=10, pretrained=file)``."""
    entries = {}
    for run in COMPARISON:
        path = checkpoint_path(run, replace(exp, backbone=run.backbone))
        if not path.is_file():
            continue
        try:
            file = path.resolve().relative_to(REPO_ROOT).as_posix()
        except ValueError:  # a results_dir outside the checkout (tests)
            file = path.resolve().as_posix()
        entries[run.name] = {"model": run.backbone, "file": file,
                             "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    out = exp.checkpoint("base").parent / "manifest.json"
    with atomic_write(out, "w") as f:
        json.dump(entries, f, indent=1)
        f.write("\n")
    return out
