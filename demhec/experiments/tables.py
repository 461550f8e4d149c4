"""Table shapers: the paper's tables and figure inputs from result records (no training or scoring;
the one record written here, :func:`record_choice`, is a choice made from other records)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._common import DemHECError
from ..results import compare_with_paper, get_or_compute, paper_table, read_result
from .ablations import ABLATION_LABELS, NOISE, RUNS, is_control, run_label

log = logging.getLogger(__name__)


def result_table(record: dict) -> pd.DataFrame:
    """The tidy evaluation table stored in a robustness result."""
    return pd.DataFrame(record["metrics"]["table"])


def before_after_table(before: dict, after: dict, paper: str | None = None,
                       paper_dataset: str | None = None, paper_backbone: str | None = None) -> pd.DataFrame:
    """Table 1-style comparison: accuracy per corruption and severity before and after
    Dem-HEC, with the paper's numbers (``paper`` = "table1", "table2" or "table5") beside them."""
    rows = []
    for phase, rec in (("before", before), ("after", after)):
        t = result_table(rec)
        t = t[t.corruption != "clean"].assign(phase=phase)
        rows.append(t[["corruption", "severity", "phase", "accuracy"]])
    ours = pd.concat(rows, ignore_index=True)
    if paper is None:
        return ours
    ref = paper_table(paper)
    ref = ref[(ref.dataset == paper_dataset) & (ref.backbone == paper_backbone)]
    return compare_with_paper(ours, ref, on=["corruption", "severity", "phase"])


def severity_means(record: dict) -> pd.Series:
    """Accuracy per corruption averaged over the evaluated severities, plus "clean"."""
    t = result_table(record)
    out = t[t.corruption != "clean"].groupby("corruption", sort=False)["accuracy"].mean()
    return pd.concat([pd.Series({"clean": float(t.loc[t.corruption == "clean", "accuracy"].iloc[0])}), out])


def wide_table(df: pd.DataFrame, values: Sequence[str] = ("ours", "paper", "delta")) -> pd.DataFrame:
    """Pivot a long before/after table to the paper's layout: one row per corruption, columns
    per severity and phase (and source)."""
    values = [v for v in values if v in df.columns]
    wide = df.pivot_table(index="corruption", columns=["severity", "phase"], values=values, sort=False)
    wide = wide.reorder_levels([1, 2, 0], axis=1).sort_index(axis=1, level=[0, 1], ascending=[True, False],
                                                               sort_remaining=False)
    wide.columns = [f"S{s} {p} {v}" for s, p, v in wide.columns]
    return wide.reset_index()


def collect_clean_accuracy(results_root: str | os.PathLike) -> pd.DataFrame:
    """Clean accuracy before/after Dem-HEC from every robustness result under a profile's
    results folder (Figure 5 inputs), one row per (dataset, backbone, phase)."""
    rows = []
    for path in sorted(Path(results_root).glob("*/*/*.json")):
        rec = read_result(path)
        kind = rec["kind"]
        if not kind.startswith("robustness/"):
            continue
        phase = kind.split("/")[-1]
        # the profile's own runs only: not other seeds, ablation configs or baselines
        if phase not in ("before", "after") or path.stem != f"{phase}_{rec['config']['suite']}":
            continue
        e = rec["config"]["experiment"]
        rows.append({"dataset": e["dataset"], "backbone": e["backbone"],
                     "phase": phase, "accuracy": rec["metrics"]["clean_accuracy"]})
    df = pd.DataFrame(rows, columns=["dataset", "backbone", "phase", "accuracy"])
    return df.drop_duplicates(["dataset", "backbone", "phase"]).reset_index(drop=True)


def entropy_summary(record: dict, normalised: bool = False) -> pd.DataFrame:
    """Mean entropy per layer for clean and corrupted inputs and their gap (Figures 3-4);
    ``normalised`` divides each layer's entropies by its log(width) (``metrics.log_width``, a
    layer of width 1 as it is) so layers of different widths share one scale."""
    m = record["metrics"]
    scale = entropy_scale(record) if normalised else {}
    rows = [{"layer": layer, "clean": float(np.mean(m["clean"][layer])) / scale.get(layer, 1.0),
             "corrupted": float(np.mean(m["corrupted"][layer])) / scale.get(layer, 1.0)} for layer in m["clean"]]
    df = pd.DataFrame(rows)
    df["gap"] = df["corrupted"] - df["clean"]
    return df


def entropy_scale(record: dict) -> dict[str, float]:
    """Each layer's log(width) from an entropy result, for ``normalise_by`` of
    :func:`demhec.plots.entropy_figure` (layers of width 1, log 1 = 0, are left out)."""
    widths = record["metrics"].get("log_width")
    if widths is None:
        raise DemHECError("this entropy result records no layer widths (it predates them); "
                          "recompute it (recompute=True) to show normalised entropies")
    return {layer: float(v) for layer, v in widths.items() if v > 0}


def check_shown(long: pd.DataFrame, records: dict[str, dict], value: str = "ours") -> None:
    """What a notebook shows is what its results hold: every ``value`` of a long before/after
    table (:func:`before_after_table`) is a number and equals its cell in the record of its
    phase (``records``: phase -> result), and the "after" record's accuracies and calibration
    errors are not all the "before" one's (:func:`check_changed`). Raises :class:`DemHECError`
    saying what does not hold."""
    if long[value].isna().any():
        bad = long[long[value].isna()][["corruption", "severity", "phase"]].to_dict("records")
        raise DemHECError(f"the table shows no number for {bad}")
    for phase, record in records.items():
        held = result_table(record).set_index(["corruption", "severity"])["accuracy"]
        shown = long[long.phase == phase].set_index(["corruption", "severity"])[value]
        if not shown.index.isin(held.index).all() or (held.reindex(shown.index) - shown).abs().max() > 1e-9:
            raise DemHECError(f"the {phase} rows shown differ from the result file's cells")
    if {"before", "after"} <= set(records):
        check_changed(records["before"], records["after"])


def check_changed(before: dict, after: dict, what: str = "after") -> None:
    """A fine-tuned model's result (``after``) is not its base model's (``before``) all over again:
    some cell's accuracy or calibration error differs (calibration too: a short fine-tune can leave
    every accuracy of a small set as it was, but not the confidences of a model that changed).
    Identical results mean the base model was scored twice, a :class:`DemHECError`, except in the
    ``smoke`` profile and its twins (``gpu_smoke``, ...), where it is a warning: a model that
    saturates (a 2-step smoke base of a deep ResNet) scores the same after a fine-tune that did
    change its weights."""
    cols = [c for c in ("accuracy", "ece") if c in result_table(before) and c in result_table(after)]
    if not result_table(before)[cols].equals(result_table(after)[cols]):
        return
    message = f"{what} equals before in every cell: was the fine-tuned model used?"
    if str(after.get("profile")).split("_")[-1] == "smoke":
        log.warning(message)
    else:
        raise DemHECError(f"{message} (profile {after.get('profile', 'not recorded')!r})")


