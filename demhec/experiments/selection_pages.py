"""The selection protocol's pages at the CPU budget (notebook 12), one function per section: the
paper's config against its controls on the report half (:func:`controls_page`), the
configuration the selection rule picks on the selection half (:func:`choice_page`), Figures 3-4 on
the report half (:func:`entropy_page`), the recorded choice against its own controls
(:func:`recommended_page`), every run on both halves (:func:`halves_tradeoff_page`) and the
stages' wall times (:func:`stage_times_page`); :func:`cpu_halves` is what they read. Like
:mod:`.cpu_pages`, each checks what it shows, saves its tables and returns a :class:`.pages.Page`.

These pages describe the choice at 150 steps; which configuration a user should set is a finding
(:func:`.findings.findings`, key "what to set"), from the best evidence (the paper's schedule
ranks above this budget), which the notebook's closing section shows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..results import read_result, save_table
from .checks import check_entropy_shown, check_number, recount, recount_gap
from .cpu_pages import HALVES_COLUMNS, NOISE_S5, SUITES, TARGET
from .gpu import GPU_A_RUNS
from .halves import EVAL_HALVES
from .notebook import NotebookContext
from .pages import Page
from .pipeline import halves_result
from .prose import (
    config_changes,
    describe_divergences,
    describe_entropy_claim,
    describe_recommendation,
    describe_suites,
)
from .runs import CONTROL_RUNS, CONTROLS, FIGURE34_CORRUPTIONS, RUNS, control_of, get
from .selection import (
    half_summary,
    halves_summary,
    ranked_runs,
    recommended_halves,
    record_choice,
    run_step_cost,
    select_run,
    step_cost_ratios,
    strongest_path,
)
from .stage_times import stage_times
from .study import (
    ablation_halves,
    entropy_records,
    existing_divergences,
    existing_halves,
    same_base_halves,
)
from .tables import entropy_scale, entropy_summary, severity_gains
from .verdict import (
    controls_verdict,
    describe_targets,
    recommendation_verdict,
    recommended_summary,
    targets_met,
)

__all__ = ["CpuHalves", "choice_page", "controls_page", "cpu_halves", "entropy_page", "halves_tradeoff_page",
           "recommended_page", "stage_times_page"]

# What the smoke profile scores on the halves when allow_train is on: the base, the paper config and its controls.
SMOKE_HALVES = ("demhec", "plain", "random_noise", "gaussian_aug")
NOT_YET = "No CPU runs on the halves yet: scripts/cpu_reproduction.py --halves demhec,plain,random_noise,... --seeds 0"


@dataclass
class CpuHalves:
    """What exists of the CPU study on the halves: the base model's records, each (run, seed)'s,
    the runs whose fine-tune diverged, and lines saying where they come from."""

    base: dict[str, dict] | None
    runs: dict[tuple[str, int], dict[str, dict]]
    diverged: dict[str, dict]
    notes: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        """The base model and the paper's config at seed 0 are scored on both halves."""
        return self.base is not None and ("demhec", 0) in self.runs

    def summary(self, half: str) -> pd.DataFrame:
        """:func:`.selection.half_summary` of ``half`` (checked against the files), paired to the
        paper's config at seed 0."""
        return half_summary(self.base, self.runs, half)


