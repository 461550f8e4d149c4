"""The comparison's tables, figure inputs and verdict, read from its result files.

Everything here reads what :mod:`.comparison` wrote (both halves of the evaluation split per run,
with per-image outcomes) and computes nothing: a run whose files are missing is a row that says
what is missing (its training step, from its resume checkpoint, when one exists). Numbers are on
the **report** half; no choice is made among the runs (each is a fixed config), so the selection
half is not used here. Differences from Dem-HEC carry the standard error paired over the half's
images (:func:`~demhec.evaluation.paired_difference`): every model is scored on the same images.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._common import check_choice
from ..checkpoints import read_checkpoint
from ..evaluation import mean_corruption_error, paired_difference
from ..results import REPO_ROOT
from .comparison import (
    ADAPTATIONS,
    COMPARISON,
    PROFILE,
    RUNS,
    checkpoint_path,
    comparison_experiment,
    is_scored,
    resume_checkpoint,
    run_config,
    score_run,
    stage_name,
)
from .halves import EVAL_HALVES, unpack_outcomes
from .inputs import same_corrupted_sets
from .layout import corrupted_sets_path
from .stage_times import stage_times

__all__ = ["COMPARISON_METRICS", "combination_sentences", "comparison_figure_input", "comparison_headline",
           "comparison_records", "comparison_table", "comparison_verdict", "corrupted_sets_note", "describe_comparison",
           "run_metrics", "seed_summary", "seed_table", "table3_rows", "table4_rows", "with_wall_times"]

NOISE = ("gaussian_noise", "shot_noise", "impulse_noise")
Z = 1.96  # a difference counts when it exceeds 1.96 paired standard errors
# The metrics Dem-HEC is judged on, with how tables name them.
COMPARISON_METRICS = {"clean": "clean accuracy", "noise_s5": "noise S5 mean", "all15_s5": "all-15 S5 mean"}
ADAPT_LABELS = {"bn": "BN adaptation", "tent": "TENT"}
METHOD_COST_PATH = REPO_ROOT / "results" / "cpu" / "bench" / "method_cost.json"


def comparison_records(profile: str = PROFILE, results_dir: str | Path = "results",
                       seeds: Sequence[int] = (0,)) -> dict[tuple[str, int], dict[str, dict[str, dict]]]:
    """``{(run, seed): {"none" | "bn" | "tent": {"selection": record, "report": record}}}`` for
    every run whose files exist (fingerprints checked, nothing computed)."""
    out: dict[tuple[str, int], dict[str, dict[str, dict]]] = {}
    for seed in seeds:
        for run in COMPARISON:
            exp = comparison_experiment(run, profile=profile, results_dir=str(results_dir), seed=seed,
                                        allow_train=False)
            got = {adapt or "none": score_run(run, exp, adapt) for adapt in (None, *ADAPTATIONS)
                   if is_scored(run, exp, adapt)}
            if got:
                out[(run.name, seed)] = got
    return out


def _table(record: dict) -> pd.DataFrame:
    return pd.DataFrame(record["metrics"]["table"])


def _cells(record: dict, corruptions: Sequence[str] | None, severities: Sequence[int]) -> list[tuple[str, int]]:
    df = _table(record)
    df = df[df.corruption != "clean"]
    keep = df.severity.isin(severities) & (df.corruption.isin(corruptions) if corruptions else True)
    return list(zip(df[keep].corruption, df[keep].severity.astype(int)))


def _outcomes(record: dict, cells: Sequence[tuple[str, int]]) -> np.ndarray:
    n = int(record["metrics"]["n"])
    return np.stack([unpack_outcomes(record["metrics"]["correct"][f"{c}/{s}"], n) for c, s in cells], 1)


def _metric_cells(record: dict) -> dict[str, list[tuple[str, int]]]:
    """The cells behind each judged metric that ``record`` holds (all-15 S5 only on the full grid)."""
    out = {"clean": [("clean", 0)], "noise_s5": _cells(record, NOISE, [5])}
    s5 = _cells(record, None, [5])
    if len(s5) == 15:
        out["all15_s5"] = s5
    return out


def run_metrics(record: dict, base: dict | None = None) -> dict[str, float]:
    """One half's record in the comparison's columns: clean, the noise S5 mean, the all-15 S5 mean,
    Table 3's family means (over every corruption and severity of a family), Table 4's per-corruption
    means (over S1/S3/S5), ECE (clean, and the mean over corrupted cells) and, with ``base`` (the
    base model's record of the same cells), mCE relative to the base (100 = the base's errors)."""
    df = _table(record)
    out: dict[str, float] = {}
    for name, cells in _metric_cells(record).items():
        out[name] = float(100 * _outcomes(record, cells).mean())
    corrupted = df[df.corruption != "clean"]
    if corrupted.severity.nunique() == 5:  # Table 3: the fifteen at S1-S5
        out.update(corrupted.groupby("family")["accuracy"].mean().to_dict())
    t4 = corrupted[corrupted.severity.isin([1, 3, 5])]
    out.update({f"t4_{c}": float(v) for c, v in t4.groupby("corruption")["accuracy"].mean().items()})
    out["ece_clean"] = float(df.loc[df.corruption == "clean", "ece"].iloc[0])
    out["ece_corrupted"] = float(corrupted["ece"].mean())
    if base is not None:
        shared = _table(base).merge(df[["corruption", "severity"]], on=["corruption", "severity"])
        out["mce"] = mean_corruption_error(df, baseline=shared)
    return out


def _paired(a: dict, b: dict, cells: Sequence[tuple[str, int]]) -> dict[str, float]:
    return paired_difference(_outcomes(a, cells), _outcomes(b, cells))


def _method_costs() -> dict[str, float]:
    if not METHOD_COST_PATH.is_file():
        return {}
    return json.loads(METHOD_COST_PATH.read_text())["metrics"]["ratio"]


def _missing(run_name: str, seed: int, profile: str, results_dir: str | Path) -> str:
    """What a row without results lacks: its training (and where it stands) or its scoring."""
    run = RUNS[run_name]
    exp = comparison_experiment(run, profile=profile, results_dir=str(results_dir), seed=seed)
    if checkpoint_path(run, exp).is_file():
        return "not scored yet"
    resume = resume_checkpoint(run, exp)
    if resume is not None:
        cfg = run_config(exp, run) or exp.base_config
        total = cfg.epochs * (45_000 // cfg.batch_size)
        return f"training: step {read_checkpoint(resume)['step']:,} of {total:,}"
    return "not trained yet"


def comparison_table(records: dict[tuple[str, int], dict[str, dict[str, dict]]], half: str = "report",
                     seed: int = 0, profile: str = PROFILE, results_dir: str | Path = "results") -> pd.DataFrame:
    """One row per model of the comparison on ``half`` at ``seed``: every run of
    :data:`~.comparison.COMPARISON`, then each one with BN adaptation and TENT on top where those
    files exist. Columns: the judged metrics and their change from the base (``d_*``), Dem-HEC
    minus the row on each (``vs_demhec_*``) with its paired standard error (``se_*``), Table 3's
    family means, Table 4's per-corruption means (``t4_*``), mCE relative to the base, ECE, the
    step cost in plain steps (``benchmarks/method_cost.py``), the training wall time, and
    ``missing`` (what a row without results lacks)."""
    check_choice("half", half, EVAL_HALVES)
    base = records.get(("base", 0), {}).get("none", {}).get(half)
    ref = records.get(("demhec", seed), {}).get("none", {}).get(half)
    costs = _method_costs()
    rows = []
    for run in COMPARISON:
        key = (run.name, 0 if not run.fine_tuned else seed)
        got = records.get(key, {})
        for adapt in ("none", *ADAPTATIONS):
            if adapt != "none" and adapt not in got:
                continue
            row: dict[str, Any] = {"run": run.name, "adapt": adapt, "seed": key[1], "family": run.family,
                                   "kind": "test-time" if adapt != "none" else "fine-tuned" if run.fine_tuned else (
                                       "from scratch" if run.backbone != "resnet20" else "base"),
                                   "label": run.label + (f" + {ADAPT_LABELS[adapt]}" if adapt != "none" else "")}
            rec = got.get(adapt, {}).get(half)
            if rec is None:
                row["missing"] = _missing(run.name, key[1], profile, results_dir)
                rows.append(row)
                continue
            row.update(run_metrics(rec, base))
            row["missing"] = ""
            for m, cells in _metric_cells(rec).items():
                if base is not None:
                    row[f"d_{m}"] = _paired(base, rec, cells)["diff"]
                if ref is not None and (run.name, adapt) != ("demhec", "none"):
                    p = _paired(rec, ref, cells)
                    row[f"vs_demhec_{m}"], row[f"se_{m}"] = p["diff"], p["se"]
            if adapt == "none":
                row["step_cost"] = 1.0 if run.name == "plain" else costs.get(run.name, math.nan)
            rows.append(row)
    df = pd.DataFrame(rows)
    df["split"] = half
    return df


SEED_METRICS = ("clean", "noise_s5", "all15_s5")


def seed_summary(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Per model, over the seeds of ``tables`` (one :func:`comparison_table` per seed) where it is
    measured: the mean and the standard deviation over seeds (``*_sd``; NaN with one seed) of each
    judged metric and of Dem-HEC minus the model (``vs_demhec_*``, paired per seed on the same
    images), and ``seeds``, how many; ``paired_seeds``: at how many of them Dem-HEC's own run is
    measured too (the ``vs_demhec_*`` columns average those only); ranked by the noise S5 mean. The
    spread over seeds is what a reader can expect from re-running a method, which one seed's paired
    standard error is not."""
    frames = [t[t.missing == ""] for t in tables if "missing" in t]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=["label", "kind", "seeds", "paired_seeds"])
    df = pd.concat(frames, ignore_index=True)
    cols = [c for m in SEED_METRICS for c in (m, f"vs_demhec_{m}") if c in df]
    groups = df.groupby(["label", "kind"], sort=False)[cols]
    paired = (df.groupby(["label", "kind"], sort=False)["vs_demhec_noise_s5"].count() if "vs_demhec_noise_s5" in df
              else groups.size() * 0)
    out = (groups.mean().join(groups.std(ddof=1).add_suffix("_sd")).join(groups.size().rename("seeds"))
           .join(paired.rename("paired_seeds")))
    out = out[[c for m in cols for c in (m, f"{m}_sd")] + ["seeds", "paired_seeds"]]
    return out.sort_values("noise_s5", ascending=False).reset_index()


