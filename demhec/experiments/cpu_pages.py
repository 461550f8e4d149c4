"""The CPU reproduction's pages, one function per section (notebooks 09-13): the short CPU budget
(:func:`suites_page`, :func:`table1_page`, :func:`plain_control_page`), the paper's schedule
(:func:`paper_schedule_page`, :func:`paper_schedule_halves_page`), test-time adaptation
(:func:`tta_page`), and each page's closing answers from all committed evidence
(:func:`findings_page`), with the runs they share (:func:`main_runs`, :func:`ablation_runs`,
:func:`late_runs`). The ablations' sections are :mod:`.ablation_pages`, the selection protocol's
:mod:`.selection_pages`.

Each function reads the result files of the ``cpu`` profile (in ``smoke``, where ``allow_train``
is on, the library computes them), checks what it shows against the files (tables against their
cells, key numbers recounted from the raw outcomes), saves its tables under ``ctx.tables_dir``
and returns a :class:`.pages.Page`: its sentences, built from the numbers shown, then each table
and figure with a line on how to read it. A notebook cell only calls it and shows it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from .._common import DemHECError
from ..report import cost_table, per_corruption_table, robustness_summary
from ..results import read_result, save_table
from .checks import check_ablation_shown, check_number, check_recounted, check_shown, recount
from .findings import PRECEDENCE, findings
from .gpu import GPU_A_RUNS, GPU_BASES, gpu_records, gpu_summary
from .halves import EVAL_HALVES
from .notebook import NotebookContext, start_notebook
from .pages import Page
from .pipeline import robustness_result
from .profiles import Experiment
from .prose import describe_gains
from .runs import ABLATIONS, LATE_RUNS, NOISE, get
from .selection import CHOICE_RULE, half_summary
from .study import ablation_result, existing_halves
from .tables import (
    ablation_summary,
    before_after_table,
    gain_table,
    result_table,
    seed_gain,
    suite_agreement,
    wide_table,
    with_paper_source,
)
from .verdict import controls_verdict, describe_targets

__all__ = ["CPU_STUDY_PROFILES", "HALVES_COLUMNS", "NOISE_S5", "TARGET", "ablation_runs", "check_headline",
           "findings_page", "late_runs", "main_runs", "mean_sd", "paper_schedule_halves_page", "paper_schedule_page",
           "plain_control_page", "seed_experiments", "start_cpu_notebook", "suites_page", "table1_page", "tta_page"]

CPU_STUDY_PROFILES = ("cpu", "smoke")
SUITES = ("cifar-c", "imagecorruptions")
PAPER_RESNET20 = {"paper": "table1", "paper_dataset": "cifar10", "paper_backbone": "resnet20"}
NOISE_S5 = [(c, 5) for c in NOISE]
# What the tables of runs scored on the halves show.
HALVES_COLUMNS = ["run", "label", "split", "clean", "noise_s5", "d_clean", "se_clean", "d_noise_s5", "se_noise_s5",
                  "r_clean", "r_se_clean", "r_noise_s5", "r_se_noise_s5"]
TARGET = (-CHOICE_RULE["max_clean_cost"], CHOICE_RULE["min_noise_gain"])  # the trade-off figures' shaded corner


def start_cpu_notebook(params: Mapping[str, Any], needs: Sequence[str] = ("before", "after")) -> NotebookContext:
    """The first cell of a CPU-study page: :func:`.notebook.start_notebook` on CIFAR-10 and the
    ResNet-20 (at the first of ``params["seeds"]`` where the page has seeds). These pages run in
    the ``cpu`` profile (the committed results) and ``smoke`` (tests) only."""
    if params.get("profile") not in CPU_STUDY_PROFILES:
        raise DemHECError(f"this notebook runs in the cpu and smoke profiles, got {params.get('profile')!r}")
    seed = {"seed": params["seeds"][0]} if "seeds" in params else {}
    return start_notebook(params, needs=needs, dataset="cifar10", backbone="resnet20", **seed)


def seed_experiments(exp: Experiment, seeds: Sequence[int]) -> dict[int, Experiment]:
    """``exp`` at each of ``seeds`` (the fine-tuning seed; the base model is one for all)."""
    return {s: dataclasses.replace(exp, seed=s) for s in seeds}


def main_runs(exp: Experiment, seeds: Sequence[int]) -> dict[tuple[str, int], dict]:
    """The paper's config and its plain fine-tune at every seed (whole split, ``cifar-c``)."""
    at = seed_experiments(exp, seeds)
    return {(run, s): ablation_result(at[s], run) for s in seeds for run in ("demhec", "plain")}


