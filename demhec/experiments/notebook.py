"""Notebook helpers: the first cell of every notebook (:func:`start_notebook`: display settings,
validation of the ``parameters`` cell, what the run will compute and roughly how long), and the
rule that every figure a notebook makes is shown (:func:`figure_cells_without_image`)."""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .._common import DemHECError, check_choice
from ..data import DATASETS_BY_PROFILE
from ..results import check_writable
from .layout import Request, model_path, result_path
from .pipeline import as_run
from .profiles import PROFILES, REPO_ROOT, Experiment
from .runs import BASE, DEMHEC

# The profiles that compute a missing result by default (allow_train="auto"): minutes on a CPU.
AUTO_TRAIN_PROFILES = ("smoke", "demo")
# Rough seconds on 2 idle CPU cores, per profile and backbone actually trained: the base model,
# the Dem-HEC fine-tune and one robustness evaluation (clean + seven corruptions at three
# severities). Measured on the shared 2-core development machine under load (process CPU time
# over 2: a base epoch of ResNet-20 on the digits about 30 s, a Dem-HEC step about 5 s), so an
# estimate to within a factor of two, not a promise.
_SECONDS: Mapping[tuple[str, str], Mapping[str, float]] = {
    ("demo", "resnet20"): {"base": 240, "demhec": 330, "eval": 30},
}
PROFILE_LINES = {
    "smoke": "`smoke`: a few digits images, two optimisation steps (tests, seconds)",
    "demo": "`demo`: the embedded digits dataset, models trained here (CPU, minutes)",
    "cpu": "`cpu`: real CIFAR-10 images (JPEG mirror), the committed CPU reproduction (hours to recompute)",
    "paper": "`paper`: the paper's datasets, pretrained weights and recipe (GPU)",
}


@dataclass(frozen=True)
class NotebookContext:
    """Validated notebook parameters: the experiment and where figures and tables go."""

    exp: Experiment
    corruptions: tuple[str, ...]
    severities: tuple[int, ...]
    suite: str
    figures_dir: Path
    tables_dir: Path

    def note(self) -> str:
        """One line saying what actually runs (profile, dataset, backbone, substitutions)."""
        e = self.exp
        parts = [f"profile {e.profile!r}: {e.prof.description}"]
        if e.effective_dataset != e.dataset:
            parts.append(f"dataset {e.dataset} -> {e.effective_dataset} (profile substitute)")
        if e.effective_backbone != e.backbone:
            parts.append(f"backbone {e.backbone} -> {e.effective_backbone} (CPU stand-in)")
        return "; ".join(parts)

    def plan(self, needs: Sequence[str], pooled: bool = False) -> str:
        """What showing the results in ``needs`` will compute first (missing models and results)
        and roughly how long, or that it stops (``allow_train`` off); "" when ``needs`` is empty.
        Items: "before", "after", "baseline:<method>" (robustness results on ``suite``),
        "entropy:before", "entropy:after" (Figures 3-4 at the first corruption and severity) and
        "model:before" (the base model itself)."""
        return _plan(self, needs, pooled) if needs else ""

    def with_suite(self, suite: str) -> NotebookContext:
        """The same run on another corruption suite (its corruptions checked against it)."""
        from ..corruptions import check_corruption

        for c in self.corruptions:
            check_corruption(c, suite)
        return replace(self, suite=suite)

    def for_backbone(self, backbone: str, needs: Sequence[str] = ()) -> NotebookContext:
        """The same run with another backbone; prints what runs for it like the setup does."""
        ctx = replace(self, exp=replace(self.exp, backbone=backbone))
        print(f"{backbone}: {ctx.note()}")
        if needs:
            print(f"{backbone}: {ctx.plan(needs)}")
        return ctx


def resolve_path(path: str) -> Path:
    """A notebook parameter's path: relative paths are relative to the repository root."""
    p = Path(path)
    return p if p.is_absolute() else REPO_ROOT / p


def auto_suite(profile: str, dataset: str, data_root: str | Path, download: bool) -> str:
    """``suite="auto"``: in the ``paper`` profile the released files of ``dataset`` (CIFAR-10-C,
    CIFAR-100-C, Tiny-ImageNet-C) when they are under ``data_root`` or ``download`` fetches them,
    the numbers the paper reports being on those files; otherwise the generated suite that fits
    the dataset's image size (``cifar-c`` for 32 px CIFAR, ``imagecorruptions`` for the rest)."""
    from ..corruptions import RELEASED_SUITES, released_available

    released = {d: s for s, d in RELEASED_SUITES.items()}
    if profile == "paper" and dataset in released and (download or released_available(released[dataset], data_root)):
        return released[dataset]
    return "cifar-c" if dataset in ("cifar10", "cifar100") else "imagecorruptions"


