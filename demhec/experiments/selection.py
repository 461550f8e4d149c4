"""The selection protocol: a configuration is chosen on the selection half of the evaluation
split and reported on the report half. Summaries of one half with paired standard errors, the
ranking of the runs, the selection rule, and the records of what was chosen (written once, naming
the half and the fingerprint of every file read)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from .._common import DemHECError
from ..evaluation import paired_difference
from ..results import get_or_compute, read_result
from .checks import check_ablation_shown
from .halves import outcomes
from .layout import selection_record
from .profiles import Experiment, experiment_config
from .runs import CONTROL_RUNS, NOISE, control_of, get, is_control
from .study import existing_divergences, existing_halves
from .tables import ablation_summary


def _split_of(records: Sequence[dict]) -> str:
    splits = {r.get("split") for r in records}
    if len(splits) != 1 or None in splits:
        raise DemHECError(f"records of one comparison must be scored on one half, got {sorted(map(str, splits))}")
    return splits.pop()


def paired_records(a: dict, b: dict, cells: Sequence[tuple[str, int]]) -> dict[str, float]:
    """``b`` minus ``a`` in points on the mean over ``cells`` (image by image), with the standard
    error paired over the images (:func:`~demhec.evaluation.paired_difference`); both records must
    be of one half."""
    _split_of([a, b])
    oa = np.stack([outcomes(a, c, s) for c, s in cells], 1)
    ob = np.stack([outcomes(b, c, s) for c, s in cells], 1)
    return paired_difference(oa, ob)


def halves_summary(base: dict, runs: dict[tuple[str, int], dict], reference: tuple[str, int] | None = None,
                   severity: int = 5) -> pd.DataFrame:
    """:func:`.tables.ablation_summary` of records of one half, with the paired standard error over the
    half's images of each change from the base (``se_clean``, ``se_noise_s5``) and, with
    ``reference`` (a key of ``runs``), each run's change from that run (``r_*``, ``r_se_*``):
    what moves the clean cost of the reference config, and by more than the images' noise?"""
    split = _split_of([base, *runs.values()])
    df = ablation_summary(base, runs).assign(split=split)
    clean, noise = [("clean", 0)], [(c, severity) for c in NOISE]
    recs = [base, *runs.values()]
    for name, cells in (("clean", clean), ("noise_s5", noise)):
        df[f"se_{name}"] = [paired_records(base, r, cells)["se"] for r in recs]
        if reference is not None:
            ref = runs[reference]
            pairs = [paired_records(ref, r, cells) for r in recs]
            df[f"r_{name}"] = [p["diff"] for p in pairs]
            df[f"r_se_{name}"] = [p["se"] for p in pairs]
    return df


def half_summary(base: dict[str, dict], runs: dict[tuple[str, int], dict[str, dict]], half: str) -> pd.DataFrame:
    """:func:`halves_summary` of one half (``base`` and each run map a half to its record, as
    :func:`.study.existing_halves` returns them), paired to the paper's config when it is among the runs,
    and checked to show its result files' numbers (:func:`.checks.check_ablation_shown`)."""
    recs = {k: v[half] for k, v in runs.items()}
    summary = halves_summary(base[half], recs, reference=("demhec", 0) if ("demhec", 0) in recs else None)
    check_ablation_shown(summary, base[half], recs)
    return summary


def ranked_runs(summary: pd.DataFrame) -> pd.DataFrame:
    """The ranked table of the discriminating runs, from a :func:`halves_summary` of one half: per run, the
    mean over its seeds of each change from the base (``d_*``) and from the paper's config at seed
    0 (``r_*``), the spread of the change over seeds (``sd_*``, sample standard deviation; NaN
    with one seed) and the paired standard errors over the half's images (``se_*`` from the base,
    ``r_se_clean`` from the paper's config; the mean of the seeds' errors), ranked by how much of
    the clean cost the run gives back."""
    if "r_clean" not in summary:
        raise DemHECError("ranked_runs needs a halves_summary made with reference=('demhec', 0)")
    rows = summary[summary.run != "base"].groupby(["run", "label"], sort=False)
    out = rows.agg(seeds=("seed", "nunique"), d_clean=("d_clean", "mean"), sd_clean=("d_clean", "std"),
                   se_clean=("se_clean", "mean"), r_clean=("r_clean", "mean"), r_se_clean=("r_se_clean", "mean"),
                   d_noise_s5=("d_noise_s5", "mean"), sd_noise_s5=("d_noise_s5", "std"),
                   se_noise_s5=("se_noise_s5", "mean"), r_noise_s5=("r_noise_s5", "mean")).reset_index()
    out.insert(2, "split", summary.split.iloc[0])
    return out.sort_values("r_clean", ascending=False, kind="stable").reset_index(drop=True)