def ablation_runs(exp: Experiment, severities: Sequence[int]) -> dict[tuple[str, int], dict]:
    """Every ablation and schedule probe at the first seed, scored at ``severities``."""
    return {(run, exp.seed): ablation_result(exp, run, severities=severities)
            for run in ABLATIONS if run not in ("demhec", "plain", *LATE_RUNS)}


def late_runs(exp: Experiment, seeds: Sequence[int]) -> dict[tuple[str, int], dict]:
    """The late-freezing config and its plain control at every seed."""
    at = seed_experiments(exp, seeds)
    return {(run, s): ablation_result(at[s], run) for s in seeds for run in LATE_RUNS}


def check_headline(summary: pd.DataFrame, run: str, seed: int, record: dict, base: dict) -> str:
    """``run``'s noise S5 change at ``seed`` as shown, recounted from the files' correct-image counts."""
    row = summary[(summary.run == run) & (summary.seed == seed)].iloc[0]
    what = f"{get(run).label}'s noise S5 change from the base (seed {seed})"
    check_number(row.d_noise_s5, recount(record, NOISE_S5, base=base), what)
    return what


def mean_sd(gain: pd.DataFrame, col: str) -> str:
    """A :func:`.tables.seed_gain` column's mean and standard deviation over seeds, in words."""
    stats = gain.set_index("seed")[col]
    return f"{stats['mean']:+.2f} (sd {stats['std']:.2f})"


def suites_page(ctx: NotebookContext) -> Page:
    """Section 1: the base model in both corruption suites (``cifar-c``: Hendrycks & Dietterich's
    CIFAR constants; ``imagecorruptions``: ImageNet-C's) beside the paper's Table 1 Before column
    for ResNet-20: which suite's constants the paper's numbers fit."""
    from .. import plots

    before = {suite: robustness_result(ctx.exp, "before", suite) for suite in SUITES}
    cells, agreement = suite_agreement(before, paper_dataset="cifar10", paper_backbone="resnet20")
    long = cells.melt(id_vars=["corruption", "severity"], var_name="suite", value_name="accuracy")
    check_recounted(before, long[long.suite != "paper"].rename(columns={"suite": "phase"}), value="accuracy")
    save_table(cells, "suites_vs_table1_before", ctx.tables_dir)
    save_table(agreement, "suites_vs_table1_before_summary", ctx.tables_dir)
    ranked = agreement.sort_values("mean_abs_diff")
    data = before["cifar-c"]["data"]
    text = (f"Data: {data['source']} | {data.get('split', '')} | {data['count']} images. Base clean accuracy: "
            f"{before['cifar-c']['metrics']['clean_accuracy']:.2f}%. Closest to the paper's Before column: "
            f"{ranked.suite.iloc[0]} (mean absolute difference over the paper's cells: "
            + ", ".join(f"{r.suite} {r.mean_abs_diff:.2f}" for r in ranked.itertuples()) + " points).")
    fig = plots.robustness_figure(long, by="suite",
                                  title="Base ResNet-20 in both suites beside the paper's Table 1 Before column")
    return Page(text, checked=["the base model's accuracy in every cell shown, in both suites"], items=[
        ("summary", agreement,
         "Per suite, over the corruption cells the paper reports (`cells`): the mean absolute difference and the mean "
         "difference (ours minus paper) between the base model's accuracy and the paper's Table 1 Before column, in "
         "points. The suite with the smaller mean absolute difference is the one whose constants the paper's numbers "
         "fit better; the sentence above names it."),
        ("suites_vs_table1_before", fig,
         "One panel per corruption, accuracy against severity: one line per suite, `paper` the paper's numbers. A "
         "suite whose line runs along the paper's is the one whose constants the paper's numbers fit."),
        ("cells", cells.pivot(index="corruption", columns="severity", values=["cifar-c", "imagecorruptions", "paper"]),
         "Every cell of the figure: one row per corruption, one column group per suite (`paper`: the paper's "
         "Table 1 Before column) and severity, accuracy in %.")])


