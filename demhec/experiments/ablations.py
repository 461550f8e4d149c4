"""The controls and ablations of the CPU reproduction: each run is the profile's Dem-HEC config
with named changes, fine-tuned from the same base model and scored like the main run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from .._common import atomic_write, check_choice
from ..results import get_or_compute, git_commit, read_result, versions, write_result
from ..training import DemHECConfig
from .pipeline import (
    Experiment,
    base_model,
    corrupted_eval_kw,
    demhec_checkpoint,
    demhec_config,
    demhec_model,
    entropy_result,
    eval_data,
    experiment_config,
    halves_result,
    model_spec,
    model_tag,
    provenance,
    result_spec,
    robustness_result,
    scored_on,
    train_data,
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

# Issue 16: the controls the method needs and the runs that discriminate where its clean-accuracy
# cost comes from, each one change from the profile's Dem-HEC config (the controls: the same base,
# freezing, learning rate, schedule and budget). Kept apart from ABLATIONS, whose runs the CPU
# reproduction scores on the whole evaluation split; these are scored on its two halves
# (:func:`ablation_halves`: chosen on "selection", reported on "report"). Every name resolves in
# :func:`ablation_result`, :func:`ablation_model` and :func:`ablation_halves` like an ablation's.


def gaussian_aug_sigma() -> float:
    """The Gaussian augmentation's largest sigma: the CIFAR-10-C Gaussian noise at S5 (its
    definition, not a tuned value), so the augmentation spans the noise levels the benchmark
    uses. Read lazily: the corruption module's imports take seconds."""
    from ..corruptions.cifar_c import CIFAR_C_PARAMS

    return float(CIFAR_C_PARAMS["gaussian_noise"][-1])


CONTROLS: dict[str, dict[str, Any] | Callable[[DemHECConfig], dict[str, Any]]] = {
    "random_noise": dict(samples="uniform"),
    "gaussian_aug": lambda cfg: dict(alpha=0.0, lambda_c=0.0, lambda_kd=0.0, noise_sigma=gaussian_aug_sigma()),
    "steps1": dict(steps=1),
    "steps2": dict(steps=2),
    "eps2": dict(eps=2 / 255, step_size=0.5 / 255),
    "eps1": dict(eps=1 / 255, step_size=0.25 / 255),
    "infonce_masked": dict(negatives="other_classes"),
    "kd_literal": dict(kd_direction="student_teacher"),
    "bn_frozen": dict(bn="frozen"),
    "alpha_0_1": dict(alpha=0.1),
    "alpha_0_25": dict(alpha=0.25),
    "lambda_kd1": dict(lambda_kd=1.0),
    "lambda_kd2": dict(lambda_kd=2.0),
}
ABLATION_LABELS.update({
    "random_noise": "random-noise control: x' uniform in the eps-ball, no ascent",
    "gaussian_aug": "Gaussian-noise augmentation, plain fine-tune (sigma per image)",
    "steps1": "T_he = 1 ascent step",
    "steps2": "T_he = 2 ascent steps",
    "eps2": "eps = 2/255",
    "eps1": "eps = 1/255",
    "infonce_masked": "InfoNCE without same-class negatives",
    "kd_literal": "KD as eq. 11 writes it: KL(student || teacher)",
    "bn_frozen": "BatchNorm statistics frozen (eval mode)",
    "alpha_0_1": "alpha = 0.1",
    "alpha_0_25": "alpha = 0.25",
    "lambda_kd1": "lambda_KD = 1",
    "lambda_kd2": "lambda_KD = 2",
})
# The controls of a configuration (same base, freezing, learning rate and budget, not the paper's
# loss): compared against, never chosen (:func:`~.tables.select_run`).
CONTROL_RUNS = ("plain", "random_noise", "gaussian_aug")
# Issue 16, point 3: the runs that discriminate where the clean cost comes from, each one change
# from the paper config; the strongest of them (:func:`~.tables.strongest_runs`, picked on the
# selection half) are repeated over seeds.
DISCRIMINATING = ("eps1", "eps2", "alpha_0_1", "alpha_0_25", "no_infonce", "infonce_masked", "kd_literal",
                  "lambda_kd1", "lambda_kd2", "bn_frozen", "steps1", "steps2")