def cpu_halves(ctx: NotebookContext, seeds: Sequence[int]) -> CpuHalves:
    """The CPU study's runs on the halves at ``seeds`` (read; with ``allow_train``, as in
    ``smoke``, the base, the paper's config and its three controls are scored first). Without a
    CPU base on the halves, the GPU profile's results of the same committed base state dict
    stand in (:func:`.study.same_base_halves`)."""
    others = [r for r in RUNS if r != "demhec"]
    if ctx.exp.allow_train:
        halves_result(ctx.exp, "before")
        for run in SMOKE_HALVES:
            ablation_halves(ctx.exp, run)
    base, runs = existing_halves(ctx.exp, ["demhec", *others], seeds)
    diverged = existing_divergences(ctx.exp, others)
    notes = []
    if base is None:
        gpu_exp = dataclasses.replace(ctx.exp, profile="gpu" if ctx.exp.profile == "cpu" else "gpu_smoke")
        base = same_base_halves(ctx.exp, existing_halves(gpu_exp, list(GPU_A_RUNS))[0])
        if base is not None:
            notes.append("CPU base on the halves: the GPU profile's results of the same committed state dict (same sha256).")
    scored: dict[str, list[int]] = {}
    for run, seed in runs:
        scored.setdefault(run, []).append(seed)
    waiting = [r for r in ["plain", *CONTROLS] if r not in scored and r not in diverged]
    notes.append("CPU runs on both halves (seeds): " + ", ".join(f"{r} ({', '.join(map(str, s))})" for r, s in scored.items())
                 + f". Not yet: {', '.join(waiting) or 'none'}.")
    return CpuHalves(base, runs, diverged, notes)


def controls_page(ctx: NotebookContext, seeds: Sequence[int]) -> Page:
    """The paper's config against its controls at the CPU budget (the plain fine-tune, random
    noise in the eps-ball without ascent, Gaussian-noise augmentation; same base, freezing,
    learning rate and budget) on the report half, paired over its images; saves both halves'
    tables of every run."""
    h = cpu_halves(ctx, seeds)
    if not h.ready:
        return Page(NOT_YET)
    halves = {half: h.summary(half) for half in EVAL_HALVES}
    for half, summary in halves.items():
        save_table(summary[["seed", *HALVES_COLUMNS]], f"halves_{half}", ctx.tables_dir)
    report = halves["report"]
    checked = []
    for control in (c for c in CONTROL_RUNS if (c, 0) in h.runs):
        row = report[(report.run == control) & (report.seed == 0)].iloc[0]
        what = f"{control} minus the paper's config on noise S5 (seed 0, report half)"
        check_number(row.r_noise_s5, recount(h.runs[(control, 0)]["report"], NOISE_S5,
                                             base=h.runs[("demhec", 0)]["report"]), what)
        checked.append(what)
    shown = report[report.run.isin(["base", "demhec", *CONTROL_RUNS])][["seed", *HALVES_COLUMNS]]
    return Page("\n".join([*h.notes, *controls_verdict(report)]), checked=checked, items=[(
        "controls_report", shown,
        "One row per run and seed on the report half (`cifar-c`): accuracy (%), its change from the base (`d_*`) with "
        "the standard error paired over the half's images (`se_*`), and its change from the paper's config at seed 0 "
        "(`r_*`, `r_se_*`: negative means the paper's config is ahead). The lines above average the seeds and call a "
        "difference one only beyond 1.96 standard errors.")])


def _choice(h: CpuHalves) -> dict[str, Any] | None:
    """The selection rule on the selection half at seed 0 among what is scored now."""
    if not h.ready:
        return None
    selection = h.summary("selection")
    return select_run(selection[selection.seed == 0])


def choice_page(ctx: NotebookContext, seeds: Sequence[int]) -> Page:
    """The configuration the selection rule (:data:`.selection.CHOICE_RULE`) picks on the
    selection half at seed 0 (the seed every run has) among every configuration of the paper's
    loss scored there, its numbers recounted image by image, and its report-half numbers."""
    h = cpu_halves(ctx, seeds)
    choice = _choice(h)
    if choice is None:
        return Page(NOT_YET)
    run = choice["run"]
    sel_base, sel_run = h.base["selection"], h.runs[(run, 0)]["selection"]
    check_number(choice["d_noise_s5"], recount(sel_run, NOISE_S5, base=sel_base), "the chosen run's noise S5 change")
    check_number(choice["d_clean"], recount(sel_run, base=sel_base), "the chosen run's clean change")
    rep = ranked_runs(h.summary("report")).set_index("run").loc[run]
    selection = h.summary("selection")
    candidates = selection[selection.run.isin(choice["candidates"]) & (selection.seed == 0)]
    candidates = candidates[["run", "label", "d_clean", "se_clean", "d_noise_s5", "se_noise_s5"]].assign(
        clean_target=[targets_met(c, n)[0] for c, n in zip(candidates.d_clean, candidates.d_noise_s5)])
    text = "\n".join([
        f"Picked on the selection half at seed 0 ({choice['rule']}, among {len(choice['candidates'])} configurations): "
        f"{run} ({get(run).label}); there: {describe_targets(choice['d_clean'], choice['d_noise_s5'])}.",
        f"On the report half, mean of {rep.seeds} seed(s): {describe_targets(rep.d_clean, rep.d_noise_s5)} "
        f"(paired standard errors {rep.se_clean:.2f} and {rep.se_noise_s5:.2f})."])
    return Page(text, checked=["the chosen run's clean and noise S5 changes"], items=[(
        "candidates", candidates.sort_values("d_noise_s5", ascending=False),
        "The candidates on the selection half at seed 0, by noise S5 gain: change from the base (`d_*`, points) with "
        "its paired standard error (`se_*`); `clean_target` says whether the clean cost is within the rule's limit. "
        "The rule takes the largest noise gain among those within it (the controls are never candidates).")])