def seed_table(profile: str, seeds: Sequence[int], results_dir: str | Path = "results",
               half: str = "report") -> pd.DataFrame:
    """:func:`seed_summary` of the comparison in ``profile`` (e.g. ``gpu_a3``, trained at three
    seeds by ``scripts/gpu_reproduction.py``) over ``seeds``, from the files that are scored; a
    model trained once (the base) counts as one seed."""
    records = comparison_records(profile, results_dir, seeds)
    if not records:
        return seed_summary([])
    # A model trained once (the base, the push-pull base) sits in every seed's table as seed 0: count it once.
    tables = [comparison_table(records, half, s, profile, results_dir) for s in seeds]
    return seed_summary([t[t.seed == s] for t, s in zip(tables, seeds)])


def corrupted_sets_note(profile: str, twin: str, results_dir: str | Path = "results") -> str:
    """Whether ``twin``'s models (scored on another machine, e.g. ``gpu_a3`` on the GPU) saw the
    same corrupted images as ``profile``'s: the digests that :func:`.inputs.record_corrupted_sets`
    recorded for each, compared set by set (the corruptions' libraries differ between machines)."""
    paths = {p: corrupted_sets_path(comparison_experiment(COMPARISON[0], profile=p, results_dir=str(results_dir)))
             for p in (profile, twin)}
    shown = {p: f"{Path(results_dir).name}/{path.relative_to(results_dir).as_posix()}" for p, path in paths.items()}
    missing = [p for p in (profile, twin) if not paths[p].is_file()]
    if missing:
        return (f"Whether both scored the same corrupted images is not known: no digests of "
                f"{' or '.join(f'`{p}`' for p in missing)}'s corrupted sets ({', '.join(f'`{shown[p]}`' for p in missing)}).")
    agree = same_corrupted_sets(*(json.loads(paths[p].read_text()) for p in (profile, twin)))
    if not agree["differ"]:
        return (f"`{twin}` and `{profile}` scored the same corrupted images: the digests of all {agree['cells']} "
                f"corrupted sets agree (`{shown[twin]}`).")
    return (f"`{twin}`'s corrupted images differ from `{profile}`'s in {len(agree['differ'])} of {agree['cells']} sets "
            f"({', '.join(agree['differ'])}; the corruption libraries' versions are in `{shown[twin]}`): "
            "compare those cells across the two tables with care.")