def strongest_runs(selection: pd.DataFrame, candidates: Sequence[str], k: int = 3, seed: int = 0) -> list[str]:
    """The ``k`` runs of ``candidates`` that give back the most of the paper config's clean cost
    at ``seed`` (``r_clean``), read on the selection half only (refused otherwise): the ones the
    selection protocol repeats over seeds. Runs without a result at that seed are not candidates."""
    if set(selection.split) != {"selection"}:
        raise DemHECError(f"the strongest runs are picked on the selection half only, got {sorted(set(selection.split))}")
    if "r_clean" not in selection:
        raise DemHECError("strongest_runs needs a halves_summary made with reference=('demhec', 0)")
    rows = selection[selection.run.isin(candidates) & selection.seed.eq(seed)]
    return list(rows.sort_values("r_clean", ascending=False, kind="stable").run.head(k))


# The selection rule's targets (the acceptance of the selection protocol): points from the base model.
CHOICE_RULE = {"max_clean_cost": 4.0, "min_noise_gain": 10.0}


def select_run(summary: pd.DataFrame, max_clean_cost: float = CHOICE_RULE["max_clean_cost"],
               min_noise_gain: float = CHOICE_RULE["min_noise_gain"]) -> dict:
    """The selection rule of the selection protocol, applied to a :func:`halves_summary` of the
    selection half only (refused otherwise): among the runs (seed means) whose clean accuracy is
    within ``max_clean_cost`` points of the base (a cost of exactly ``max_clean_cost`` is within),
    the one with the largest noise S5 gain; when none is, the largest noise gain minus clean cost.
    A tie goes to the run listed first in ``summary``. The controls are never candidates: the choice is
    a configuration of the paper's loss (:func:`.runs.is_control`). Returns the
    choice, the rule and whether the choice meets both targets on the selection half."""
    if set(summary.split) != {"selection"}:
        raise DemHECError(f"a configuration is chosen on the selection half only, got {sorted(set(summary.split))}")
    keep = ~(summary.run.eq("base") | summary.run.map(is_control))
    if not keep.any():
        raise DemHECError("no candidate configuration to choose from (only the base and the controls)")
    means = summary[keep].groupby("run", sort=False)[["d_clean", "d_noise_s5"]].mean()
    within = means[means.d_clean >= -max_clean_cost]
    if len(within):
        run, rule = within.d_noise_s5.idxmax(), f"largest noise S5 gain with clean cost <= {max_clean_cost:g}"
    else:
        run, rule = (means.d_noise_s5 + means.d_clean).idxmax(), "largest noise S5 gain minus clean cost"
    row = means.loc[run]
    return {"run": run, "rule": rule, "d_clean": float(row.d_clean), "d_noise_s5": float(row.d_noise_s5),
            "meets_targets": bool(row.d_clean >= -max_clean_cost and row.d_noise_s5 >= min_noise_gain),
            "candidates": list(means.index)}


def choice_path(exp: Experiment, suite: str = "cifar-c") -> Path:
    """Where :func:`record_choice` keeps the recommended configuration."""
    return selection_record(exp, "choice", suite)


def record_choice(exp: Experiment, runs: Sequence[str], seed: int = 0, suite: str = "cifar-c") -> dict:
    """The recommended configuration: :func:`select_run` on the selection half among the
    ``runs`` whose halves results exist, written once as a result JSON that names the half it was
    chosen on, the candidates and the fingerprint of every selection-half file it read. The
    record is then kept: configurations scored later extend :func:`chosen_run`'s candidates, not
    this choice, on which the recommended config's seeds and controls were trained (delete the
    file, or ``recompute``, to choose again)."""
    spec = {"kind": "choice", "experiment": {"profile": exp.profile, "seed": seed}, "suite": suite,
            "split": "selection", "rule": CHOICE_RULE}

    def compute() -> dict:
        base, got = existing_halves(replace(exp, allow_train=False, recompute=False), runs, seeds=(seed,), suite=suite)
        if base is None:
            raise DemHECError("no base-model halves results: score the base model on both halves first")
        summary = half_summary(base, got, "selection")
        choice = select_run(summary, **CHOICE_RULE)
        read = {"base": base["selection"]["fingerprint"],
                **{run: got[(run, seed)]["selection"]["fingerprint"] for run in choice["candidates"]}}
        return dict(kind="choice", profile=exp.profile, split="selection",
                    config={"experiment": experiment_config(exp), "suite": suite, "rule": CHOICE_RULE,
                            "split": "selection", "runs_asked": list(runs)},
                    metrics={**choice, "selection_table": summary[["run", "d_clean", "d_noise_s5"]],
                             "inputs": read},
                    data={**base["selection"]["data"]}, seed=seed)

    return get_or_compute(choice_path(exp, suite), compute, fingerprint=spec, allow_train=True,
                          recompute=exp.recompute, what="the configuration chosen on the selection half")


def strongest_path(exp: Experiment, suite: str = "cifar-c") -> Path:
    """Where :func:`record_strongest` keeps the discriminating runs repeated over seeds."""
    return selection_record(exp, "strongest", suite)