# The controls of any other configuration are named "<control>@<config>" (:func:`control_of`): the
# config's changes first, then the control's, so they share its freezing, learning rate, radius and
# budget. The recommended configuration of issue 16 is one chosen on the selection half, not known
# in advance, so its controls cannot be listed here.
_AT = "@"
# Figures 3-4 on real images (notebook 09): the paper's corruption (pixelate) and the noise the
# method gains most on, both at S5.
FIGURE34_CORRUPTIONS = ("gaussian_noise", "pixelate")
# Every named run: the ablations and the controls.
RUNS = {**ABLATIONS, **CONTROLS}


def control_of(control: str, config: str) -> str:
    """The name of ``control`` (one of :data:`CONTROL_RUNS`) run with the changes of ``config`` (a
    key of :data:`RUNS`): the paper config's controls are the plain names themselves."""
    check_choice("control", control, CONTROL_RUNS)
    check_choice("configuration", config, [r for r in RUNS if not is_control(r)])
    return control if config == "demhec" else f"{control}{_AT}{config}"


def is_control(run: str) -> bool:
    """Whether ``run`` is a control (compared against, never chosen): a name of
    :data:`CONTROL_RUNS`, one made by :func:`control_of`, or an ablation that drops the paper's
    loss for clean cross-entropy alone (the late-freezing config's plain control)."""
    name = run.split(_AT, 1)[0]
    return name in CONTROL_RUNS or name.startswith("plain_")


def run_label(run: str) -> str:
    """What ``run`` changes, in words (:data:`ABLATION_LABELS`, extended to :func:`control_of`'s names)."""
    control, _, config = run.partition(_AT)
    if not config:
        return ABLATION_LABELS[run]
    return f"{ABLATION_LABELS[control]}; {config}'s freezing, lr, eps and budget"


def run_family(run: str) -> str:
    """The group of ``run`` in figures (:data:`ABLATION_FAMILIES`; the issue-16 runs by question)."""
    control, _, config = run.partition(_AT)
    if config:
        return f"controls of {config}"
    if run == "demhec":
        return "the paper config"
    if run in CONTROL_RUNS:
        return "controls of the paper config"
    if run in CONTROLS:
        return "one change from the paper config"
    return ABLATION_FAMILIES[run]


def _overrides(exp: Experiment, run: str) -> dict[str, Any]:
    check_choice("run", run, RUNS)
    overrides = RUNS[run]
    return dict(overrides(exp.demhec_config) if callable(overrides) else overrides)


def _ablation_config(exp: Experiment, run: str) -> tuple[DemHECConfig, str]:
    control, _, config = run.partition(_AT)
    if config:
        control_of(control, config)  # both names valid, the config not itself a control
        overrides = {**_overrides(exp, config), **_overrides(exp, control)}
        return demhec_config(exp, **overrides), f"after_{control}_at_{config}"
    return demhec_config(exp, **_overrides(exp, run)), "after" if run == "demhec" else f"after_{run}"


def ablation_checkpoint(exp: Experiment, run: str) -> Path:
    """Where :func:`ablation_model` keeps the fine-tuned state dict of ``run`` for this seed (a
    script asks whether it exists to tell a fine-tune from a re-scoring of a kept model)."""
    return demhec_checkpoint(exp, model_tag(_ablation_config(exp, run)[1]))


def ablation_model(exp: Experiment, run: str) -> nn.Module:
    """The model of one control/ablation ``run``, fine-tuned from the base model (cached like
    :func:`ablation_result`'s, which then only evaluates it)."""
    cfg, tag = _ablation_config(exp, run)
    return demhec_model(exp, replace(cfg, seed=exp.seed), tag=model_tag(tag))


def ablation_result(exp: Experiment, run: str, suite: str = "cifar-c",
                    severities: Sequence[int] | None = None) -> dict:
    """The robustness result of one control/ablation ``run`` (a key of :data:`ABLATIONS`)
    fine-tuned from the experiment's base model with its seed; "demhec" is the profile's run."""
    cfg, tag = _ablation_config(exp, run)
    return robustness_result(exp, "after", suite, severities=severities, config=cfg, tag=tag)