def check_entropy_shown(summary: pd.DataFrame, records: dict[str, dict], normalised: bool = False,
                        key: str = "phase") -> None:
    """Figures 3-4 as shown (:func:`entropy_summary` rows with a column ``key`` naming the
    record): each record's layer means (divided by log width when ``normalised``) are the
    record's, every one finite. Raises :class:`DemHECError`."""
    for phase, record in records.items():
        shown = summary[summary[key] == phase].set_index("layer")
        scale = entropy_scale(record) if normalised else {}
        for which in ("clean", "corrupted"):
            want = pd.Series({layer: float(np.mean(v)) / scale.get(layer, 1.0)
                              for layer, v in record["metrics"][which].items()})
            got = shown[which].reindex(want.index).astype(float)
            if not np.isfinite(got).all() or (got - want).abs().max() > 1e-9:
                raise DemHECError(f"the {phase} {which} entropies shown differ from the result file")


def check_clean_shown(table: pd.DataFrame, records: dict[str, dict]) -> None:
    """Figure 5 as shown (:func:`clean_accuracy_with_paper`): every accuracy is a number and the
    rows of ``records`` (phase -> result) hold their clean accuracy. Raises :class:`DemHECError`."""
    if table.accuracy.isna().any():
        raise DemHECError("the clean-accuracy table shows a row without a number")
    for phase, record in records.items():
        e = record["config"]["experiment"]
        row = table[(table.dataset == e["dataset"]) & (table.backbone == e["backbone"]) & (table.phase == phase)]
        if len(row) != 1 or abs(float(row.accuracy.iloc[0]) - record["metrics"]["clean_accuracy"]) > 1e-9:
            raise DemHECError(f"the {phase} clean accuracy shown for {e['backbone']} differs from its result file")


def check_ablation_shown(summary: pd.DataFrame, base: dict, runs: dict[tuple[str, int], dict]) -> None:
    """An :func:`ablation_summary` as shown: each (run, seed) row's clean accuracy is its record's,
    its noise S5 mean the mean of the record's three noise cells at S5, the changes are from the
    base record, nothing is missing, and no run's record is the base's all over again
    (:func:`check_changed`). Raises :class:`DemHECError`."""
    def noise_s5(record: dict) -> float:
        t = result_table(record)
        return float(t[t.corruption.isin(NOISE) & (t.severity == 5)].accuracy.mean())

    if summary[["clean", "noise_s5", "d_clean", "d_noise_s5"]].isna().any().any():
        raise DemHECError("the summary shows a row without a number")
    for (run, seed), record in runs.items():
        row = summary[(summary.run == run) & (summary.seed == seed)]
        want = {"clean": record["metrics"]["clean_accuracy"], "noise_s5": noise_s5(record),
                "d_clean": record["metrics"]["clean_accuracy"] - base["metrics"]["clean_accuracy"],
                "d_noise_s5": noise_s5(record) - noise_s5(base)}
        if len(row) != 1 or any(abs(float(row[k].iloc[0]) - v) > 1e-9 for k, v in want.items()):
            raise DemHECError(f"the row of {run!r} seed {seed} shown differs from its result file")
        check_changed(base, record, f"{run!r} seed {seed}")


def check_summary(table: pd.DataFrame, records: dict[str, dict]) -> None:
    """Tables 4 and 6 as shown (:func:`summary_vs_paper`): each of our rows holds its record's
    clean accuracy and severity means, every one a number. Raises :class:`DemHECError`."""
    shown = table.set_index("model")
    for label, record in records.items():
        want = severity_means(record)
        got = shown.loc[label, want.index].astype(float)
        if got.isna().any() or (got - want).abs().max() > 1e-9:
            raise DemHECError(f"the row {label!r} shown differs from its result file")


def check_families(table: pd.DataFrame, records: dict[str, dict]) -> None:
    """Table 3 as shown (:func:`family_table`): each method's family means are its record's,
    every one a number. Raises :class:`DemHECError`."""
    from ..evaluation import family_means

    for method, record in records.items():
        want = family_means(result_table(record))
        got = table[table.method == method].set_index("family")["ours"].reindex(want.index)
        if got.isna().any() or (got - want).abs().max() > 1e-9:
            raise DemHECError(f"the family means shown for {method!r} differ from its result file")


def recount(record: dict, cells: Sequence[tuple[str, int]] = (("clean", 0),), base: dict | None = None) -> float:
    """The accuracy (percent) of a result on ``cells`` (their mean), recomputed from the result's
    raw outcomes instead of read from its table: every image's 0/1 outcome where the result keeps
    them (a halves result, :func:`outcomes`), else each cell's count of correct images over its
    count of images. With ``base``, the change from ``base`` in points (per image, paired, where
    both keep per-image outcomes). What a notebook checks its key numbers against
    (:func:`check_number`), beside the ``check_*_shown`` checks of its tables against the files'
    tables."""
    cells = [(c, int(s)) for c, s in cells]
    if not cells:
        raise DemHECError("recount needs at least one (corruption, severity) cell")

    def per_image(rec: dict) -> np.ndarray | None:
        if not isinstance(rec["metrics"].get("correct"), dict):
            return None
        return np.stack([outcomes(rec, c, s) for c, s in cells], 1).astype(float)

    def counted(rec: dict) -> float:
        rows = {(r["corruption"], int(r["severity"])): r for r in rec["metrics"]["table"]}
        missing = [f"{c}/{s}" for c, s in cells if (c, s) not in rows]
        if missing:
            raise DemHECError(f"the result holds no cell {', '.join(missing)}")
        rows = [rows[cell] for cell in cells]
        if any("correct" not in r or "n" not in r for r in rows):
            raise DemHECError("the result's table keeps no counts of correct images (correct, n) to recount from")
        return float(np.mean([100.0 * r["correct"] / r["n"] for r in rows]))

    mine = per_image(record)
    if base is None:
        return counted(record) if mine is None else 100.0 * float(mine.mean())
    theirs = per_image(base)
    if mine is not None and theirs is not None:
        if mine.shape != theirs.shape:
            raise DemHECError("a paired recount needs results of the same images")
        return 100.0 * float((mine - theirs).mean())
    return recount(record, cells) - recount(base, cells)


def recount_gap(record: dict, layer: str, normalised: bool = False) -> float:
    """An entropy result's corrupted-minus-clean gap at ``layer`` (Figures 3-4), recomputed image
    by image from its per-image entropies (each image's corrupted entropy minus its clean one,
    then their mean; divided by the layer's log width when ``normalised``), not from the means
    that :func:`entropy_summary` shows."""
    m = record["metrics"]
    if layer not in m["clean"] or layer not in m["corrupted"]:
        raise DemHECError(f"the entropy result holds no layer {layer!r}")
    clean, corrupted = np.asarray(m["clean"][layer], float), np.asarray(m["corrupted"][layer], float)
    if clean.shape != corrupted.shape or clean.size == 0:
        raise DemHECError(f"layer {layer!r}: clean and corrupted entropies are not of the same images")
    scale = entropy_scale(record).get(layer, 1.0) if normalised else 1.0
    return float((corrupted - clean).mean()) / scale