def _walls(profile: str, results_dir: str | Path) -> dict[str, float]:
    out = {}
    for run in COMPARISON:
        exp = comparison_experiment(run, profile=profile, results_dir=str(results_dir))
        # A run finished after a resume checkpoint timed only its rest: no training wall time.
        # The exact stage: "demhec model (A.3)" is also a substring of "pushpull_demhec model (A.3)".
        for t in stage_times(exp):
            if t["stage"] == stage_name(run, exp, "model (A.3)"):
                out[run.name] = t["wall_s"]
    return out


def with_wall_times(table: pd.DataFrame, profile: str = PROFILE, results_dir: str | Path = "results") -> pd.DataFrame:
    """``table`` with each run's recorded training wall time (``train_wall_h``, hours; a property
    of the machine and its load, see the stage-time records, not of the method)."""
    walls = _walls(profile, results_dir)
    return table.assign(train_wall_h=[walls.get(r, math.nan) / 3600 if a == "none" else math.nan
                                      for r, a in zip(table.run, table.adapt)])


def table3_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Table 3's shape: each model's family means (noise, blur, weather, digital) and clean."""
    cols = ["label", "clean", "noise", "blur", "weather", "digital", "missing"]
    return table[table.adapt == "none"].reindex(columns=cols).set_index("label")


def table4_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Table 4's shape: clean and each of the paper's seven corruptions averaged over S1/S3/S5."""
    from ..corruptions import PAPER_CORRUPTIONS

    cols = ["label", "clean", *(f"t4_{c}" for c in PAPER_CORRUPTIONS), "missing"]
    out = table.reindex(columns=cols).set_index("label")
    return out.rename(columns={f"t4_{c}": c for c in PAPER_CORRUPTIONS})