def record_strongest(exp: Experiment, candidates: Sequence[str], k: int = 3, seed: int = 0, suite: str = "cifar-c") -> dict:
    """The discriminating runs repeated over seeds: :func:`strongest_runs` on the selection half, written once as a result
    JSON (the half, the candidates, the fingerprint of every file read) like :func:`record_choice`.
    Refused until every candidate has a result at ``seed`` or a recorded divergence
    (:func:`.study.record_divergence`), so the pick is among all of them."""
    spec = {"kind": "choice/strongest", "experiment": {"profile": exp.profile, "seed": seed}, "suite": suite,
            "split": "selection", "k": k, "candidates": sorted(candidates)}

    def compute() -> dict:
        quiet = replace(exp, allow_train=False, recompute=False)
        base, got = existing_halves(quiet, ["demhec", *candidates], seeds=(seed,), suite=suite)
        diverged = existing_divergences(replace(quiet, seed=seed), list(candidates), suite)
        missing = [r for r in ["demhec", *candidates] if (r, seed) not in got and r not in diverged]
        if base is None or missing:
            raise DemHECError("the strongest runs are picked among every candidate; no seed-"
                              f"{seed} result yet for: {', '.join(missing) or 'the base model'}")
        summary = half_summary(base, got, "selection")
        runs = strongest_runs(summary, candidates, k, seed)
        read = {"base": base["selection"]["fingerprint"],
                **{r: got[(r, seed)]["selection"]["fingerprint"] for r in ["demhec", *candidates] if (r, seed) in got}}
        return dict(kind="choice/strongest", profile=exp.profile, split="selection",
                    config={"experiment": experiment_config(exp), "suite": suite, "k": k, "split": "selection",
                            "candidates": list(candidates)},
                    metrics={"runs": runs, "diverged": sorted(diverged),
                             "selection_table": summary[["run", "d_clean", "r_clean", "d_noise_s5"]], "inputs": read},
                    data={**base["selection"]["data"]}, seed=seed)

    return get_or_compute(strongest_path(exp, suite), compute, fingerprint=spec, allow_train=True,
                          recompute=exp.recompute, what="the strongest discriminating runs on the selection half")


def chosen_run(exp: Experiment, runs: Sequence[str], seed: int = 0) -> dict | None:
    """:func:`select_run` on the selection half of the runs of ``runs`` whose halves results
    exist (with the paper's config, "demhec", as the reference), or None while the base model's
    or the paper config's are missing."""
    base, got = existing_halves(exp, ["demhec", *[r for r in runs if r != "demhec"]], seeds=(seed,))
    if base is None or ("demhec", seed) not in got:
        return None
    return select_run(half_summary(base, got, "selection"))


# Where benchmarks/step_cost.py --out writes the measured price of each T_he.
STEP_COST_PATH = Path("cpu") / "bench" / "step_cost_the.json"


def step_cost_ratios(results_root: str | os.PathLike) -> dict[int, float]:
    """T_he -> median ratio of a Dem-HEC step to a plain CE step, as ``benchmarks/step_cost.py
    --out`` measured it (empty when not committed); T_he = 0 is the random-noise control's step."""
    path = Path(results_root) / STEP_COST_PATH
    if not path.exists():
        return {}
    return {int(t): float(v) for t, v in read_result(path)["metrics"]["ratio"].items()}


def run_step_cost(exp: Experiment, run: str, ratios: dict[int, float]) -> float:
    """The measured price of one training step of ``run`` (a key of :data:`.runs.RUNS`) relative to a
    plain CE step: 1 for a run without the high-entropy branch (plain, Gaussian augmentation), the
    ratio of its T_he for an ascent run, the T_he = 0 ratio for the random-noise control (the full
    loss, no ascent), NaN where that was not measured."""
    cfg = get(run).config(exp.demhec_config)
    if cfg.alpha == 0 and cfg.lambda_c == 0 and cfg.lambda_kd == 0:
        return 1.0
    return ratios.get(cfg.steps if cfg.samples == "ascent" else 0, float("nan"))



def recommended_halves(exp: Experiment, seeds: Sequence[int] = (0, 1, 2), suite: str = "cifar-c"
                       ) -> tuple[dict | None, dict[str, dict] | None, dict[tuple[str, int], dict[str, dict]]]:
    """What exists of the recommended configuration (read, nothing computed): the recorded
    choice (:func:`record_choice`, None before it is made), the base model's halves in ``suite``
    and those of the chosen run and its controls per seed, as :func:`.study.existing_halves`."""
    path = choice_path(exp)
    if not path.exists():
        return None, None, {}
    choice = read_result(path)
    run = choice["metrics"]["run"]
    base, runs = existing_halves(exp, [run, *(control_of(c, run) for c in CONTROL_RUNS)], seeds, suite)
    return choice, base, runs