def entropy_page(ctx: NotebookContext, seeds: Sequence[int]) -> Page:
    """The paper's Figures 3-4 (eq. 4 per stage, each divided by log of its width) on the report
    half for the base model, the paper's config and the configuration picked at 150 steps, clean
    against Gaussian noise and pixelate at S5, and whether the paper's reading of them holds."""
    from .. import plots

    choice = _choice(cpu_halves(ctx, seeds))
    runs = ["before", "demhec", *([choice["run"]] if choice is not None and choice["run"] != "demhec" else [])]
    records, missing = entropy_records(ctx.exp, runs, FIGURE34_CORRUPTIONS, severity=5, half="report")
    lines = [f"Not yet computed (scripts/cpu_reproduction.py --figures34): {missing}"] if missing else []
    if not records:
        return Page("\n".join(lines))
    name = {"before": "base", "demhec": "Dem-HEC", **{r: f"chosen: {r}" for r in runs[2:]}}
    panels = {(name[r], plots.pretty_name(c)): (rec["metrics"]["clean"], rec["metrics"]["corrupted"])
              for (r, c), rec in records.items()}
    title = (f"Figures 3-4 on {plots.pretty_name(ctx.exp.effective_dataset)}, "
             f"{plots.pretty_name(ctx.exp.effective_backbone)}, cifar-c suite, S5, report half")
    fig = plots.entropy_grid_figure(panels, normalise_by=entropy_scale(next(iter(records.values()))), title=title)
    ent = pd.concat([entropy_summary(rec, normalised=True).assign(model=name[r], corruption=c)
                     for (r, c), rec in records.items()], ignore_index=True)
    for c, t in ent.groupby("corruption"):
        check_entropy_shown(t, {name[r]: rec for (r, cc), rec in records.items() if cc == c}, normalised=True, key="model")
    ent = ent[["corruption", "model", "layer", "clean", "corrupted", "gap"]]
    (r, c), rec = next(iter(records.items()))
    last = ent[(ent.model == name[r]) & (ent.corruption == c)].iloc[-1]
    what = f"the {name[r]} model's {c} gap at {last.layer}"
    check_number(last.gap, recount_gap(rec, last.layer, normalised=True), what)
    save_table(ent, "fig3_fig4_entropy_report_half", ctx.tables_dir)
    lines.append(describe_entropy_claim(ent, base="base"))
    return Page("\n".join(lines), checked=[what], items=[
        ("fig3_fig4_report_half", fig,
         "Each panel is one model (row) and one corruption (column): per layer, the distribution over the report-half "
         "images of the normalised entropy, clean in blue (left half of each violin) and corrupted in red (right half)."),
        ("gaps", ent.pivot_table(index=["corruption", "model"], columns="layer", values="gap", sort=False),
         "Each layer's corrupted-minus-clean gap of the means (entropy / log width). The sentence above says whether "
         "the paper's reading holds here: that corruptions raise the entropy of the middle layers of the base model, "
         "and that a fine-tuned model narrows the gap.")])


