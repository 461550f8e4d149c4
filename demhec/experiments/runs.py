"""The runs of the studies: one record per model a study trains or scores.

A :class:`Run` says what a model is: its name, how tables label it, its family (the question it
answers, which figures group by) and its changes to the study's Dem-HEC config. Two studies use
them: the CPU reproduction's controls and ablations (:data:`RUNS`, each the profile's config with
named changes, fine-tuned from the same base model) and the comparison with the methods of Tables
3-4 (:mod:`.comparison`). A run also names its files (``stem`` for its results, ``model_name``
for its checkpoint); where those files live is :func:`.layout.result_path`'s business.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._common import DemHECError, check_choice
from ..training import DemHECConfig


@dataclass(frozen=True)
class Scaled:
    """An override relative to the config it changes: the config's value times ``times``, over
    ``over`` (``Scaled(over=5)``: a fifth of the learning rate); None stays None. Data rather
    than a function, so a run's changes print and compare."""

    times: float = 1
    over: float = 1

    def of(self, value: Any) -> Any:
        if value is None:
            return None
        # value * times alone where there is no divisor: an integer (epochs) stays an integer
        return value * self.times if self.over == 1 else value * self.times / self.over


Overrides = Mapping[str, Any] | Callable[[], Mapping[str, Any]]


@dataclass(frozen=True)
class Run:
    """One model of a study: what it is called, how tables label it, the question it answers, and
    its changes to the study's Dem-HEC config."""

    name: str  # how scripts, tables and records name it ("eps2", "plain@late_frozen_tuned", "augmix")
    label: str  # as tables print it
    family: str  # the question it answers; figures give the runs of a family one marker
    # Changes to the study's DemHECConfig: values or Scaled multiples of the config's own, or a
    # function of nothing that returns them (where reading a value is slow).
    overrides: Overrides = field(default_factory=dict)
    # The architecture of a comparison run; the CPU study's runs train their experiment's backbone.
    backbone: str = "resnet20"
    # False: a model trained from scratch and scored as it is (the base model, or a baseline of
    # Table 3 trained with its ``method`` override).
    fine_tuned: bool = True
    stem: str = ""  # what its result files are named after ("": its name; "before" if not fine-tuned)
    model_name: str = ""  # its checkpoint's name ("": its stem; "base" if not fine-tuned)

    def __post_init__(self) -> None:
        if not self.stem:
            object.__setattr__(self, "stem", self.name if self.fine_tuned else "before")
        if not self.model_name:
            object.__setattr__(self, "model_name", self.stem if self.fine_tuned else "base")

    def changes(self, base: DemHECConfig) -> dict[str, Any]:
        """This run's overrides with their values resolved against ``base``."""
        raw = self.overrides() if callable(self.overrides) else self.overrides
        return {k: v.of(getattr(base, k)) if isinstance(v, Scaled) else v for k, v in raw.items()}

    def config(self, base: DemHECConfig) -> DemHECConfig | None:
        """``base`` (the study's config, with its seed) with this run's changes; None for a model
        that is not fine-tuned."""
        if not self.fine_tuned:
            return None
        changes = self.changes(base)
        fields = {f.name for f in dataclasses.fields(DemHECConfig)}
        unknown = sorted(set(changes) - fields)
        if unknown:
            raise DemHECError(f"unknown Dem-HEC setting(s) {unknown}; valid: {', '.join(sorted(fields))}")
        return dataclasses.replace(base, **changes)

    @property
    def phase(self) -> str:
        """The model's kind as result files record it: "after" (a fine-tune), "before" (the base
        model) or "baseline:<method>" (trained from scratch with a baseline's augmentation)."""
        if self.fine_tuned:
            return "after"
        method = self.overrides.get("method") if isinstance(self.overrides, Mapping) else None
        return f"baseline:{method}" if method else "before"


def changed_fields(base: DemHECConfig, config: DemHECConfig | None) -> dict[str, Any]:
    """The fields of ``config`` that differ from ``base``'s, the seed aside (a run's seed is its
    experiment's)."""
    if config is None:
        return {}
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if f.name != "seed" and getattr(config, f.name) != getattr(base, f.name)}