def ablation_halves(exp: Experiment, run: str, suite: str = "cifar-c",
                    severities: Sequence[int] | None = None) -> dict[str, dict]:
    """``run`` (a key of :data:`RUNS`) scored on each half of the evaluation split
    (:func:`~.pipeline.halves_result`): {"selection": record, "report": record}."""
    cfg, tag = _ablation_config(exp, run)
    return halves_result(exp, "after", suite, severities=severities, config=cfg, tag=tag, run=run)


def ablation_entropy(exp: Experiment, run: str, corruption: str, severity: int, suite: str = "cifar-c",
                     half: str | None = "report", pooled: bool = False) -> dict:
    """Figures 3-4's per-layer entropies (:func:`~.pipeline.entropy_result`) of ``run``: "before"
    is the base model, any other name a key of :data:`RUNS` ("demhec" the profile's config); by
    default on the report half, the one no configuration is chosen on."""
    if run == "before":
        return entropy_result(exp, "before", corruption, severity, suite, pooled, half=half)
    cfg, tag = _ablation_config(exp, run)
    return entropy_result(exp, "after", corruption, severity, suite, pooled, config=cfg, tag=tag, half=half)


def entropy_records(exp: Experiment, runs: Sequence[str], corruptions: Sequence[str], severity: int = 5,
                    suite: str = "cifar-c", half: str | None = "report"
                    ) -> tuple[dict[tuple[str, str], dict], list[tuple[str, str]]]:
    """Figures 3-4's records (:func:`ablation_entropy`) of each (run, corruption): computed where
    ``exp.allow_train`` allows it, otherwise read where the file exists; the rest are returned as
    missing, so a notebook shows what there is and names what is not there yet."""
    from .pipeline import entropy_path

    got, missing = {}, []
    for run in runs:
        tag = "before" if run == "before" else _ablation_config(exp, run)[1]
        for corruption in corruptions:
            if exp.allow_train or entropy_path(exp, tag, corruption, severity, suite, False, half).exists():
                got[(run, corruption)] = ablation_entropy(exp, run, corruption, severity, suite, half)
            else:
                missing.append((run, corruption))
    return got, missing


def existing_halves(exp: Experiment, runs: Sequence[str], seeds: Sequence[int] = (0,), suite: str = "cifar-c"
                    ) -> tuple[dict[str, dict] | None, dict[tuple[str, int], dict[str, dict]]]:
    """The halves results of the base model and of each (run, seed) whose two files exist, read
    (fingerprints checked, nothing computed): ``(base, {(run, seed): {"selection": .., "report": ..}})``,
    base None when its files are missing. What a notebook shows of runs still in progress."""
    from dataclasses import replace as _replace

    from .pipeline import EVAL_HALVES, halves_path

    exp = _replace(exp, allow_train=False)

    def present(tag: str, seed: int) -> bool:
        return all(halves_path(_replace(exp, seed=seed), tag, suite, h).exists() for h in EVAL_HALVES)

    base = halves_result(exp, "before", suite) if present("before", 0) else None
    runs_out = {}
    for seed in seeds:
        for run in runs:
            if present(_ablation_config(exp, run)[1], seed):
                runs_out[(run, seed)] = ablation_halves(_replace(exp, seed=seed), run, suite)
    return base, runs_out


def same_base_halves(exp: Experiment, other_base: dict[str, dict] | None) -> dict[str, dict] | None:
    """``other_base`` (another profile's base halves, as :func:`existing_halves` returns them) when
    that profile starts from ``exp``'s committed base checkpoint: its results record the state
    dict's sha256 (``Profile.base_weights``), so they score the same model on the same images;
    None otherwise."""
    import hashlib

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
        model = demhec_model(exp, run_cfg, tag=model_tag(tag), num_classes=k)
        gains = paired_gain(base, model, data, NOISE, severity, suite, **corrupted_eval_kw(exp))
        return dict(kind="paired/after", profile=exp.profile,
                    config={"experiment": experiment_config(exp), "model": run_cfg, **scored},
                    metrics=gains, data=provenance(data), seed=exp.seed)

    spec = result_spec(exp, "paired/after", model_spec(exp, "demhec", run_cfg), **scored)
    return get_or_compute(path, compute, fingerprint=spec, allow_train=exp.allow_train,
                          recompute=exp.recompute, what=f"{run} vs base, paired, on {suite}")