def table1_page(ctx: NotebookContext) -> Page:
    """Section 2: the paper's config after the CPU budget against the base model, at the first
    seed, in both suites, beside the paper's Table 1 ResNet-20 column."""
    from .. import plots

    seed = ctx.exp.seed
    before = {suite: robustness_result(ctx.exp, "before", suite) for suite in SUITES}
    after = {suite: ablation_result(ctx.exp, "demhec", suite) for suite in SUITES}
    config = {k: v for k, v in after["cifar-c"]["config"]["model"].items() if k != "seed"}
    lines, items = [f"Dem-HEC config: {config}"], []
    for suite in SUITES:
        records = {"before": before[suite], "after": after[suite]}
        long = before_after_table(before[suite], after[suite], **PAPER_RESNET20)
        check_shown(long, records)  # the files' cells; after == before is an error outside smoke
        check_recounted(records, long)  # each number recounted from the files' correct-image counts
        save_table(long, f"table1_resnet20_{suite}", ctx.tables_dir)
        b, a = (r["metrics"]["clean_accuracy"] for r in (before[suite], after[suite]))
        lines.append(f"{suite}: clean accuracy {b:.2f} -> {a:.2f} ({a - b:+.2f}); {describe_gains(before[suite], after[suite])}")
        items.append((f"table1_{suite}", wide_table(long, values=["ours", "paper"]),
                      f"`{suite}` suite: one row per corruption, `S<s> before ours` / `S<s> after ours` the base and "
                      f"Dem-HEC accuracy (%) at severity s (seed {seed}), `... paper` the paper's Table 1 ResNet-20 column."))
    where = f"ResNet-20, fine-tuning seed {seed}, cifar-c suite"
    long = before_after_table(before["cifar-c"], after["cifar-c"], **PAPER_RESNET20)
    curves = plots.robustness_figure(with_paper_source(long), title=f"Base and Dem-HEC ({where}); dashed: the paper's Table 1")
    gains = pd.concat([gain_table(before[s], after[s]).assign(suite=s) for s in SUITES])
    heat = plots.delta_heatmap(gains[gains.suite == "cifar-c"].drop(columns="suite"),
                               title=f"Dem-HEC gain over the base model (points), {where}")
    items += [
        ("table1_resnet20_cifar-c_curves", curves,
         f"Accuracy against severity per corruption, blue the base model and orange Dem-HEC (seed {seed} of the "
         "fine-tune; the base is shared by every seed), solid ours and dashed the paper's."),
        ("table1_resnet20_cifar-c_gain", heat,
         "Dem-HEC minus base (points) per corruption (rows) and severity (columns), green a gain, red a loss."),
        ("gains", gains.pivot_table(index="corruption", columns=["suite", "severity"], values="delta", sort=False),
         "The heatmap's numbers, with the `imagecorruptions` suite beside them. The next section gives the spread "
         "over seeds.")]
    return Page("\n".join(lines), items, checked=["every accuracy shown, before and after, in both suites"])


def plain_control_page(ctx: NotebookContext, seeds: Sequence[int]) -> Page:
    """Section 3: the paper's config against its plain fine-tune (clean cross-entropy only, same
    base, schedule and budget) over ``seeds`` (``cifar-c``), then at the first seed in
    ``imagecorruptions``: is the gain Dem-HEC's or just extra training?"""
    seed = ctx.exp.seed
    before = robustness_result(ctx.exp, "before", "cifar-c")
    main = main_runs(ctx.exp, seeds)
    summary = ablation_summary(before, main)
    check_ablation_shown(summary, before, main)  # the rows are the files'
    checked = [check_headline(summary, "demhec", seed, main[("demhec", seed)], before)]
    gain = seed_gain(summary, "demhec", "plain")
    save_table(gain, "demhec_minus_plain", ctx.tables_dir)
    d = summary[summary.run == "demhec"]
    before_ic = robustness_result(ctx.exp, "before", "imagecorruptions")
    runs_ic = {(run, seed): ablation_result(ctx.exp, run, "imagecorruptions") for run in ("demhec", "plain")}
    summary_ic = ablation_summary(before_ic, runs_ic)
    check_ablation_shown(summary_ic, before_ic, runs_ic)
    save_table(summary_ic, "demhec_vs_plain_imagecorruptions", ctx.tables_dir)
    ic = summary_ic.set_index("run")
    text = "\n".join([
        f"Dem-HEC against the base, mean of {len(seeds)} seeds (cifar-c): "
        f"{describe_targets(d.d_clean.mean(), d.d_noise_s5.mean())}.",
        f"Dem-HEC minus the plain fine-tune over {len(seeds)} seeds (cifar-c): noise S5 mean {mean_sd(gain, 'noise_s5')}, "
        f"clean {mean_sd(gain, 'clean')}, all seven at S5 {mean_sd(gain, 'all_s5')} points.",
        f"imagecorruptions, seed {seed}: Dem-HEC minus the plain fine-tune: noise S5 mean "
        f"{ic.loc['demhec', 'noise_s5'] - ic.loc['plain', 'noise_s5']:+.2f}, clean "
        f"{ic.loc['demhec', 'clean'] - ic.loc['plain', 'clean']:+.2f} points."])
    return Page(text, checked=checked, items=[
        ("summary", summary,
         "One row per run and seed (`cifar-c`): accuracy (%) on clean images, the mean of the three noises at S5 and "
         "of all seven corruptions at S5, and (`d_*`) each one's change from the base model in points."),
        ("demhec_minus_plain", gain,
         "Dem-HEC minus the plain fine-tune per seed, then the mean and standard deviation over the seeds (last two "
         "rows)."),
        ("demhec_vs_plain_imagecorruptions", summary_ic,
         f"The same comparison in the `imagecorruptions` suite (ImageNet-C's constants), seed {seed}: does the "
         "advantage over the control hold with the other corruption constants?")])