# --- the CPU reproduction's controls and ablations ---------------------------------------------

PLAIN = {"alpha": 0.0, "lambda_c": 0.0, "lambda_kd": 0.0}  # clean cross-entropy only


def gaussian_aug_sigma() -> float:
    """The Gaussian augmentation's largest sigma: the CIFAR-10-C Gaussian noise at S5 (its
    definition, not a tuned value), so the augmentation spans the noise levels the benchmark
    uses. Read lazily: the corruption module's imports take seconds."""
    from ..corruptions.cifar_c import CIFAR_C_PARAMS

    return float(CIFAR_C_PARAMS["gaussian_noise"][-1])


def _gaussian_aug() -> dict[str, Any]:
    return {**PLAIN, "noise_sigma": gaussian_aug_sigma()}


def budget(factor: int) -> dict[str, Scaled]:
    """``factor`` times the steps of the same schedule (warm-up share and cosine). max_steps only
    caps epochs x steps per epoch, so the epochs and their warm-up scale with it: scaling
    max_steps alone stops a budget longer than the epochs allow at their end."""
    return {"epochs": Scaled(factor), "warmup_epochs": Scaled(factor), "max_steps": Scaled(factor)}


def _study(name: str, label: str, family: str, overrides: Overrides) -> Run:
    # The CPU study's files carry the names they were committed under: results by phase
    # ("after_<name>"), checkpoints by method ("demhec_<name>").
    return Run(name, label, family, overrides, stem=f"after_{name}", model_name=f"demhec_{name}")


PAPER_CONFIG = "the paper config"
OF_PAPER_CONFIG = "controls of the paper config"
ONE_CHANGE = "one change from the paper config"
# The profile's own config: the reference every other run of the study is one change from.
DEMHEC = Run("demhec", "Dem-HEC (eq. 12)", PAPER_CONFIG, stem="after", model_name="demhec")
BASE = Run("base", "base model", "base", fine_tuned=False)

# Each ablation is the profile's Dem-HEC config with these changes, on the same base model and
# step budget. The ascent step is kept at eps/4 (as at the default 8/255 -> 2/255) so the eps runs
# change the radius, not the shape of the ascent. From "low_lr" on, the runs are not ablations but
# what was tried to close the clean-accuracy gap: the schedule (a lower learning rate, more steps),
# the BatchNorm statistics ("bn_clean": does the high-entropy pass's batch move them?), which depth
# trains (the freezing runs), and freezing the *late* stages, the opposite of the paper's "freeze
# early layers": alone, then with the smaller radius and learning rate that cost the least clean
# accuracy, and that config's plain-fine-tune control.
_ABLATIONS = (
    DEMHEC,
    _study("plain", "plain fine-tune (clean CE only)", OF_PAPER_CONFIG, PLAIN),
    _study("no_he_ce", "without high-entropy CE (alpha = 0)", "loss terms removed", {"alpha": 0.0}),
    _study("no_infonce", "without InfoNCE (lambda_C = 0)", "loss terms removed", {"lambda_c": 0.0}),
    _study("no_kd", "without KD (lambda_KD = 0)", "loss terms removed", {"lambda_kd": 0.0}),
    _study("eps4", "eps = 4/255", "high-entropy samples", {"eps": 4 / 255, "step_size": 1 / 255}),
    _study("eps16", "eps = 16/255", "high-entropy samples", {"eps": 16 / 255, "step_size": 4 / 255}),
    _study("features", "entropy of penultimate features", "high-entropy samples", {"objective": "features"}),
    _study("low_entropy", "low-entropy samples (Democratic Training direction)", "high-entropy samples",
           {"direction": "low"}),
    _study("low_lr", "learning rate / 5 (same budget)", "schedule and BatchNorm probes", {"lr": Scaled(over=5)}),
    _study("budget_x2", "twice the step budget (same lr)", "schedule and BatchNorm probes", budget(2)),
    _study("budget_x4", "four times the step budget (same lr)", "schedule and BatchNorm probes", budget(4)),
    _study("bn_clean", "running BatchNorm statistics from clean passes only", "schedule and BatchNorm probes",
           {"bn": "clean"}),
    _study("freeze_more", "stem + first two stages frozen", "which layers train", {"freeze": "stages:2"}),
    _study("freeze_none", "nothing frozen", "which layers train", {"freeze": "none"}),
    _study("late_frozen", "stages after the second frozen (stem + stages 1-2 train)", "which layers train",
           {"freeze": "after:2"}),
    _study("late_frozen_tuned", "late stages frozen, eps = 4/255, learning rate / 5", "late stages frozen, tuned",
           {"freeze": "after:2", "eps": 4 / 255, "step_size": 1 / 255, "lr": Scaled(over=5)}),
    _study("plain_late_frozen_tuned", "plain fine-tune, late stages frozen, learning rate / 5",
           "late stages frozen, tuned", {**PLAIN, "freeze": "after:2", "lr": Scaled(over=5)}),
)