def check_number(shown: float, want: float, what: str, tol: float = 1e-6) -> None:
    """A key number a notebook shows (``shown``) is its recomputation (``want``, from
    :func:`recount` or :func:`recount_gap`) to ``tol``; raises :class:`DemHECError` naming both."""
    if not (np.isfinite(shown) and np.isfinite(want)) or abs(float(shown) - float(want)) > tol:
        raise DemHECError(f"{what}: shown {float(shown):.6g}, but the result file's raw outcomes give "
                          f"{float(want):.6g}")


def check_recounted(records: dict[str, dict], long: pd.DataFrame | None = None, value: str = "ours") -> None:
    """Each result's clean accuracy and, with ``long`` (a long before/after table,
    :func:`before_after_table`, whose ``phase`` names the result of ``records``), every ``value``
    shown, recomputed from the raw outcomes of its result (:func:`recount`). Raises
    :class:`DemHECError` naming the first number that does not follow from them."""
    for phase, record in records.items():
        check_number(record["metrics"]["clean_accuracy"], recount(record), f"the {phase} clean accuracy")
        if long is None:
            continue
        for row in long[long.phase == phase].itertuples():
            check_number(getattr(row, value), recount(record, [(row.corruption, row.severity)]),
                         f"the {phase} accuracy shown for {row.corruption} S{row.severity}")


def gain_table(before: dict, after: dict) -> pd.DataFrame:
    """Accuracy gain of ``after`` over ``before`` per corruption and severity, in points."""
    b = result_table(before).set_index(["corruption", "severity"])["accuracy"]
    a = result_table(after).set_index(["corruption", "severity"])["accuracy"]
    d = (a - b).rename("delta").reset_index()
    return d[d.corruption != "clean"].reset_index(drop=True)


def with_paper_source(long: pd.DataFrame) -> pd.DataFrame:
    """A before/after table with ours and the paper's numbers as rows (``source`` column)."""
    keys = ["corruption", "severity", "phase"]
    parts = [long[keys].assign(accuracy=long["ours"], source="ours")]
    if "paper" in long and long["paper"].notna().any():
        parts.append(long[keys].assign(accuracy=long["paper"], source="paper"))
    return pd.concat(parts, ignore_index=True).dropna(subset=["accuracy"])


def clean_accuracy_with_paper(results_root: str | os.PathLike) -> pd.DataFrame:
    """Figure 5 input: our clean accuracies with the values the paper's text gives."""
    ours = collect_clean_accuracy(results_root)
    ref = paper_table("figure5")[["dataset", "backbone", "phase", "accuracy"]]
    ref = ref.rename(columns={"accuracy": "paper_accuracy"})
    return ours.merge(ref, on=["dataset", "backbone", "phase"], how="left")


def family_table(records: dict[str, dict], paper_backbone: str) -> pd.DataFrame:
    """Table 3: mean accuracy per corruption family for each method, ours beside the paper's.

    Methods we trained get an ``ours`` value; every method the paper reports keeps its
    ``paper`` value, so the baselines we cannot train still appear.
    """
    from ..evaluation import family_means

    rows = []
    for method, rec in records.items():
        for family, acc in family_means(result_table(rec)).items():
            rows.append({"family": family, "method": method, "ours": float(acc)})
    ours = pd.DataFrame(rows, columns=["family", "method", "ours"])
    ref = paper_table("table3")
    ref = ref[ref.backbone == paper_backbone][["family", "method", "label", "accuracy"]]
    out = ref.rename(columns={"accuracy": "paper"}).merge(ours, on=["family", "method"], how="outer")
    out["delta"] = out["ours"] - out["paper"]
    return out[["family", "method", "label", "ours", "paper", "delta"]]


def summary_vs_paper(records: dict[str, dict], paper: str) -> pd.DataFrame:
    """Tables 4 and 6: clean accuracy and each corruption's accuracy (mean over the evaluated
    severities) for our models as rows, beside the paper's rows."""
    rows = {label: severity_means(rec) for label, rec in records.items()}
    ref = paper_table(paper)
    key = "method" if "method" in ref.columns else "phase"
    for name, group in ref.groupby(key, sort=False):
        rows[f"paper: {name}"] = group.set_index("corruption")["accuracy"]
    return pd.DataFrame(rows).T.rename_axis("model").reset_index()


def paired_summary(records: dict[tuple[str, int], dict], z: float = 1.96) -> pd.DataFrame:
    """One row per (run, seed) of :func:`paired_gain_result` records: each change from the base
    with its standard error and a normal ``z`` interval (1.96: 95%)."""
    rows = []
    for (run, seed), rec in records.items():
        row = {"run": run, "label": run_label(run), "seed": seed}
        for name, key in (("clean", "clean"), ("noise", "corrupted")):
            m = rec["metrics"][key]
            row.update({f"d_{name}": m["diff"], f"se_{name}": m["se"],
                        f"d_{name}_lo": m["diff"] - z * m["se"], f"d_{name}_hi": m["diff"] + z * m["se"]})
        rows.append(row)
    return pd.DataFrame(rows)


def _mean_accuracy(record: dict, corruptions: Sequence[str], severity: int) -> float:
    t = result_table(record)
    cells = t[t.corruption.isin(corruptions) & (t.severity == severity)]
    if len(cells) != len(corruptions):
        raise DemHECError(f"result lacks some of {list(corruptions)} at severity {severity}")
    return float(cells.accuracy.mean())


def ablation_summary(base: dict, runs: dict[tuple[str, int], dict]) -> pd.DataFrame:
    """One row per (run, seed): clean accuracy, mean accuracy over the three noises at S5 and
    over every evaluated corruption at S5, and each one's change from the base model (points)."""
    def metrics(rec: dict) -> dict:
        t = result_table(rec)
        s5 = sorted(set(t.corruption[(t.corruption != "clean") & (t.severity == 5)]))
        return {"clean": rec["metrics"]["clean_accuracy"],
                "noise_s5": _mean_accuracy(rec, NOISE, 5),
                "all_s5": _mean_accuracy(rec, s5, 5)}

    ref = metrics(base)
    rows = [{"run": "base", "label": "base model", "seed": base["seed"], **ref}]
    for (run, seed), rec in runs.items():
        rows.append({"run": run, "label": run_label(run), "seed": seed, **metrics(rec)})
    df = pd.DataFrame(rows)
    for col in ("clean", "noise_s5", "all_s5"):
        df[f"d_{col}"] = df[col] - ref[col]
    return df