def findings_page(ctx: NotebookContext, keys: Sequence[str]) -> Page:
    """A page's closing answers: the project's findings (:func:`.findings.findings`, from all
    committed evidence under ``ctx``'s results folder, by its precedence) on the questions
    ``keys`` (:attr:`.findings.Finding.key`: "demhec vs base", "what to set", ...), each with the
    evidence it rests on and what lower-ranked evidence said, so that no page answers a question
    differently from another."""
    found = {f.key: f for f in findings(ctx.exp.results_dir)}
    lines = [f"The project's answers from all committed evidence (precedence: {'; '.join(PRECEDENCE)}):"]
    for key in keys:
        f = found.get(key)
        if f is None:
            lines.append(f"- {key}: no committed evidence answers it yet.")
            continue
        lines.append(f"- {f.question} {f.answer} Rests on: {f.evidence}."
                     + (f" Lower-ranked evidence: {'; '.join(a.rstrip('.') for a in f.also)}." if f.also else ""))
    return Page("\n".join(lines))


def _cpu_runs_of(exp: Experiment, names: Sequence[str], severities: Sequence[int]) -> dict[tuple[str, int], dict]:
    """The CPU study's whole-split results at the first seed of the runs in ``names``, read as the
    short-budget pages read them (the ablations at ``severities``)."""
    ablations = [r for r in ABLATIONS if r not in ("demhec", "plain", *LATE_RUNS)]
    order = [r for r in ("demhec", "plain", *ablations, *LATE_RUNS) if r in names]
    return {(run, exp.seed): ablation_result(exp, run, severities=severities) if run in ablations
            else ablation_result(exp, run) for run in order}