# The controls the method needs and the runs that discriminate where its clean-accuracy cost comes
# from, each one change from the profile's config (the controls: the same base, freezing, learning
# rate, schedule and budget). Kept apart from the ablations, which the CPU reproduction scores on
# the whole evaluation split; these are scored on its two halves (the selection protocol: chosen
# on "selection", reported on "report").
_CONTROLS = (
    _study("random_noise", "random-noise control: x' uniform in the eps-ball, no ascent", OF_PAPER_CONFIG,
           {"samples": "uniform"}),
    _study("gaussian_aug", "Gaussian-noise augmentation, plain fine-tune (sigma per image)", OF_PAPER_CONFIG,
           _gaussian_aug),
    _study("steps1", "T_he = 1 ascent step", ONE_CHANGE, {"steps": 1}),
    _study("steps2", "T_he = 2 ascent steps", ONE_CHANGE, {"steps": 2}),
    _study("eps2", "eps = 2/255", ONE_CHANGE, {"eps": 2 / 255, "step_size": 0.5 / 255}),
    _study("eps1", "eps = 1/255", ONE_CHANGE, {"eps": 1 / 255, "step_size": 0.25 / 255}),
    _study("infonce_masked", "InfoNCE without same-class negatives", ONE_CHANGE, {"negatives": "other_classes"}),
    _study("kd_literal", "KD as eq. 11 writes it: KL(student || teacher)", ONE_CHANGE,
           {"kd_direction": "student_teacher"}),
    _study("bn_frozen", "BatchNorm statistics frozen (eval mode)", ONE_CHANGE, {"bn": "frozen"}),
    _study("alpha_0_1", "alpha = 0.1", ONE_CHANGE, {"alpha": 0.1}),
    _study("alpha_0_25", "alpha = 0.25", ONE_CHANGE, {"alpha": 0.25}),
    _study("lambda_kd1", "lambda_KD = 1", ONE_CHANGE, {"lambda_kd": 1.0}),
    _study("lambda_kd2", "lambda_KD = 2", ONE_CHANGE, {"lambda_kd": 2.0}),
)

ABLATIONS = tuple(r.name for r in _ABLATIONS)
CONTROLS = tuple(r.name for r in _CONTROLS)
# Every named run of the study, by name.
RUNS: dict[str, Run] = {r.name: r for r in (*_ABLATIONS, *_CONTROLS)}
# The controls of a configuration (same base, freezing, learning rate and budget, not the paper's
# loss): compared against, never chosen (:func:`.selection.select_run`).
CONTROL_RUNS = ("plain", "random_noise", "gaussian_aug")
# The runs that discriminate where the clean cost comes from, each one change from the paper
# config; the strongest of them (:func:`.selection.strongest_runs`, picked on the selection half)
# are repeated over seeds.
DISCRIMINATING = ("eps1", "eps2", "alpha_0_1", "alpha_0_25", "no_infonce", "infonce_masked", "kd_literal",
                  "lambda_kd1", "lambda_kd2", "bn_frozen", "steps1", "steps2")