def _outcome(diff: float, se: float) -> str:
    if not (math.isfinite(diff) and math.isfinite(se)):
        return "not measured"
    if diff > Z * se:
        return "Dem-HEC better"
    if diff < -Z * se:
        return "Dem-HEC worse"
    return "within the images' noise"


def comparison_verdict(records: dict[tuple[str, int], dict[str, dict[str, dict]]], table: pd.DataFrame,
                       seed: int = 0) -> pd.DataFrame:
    """Per compared model, per judged metric: Dem-HEC minus it (points), the paired standard
    error, and the outcome at 1.96 standard errors (:func:`comparison_table`'s ``vs_demhec_*``).
    Then the combinations, each against both of its parts, paired over the same images: Dem-HEC +
    TENT (and + BN adaptation) against Dem-HEC and against the base with the same adaptation, and
    Dem-HEC on the push-pull model against the push-pull base and against Dem-HEC."""
    half = table["split"].iloc[0]
    rows = []
    # What one would do instead: every other method as it is, and the untouched base with or
    # without test-time adaptation. Dem-HEC's own variants are the combinations below.
    alternatives = table[(table.missing == "") & ~table.run.isin(["demhec", "pushpull_demhec"])
                         & ((table.adapt == "none") | (table.run == "base"))]
    for r in alternatives.itertuples():
        for m in COMPARISON_METRICS:
            diff, se = getattr(r, f"vs_demhec_{m}", math.nan), getattr(r, f"se_{m}", math.nan)
            rows.append({"against": r.label, "metric": m, "demhec_minus": diff, "se": se,
                         "outcome": _outcome(diff, se), "kind": "compared"})

    def record(run: str, adapt: str) -> dict | None:
        key = (run, seed if RUNS[run].fine_tuned else 0)
        return records.get(key, {}).get(adapt, {}).get(half)

    labels = {(r.run, r.adapt): r.label for r in table.itertuples()}
    combos = [(("demhec", a), [("demhec", "none"), ("base", a)]) for a in ADAPTATIONS]
    combos.append((("pushpull_demhec", "none"), [("pushpull_base", "none"), ("demhec", "none")]))
    for combo, parts in combos:
        a = record(*combo)
        for part in parts:
            b = record(*part)
            if a is None or b is None:
                continue
            cells_a, cells_b = _metric_cells(a), _metric_cells(b)
            for m in COMPARISON_METRICS:
                if m not in cells_a or m not in cells_b:
                    continue
                p = _paired(b, a, cells_a[m])
                rows.append({"against": f"{labels[combo]} vs {labels[part]}", "metric": m,
                             "demhec_minus": p["diff"], "se": p["se"],
                             "outcome": _outcome(p["diff"], p["se"]).replace("Dem-HEC", "combination"),
                             "kind": "combination", "combination": labels[combo]})
    return pd.DataFrame(rows, columns=["against", "metric", "demhec_minus", "se", "outcome", "kind", "combination"])