def severity_gains(base: dict, runs: dict[tuple[str, int], dict]) -> pd.DataFrame:
    """Per run and severity, the change from the base model (points, mean over the seeds in
    ``runs``) of the mean accuracy over the three noises and over every corruption evaluated at
    that severity, with the clean change beside it: the S5 targets read alone hide what a
    fine-tune costs at the milder severities, where corrupted images are closer to clean ones."""
    bt = result_table(base)
    severities = sorted(set(bt.severity[bt.corruption != "clean"]))
    rows = []
    for (run, seed), rec in runs.items():
        t = result_table(rec)
        for s in severities:
            every = sorted(set(t.corruption[(t.corruption != "clean") & (t.severity == s)]))
            if not every:
                raise DemHECError(f"run {run!r} seed {seed} was not evaluated at severity {s}")
            rows.append({"run": run, "label": run_label(run), "seed": seed, "severity": s,
                         "d_clean": rec["metrics"]["clean_accuracy"] - base["metrics"]["clean_accuracy"],
                         "d_noise": _mean_accuracy(rec, NOISE, s) - _mean_accuracy(base, NOISE, s),
                         "d_all": _mean_accuracy(rec, every, s) - _mean_accuracy(base, every, s)})
    df = pd.DataFrame(rows)
    out = df.groupby(["run", "label", "severity"], sort=False)[["d_clean", "d_noise", "d_all"]].mean()
    return out.join(df.groupby(["run", "label", "severity"], sort=False).seed.nunique().rename("seeds")).reset_index()


def seed_gain(summary: pd.DataFrame, run: str = "demhec", control: str = "plain") -> pd.DataFrame:
    """Per seed, ``run`` minus ``control`` (points), with the mean and the sample standard
    deviation over seeds as the last two rows."""
    cols = ["clean", "noise_s5", "all_s5"]
    a = summary[summary.run == run].set_index("seed")[cols]
    b = summary[summary.run == control].set_index("seed")[cols]
    seeds = sorted(set(a.index) & set(b.index))
    if not seeds:
        raise DemHECError(f"no seed has both {run!r} and {control!r}")
    d = (a.loc[seeds] - b.loc[seeds]).reset_index()
    d["seed"] = d["seed"].astype(str)
    stats = [dict(seed="mean", **d[cols].mean()), dict(seed="std", **d[cols].std(ddof=1))]
    return pd.concat([d, pd.DataFrame(stats)], ignore_index=True)


def suite_agreement(records: dict[str, dict], paper_dataset: str, paper_backbone: str,
                    paper: str = "table1", phase: str = "before") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Which corruption constants reproduce the paper: our accuracy per corruption and
    severity in each suite (``records``: suite -> result) beside the paper's ``phase`` column,
    and per suite the mean absolute and the mean signed difference (ours - paper)."""
    ref = paper_table(paper)
    ref = ref[(ref.dataset == paper_dataset) & (ref.backbone == paper_backbone) & (ref.phase == phase)]
    cells = ref.set_index(["corruption", "severity"])["accuracy"].rename("paper")
    table = cells.to_frame()
    for suite, rec in records.items():
        t = result_table(rec).set_index(["corruption", "severity"])["accuracy"]
        table[suite] = t.reindex(table.index)
    table = table.reset_index()
    summary = pd.DataFrame([{"suite": s, "cells": int(table[s].notna().sum()),
                             "mean_abs_diff": float((table[s] - table.paper).abs().mean()),
                             "mean_diff": float((table[s] - table.paper).mean())}
                            for s in records])
    return table, summary


# --- the selection protocol (issue 16) -------------------------------------------------------


def outcomes(record: dict, corruption: str, severity: int) -> np.ndarray:
    """Per-image 0/1 outcomes of one cell of a half's result (:func:`~.pipeline.halves_result`)."""
    from .pipeline import unpack_outcomes

    key = f"{corruption}/{severity}"
    correct = record["metrics"].get("correct")
    if correct is None or key not in correct:
        raise DemHECError(f"result holds no per-image outcomes of {key} (is it a halves result?)")
    return unpack_outcomes(correct[key], int(record["metrics"]["n"]))


def _split_of(records: Sequence[dict]) -> str:
    splits = {r.get("split") for r in records}
    if len(splits) != 1 or None in splits:
        raise DemHECError(f"records of one comparison must be scored on one half, got {sorted(map(str, splits))}")
    return splits.pop()


def paired_records(a: dict, b: dict, cells: Sequence[tuple[str, int]]) -> dict[str, float]:
    """``b`` minus ``a`` in points on the mean over ``cells`` (image by image), with the standard
    error paired over the images (:func:`~demhec.evaluation.paired_difference`); both records must
    be of one half."""
    from ..evaluation import paired_difference

    _split_of([a, b])
    oa = np.stack([outcomes(a, c, s) for c, s in cells], 1)
    ob = np.stack([outcomes(b, c, s) for c, s in cells], 1)
    return paired_difference(oa, ob)


def halves_summary(base: dict, runs: dict[tuple[str, int], dict], reference: tuple[str, int] | None = None,
                   severity: int = 5) -> pd.DataFrame:
    """:func:`ablation_summary` of records of one half, with the paired standard error over the
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
    :func:`existing_halves` returns them), paired to the paper's config when it is among the runs,
    and checked to show its result files' numbers (:func:`check_ablation_shown`)."""
    recs = {k: v[half] for k, v in runs.items()}
    summary = halves_summary(base[half], recs, reference=("demhec", 0) if ("demhec", 0) in recs else None)
    check_ablation_shown(summary, base[half], recs)
    return summary


def ranked_runs(summary: pd.DataFrame) -> pd.DataFrame:
    """Issue 16, point 3's ranked table from a :func:`halves_summary` of one half: per run, the
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
    at ``seed`` (``r_clean``), read on the selection half only (refused otherwise): the ones issue
    16 repeats over seeds. Runs without a result at that seed are not candidates."""
    if set(selection.split) != {"selection"}:
        raise DemHECError(f"the strongest runs are picked on the selection half only, got {sorted(set(selection.split))}")
    if "r_clean" not in selection:
        raise DemHECError("strongest_runs needs a halves_summary made with reference=('demhec', 0)")
    rows = selection[selection.run.isin(candidates) & selection.seed.eq(seed)]
    return list(rows.sort_values("r_clean", ascending=False, kind="stable").run.head(k))


# The selection rule's targets (issue 16's acceptance): points from the base model.
CHOICE_RULE = {"max_clean_cost": 4.0, "min_noise_gain": 10.0}