def notebook_setup(
    *,
    profile: str,
    dataset: str,
    backbone: str,
    suite: str = "cifar-c",
    corruptions: str | Sequence[str] = "paper",
    severities: Sequence[int] = (1, 3, 5),
    seed: int = 0,
    device: str = "cpu",
    data_root: str = "data",
    results_dir: str = "results",
    figures_dir: str = "figures",
    allow_train: bool | str = "auto",
    recompute: bool = False,
    download: bool = False,
    datasets: Sequence[str] | None = None,
) -> NotebookContext:
    """Validate a notebook's ``parameters`` cell (papermill passes whatever the user typed) and
    build its :class:`Experiment`. Relative paths are relative to the repository root, so a
    notebook behaves the same wherever its kernel starts. ``datasets`` restricts the datasets
    this notebook accepts. ``allow_train="auto"`` computes what is missing in the profiles of
    :data:`AUTO_TRAIN_PROFILES` and stops, naming the file, in the others."""
    from ..corruptions import (
        ALL_SUITES,
        CORRUPTIONS,
        PAPER_CORRUPTIONS,
        check_corruption,
        check_severity,
    )

    check_choice("profile", profile, PROFILES)
    if allow_train == "auto":
        allow_train = profile in AUTO_TRAIN_PROFILES
    for name, flag in (("allow_train", allow_train), ("recompute", recompute), ("download", download)):
        if not isinstance(flag, bool):
            also = ' or "auto"' if name == "allow_train" else ""
            raise DemHECError(f"{name} must be True or False{also}, got {flag!r}")
    check_choice("profile", profile, PROFILES)
    check_choice("dataset", dataset, datasets or DATASETS_BY_PROFILE)
    check_choice("suite", suite, ("auto", *ALL_SUITES))
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DemHECError(f"seed must be an integer >= 0, got {seed!r}")
    if suite == "auto":
        suite = auto_suite(profile, dataset, resolve_path(data_root), download)
    if corruptions == "paper":
        corruptions = PAPER_CORRUPTIONS
    elif corruptions == "all":
        corruptions = CORRUPTIONS
    elif isinstance(corruptions, str):
        corruptions = [c.strip() for c in corruptions.split(",")]
    for c in corruptions:
        check_corruption(c, suite)
    if isinstance(severities, (int, str)):
        severities = [severities]
    for s in severities:
        check_severity(s)
    if not isinstance(device, str) or not (device == "cpu" or device.startswith(("cuda", "mps"))):
        raise DemHECError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")
    results = resolve_path(results_dir)
    exp = Experiment(profile=profile, dataset=dataset, backbone=backbone, seed=seed,
                     results_dir=str(results), data_root=str(resolve_path(data_root)),
                     device=device, allow_train=allow_train, recompute=recompute, download=download)
    figures = resolve_path(figures_dir) / profile
    tables = results / profile / "tables"
    if allow_train or recompute:
        check_writable(results)
    return NotebookContext(exp, tuple(corruptions), tuple(severities), suite, figures, tables)


def check_baselines(names: str | Sequence[str]) -> list[str]:
    """Baseline names from a comma-separated string or a list, validated."""
    from ..baselines import BASELINES

    items = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    return [check_choice("baseline", n, BASELINES) for n in items if n]


_PARAMETERS = ("profile", "dataset", "backbone", "suite", "corruptions", "severities", "seed", "device",
               "data_root", "results_dir", "figures_dir", "allow_train", "recompute", "download")


def display_settings() -> None:
    """What every notebook's output looks like: two decimals in tables, warnings from the
    library only, no progress-bar widget warning (it would print a path of this machine)."""
    import pandas as pd

    logging.basicConfig(level=logging.WARNING)
    pd.set_option("display.precision", 2)
    pd.set_option("display.width", 200)
    warnings.filterwarnings("ignore", message="IProgress not found")