def combination_sentences(verdict: pd.DataFrame) -> dict[str, list[str]]:
    """Per combination (its label), one clause per judged metric: whether it beats both its parts
    (ahead of each by 1.96 paired standard errors), with combination minus part for each part; a
    combination with one part unmeasured is not judged."""
    out: dict[str, list[str]] = {}
    combos = verdict[verdict.kind == "combination"]
    for combo, g in combos.groupby("combination", sort=False):
        for m, name in COMPARISON_METRICS.items():
            gm = g[g.metric == m]
            if gm.empty:
                continue
            beats = (gm.outcome == "combination better").all()
            shown = "; ".join(f"{r.demhec_minus:+.2f} ± {r.se:.2f} against {r.against.split(' vs ', 1)[1]}"
                              for r in gm.itertuples())
            judged = (f"{'beats' if beats else 'does not beat'} both its parts" if len(gm) == 2
                      else "not judged yet, one of its parts is not measured")
            out.setdefault(combo, []).append(f"{name}: {judged} ({shown})")
    return out


def describe_comparison(table: pd.DataFrame, verdict: pd.DataFrame) -> str:
    """The verdict in sentences: on each metric, the compared models Dem-HEC beats, loses to and
    ties with (by 1.96 paired standard errors); whether each combination beats both its parts; and
    which rows are still missing."""
    half = table["split"].iloc[0]
    lines = [f"Dem-HEC against each compared model on the {half} half (1.96 paired standard errors):"]
    compared = verdict[verdict.kind == "compared"]
    words = {"Dem-HEC better": "better than", "Dem-HEC worse": "worse than", "within the images' noise": "tied with"}
    for m, name in COMPARISON_METRICS.items():
        v = compared[compared.metric == m]
        parts = [f"{word} {len(who)} ({', '.join(who)})" for outcome, word in words.items()
                 if (who := v[v.outcome == outcome].against.tolist())]
        lines.append(f"- {name}: " + ("; ".join(parts) if parts else "nothing measured yet") + ".")
    for combo, said in combination_sentences(verdict).items():
        lines += [f"- {combo}, {sentence}." for sentence in said]
    missing = table[table.missing != ""]
    if len(missing):
        lines.append("Not measured yet: " + "; ".join(f"{r.label} ({r.missing})" for r in missing.itertuples()) + ".")
    return "\n".join(lines)