def paper_schedule_page(ctx: NotebookContext, ablation_severities: Sequence[int]) -> Page:
    """The GPU run of the paper's schedule (A.3: 7,020 steps, ``scripts/gpu_reproduction.py``)
    from the CPU base and from a GPU-trained base, beside the CPU runs of the same configs at 150
    steps and the paper's Table 1 ResNet-20 column; then the paper's config at A.3 per corruption
    and severity beside Table 1."""
    gpu = gpu_records(ctx.exp.results_dir, smoke=ctx.exp.profile == "smoke")
    if not gpu:
        return Page("No GPU results yet: scripts/gpu_reproduction.py has not been run on a GPU for these results "
                    "(see its docstring for the device command); this page fills in once results/gpu/ is committed.")
    before = robustness_result(ctx.exp, "before", "cifar-c")
    same = _cpu_runs_of(ctx.exp, GPU_A_RUNS, ablation_severities)
    table = gpu_summary(gpu, cpu=(before, same))
    check_ablation_shown(table[table.source.str.startswith("CPU")], before, same)
    save_table(table, "gpu_vs_cpu_vs_paper", ctx.tables_dir)
    lines, checked = [], []
    for profile, (base, runs) in gpu.items():
        rows = table[table.source.str.startswith(f"GPU, A.3 schedule, {GPU_BASES[profile]}") & (table.run == "demhec")]
        if ("demhec", 0) not in runs or rows.empty:
            continue
        row = rows.iloc[0]
        check_number(row.d_noise_s5, recount(runs[("demhec", 0)], NOISE_S5, base=base), f"{row.source}: noise S5 change")
        check_number(row.d_clean, recount(runs[("demhec", 0)], base=base), f"{row.source}: clean change")
        checked.append(f"{row.source}: the paper config's clean and noise S5 changes")
        lines.append(f"{row.source}, the paper's config against its base: {describe_targets(row.d_clean, row.d_noise_s5)}.")
    cpu = table[table.source.str.startswith("CPU") & (table.run == "demhec")]
    lines += [f"{r.source}, the paper's config against its base: {describe_targets(r.d_clean, r.d_noise_s5)}."
              for r in cpu.itertuples()]
    items: list[tuple[str, Any, str]] = [(
        "gpu_vs_cpu_vs_paper", table,
        "One block per source: the GPU runs at A.3's schedule (from the CPU base and from a base trained on the GPU, "
        "its epochs named), the CPU runs of the same configs at the 150-step budget (seed 0) and the paper's Table 1 "
        "ResNet-20 column (the paper states no clean accuracy for it). Accuracy (%) on clean images, the mean of the "
        "three noises and of all seven corruptions at S5, and (`d_*`) each one's change from that block's base model.")]
    if ("demhec", 0) in gpu.get("gpu", ({}, {}))[1]:
        base, runs = gpu["gpu"]
        long = before_after_table(base, runs[("demhec", 0)], **PAPER_RESNET20)
        check_shown(long, {"before": base, "after": runs[("demhec", 0)]})
        check_recounted({"before": base, "after": runs[("demhec", 0)]}, long)
        save_table(long, "gpu_table1_resnet20_cifar-c", ctx.tables_dir)
        items.append(("gpu_table1", wide_table(long, values=["ours", "paper"]),
                      "The paper's config after A.3's schedule from the CPU base, per corruption (rows) and severity: "
                      "`S<s> before ours` / `S<s> after ours` the base and Dem-HEC accuracy (%), `... paper` the "
                      "paper's Table 1 ResNet-20 column."))
    else:
        lines.append("The GPU run of the paper's config from the CPU base has not finished (no results/gpu/ result).")
    return Page("\n".join(lines), items, checked)


def paper_schedule_halves_page(ctx: NotebookContext) -> Page:
    """The GPU run of A.3 re-scored on each half of the evaluation split from its committed state
    dicts (``scripts/cpu_reproduction.py --gpu-halves``): the paper's config, its controls and
    the other configs fine-tuned there, paired over the half's images, and the paper's config
    against its controls on the report half."""
    gpu_exp = dataclasses.replace(ctx.exp, profile="gpu" if ctx.exp.profile == "cpu" else "gpu_smoke")
    base, runs = existing_halves(gpu_exp, list(GPU_A_RUNS))
    if base is None or ("demhec", 0) not in runs:
        return Page("No GPU results on the halves yet: run scripts/cpu_reproduction.py --gpu-halves after the GPU "
                    "run's state dicts are committed (results/gpu/cpu_base/checkpoints/).")
    halves = {h: half_summary(base, runs, h) for h in EVAL_HALVES}  # checked against the files
    report = halves["report"].set_index("run")
    what = "the paper config's noise S5 change on the report half"
    check_number(report.loc["demhec", "d_noise_s5"], recount(runs[("demhec", 0)]["report"], NOISE_S5,
                                                              base=base["report"]), what)
    text = "\n".join(controls_verdict(halves["report"], controls=("random_noise", "gaussian_aug", "plain")))
    return Page(text, checked=[what], items=[(
        "gpu_halves", pd.concat(halves.values())[HALVES_COLUMNS],
        "One row per run and half (selection first, then report), A.3's schedule from the CPU base, `cifar-c`: "
        "accuracy (%), its change from the base (`d_*`) with the standard error paired over the half's 2,500 images "
        "(`se_*`), and the change from the paper's config with its error (`r_*`, `r_se_*`). A change counts as one "
        "only beyond about twice its standard error; the lines above read the report half against the controls.")])


TTA_RUNS = {"base": ("before", None), "base + BN adaptation": ("before", "bn"), "base + TENT": ("before", "tent"),
            "Dem-HEC": ("after", None), "Dem-HEC + BN adaptation": ("after", "bn"), "Dem-HEC + TENT": ("after", "tent")}
TTA_COLUMNS = ["clean", "noise_s5", "all_s5", "all_cells", "d_clean", "d_noise_s5", "d_all_s5", "d_all_cells", "mce",
               "ece_clean", "ece_corrupted", "relative_cost"]


