"""Notebook helpers: validation of a notebook's ``parameters`` cell and what it says it runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .._common import DemHECError, check_choice
from ..results import check_writable
from .pipeline import DATASETS_BY_PROFILE, PROFILES, REPO_ROOT, Experiment


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
    allow_train: bool = False,
    recompute: bool = False,
    download: bool = False,
    datasets: Sequence[str] | None = None,
) -> NotebookContext:
    """Validate a notebook's ``parameters`` cell (papermill passes whatever the user typed) and
    build its :class:`Experiment`. Relative paths are relative to the repository root, so a
    notebook behaves the same wherever its kernel starts. ``datasets`` restricts the datasets
    this notebook accepts."""
    from ..corruptions import (
        ALL_SUITES,
        CORRUPTIONS,
        PAPER_CORRUPTIONS,
        check_corruption,
        check_severity,
    )

    for name, flag in (("allow_train", allow_train), ("recompute", recompute), ("download", download)):
        if not isinstance(flag, bool):
            raise DemHECError(f"{name} must be True or False, got {flag!r}")
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