# The names under which issue 16's seed-0 models are committed, loadable with
# ``demhec.get_model(backbone, num_classes=10, pretrained=path)``: the recommended configuration and
# its three controls (the base and the paper config are ``<backbone>_base.pt`` / ``_demhec.pt``).
EXPORTED = ("recommended", *CONTROL_RUNS)


def export_checkpoints(exp: Experiment, run: str) -> dict[str, Path]:
    """Copy the seed-``exp.seed`` state dicts of ``run`` (the recommended configuration) and of
    its controls (:func:`control_of`) to ``<checkpoints>/<backbone>_<name>.pt`` for each name of
    :data:`EXPORTED`, each with its fingerprint and a manifest (``<backbone>_recommended.json``:
    which run each file holds, its config and sha256), so a file can be checked on other images
    without this repository's caches. The models are trained where missing (like
    :func:`ablation_model`)."""
    import hashlib
    import json
    import shutil

    sources = {"recommended": run, **{c: control_of(c, run) for c in CONTROL_RUNS}}
    manifest = {}
    out = {}
    for name, source in sources.items():
        ablation_model(exp, source)  # trains it where its checkpoint is missing
        cfg = _ablation_config(exp, source)[0]
        cached = ablation_checkpoint(exp, source)
        target = exp.checkpoint(name)
        shutil.copyfile(cached, target)
        shutil.copyfile(cached.with_suffix(".fingerprint.json"), target.with_suffix(".fingerprint.json"))
        manifest[name] = {"run": source, "label": run_label(source), "seed": exp.seed,
                          "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
                          "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}}
        out[name] = target
    record = {"kind": "checkpoints", "profile": exp.profile, "seed": exp.seed, "files": manifest,
              "data": provenance(train_data(exp)),
              "versions": versions(), "git_commit": git_commit()}
    with atomic_write(exp.checkpoint("recommended").with_suffix(".json"), "w") as f:
        json.dump(record, f, indent=1, default=str)
    return out


def recommended_halves(exp: Experiment, seeds: Sequence[int] = (0, 1, 2), suite: str = "cifar-c"
                       ) -> tuple[dict | None, dict[str, dict] | None, dict[tuple[str, int], dict[str, dict]]]:
    """What exists of issue 16's recommended configuration (read, nothing computed): the recorded
    choice (:func:`~.tables.record_choice`, None before it is made), the base model's halves in
    ``suite`` and those of the chosen run and its controls per seed, as :func:`existing_halves`."""
    from .tables import choice_path

    path = choice_path(exp)
    if not path.exists():
        return None, None, {}
    choice = read_result(path)
    run = choice["metrics"]["run"]
    base, runs = existing_halves(exp, [run, *(control_of(c, run) for c in CONTROL_RUNS)], seeds, suite)
    return choice, base, runs


def divergence_path(exp: Experiment, run: str, suite: str = "cifar-c") -> Path:
    """Where :func:`record_divergence` writes that ``run``'s fine-tune diverged."""
    suffix = "" if exp.seed == 0 else f"_seed{exp.seed}"
    return exp.cell_dir / "halves" / f"{_ablation_config(exp, run)[1]}_{suite}{suffix}_diverged.json"


def _divergence_spec(exp: Experiment, run: str, suite: str) -> dict[str, Any]:
    return result_spec(exp, "diverged", _run_spec(exp, run), suite=suite)


def _run_spec(exp: Experiment, run: str) -> dict[str, Any]:
    return model_spec(exp, "demhec", replace(_ablation_config(exp, run)[0], seed=exp.seed))


def record_divergence(exp: Experiment, run: str, error: Any, suite: str = "cifar-c") -> dict:
    """Write that ``run``'s fine-tune diverged (``error``, a :class:`~demhec._common.TrainingDiverged`:
    the step, what was non-finite, the loss terms of that step) as its result, so the tables list
    the run as diverged instead of leaving it out."""
    return write_result(divergence_path(exp, run, suite), kind="diverged", profile=exp.profile,
                        config={"experiment": experiment_config(exp), "model": _run_spec(exp, run)["config"],
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