def _describe_tta(summary: pd.DataFrame) -> str:
    s = summary.set_index("label")
    lines = [f"Highest noise S5 mean: {s.noise_s5.idxmax()} ({s.noise_s5.max():.2f}%); lowest mCE: {s.mce.idxmin()} "
             f"({s.mce.min():.2f}); highest clean accuracy: {s.clean.idxmax()} ({s.clean.max():.2f}%)."]
    for name in ("BN adaptation", "TENT"):
        both, parts = s.loc[f"Dem-HEC + {name}", "noise_s5"], s.loc[["Dem-HEC", f"base + {name}"], "noise_s5"]
        lines.append(f"Dem-HEC + {name} on noise S5: {both:.2f}% against Dem-HEC {parts.iloc[0]:.2f}% and base + {name} "
                     f"{parts.iloc[1]:.2f}%: {'above both' if both > parts.max() else 'not above both'}.")
    return "\n".join(lines)


def tta_page(ctx: NotebookContext) -> Page:
    """Section 7: test-time adaptation (BN statistics, TENT) of the first seed's base and Dem-HEC
    models (``cifar-c``, S1/S3/S5): accuracy, mCE and calibration, the measured cost, and the
    curves per corruption."""
    from .. import plots

    tta = {label: robustness_result(ctx.exp, phase, "cifar-c", adapt=adapt) for label, (phase, adapt) in TTA_RUNS.items()}
    summary = robustness_summary(tta, reference="base", severity=5)
    for row in summary.itertuples():  # each clean accuracy shown, recounted from its file's correct-image counts
        check_number(row.clean, recount(tta[row.label]), f"the clean accuracy of {row.label}")
    save_table(summary, "test_time_adaptation", ctx.tables_dir)
    cost = pd.DataFrame([{"run": label, "seconds_plain": rec["metrics"]["seconds_plain"],
                          "seconds_adapted": rec["metrics"]["seconds_adapted"],
                          "relative_cost": rec["metrics"]["relative_cost"], "threads": rec["config"]["torch_threads"]}
                         for label, rec in tta.items() if "seconds_plain" in rec["metrics"]])
    save_table(cost, "test_time_adaptation_wall_time", ctx.tables_dir)
    items: list[tuple[str, Any, str]] = [
        ("summary", summary.set_index("label")[TTA_COLUMNS],
         "Accuracy in % on the evaluation split and its change from the base model in points (`d_*`); `noise_s5` is "
         "the mean over the three noises at S5, `all_s5` over all seven corruptions at S5, `all_cells` over the 21 "
         "corrupted cells; `mce` is the mean corruption error with the base model as reference (base = 100, lower is "
         "better), `ece_*` the calibration error in %. `relative_cost` is the wall time of the adapted evaluation over "
         "that of a plain one in the same process: on a shared machine it moves with the load between the two timings."),
        ("wall_time", cost,
         "Wall seconds of one evaluation of the clean set and the 21 corrupted sets, plain and adapted, with the torch "
         "thread count of the run.")]
    text = _describe_tta(summary)
    cost_path = ctx.exp.cell_dir / "tta_cost_cifar-c.json"  # made by benchmarks/tta_cost.py
    if cost_path.exists():
        cpu_cost = cost_table(read_result(cost_path))
        save_table(cpu_cost, "test_time_adaptation_cost", ctx.tables_dir)
        items.append(("test_time_adaptation_cost", cpu_cost,
                      "Process CPU seconds and wall seconds of scoring the evaluation images (clean, and Gaussian noise "
                      "S5) with one thread, plainly, with BN adaptation and with TENT, each as a multiple of the plain "
                      "scoring: `cpu_ratio` is the cost to read."))
    else:
        text += "\nNo CPU-time measurement for this profile yet (python benchmarks/tta_cost.py makes it)."
    long = pd.concat([result_table(rec).assign(method=label) for label, rec in tta.items()], ignore_index=True)
    fig = plots.robustness_figure(long, by="method", title=f"Test-time adaptation of the seed-{ctx.exp.seed} models, cifar-c suite")
    items += [
        ("test_time_adaptation", fig,
         "Accuracy against severity, one panel per corruption, one line per model and adaptation (each starting at its "
         "clean accuracy). A line above \"base\" is a gain over the unadapted base model; \"Dem-HEC + BN adaptation\" "
         "above both \"Dem-HEC\" and \"base + BN adaptation\" would mean that the two combine."),
        ("per_corruption", per_corruption_table(tta, severities=[5]),
         "Accuracy (%) per corruption at S5 for each model and adaptation; the first row is the clean set (adapted "
         "too, where a column adapts).")]
    return Page(text, items, checked=["the clean accuracy of every row"])