def select_run(summary: pd.DataFrame, max_clean_cost: float = CHOICE_RULE["max_clean_cost"],
               min_noise_gain: float = CHOICE_RULE["min_noise_gain"]) -> dict:
    """The selection rule of issue 16's acceptance, applied to a :func:`halves_summary` of the
    selection half only (refused otherwise): among the runs (seed means) whose clean accuracy is
    within ``max_clean_cost`` points of the base (a cost of exactly ``max_clean_cost`` is within),
    the one with the largest noise S5 gain; when none is, the largest noise gain minus clean cost.
    A tie goes to the run listed first in ``summary``. The controls are never candidates: the choice is
    a configuration of the paper's loss (:func:`~.ablations.is_control`). Returns the
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


def choice_path(exp: Any, suite: str = "cifar-c") -> Path:
    """Where :func:`record_choice` keeps the recommended configuration."""
    return exp.cell_dir / "halves" / f"choice_{suite}.json"


def record_choice(exp: Any, runs: Sequence[str], seed: int = 0, suite: str = "cifar-c") -> dict:
    """Issue 16's recommended configuration: :func:`select_run` on the selection half among the
    ``runs`` whose halves results exist, written once as a result JSON that names the half it was
    chosen on, the candidates and the fingerprint of every selection-half file it read. The
    record is then kept: configurations scored later extend :func:`chosen_run`'s candidates, not
    this choice, on which the recommended config's seeds and controls were trained (delete the
    file, or ``recompute``, to choose again)."""
    from .ablations import existing_halves
    from .pipeline import experiment_config

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


def strongest_path(exp: Any, suite: str = "cifar-c") -> Path:
    """Where :func:`record_strongest` keeps the discriminating runs repeated over seeds."""
    return exp.cell_dir / "halves" / f"strongest_{suite}.json"


def record_strongest(exp: Any, candidates: Sequence[str], k: int = 3, seed: int = 0, suite: str = "cifar-c") -> dict:
    """Issue 16, point 3: :func:`strongest_runs` on the selection half, written once as a result
    JSON (the half, the candidates, the fingerprint of every file read) like :func:`record_choice`.
    Refused until every candidate has a result at ``seed`` or a recorded divergence
    (:func:`~.ablations.record_divergence`), so the pick is among all of them."""
    from .ablations import existing_divergences, existing_halves
    from .pipeline import experiment_config

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


# Where benchmarks/step_cost.py --out writes the measured price of each T_he (issue 16).
STEP_COST_PATH = Path("cpu") / "bench" / "step_cost_the.json"


def step_cost_ratios(results_root: str | os.PathLike) -> dict[int, float]:
    """T_he -> median ratio of a Dem-HEC step to a plain CE step, as ``benchmarks/step_cost.py
    --out`` measured it (empty when not committed); T_he = 0 is the random-noise control's step."""
    path = Path(results_root) / STEP_COST_PATH
    if not path.exists():
        return {}
    return {int(t): float(v) for t, v in read_result(path)["metrics"]["ratio"].items()}


def run_step_cost(exp: Any, run: str, ratios: dict[int, float]) -> float:
    """The measured price of one training step of ``run`` (a key of :data:`RUNS`) relative to a
    plain CE step: 1 for a run without the high-entropy branch (plain, Gaussian augmentation), the
    ratio of its T_he for an ascent run, the T_he = 0 ratio for the random-noise control (the full
    loss, no ascent), NaN where that was not measured."""
    from .ablations import _ablation_config

    cfg = _ablation_config(exp, run)[0]
    if cfg.alpha == 0 and cfg.lambda_c == 0 and cfg.lambda_kd == 0:
        return 1.0
    return ratios.get(cfg.steps if cfg.samples == "ascent" else 0, float("nan"))


def chosen_run(exp: Any, runs: Sequence[str], seed: int = 0) -> dict | None:
    """:func:`select_run` on the selection half of the runs of ``runs`` whose halves results
    exist (with the paper's config, "demhec", as the reference), or None while the base model's
    or the paper config's are missing."""
    from .ablations import existing_halves

    base, got = existing_halves(exp, ["demhec", *[r for r in runs if r != "demhec"]], seeds=(seed,))
    if base is None or ("demhec", seed) not in got:
        return None
    return select_run(half_summary(base, got, "selection"))


def controls_verdict(summary: pd.DataFrame, run: str = "demhec",
                     controls: Sequence[str] = ("random_noise", "gaussian_aug", "plain"), z: float = 1.96) -> list[str]:
    """Plain-language lines from a :func:`halves_summary` (one half, ``reference`` = ``run``): the
    run's change from the base, and its advantage over each control on the noise S5 mean and on
    clean accuracy, with the paired standard errors over the half's images; a difference is called
    a difference only when it exceeds ``z`` of them. Seed means where several seeds exist (their
    errors then are the mean of the per-seed errors, an approximation)."""
    if "r_noise_s5" not in summary:
        raise DemHECError("controls_verdict needs a halves_summary made with reference=(run, seed)")
    m = summary.groupby("run", sort=False)[["d_clean", "se_clean", "d_noise_s5", "se_noise_s5", "r_clean",
                                             "r_se_clean", "r_noise_s5", "r_se_noise_s5"]].mean()
    half = summary.split.iloc[0]
    if run not in m.index:
        return [f"{run} has no result on the {half} half yet."]

    def said(d: float, se: float) -> str:
        return f"{d:+.2f} ± {se:.2f}" + ("" if abs(d) > z * se else " (within the images' noise)")

    r = m.loc[run]
    cost, gain = CHOICE_RULE["max_clean_cost"], CHOICE_RULE["min_noise_gain"]
    lines = [f"{run_label(run)} on the {half} half: clean {said(r.d_clean, r.se_clean)} points, "
             f"noise S5 mean {said(r.d_noise_s5, r.se_noise_s5)} points from the base "
             f"(targets: clean >= -{cost:g}, noise >= +{gain:g}: {'met' if r.d_clean >= -cost and r.d_noise_s5 >= gain else 'not met'})."]
    for c in controls:
        if c not in m.index:
            lines.append(f"{run_label(c)}: not run on the {half} half yet.")
            continue
        k = m.loc[c]
        # r_* is control minus run: the run's advantage is its negative
        adv, adv_se, cl, cl_se = 0.0 - k.r_noise_s5, k.r_se_noise_s5, 0.0 - k.r_clean, k.r_se_clean
        verdict = ("ahead by at least 3 points" if adv - z * adv_se >= 3 else
                   "ahead, but by less than 3 points or not beyond the images' noise" if adv > 0 else "not ahead")
        lines.append(f"{run} minus {run_label(c)}: noise S5 {said(adv, adv_se)}, clean {said(cl, cl_se)} "
                     f"points: {verdict} on noise.")
    return lines