def recommended_page(ctx: NotebookContext, seeds: Sequence[int]) -> Page:
    """The configuration recorded as chosen on the selection half at 150 steps
    (:func:`.selection.record_choice`) against its own plain, random-noise and Gaussian controls
    (same freezing, learning rate, radius and budget) over ``seeds`` on the report half, per
    severity, and in the ``imagecorruptions`` suite. With ``allow_train`` (smoke) the choice is
    recorded and it and its controls are scored first."""
    h = cpu_halves(ctx, seeds)
    if ctx.exp.allow_train and h.ready:
        recorded = record_choice(ctx.exp, list(RUNS))["metrics"]["run"]
        for name in [recorded, *(control_of(c, recorded) for c in CONTROL_RUNS)]:
            ablation_halves(ctx.exp, name)
    recommended = {suite: recommended_halves(ctx.exp, seeds, suite) for suite in SUITES}
    choice, base, runs = recommended["cifar-c"]
    if choice is None or base is None or (choice["metrics"]["run"], seeds[0]) not in runs:
        return Page("No recorded choice scored yet: scripts/cpu_reproduction.py --recommend --seeds 0,1,2")
    run, m = choice["metrics"]["run"], choice["metrics"]
    controls = [control_of(c, run) for c in CONTROL_RUNS]
    lines = [f"Recorded choice at the 150-step budget ({choice['split']} half, {m['rule']}, among "
             f"{', '.join(m['candidates'])}): {get(run).label}"
             + (f"; against the paper's config: {'; '.join(config_changes(ctx.exp, run))}." if run != "demhec" else ".")]
    now = _choice(h)
    if now is not None and now["run"] != run:
        lines.append(f"(Among every run scored since, the rule would now pick {now['run']}; the seeds and controls below "
                     "are the recorded choice's.)")
    summary = recommended_summary(base, runs, run, "report")
    what = f"{run}'s noise S5 change on the report half (seed {seeds[0]})"
    row = summary[(summary.run == run) & (summary.seed == seeds[0])].iloc[0]
    check_number(row.d_noise_s5, recount(runs[(run, seeds[0])]["report"], NOISE_S5, base=base["report"]), what)
    save_table(summary[["seed", *HALVES_COLUMNS]], "recommended_report", ctx.tables_dir)
    verdict = recommendation_verdict(summary, run, controls)
    cost = run_step_cost(ctx.exp, run, step_cost_ratios(ctx.exp.results_dir))
    lines += describe_recommendation(ctx.exp, verdict, cost, name="the chosen run")[1:]
    sev = severity_gains(base["report"], {k: v["report"] for k, v in runs.items()})
    save_table(sev, "recommended_by_severity", ctx.tables_dir)
    items: list[tuple[str, Any, str]] = [
        ("recommended_report", summary[["seed", *HALVES_COLUMNS]],
         "One row per run and seed, report half, `cifar-c`: accuracy (%), its change from the base (`d_*`, with the "
         "paired standard error `se_*`) and, for each control, its change from the chosen run of the same seed (`r_*`: "
         "negative means the chosen run is ahead)."),
        ("recommended_by_severity", sev.pivot_table(index="label", columns="severity",
                                                   values=["d_clean", "d_noise", "d_all"], sort=False),
         "Change from the base in points per severity (report half, `cifar-c`, mean over the seeds): `d_noise` the "
         "three noises, `d_all` all seven corruptions, `d_clean` repeated for reference. A gain at S5 that turns into "
         "a loss at S1 is the clean cost showing through on mildly corrupted images.")]
    _, ic_base, ic_runs = recommended["imagecorruptions"]
    if ic_base is None or (run, seeds[0]) not in ic_runs:
        lines.append("The chosen configuration is not scored in the imagecorruptions suite yet "
                     "(scripts/cpu_reproduction.py --recommend scores it after cifar-c).")
    else:
        ic = recommended_summary(ic_base, ic_runs, run, "report")
        save_table(ic[["seed", *HALVES_COLUMNS]], "recommended_report_imagecorruptions", ctx.tables_dir)
        lines += describe_suites({"cifar-c": verdict, "imagecorruptions": recommendation_verdict(ic, run, controls)},
                                 name="the chosen run")
        items.append(("recommended_report_imagecorruptions", ic[["seed", *HALVES_COLUMNS]],
                      "The same in the `imagecorruptions` suite (ImageNet-C's constants): does the ranking against the "
                      "controls survive the other corruption constants? Columns as in the first table."))
    return Page("\n".join(lines), items, checked=[what])


