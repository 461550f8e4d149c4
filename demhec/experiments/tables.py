"""Table shapers: the paper's tables and the figures' inputs, shaped from result records
(nothing is trained or scored here)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .._common import DemHECError
from ..evaluation import family_means
from ..results import compare_with_paper, paper_table, read_result
from .runs import NOISE, get


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
        if not path.stem.startswith(("before_", "after_")):
            continue  # not a result of the profile's base or Dem-HEC model (e.g. checkpoints/a3/manifest.json)
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
    """One row per (run, seed) of :func:`.study.paired_gain_result` records: each change from the base
    with its standard error and a normal ``z`` interval (1.96: 95%)."""
    rows = []
    for (run, seed), rec in records.items():
        row = {"run": run, "label": get(run).label, "seed": seed}
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
        rows.append({"run": run, "label": get(run).label, "seed": seed, **metrics(rec)})
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
            rows.append({"run": run, "label": get(run).label, "seed": seed, "severity": s,
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