def describe_ranking(ranked: pd.DataFrame, runs: Sequence[str], z: float = 1.96) -> list[str]:
    """Issue 16, point 3's outcome in words, from :func:`ranked_runs`: which of ``runs`` move the
    paper config's clean cost by more than ``z`` paired standard errors of the half's images (and
    by how much, with the spread over seeds where there are several), and which do not; best
    first. A run absent from ``ranked`` is named as not scored."""
    rows = ranked.set_index("run")
    moved, within = [], []
    for run in (r for r in rows.index if r in runs):
        r = rows.loc[run]
        spread = f", sd {r.sd_clean:.2f} over {int(r.seeds)} seeds" if r.seeds > 1 else ", 1 seed"
        text = (f"{run_label(run)} (`{run}`): {r.r_clean:+.2f} ± {r.r_se_clean:.2f} clean{spread}; noise S5 "
                f"{r.r_noise_s5:+.2f} against the paper config")
        (moved if abs(r.r_clean) > z * r.r_se_clean else within).append(text)
    lines = [f"Moves the clean cost (by more than {z:g} paired standard errors): " + ("; ".join(moved) or "none") + ".",
             "Within the images' noise: " + ("; ".join(within) or "none") + "."]
    missing = [r for r in runs if r not in rows.index]
    if missing:
        lines.append(f"No accuracy yet (not run, or diverged): {', '.join(f'`{r}`' for r in missing)}.")
    return lines


def describe_divergences(records: dict[str, dict]) -> list[str]:
    """One line per run whose fine-tune diverged (:func:`~.ablations.existing_divergences`): at
    which step, what was non-finite and at which learning rate; such a run has no accuracy, and
    a table that left it out would hide the outcome."""
    return [f"{run_label(run)} (`{run}`): the fine-tune diverged at step {rec['metrics']['step']} "
            f"({rec['metrics']['what']}) with lr {rec['config']['model']['lr']:g}; no accuracy to report."
            for run, rec in records.items()]


def recommended_summary(base: dict[str, dict], runs: dict[tuple[str, int], dict[str, dict]], run: str,
                        half: str = "report") -> pd.DataFrame:
    """:func:`halves_summary` of the recommended ``run`` and its controls on ``half``, seed by
    seed: each control's ``r_*`` is its change from the recommended run of the same seed, paired
    over the same images (checked to show its files' numbers)."""
    frames = []
    for seed in sorted({s for _, s in runs}):
        recs = {k: v[half] for k, v in runs.items() if k[1] == seed}
        if (run, seed) not in recs:
            continue
        summary = halves_summary(base[half], recs, reference=(run, seed))
        check_ablation_shown(summary, base[half], recs)
        frames.append(summary if not frames else summary[summary.run != "base"])
    if not frames:
        raise DemHECError(f"no halves results of {run!r} on the {half} half")
    return pd.concat(frames, ignore_index=True)


def recommendation_verdict(summary: pd.DataFrame, run: str, controls: Sequence[str],
                           rule: dict[str, float] = CHOICE_RULE, margin: float = 3.0) -> dict:
    """Issue 16's acceptance on a :func:`recommended_summary` of the report half: the means over
    the seeds of the run's noise S5 and clean changes from the base against ``rule``'s targets, and
    its noise S5 advantage over each control (control minus run, negated) against ``margin``; with
    each mean's standard deviation over seeds. Returns the numbers and whether each target holds."""
    def sd(values: pd.Series) -> float:
        return float(values.std(ddof=1)) if len(values) > 1 else float("nan")

    m = summary[summary.run != "base"]
    own = m[m.run == run]
    out = {"run": run, "seeds": sorted(own.seed.tolist()), "half": summary.split.iloc[0],
           "base_noise_s5": float(summary[summary.run == "base"].noise_s5.mean()),
           "d_clean": float(own.d_clean.mean()), "d_clean_sd": sd(own.d_clean),
           "d_noise_s5": float(own.d_noise_s5.mean()), "d_noise_s5_sd": sd(own.d_noise_s5), "controls": {}}
    out["clean_met"] = out["d_clean"] >= -rule["max_clean_cost"]
    out["noise_met"] = out["d_noise_s5"] >= rule["min_noise_gain"]
    for c in controls:
        rows = m[m.run == c]
        if rows.empty:
            out["controls"][c] = None
            continue
        adv = -rows.r_noise_s5
        out["controls"][c] = {"advantage": float(adv.mean()), "sd": sd(adv),
                              "clean_advantage": float(-rows.r_clean.mean()), "seeds": sorted(rows.seed.tolist()),
                              "met": bool(adv.mean() >= margin)}
    done = [v for v in out["controls"].values() if v is not None]
    out["controls_met"] = bool(len(done) == len(controls) and all(v["met"] for v in done))
    out["all_met"] = bool(out["clean_met"] and out["noise_met"] and out["controls_met"])
    return out