def comparison_headline(table: pd.DataFrame, verdict: pd.DataFrame) -> str:
    """The comparison's one verdict, in two or three sentences: what Dem-HEC does to its base, and
    whether any measured alternative beats it on a robustness metric (noise S5 mean, all-15 S5
    mean) by 1.96 paired standard errors without Dem-HEC beating it on clean accuracy. That rule
    answers the reader's question (should I use Dem-HEC instead?); the README, the site's front
    page and the Table 3 page all print this text."""
    half = table["split"].iloc[0]
    own = table[(table.run == "demhec") & (table.adapt == "none") & (table.missing == "")]
    if own.empty or "d_clean" not in table.columns:
        return f"Dem-HEC is not scored yet on the {half} half: no verdict."
    d = own.iloc[0]
    lines = [f"On the {half} half, Dem-HEC changes its base's noise S5 mean by {d.d_noise_s5:+.2f} points and its "
             f"clean accuracy by {d.d_clean:+.2f}."]
    compared = verdict[verdict.kind == "compared"]
    at = {(r.against, r.metric): r for r in compared.itertuples()}
    better_clean = {a for (a, m), r in at.items() if m == "clean" and r.outcome == "Dem-HEC better"}
    beaten = []
    for m in ("noise_s5", "all15_s5"):
        for (a, mm), r in at.items():
            if mm == m and r.outcome == "Dem-HEC worse" and a not in better_clean:
                c = at[(a, "clean")]
                beaten.append(f"{a} on the {COMPARISON_METRICS[m]} (Dem-HEC minus it: {r.demhec_minus:+.2f} ± {r.se:.2f}; "
                              f"clean {c.demhec_minus:+.2f} ± {c.se:.2f})")
    measured = compared.against.nunique()
    if beaten:
        lines.append(f"Of the {measured} alternatives measured, some do more for robustness without costing more clean "
                     f"accuracy than Dem-HEC does: {'; '.join(beaten)}. On this evidence Dem-HEC is not the method to pick.")
    else:
        lines.append(f"None of the {measured} alternatives measured beats it on the noise S5 mean or the all-15 S5 mean "
                     "without Dem-HEC beating it on clean accuracy.")
    missing = table[(table.missing != "") & (table.adapt == "none")]
    if len(missing):
        lines.append(f"{len(missing)} compared model{'s are' if len(missing) > 1 else ' is'} not measured yet "
                     f"({', '.join(missing.label)}): the verdict can change with them.")
    return " ".join(lines)


def comparison_figure_input(table: pd.DataFrame, metric: str = "noise_s5") -> pd.DataFrame:
    """Rows for :func:`demhec.plots.tradeoff_figure`: each measured model's change from the base in
    clean accuracy and in ``metric``, with its kind (fine-tuned, architecture, test-time) as family."""
    check_choice("metric", metric, [m for m in COMPARISON_METRICS if m != "clean"])
    # Test-time adaptation of the base and of Dem-HEC only: the alternative and the combination.
    cols = ["label", "run", "seed", "kind", "d_clean", f"d_{metric}"]
    if not {"d_clean", f"d_{metric}"} <= set(table.columns):  # nothing measured against the base yet
        return pd.DataFrame(columns=cols)
    keep = (table.missing == "") & (table.kind != "base") & ((table.adapt == "none") | table.run.isin(["base", "demhec"]))
    df = table[keep].dropna(subset=[f"d_{metric}", "d_clean"])
    return df.assign(run=df.label, seed=df.seed)[cols]
