"""The controls and ablations of the CPU reproduction: each run is the profile's Dem-HEC config
with named changes, fine-tuned from the same base model and scored like the main run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from torch import nn

from .._common import check_choice
from ..results import get_or_compute
from ..training import DemHECConfig
from .pipeline import (
    Experiment,
    base_model,
    corrupted_eval_kw,
    demhec_config,
    demhec_model,
    eval_data,
    experiment_config,
    model_spec,
    provenance,
    result_spec,
    robustness_result,
    scored_on,
)


def _budget(factor: int) -> Callable[[DemHECConfig], dict[str, Any]]:
    """``factor`` times the steps of the same schedule (warm-up share and cosine). max_steps only
    caps epochs x steps per epoch, so the epochs and their warm-up scale with it: scaling
    max_steps alone stops a budget longer than the epochs allow at their end."""
    def overrides(cfg: DemHECConfig) -> dict[str, Any]:
        scaled = dict(epochs=factor * cfg.epochs, warmup_epochs=factor * cfg.warmup_epochs)
        if cfg.max_steps is not None:
            scaled["max_steps"] = factor * cfg.max_steps
        return scaled
    return overrides


# Each run is the profile's Dem-HEC config with these changes, on the same base model and step
# budget. The ascent step is kept at eps/4 (as at the default 8/255 -> 2/255) so the eps runs
# change the radius, not the shape of the ascent. From "low_lr" on, the runs are not ablations but
# what was tried to close the clean-accuracy gap: the schedule (a lower learning rate, more steps;
# relative to the profile's config, so functions of it), the BatchNorm statistics ("bn_clean":
# does the high-entropy pass's batch move them?), which depth trains (the freezing runs), and
# freezing the *late* stages, the opposite of the paper's "freeze early layers": alone, then with
# the smaller radius and learning rate that cost the least clean accuracy, and that config's
# plain-fine-tune control.
ABLATIONS: dict[str, dict[str, Any] | Callable[[DemHECConfig], dict[str, Any]]] = {
    "demhec": {},
    "plain": dict(alpha=0.0, lambda_c=0.0, lambda_kd=0.0),  # clean cross-entropy only
    "no_he_ce": dict(alpha=0.0),
    "no_infonce": dict(lambda_c=0.0),
    "no_kd": dict(lambda_kd=0.0),
    "eps4": dict(eps=4 / 255, step_size=1 / 255),
    "eps16": dict(eps=16 / 255, step_size=4 / 255),
    "features": dict(objective="features"),
    "low_entropy": dict(direction="low"),
    "low_lr": lambda cfg: dict(lr=cfg.lr / 5),
    "budget_x2": _budget(2),
    "budget_x4": _budget(4),
    "bn_clean": dict(bn="clean"),
    "freeze_more": dict(freeze="stages:2"),
    "freeze_none": dict(freeze="none"),
    "late_frozen": dict(freeze="after:2"),
    "late_frozen_tuned": lambda cfg: dict(freeze="after:2", eps=4 / 255, step_size=1 / 255, lr=cfg.lr / 5),
    "plain_late_frozen_tuned": lambda cfg: dict(alpha=0.0, lambda_c=0.0, lambda_kd=0.0, freeze="after:2",
                                                lr=cfg.lr / 5),
}
ABLATION_LABELS = {
    "demhec": "Dem-HEC (eq. 12)",
    "plain": "plain fine-tune (clean CE only)",
    "no_he_ce": "without high-entropy CE (alpha = 0)",
    "no_infonce": "without InfoNCE (lambda_C = 0)",
    "no_kd": "without KD (lambda_KD = 0)",
    "eps4": "eps = 4/255",
    "eps16": "eps = 16/255",
    "features": "entropy of penultimate features",
    "low_entropy": "low-entropy samples (Democratic Training direction)",
    "low_lr": "learning rate / 5 (same budget)",
    "budget_x2": "twice the step budget (same lr)",
    "budget_x4": "four times the step budget (same lr)",
    "bn_clean": "running BatchNorm statistics from clean passes only",
    "freeze_more": "stem + first two stages frozen",
    "freeze_none": "nothing frozen",
    "late_frozen": "stages after the second frozen (stem + stages 1-2 train)",
    "late_frozen_tuned": "late stages frozen, eps = 4/255, learning rate / 5",
    "plain_late_frozen_tuned": "plain fine-tune, late stages frozen, learning rate / 5",
}
# Which question each run answers, for grouping them in figures (notebook 09's trade-off plot).
ABLATION_FAMILIES = {
    "demhec": "Dem-HEC and its control", "plain": "Dem-HEC and its control",
    "no_he_ce": "loss terms removed", "no_infonce": "loss terms removed", "no_kd": "loss terms removed",
    "eps4": "high-entropy samples", "eps16": "high-entropy samples", "features": "high-entropy samples",
    "low_entropy": "high-entropy samples",
    "low_lr": "schedule and BatchNorm probes", "budget_x2": "schedule and BatchNorm probes",
    "budget_x4": "schedule and BatchNorm probes", "bn_clean": "schedule and BatchNorm probes",
    "freeze_more": "which layers train", "freeze_none": "which layers train", "late_frozen": "which layers train",
    "late_frozen_tuned": "late stages frozen, tuned", "plain_late_frozen_tuned": "late stages frozen, tuned",
}
# The late-freezing config and its control are compared over the main runs' seeds too.
LATE_RUNS = ("late_frozen_tuned", "plain_late_frozen_tuned")
NOISE = ("gaussian_noise", "shot_noise", "impulse_noise")


def _ablation_config(exp: Experiment, run: str) -> tuple[DemHECConfig, str]:
    check_choice("run", run, ABLATIONS)
    overrides = ABLATIONS[run]
    if callable(overrides):
        overrides = overrides(exp.demhec_config)
    return demhec_config(exp, **overrides), "after" if run == "demhec" else f"after_{run}"


def ablation_model(exp: Experiment, run: str) -> nn.Module:
    """The model of one control/ablation ``run``, fine-tuned from the base model (cached like
    :func:`ablation_result`'s, which then only evaluates it)."""
    cfg, tag = _ablation_config(exp, run)
    return demhec_model(exp, replace(cfg, seed=exp.seed), tag=tag.replace("after", "demhec", 1))


def ablation_result(exp: Experiment, run: str, suite: str = "cifar-c",
                    severities: Sequence[int] | None = None) -> dict:
    """The robustness result of one control/ablation ``run`` (a key of :data:`ABLATIONS`)
    fine-tuned from the experiment's base model with its seed; "demhec" is the profile's run."""
    cfg, tag = _ablation_config(exp, run)
    return robustness_result(exp, "after", suite, severities=severities, config=cfg, tag=tag)


def paired_gain_result(exp: Experiment, run: str, suite: str = "cifar-c", severity: int = 5) -> dict:
    """The acceptance quantities of ``run`` (its change from the base model on clean images and
    on the three noises' mean at ``severity``) with the standard errors that the finite
    evaluation set puts on them (:func:`demhec.evaluation.paired_gain`): is a target met by more
    than the evaluation set's noise? Uses the same checkpoints as :func:`ablation_result`."""
    from ..corruptions import check_severity
    from ..evaluation import paired_gain

    check_severity(severity)
    cfg, tag = _ablation_config(exp, run)
    suffix = "" if exp.seed == 0 else f"_seed{exp.seed}"
    path = exp.cell_dir / f"paired_{tag}_{suite}_s{severity}{suffix}.json"

    run_cfg = replace(cfg, seed=exp.seed)
    scored = {"run": run, **scored_on(suite, corruptions=list(NOISE), severity=severity)}

    def compute() -> dict:
        data = eval_data(exp)
        k = len(data.classes)
        base = base_model(exp, k)
        model = demhec_model(exp, run_cfg, tag=tag.replace("after", "demhec", 1), num_classes=k)
        gains = paired_gain(base, model, data, NOISE, severity, suite, **corrupted_eval_kw(exp))
        return dict(kind="paired/after", profile=exp.profile,
                    config={"experiment": experiment_config(exp), "model": run_cfg, **scored},
                    metrics=gains, data=provenance(data), seed=exp.seed)

    spec = result_spec(exp, "paired/after", model_spec(exp, "demhec", run_cfg), **scored)
    return get_or_compute(path, compute, fingerprint=spec, allow_train=exp.allow_train,
                          recompute=exp.recompute, what=f"{run} vs base, paired, on {suite}")