def _value(field: str, value: Any) -> str:
    if field in ("eps", "step_size"):
        return f"{value * 255:g}/255"
    if field == "freeze":
        return {"after:2": "the later stages frozen, the stem and the first two stages train",
                "auto": "the stem and the first stage frozen"}.get(str(value), str(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _setting(field: str, value: Any) -> str:
    return f"freezing: {_value(field, value)}" if field == "freeze" else f"{field} = {_value(field, value)}"


def config_changes(exp: Any, run: str) -> list[str]:
    """What ``run`` (a key of :data:`RUNS`) sets differently from the profile's Dem-HEC config (the
    paper's), in words, each with the paper config's value beside it."""
    from .ablations import _ablation_config

    cfg, paper = _ablation_config(exp, run)[0], exp.demhec_config
    return [f"{_setting(f, getattr(cfg, f))} (paper config: {_value(f, getattr(paper, f))})"
            for f in cfg.__dataclass_fields__ if f != "seed" and getattr(cfg, f) != getattr(paper, f)]


_CONTROL_NAMES = {"plain": "plain fine-tune", "random_noise": "random-noise", "gaussian_aug": "Gaussian-augmentation"}


def describe_recommendation(exp: Any, verdict: dict, step_cost: float) -> list[str]:
    """The plain-language conclusion of issue 16, built from :func:`recommendation_verdict`'s
    numbers: what to set, what it costs and gains, how it compares with its controls, and whether
    the targets hold; no claim that the numbers do not carry."""
    run, n = verdict["run"], len(verdict["seeds"])

    def sd(v: float, k: int = n) -> str:
        return f" (sd {v:.2f} over {k} seeds)" if k > 1 else ""

    lines = [f"What to set (chosen on the selection half): {run_label(run)}; against the paper's config: "
             + "; ".join(config_changes(exp, run)) + "." if run != "demhec" else
             "What to set (chosen on the selection half): the paper's config itself."]
    lines.append(f"What it costs and gains on the {verdict['half']} half, "
                 f"{f'mean of {n} seeds' if n > 1 else 'one seed'}: clean "
                 f"{verdict['d_clean']:+.2f} points{sd(verdict['d_clean_sd'])}, noise S5 mean {verdict['d_noise_s5']:+.2f}"
                 f" points{sd(verdict['d_noise_s5_sd'])} from the base; a training step costs "
                 + (f"{step_cost:.2f} plain steps." if step_cost == step_cost else "an unmeasured multiple of a plain step."))
    for c, v in verdict["controls"].items():
        if v is None:
            lines.append(f"Against its {_CONTROL_NAMES[c.split('@')[0]]} control: not run yet.")
            continue
        lines.append(f"Against its {_CONTROL_NAMES[c.split('@')[0]]} control (same freezing, learning rate and budget), "
                     f"the recommended run is {v['advantage']:+.2f} points on noise S5{sd(v['sd'], len(v['seeds']))} and "
                     f"{v['clean_advantage']:+.2f} on clean ({'at least' if v['met'] else 'less than'} 3 points ahead on noise).")
    targets = [("clean within 4 points of the base", verdict["clean_met"]),
               ("noise S5 at least 10 points above the base", verdict["noise_met"]),
               ("at least 3 points above each control on noise", verdict["controls_met"])]
    lines.append("Targets: " + "; ".join(f"{t}: {'met' if ok else 'not met'}" for t, ok in targets) + ". "
                 + ("All three hold." if verdict["all_met"] else
                    "Not every target holds: this is the configuration the selection rule picks among those tried "
                    "within the paper's loss at this budget, not one that reaches the targets."))
    return lines


def describe_suites(verdicts: dict[str, dict]) -> list[str]:
    """One line per suite after the first of ``verdicts`` (suite -> :func:`recommendation_verdict`
    of the same run, the first suite being the acceptance's): how the recommended run's noise gain
    and its advantage over each control read there, beside the first suite's, with each suite's
    base accuracy on the noises at S5 (the suites' severities differ in strength)."""
    (first, ref), *others = verdicts.items()
    lines = []
    for suite, v in others:
        n = len(v["seeds"])
        sd = f" (sd {v['d_noise_s5_sd']:.2f} over {n} seeds)" if n > 1 else ""
        done = {c: a for c, a in v["controls"].items() if a is not None}
        versus = ", ".join(f"{_CONTROL_NAMES[c.split('@')[0]]} {a['advantage']:+.2f} (that control gains "
                           f"{v['d_noise_s5'] - a['advantage']:+.2f})" for c, a in done.items())
        lines.append(f"In the `{suite}` suite (the base gets {v['base_noise_s5']:.2f}% on the three noises at S5 "
                     f"there, {ref['base_noise_s5']:.2f}% in `{first}`), the recommended run changes noise S5 by "
                     f"{v['d_noise_s5']:+.2f} points{sd} (against {ref['d_noise_s5']:+.2f} in `{first}`) and clean by "
                     f"{v['d_clean']:+.2f}; its advantage on noise S5 over each control: {versus or 'no control scored'}; "
                     f"targets there: noise {'met' if v['noise_met'] else 'not met'}, controls "
                     f"{'met' if v['controls_met'] else 'not met'}.")
    return lines


# --- the GPU run (scripts/gpu_reproduction.py) ---------------------------------------------------

GPU_BASES = {"gpu": "CPU base", "gpu_strong": "GPU-trained base"}
# What the script fine-tunes from each base: the paper's config, its plain control, the InfoNCE
# ablation and the CPU reproduction's best config, and issue 16's two controls of the paper's
# config (random noise in the eps-ball, Gaussian-noise augmentation); from the stronger base the
# first two.
GPU_A_RUNS = ("demhec", "plain", "no_infonce", "late_frozen_tuned", "random_noise", "gaussian_aug")
GPU_B_RUNS = ("demhec", "plain")


def gpu_records(results_dir: str | os.PathLike, smoke: bool = False) -> dict[str, tuple[dict, dict]]:
    """The GPU script's robustness results (``cifar-c``) that exist, per profile: ``(before,
    {(run, 0): after})``. Empty when the script has not been run (no GPU lent yet)."""
    out = {}
    from .pipeline import Experiment

    for profile in GPU_BASES:
        exp = Experiment(profile=profile + ("_smoke" if smoke else ""), dataset="cifar10",
                         backbone="resnet20", results_dir=str(results_dir), allow_train=False)
        before = exp.cell_dir / "before_cifar-c.json"
        if not before.exists():
            continue
        runs = {}
        for run in RUNS:
            path = exp.cell_dir / f"{'after' if run == 'demhec' else f'after_{run}'}_cifar-c.json"
            if path.exists():
                runs[(run, 0)] = read_result(path)
        out[profile] = (read_result(before), runs)
    return out


def gpu_summary(records: dict[str, tuple[dict, dict]], cpu: tuple[dict, dict] | None = None) -> pd.DataFrame:
    """The GPU runs (A.3's 20 epochs) as :func:`ablation_summary` rows, one block per base, with
    the CPU reproduction's same runs (its short budget; ``cpu`` = (before, runs)) and the paper's
    Table 1 ResNet-20 column (noise and all-corruption means at S5; the paper states no clean
    accuracy for it) beside them."""
    blocks = []
    for profile, (before, runs) in records.items():
        base = GPU_BASES[profile]
        if profile == "gpu_strong":  # its recipe's epochs: the first loan's base had one
            n = before["config"]["model"]["epochs"]
            base += f" ({n} epoch{'s' * (n != 1)})"
        blocks.append(ablation_summary(before, runs).assign(source=f"GPU, A.3 schedule, {base}"))
    if cpu is not None:
        before, runs = cpu
        blocks.append(ablation_summary(before, runs).assign(source="CPU, 150-step budget, CPU base"))
    ref = paper_table("table1")
    ref = ref[(ref.dataset == "cifar10") & (ref.backbone == "resnet20") & (ref.severity == 5)]
    rows = []
    for phase in ("before", "after"):
        t = ref[ref.phase == phase]
        rows.append({"run": "base" if phase == "before" else "demhec",
                     "label": "base model" if phase == "before" else ABLATION_LABELS["demhec"],
                     "seed": None, "clean": float("nan"),
                     "noise_s5": float(t[t.corruption.isin(NOISE)].accuracy.mean()),
                     "all_s5": float(t.accuracy.mean())})
    paper = pd.DataFrame(rows)
    for col in ("clean", "noise_s5", "all_s5"):
        paper[f"d_{col}"] = paper[col] - paper[col].iloc[0]
    blocks.append(paper.assign(source="paper, Table 1 (ResNet-20)"))
    out = pd.concat(blocks, ignore_index=True)
    return out[["source", "run", "label", "seed", "clean", "noise_s5", "all_s5", "d_clean", "d_noise_s5", "d_all_s5"]]


# --- findings in words, computed from the numbers shown ---------------------------------------


def _pts(value: float) -> str:
    return f"{value:+.2f} points"


def describe_gains(before: dict, after: dict, label: str = "Dem-HEC") -> str:
    """One sentence on what ``after`` changes against ``before``: clean accuracy, the mean over
    the corrupted cells, and the cells with the largest gain and loss."""
    gains = gain_table(before, after)
    d_clean = after["metrics"]["clean_accuracy"] - before["metrics"]["clean_accuracy"]
    best, worst = gains.loc[gains.delta.idxmax()], gains.loc[gains.delta.idxmin()]
    up = int((gains.delta > 0).sum())
    text = (f"{label} changes clean accuracy by {_pts(d_clean)} and the mean over the {len(gains)} corrupted "
            f"cells by {_pts(gains.delta.mean())}; {up} of {len(gains)} cells gain. Largest gain: "
            f"{best.corruption} S{int(best.severity)} ({_pts(best.delta)})")
    if worst.delta < 0:
        text += f"; largest loss: {worst.corruption} S{int(worst.severity)} ({_pts(worst.delta)})"
    return text + "."


def describe_entropy(summary: pd.DataFrame, normalised: bool = False) -> str:
    """What Figures 3-4 show in numbers: per phase, the corrupted-minus-clean entropy gap at the
    first and last layer and where it peaks, then whether the last layer's gap shrank after
    Dem-HEC (the paper's claim: the gap grows with depth before and shrinks after). ``normalised``:
    the summary's entropies are divided by log width (no longer nats)."""
    unit = "(entropy / log width)" if normalised else "nats"
    parts = []
    last = {}
    for phase, t in summary.groupby("phase", sort=False):
        t = t.reset_index(drop=True)
        peak = t.loc[t.gap.idxmax()]
        grows = t.gap.iloc[-1] > t.gap.iloc[0]
        last[phase] = float(t.gap.iloc[-1])
        parts.append(f"{phase} Dem-HEC the gap is {t.gap.iloc[0]:+.3f} {unit} at {t.layer.iloc[0] or 'logits'} and "
                     f"{t.gap.iloc[-1]:+.3f} at {t.layer.iloc[-1] or 'logits'} ({'grows' if grows else 'does not grow'} "
                     f"from first to last layer; largest at {peak.layer or 'logits'}, {peak.gap:+.3f})")
    text = "; ".join(parts)
    if {"before", "after"} <= set(last):
        change = last["after"] - last["before"]
        text += (f". At the last layer the gap {'shrank' if change < 0 else 'did not shrink'} after Dem-HEC "
                 f"({change:+.3f} {unit})")
    return text[0].upper() + text[1:] + "."


def describe_entropy_claim(summary: pd.DataFrame, base: str = "base") -> str:
    """Whether the text around Figures 3-4 holds in ``summary`` (:func:`entropy_summary` rows
    with ``model`` and ``corruption`` columns, ideally normalised): (1) corruptions raise the
    entropy of the base model's middle layers (every layer but the first and the last) and the
    gap grows from the first layer to the last; (2) each fine-tuned model's clean/corrupted gap,
    the mean absolute gap over its layers, is narrower than the base model's."""
    out = []
    for corruption, t in summary.groupby("corruption", sort=False):
        b = t[t.model == base].reset_index(drop=True)
        if b.empty:
            continue
        middle = b.gap.iloc[1:-1] if len(b) > 2 else b.gap
        raised = bool((middle > 0).all())
        text = (f"{corruption}: the corruption {'raises' if raised else 'does not raise'} the base model's "
                f"middle-layer entropy (gaps {', '.join(f'{g:+.3f}' for g in middle)}), and its gap "
                f"{'grows' if b.gap.iloc[-1] > b.gap.iloc[0] else 'does not grow'} from the first layer to "
                f"the last ({b.gap.iloc[0]:+.3f} to {b.gap.iloc[-1]:+.3f})")
        width = float(b.gap.abs().mean())
        others = []
        for model, m in t[t.model != base].groupby("model", sort=False):
            w = float(m.gap.abs().mean())
            others.append(f"{model} {'narrows' if w < width else 'does not narrow'} it "
                          f"(mean |gap| {w:.3f} against the base model's {width:.3f})")
        out.append(text + ("; " + "; ".join(others) if others else "") + ".")
    return " ".join(out) if out else "No base-model entropies to compare."


def describe_clean(table: pd.DataFrame) -> str:
    """Figure 5 in words: each model's clean-accuracy change, and the paper's where it gives one."""
    out = []
    for (dataset, backbone), t in table.groupby(["dataset", "backbone"], sort=False):
        acc = t.set_index("phase")["accuracy"]
        if not {"before", "after"} <= set(acc.index):
            continue
        text = f"{backbone} on {dataset}: {acc['before']:.2f} -> {acc['after']:.2f} ({_pts(acc['after'] - acc['before'])})"
        if "paper_accuracy" in t and t.paper_accuracy.notna().all():
            p = t.set_index("phase")["paper_accuracy"]
            text += f", the paper {p['before']:.2f} -> {p['after']:.2f} ({_pts(p['after'] - p['before'])})"
        out.append(text)
    return "Clean accuracy before -> after Dem-HEC: " + "; ".join(out) + "." if out else "No before/after pair."


def describe_summary(table: pd.DataFrame, ours: Sequence[str]) -> str:
    """Tables 4 and 6 in words: for our rows ``ours`` (base first, Dem-HEC second), the clean
    change and the change of the mean over the corruption columns."""
    rows = table.set_index("model")
    corr = [c for c in rows.columns if c != "clean"]
    a, b = rows.loc[ours[0]], rows.loc[ours[1]]
    mean_a, mean_b = float(a[corr].astype(float).mean()), float(b[corr].astype(float).mean())
    return (f"{ours[1]} against {ours[0]}: clean {float(a['clean']):.2f} -> {float(b['clean']):.2f} "
            f"({_pts(float(b['clean']) - float(a['clean']))}), mean over the {len(corr)} corruptions "
            f"{mean_a:.2f} -> {mean_b:.2f} ({_pts(mean_b - mean_a)}).")


def describe_families(table: pd.DataFrame) -> str:
    """Table 3 in words: the method with the highest ``ours`` mean in each family."""
    t = table.dropna(subset=["ours"])
    out = []
    for family, g in t.groupby("family", sort=False):
        top = g.loc[g.ours.idxmax()]
        dem = g[g.method == "dem_hec"].ours
        text = f"{family}: best {top.method} ({top.ours:.2f})"
        if len(dem) and top.method != "dem_hec":
            text += f", Dem-HEC {float(dem.iloc[0]):.2f}"
        out.append(text)
    return "Highest family mean among the methods trained here: " + "; ".join(out) + "."


def describe_runs(summary: pd.DataFrame, runs: Sequence[str], metrics: Sequence[str] = ("d_noise_s5", "d_clean")) -> str:
    """Each of ``runs`` (present in ``summary``) as "label: noise S5 ..., clean ..." (means over
    its seeds), in the order given."""
    names = {"d_noise_s5": "noise S5", "d_clean": "clean", "d_all_s5": "all S5"}
    means = summary.groupby("run", sort=False)[list(metrics)].mean()
    seeds = summary.groupby("run", sort=False).seed.nunique()
    out = []
    for run in runs:
        if run in means.index:
            vals = ", ".join(f"{names.get(m, m)} {_pts(means.loc[run, m])}" for m in metrics)
            n = int(seeds.loc[run])
            out.append(f"{run_label(run)} ({vals}{f'; mean of {n} seeds' if n > 1 else ''})")
    return "; ".join(out)