def halves_tradeoff_page(ctx: NotebookContext, seeds: Sequence[int]) -> Page:
    """Every run scored on the halves (the recorded choice's controls included) on one plane:
    clean cost against noise S5 gain, on the selection half (where a run was chosen, or could have
    been) and on the report half."""
    from .. import plots

    h = cpu_halves(ctx, seeds)
    if not h.ready:
        return Page(NOT_YET)
    choice, _, rec_runs = recommended_halves(ctx.exp, seeds, "cifar-c")
    every = {**h.runs, **(rec_runs if choice is not None and (choice["metrics"]["run"], seeds[0]) in rec_runs else {})}
    both = pd.concat([halves_summary(h.base[half], {k: v[half] for k, v in every.items()}) for half in EVAL_HALVES],
                     ignore_index=True)
    report = both[(both.split == "report") & (both.run != "base")].groupby("run", sort=False)[["d_clean", "d_noise_s5"]].mean()
    met = [f"`{r}`" for r, m in report.iterrows() if all(targets_met(m.d_clean, m.d_noise_s5))]
    fig = plots.tradeoff_figure(both, target=TARGET, families={r: get(r).family for r in both.run if r != "base"})
    return Page(f"Runs whose report-half mean over their seeds meets both targets: {', '.join(met) or 'none'}.", items=[(
        "tradeoff_halves", fig,
        "Every run on the halves, clean cost (x) against noise S5 gain (y), change from the base in points, `cifar-c`. "
        "Each run has a hollow marker on the selection half and a filled one on the report half, joined by a line: a "
        "long line is a run whose standing moved between the halves. Small dots are single seeds on the report half; "
        "the shaded corner is where both targets hold.")])


def stage_times_page(ctx: NotebookContext) -> Page:
    """The wall time of each stage of ``scripts/cpu_reproduction.py`` that did work since it began
    recording them (:func:`.stage_times.record_stage_time`), with the torch threads and the load."""
    rows = pd.DataFrame(stage_times(ctx.exp))
    if rows.empty:
        return Page("No stage times recorded for this profile (scripts/cpu_reproduction.py records them).")
    shown = rows[["date", "stage", "wall_s", "torch_threads", "cpu_count", "load_average_1min"]].round(1)
    text = (f"{len(rows)} stages recorded, {rows.wall_s.sum() / 3600:.1f} h of wall time in all; the one-minute load "
            f"average at their ends: median {rows.load_average_1min.median():.1f} on {rows.cpu_count.max()} cores.")
    return Page(text, items=[(
        "stage_times", shown,
        "One row per stage (latest run of it), seconds of wall time. A load average above the thread count means the "
        "stage shared the cores with other jobs and took longer than it would alone: these are the development "
        "machine's times; the step-cost ratios (`benchmarks/step_cost.py`) are the machine-independent price.")])


def strongest_line(ctx: NotebookContext) -> str:
    """Which discriminating runs were picked on the selection half to be repeated over seeds
    (:func:`.selection.record_strongest`), or that none are yet."""
    path = strongest_path(ctx.exp)
    return ("Picked on the selection half at seed 0 to be repeated over seeds (the seeds column says how many are "
            "scored): " + (", ".join(read_result(path)["metrics"]["runs"]) if path.exists()
                           else "not picked yet (every discriminating run needs its seed-0 result first)."))


def divergence_lines(h: CpuHalves) -> list[str]:
    """The runs whose fine-tune diverged, in words (:func:`.prose.describe_divergences`)."""
    return describe_divergences(h.diverged)