def start_notebook(params: Mapping[str, Any], *, needs: Sequence[str] = (), **overrides: Any) -> NotebookContext:
    """The first cell of a notebook: :func:`display_settings`, its parameters validated by
    :func:`notebook_setup` (the standard ones taken from ``params``, the notebook's namespace;
    ``overrides`` replace them or add ``datasets=``), and a printout of what runs: the profile,
    its substitutions, and, for the phases in ``needs`` ("before", "after", "baseline:<m>"),
    which models and results are missing, and whether they will be computed (and roughly how
    long) or stop the run."""
    display_settings()
    kwargs = {k: params[k] for k in _PARAMETERS if k in params}
    kwargs.update(overrides)
    ctx = notebook_setup(**kwargs)
    print(ctx.note())
    others = ", ".join(PROFILE_LINES[p] for p in PROFILE_LINES if p != ctx.exp.profile)
    print(f"other profiles (-p profile ...): {others}")
    plan = ctx.plan(needs, pooled=bool(params.get("pooled", False)))
    if plan:
        print(plan)
    return ctx


def _minutes(seconds: float) -> str:
    return f"{max(1, round(seconds / 60))} min" if seconds >= 60 else "under a minute"


def _plan(ctx: NotebookContext, needs: Sequence[str], pooled: bool = False) -> str:
    e = ctx.exp
    results, models = [], {}
    base_missing = not (e.prof.pretrained or e.base_weights_path or e.weights) and not model_path(e, BASE).exists()
    for item in dict.fromkeys(needs):
        if item == "model:before":  # the base model itself, not only its results
            if base_missing:
                models["base"] = f"base {e.effective_backbone} ({e.base_config.epochs} epochs on {e.effective_dataset})"
            continue
        if item.startswith("entropy:"):
            phase = item.split(":", 1)[1]
            path = result_path(e, as_run(e, phase), Request("entropy", ctx.suite, corruption=ctx.corruptions[0],
                                                            severity=ctx.severities[0], pooled=pooled))
        else:
            phase, path = item, result_path(e, as_run(e, item), Request(suite=ctx.suite, corruptions=ctx.corruptions))
        if path.exists() and not e.recompute:
            continue
        results.append(path.name)
        if base_missing:
            models["base"] = f"base {e.effective_backbone} ({e.base_config.epochs} epochs on {e.effective_dataset})"
        if phase == "after" and not model_path(e, DEMHEC).exists():
            steps = f", at most {e.demhec_config.max_steps} steps" if e.demhec_config.max_steps else ""
            models["demhec"] = f"the Dem-HEC fine-tune ({e.demhec_config.epochs} epochs{steps})"
        if phase.startswith("baseline:") and phase != "baseline:pad_crop":
            if not model_path(e, as_run(e, phase)).exists():
                models[phase] = f"the {phase.split(':', 1)[1]} baseline"
    if not results and not models:
        return "nothing to compute: every result this notebook shows is on disk"
    what = "; ".join([*(f"train {m}" for m in models.values()), *([f"evaluate {', '.join(results)}"] if results else [])])
    if not e.allow_train:
        return (f"missing: {what}. This profile computes nothing unless asked (-p allow_train True); "
                "the next cell stops, naming the first missing file.")
    cost = _SECONDS.get((e.profile, e.effective_backbone))
    if e.profile == "smoke":
        when = "seconds"
    elif cost and not any(k.startswith("baseline:") for k in models):
        seconds = sum(cost[k] for k in models) + cost["eval"] * len(results)
        when = f"roughly {_minutes(seconds)} on 2 idle CPU cores, longer on a busy machine"
    else:
        when = "time not measured for this backbone and profile"
    return f"will compute: {what} ({when})"


# A notebook cell that calls one of these makes a figure; it must show it (an image/png output).
FIGURE_CALL = re.compile(r"\bplots\.(\w+_figure|delta_heatmap)\(")


def figure_cells_without_image(cells: Sequence[Mapping[str, Any]]) -> list[int]:
    """Indices of the executed code cells (nbformat dicts, with ``outputs``) that build a figure
    (:data:`FIGURE_CALL`) but show no ``image/png`` output."""
    bad = []
    for i, cell in enumerate(cells):
        src = cell.get("source", "")
        src = "".join(src) if isinstance(src, list) else src
        if cell.get("cell_type") == "code" and FIGURE_CALL.search(src):
            if not any("image/png" in out.get("data", {}) for out in cell.get("outputs", [])):
                bad.append(i)
    return bad