# The late-freezing config and its control are compared over the main runs' seeds too.
LATE_RUNS = ("late_frozen_tuned", "plain_late_frozen_tuned")
NOISE = ("gaussian_noise", "shot_noise", "impulse_noise")
# Figures 3-4 on real images (notebook 12): the paper's corruption (pixelate) and the noise the
# method gains most on, both at S5.
FIGURE34_CORRUPTIONS = ("gaussian_noise", "pixelate")
# The names under which the recommended configuration's seed-0 models are committed, loadable with
# ``demhec.get_model(backbone, num_classes=10, pretrained=path)``: the configuration and its three
# controls (the base and the paper config are ``<backbone>_base.pt`` / ``_demhec.pt``).
EXPORTED = ("recommended", *CONTROL_RUNS)

# The controls of any other configuration are named "<control>@<config>" (:func:`control_of`): the
# config's changes first, then the control's, so they share its freezing, learning rate, radius and
# budget. The recommended configuration is chosen on the selection half, not known in advance, so
# its controls cannot be listed above.
AT = "@"


def control_of(control: str, config: str) -> str:
    """The name of ``control`` (one of :data:`CONTROL_RUNS`) run with the changes of ``config`` (a
    run of :data:`RUNS` that is not a control): the paper config's controls are the plain names."""
    check_choice("control", control, CONTROL_RUNS)
    check_choice("configuration", config, [r for r in RUNS if not is_control(r)])
    return control if config == "demhec" else f"{control}{AT}{config}"


def is_control(name: str) -> bool:
    """Whether the run called ``name`` is a control (compared against, never chosen): one of
    :data:`CONTROL_RUNS`, one made by :func:`control_of`, or an ablation that drops the paper's
    loss for clean cross-entropy alone (the late-freezing config's plain control)."""
    base = name.split(AT, 1)[0]
    return base in CONTROL_RUNS or base.startswith("plain_")


@dataclass(frozen=True)
class _Merged:
    """The changes of ``first``, then those of ``second`` (a control run with a config's changes);
    a record, not a closure, so two runs made alike compare equal."""

    first: Overrides
    second: Overrides

    def __call__(self) -> dict[str, Any]:
        return {**(self.first() if callable(self.first) else self.first),
                **(self.second() if callable(self.second) else self.second)}


def get(name: str) -> Run:
    """The study's run called ``name``: a key of :data:`RUNS` or a control of another
    configuration ("plain@late_frozen_tuned", :func:`control_of`); a typo fails listing the
    valid names."""
    control, _, config = name.partition(AT)
    if not config:
        return RUNS[check_choice("run", name, RUNS)]
    control_of(control, config)  # both names valid, the config not itself a control
    c, k = RUNS[control], RUNS[config]
    return Run(name, f"{c.label}; {config}'s freezing, lr, eps and budget", f"controls of {config}",
               _Merged(k.overrides, c.overrides), stem=f"after_{control}_at_{config}",
               model_name=f"demhec_{control}_at_{config}")


def baseline(method: str) -> Run:
    """A model of Table 3's baselines: trained from scratch with the profile's base recipe and
    ``method``'s augmentation (:mod:`demhec.baselines`), scored as it is."""
    return Run(f"baseline:{method}", method, "trained from scratch", {"method": method}, fine_tuned=False,
               stem=f"baseline_{method}", model_name=f"baseline_{method}")


def _slug(value: Any) -> str:
    text = repr(value) if isinstance(value, float) else str(value)
    return "".join(c if c.isalnum() or c in ".-" else "-" for c in text)


def of_config(base: DemHECConfig, config: DemHECConfig | None) -> Run:
    """The run that fine-tunes with ``config``: :data:`DEMHEC` when it changes nothing of
    ``base`` (the profile's config) but the seed, else a run named after its changes
    ("eps-0.01568627450980392"), so its files say what they hold."""
    changes = changed_fields(base, config)
    if not changes:
        return DEMHEC
    name = "_".join(f"{k}-{_slug(v)}" for k, v in changes.items())
    label = "Dem-HEC with " + ", ".join(f"{k} = {v}" for k, v in changes.items())
    return Run(name, label, "custom", changes, stem=f"after_{name}", model_name=f"demhec_{name}")
