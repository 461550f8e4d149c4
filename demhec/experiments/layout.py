"""Where every file of an experiment lives: :func:`result_path` (and its docstring, the layout)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .._common import check_choice
from .profiles import Experiment
from .runs import Run

KINDS = ("robustness", "entropy", "paired", "diverged")
SELECTION_RECORDS = ("choice", "strongest")


@dataclass(frozen=True)
class Request:
    """What a result holds of a run: its kind and how its images were made and scored."""

    kind: str = "robustness"  # one of KINDS
    suite: str = "cifar-c"
    corruptions: Sequence[str] | None = None  # robustness: which corruptions (None: the paper's seven)
    adapt: str | None = None  # robustness: the test-time adaptation ("bn", "tent")
    half: str | None = None  # robustness, entropy: a half of the evaluation split
    corruption: str | None = None  # entropy: the corruption of Figures 3-4
    severity: int | None = None  # entropy, paired: the severity
    pooled: bool = False  # entropy: spatially pooled features

    def __post_init__(self) -> None:
        check_choice("kind of result", self.kind, KINDS)


def _all(corruptions: Sequence[str] | None) -> str:
    from ..corruptions import CORRUPTIONS

    return "_all" if corruptions is not None and sorted(corruptions) == sorted(CORRUPTIONS) else ""


def result_path(exp: Experiment, run: Run | str, request: Request | None = None) -> Path:
    """Where the result of ``run`` (a :class:`~.runs.Run`, or the stem its files carry) for
    ``request`` lives. The layout, of which this is the one description::

        <results_dir>/<profile>/                    the profile's folder (Profile.home)
          <dataset>/<backbone>/                     an experiment's cell (Experiment.cell_dir)
            <stem>[_<adapt>]_<suite>[_all][_seedN].json                robustness
            halves/<stem>[_<adapt>]_<suite>[_all][_seedN]_<half>.json  robustness on a half
            entropy_<stem>_<corruption>_s<S>_<suite>[_pooled][_seedN][_<half>].json
            paired_<stem>_<suite>_s<S>[_seedN].json                    paired gain against the base
            halves/<stem>_<suite>[_seedN]_diverged.json                a fine-tune that diverged
            halves/{choice,strongest}_<suite>.json   the selection protocol's records (selection_record)
            stage_times/<stage>.json                 wall times of a script's stages (.stage_times)
          checkpoints/[<dataset>_]<backbone>_<model_name>[_seedN].pt    models (model_path)
          tables/<name>.{csv,md,tex}                 the notebooks' tables

    ``<stem>`` names the run (``Run.stem``: "before" for the base model, "after" for the
    profile's Dem-HEC config, "after_<name>" for the CPU study's other runs, the run's name in the
    comparison, "baseline_<method>" for Table 3's baselines); ``_all`` marks the fifteen
    corruptions, so that Table 2 (the paper's seven) and Table 3 (fifteen) of one model never
    share a file; ``_seedN`` appears for a fine-tuning seed other than 0 (every seed shares the
    base model and the corrupted images). A profile may keep its checkpoints elsewhere
    (``Profile.checkpoints``), and a profile that fixes the dataset leaves it out of the
    checkpoint's name (``results/cpu/checkpoints/resnet20_base.pt``)."""
    stem = run if isinstance(run, str) else run.stem
    r = request or Request()
    seed = "" if exp.seed == 0 else f"_seed{exp.seed}"
    cell = exp.cell_dir
    if r.kind == "robustness":
        name = f"{stem}{f'_{r.adapt}' if r.adapt else ''}_{r.suite}{_all(r.corruptions)}{seed}"
        return cell / "halves" / f"{name}_{r.half}.json" if r.half else cell / f"{name}.json"
    if r.kind == "entropy":
        return cell / (f"entropy_{stem}_{r.corruption}_s{r.severity}_{r.suite}{'_pooled' if r.pooled else ''}"
                       f"{seed}{f'_{r.half}' if r.half else ''}.json")
    if r.kind == "paired":
        return cell / f"paired_{stem}_{r.suite}_s{r.severity}{seed}.json"
    return cell / "halves" / f"{stem}_{r.suite}{seed}_diverged.json"


def model_path(exp: Experiment, run: Run | str) -> Path:
    """Where the state dict of ``run`` (a :class:`~.runs.Run`, or a fine-tune's checkpoint name)
    is kept for ``exp``'s seed: a fine-tune's per seed (``_seedN``), a model trained from
    scratch once for every seed (its seed is the profile's base seed)."""
    if isinstance(run, str):
        name, per_seed = run, True
    else:
        name, per_seed = run.model_name, run.fine_tuned
    return exp.checkpoint(name if exp.seed == 0 or not per_seed else f"{name}_seed{exp.seed}")


def selection_record(exp: Experiment, what: str, suite: str = "cifar-c") -> Path:
    """Where the selection protocol keeps its record ``what`` ("choice": the recommended
    configuration; "strongest": the discriminating runs repeated over seeds)."""
    check_choice("selection record", what, SELECTION_RECORDS)
    return exp.cell_dir / "halves" / f"{what}_{suite}.json"


def corrupted_sets_path(exp: Experiment, suite: str = "cifar-c") -> Path:
    """Where the digests of ``exp``'s corrupted evaluation sets are recorded
    (:func:`.inputs.record_corrupted_sets`): one file per dataset, whatever the backbone."""
    return exp.root / exp.effective_dataset / f"corrupted_sets_{suite}.json"
