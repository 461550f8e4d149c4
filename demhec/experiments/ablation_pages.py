"""The ablations' pages at the CPU budget (notebook 11), one function per section: every ablation
and schedule probe (:func:`ablations_page`), the late-freezing config against its control
(:func:`late_frozen_page`), every run on one plane (:func:`tradeoff_page`), and which one-change
runs move the clean cost on the report half, paired over its images (:func:`clean_cost_page`).
Like :mod:`.cpu_pages`, each checks what it shows, saves its tables and returns a
:class:`.pages.Page`."""

from __future__ import annotations

from collections.abc import Sequence

from ..results import save_table
from .checks import check_ablation_shown, check_number, check_recounted, check_shown, recount
from .cpu_pages import (
    NOISE_S5,
    PAPER_RESNET20,
    TARGET,
    ablation_runs,
    check_headline,
    late_runs,
    main_runs,
    mean_sd,
    seed_experiments,
)
from .notebook import NotebookContext
from .pages import Page
from .pipeline import robustness_result
from .prose import describe_ranking, describe_runs
from .runs import DISCRIMINATING, LATE_RUNS, get
from .selection import CHOICE_RULE, ranked_runs, run_step_cost, step_cost_ratios
from .selection_pages import NOT_YET, cpu_halves, divergence_lines, strongest_line
from .study import ablation_result, paired_gain_result
from .tables import (
    ablation_summary,
    before_after_table,
    paired_summary,
    seed_gain,
    severity_gains,
    wide_table,
)
from .verdict import describe_targets, targets_met

__all__ = ["ablations_page", "clean_cost_page", "late_frozen_page", "tradeoff_page"]


def ablations_page(ctx: NotebookContext, seeds: Sequence[int], ablation_severities: Sequence[int]) -> Page:
    """Section 4: every ablation and schedule probe (one change from the paper's config, first
    seed, at ``ablation_severities``) beside the paper's config and its plain fine-tune over
    ``seeds``, as change from the base model, grouped by the question each run answers."""
    from .. import plots

    before = robustness_result(ctx.exp, "before", "cifar-c")
    main = main_runs(ctx.exp, seeds)
    runs = {**main, **ablation_runs(ctx.exp, ablation_severities)}
    summary = ablation_summary(before, runs)
    check_ablation_shown(summary, before, runs)  # the rows are the files'
    checked = [check_headline(summary, "demhec", ctx.exp.seed, main[("demhec", ctx.exp.seed)], before)]
    save_table(summary, "ablations", ctx.tables_dir)
    families: dict[str, list[str]] = {}
    for run in dict.fromkeys(summary.run[summary.run != "base"]):
        families.setdefault(get(run).family, []).append(run)
    text = "Change from the base model, by the question each run answers:\n" + "\n".join(
        f"- {family}: {describe_runs(summary, names)}" for family, names in families.items())
    cols = ["clean", "noise_s5", "all_s5", "d_clean", "d_noise_s5", "d_all_s5"]
    return Page(text, checked=checked, items=[
        ("ablations", plots.ablation_figure(summary),
         "Each bar is a run's change from the base model (points), mean over its seeds, with every seed as a black dot "
         "(the paper's config and its plain fine-tune have one per seed, the other runs one). A bar right of zero on "
         "noise and near zero on clean is what the paper's method promises."),
        ("means", summary.groupby(["run", "label"], sort=False)[cols].mean(),
         "The figure's means: accuracy (%) and (`d_*`) change from the base in points, per run.")])


def late_frozen_page(ctx: NotebookContext, seeds: Sequence[int]) -> Page:
    """Section 5: the late stages frozen (only the stem and stages 1-2 train) with eps 4/255 and a
    fifth of the learning rate, against a plain fine-tune with the same freezing and learning
    rate, over ``seeds``: its rows, per corruption beside Table 1, per severity, the paired
    uncertainty of the targets, and the ``imagecorruptions`` suite."""
    seed, (tuned, control) = ctx.exp.seed, LATE_RUNS
    before = robustness_result(ctx.exp, "before", "cifar-c")
    main, late = main_runs(ctx.exp, seeds), late_runs(ctx.exp, seeds)
    summary = ablation_summary(before, late)
    check_ablation_shown(summary, before, late)
    save_table(summary, "late_frozen", ctx.tables_dir)
    gain = seed_gain(summary, tuned, control)
    save_table(gain, "late_frozen_minus_plain", ctx.tables_dir)
    long = before_after_table(before, late[(tuned, seed)], **PAPER_RESNET20)
    check_shown(long, {"before": before, "after": late[(tuned, seed)]})
    check_recounted({"before": before, "after": late[(tuned, seed)]}, long)
    save_table(long, "late_frozen_resnet20_cifar-c", ctx.tables_dir)
    sev = severity_gains(before, {**main, **late})
    save_table(sev, "gain_by_severity", ctx.tables_dir)
    at = seed_experiments(ctx.exp, seeds)
    paired = paired_summary({(run, s): paired_gain_result(at[s], run) for run in ("demhec", tuned) for s in seeds})
    row = paired[(paired.run == tuned) & (paired.seed == seed)].iloc[0]
    check_number(row.d_clean, recount(late[(tuned, seed)], base=before), f"{tuned}'s paired clean change", tol=1e-4)
    save_table(paired, "target_uncertainty", ctx.tables_dir)
    before_ic = robustness_result(ctx.exp, "before", "imagecorruptions")
    late_ic = {(run, seed): ablation_result(ctx.exp, run, "imagecorruptions") for run in LATE_RUNS}
    summary_ic = ablation_summary(before_ic, late_ic)
    check_ablation_shown(summary_ic, before_ic, late_ic)
    save_table(summary_ic, "late_frozen_imagecorruptions", ctx.tables_dir)
    d = summary[summary.run == tuned]
    lines = [f"{get(tuned).label}, against the base, mean of {len(seeds)} seeds: "
             f"{describe_targets(d.d_clean.mean(), d.d_noise_s5.mean())}.",
             f"Against its plain fine-tune over {len(seeds)} seeds: noise S5 mean {mean_sd(gain, 'noise_s5')}, clean "
             f"{mean_sd(gain, 'clean')} points."]
    for run, rows in paired.groupby("run", sort=False):
        met = [targets_met(r.d_clean_lo, r.d_noise_lo) for r in rows.itertuples()]
        lines.append(f"{get(run).label}: the 95% interval of the clean change lies within the clean target at "
                     f"{sum(c for c, _ in met)} of {len(met)} seeds, that of the noise S5 change above the noise "
                     f"target at {sum(n for _, n in met)} of {len(met)}.")
    ic = summary_ic.set_index("run")
    lines.append(f"imagecorruptions, seed {seed}: {get(tuned).label} minus its plain fine-tune: noise S5 mean "
                 f"{ic.loc[tuned, 'noise_s5'] - ic.loc[control, 'noise_s5']:+.2f}, clean "
                 f"{ic.loc[tuned, 'clean'] - ic.loc[control, 'clean']:+.2f} points.")
    return Page("\n".join(lines), checked=[f"every accuracy of the {tuned} table", f"{tuned}'s paired clean change"], items=[
        ("late_frozen", summary, "One row per run and seed (`cifar-c`): accuracy (%) on clean images, the noise S5 "
         "mean and the all-seven S5 mean, and (`d_*`) each one's change from the base in points."),
        ("late_frozen_minus_plain", gain, "The tuned config minus its plain control per seed, then their mean and "
         "standard deviation (last two rows)."),
        ("late_frozen_table1", wide_table(long, values=["ours", "paper"]),
         f"Per corruption and severity (seed {seed}, `cifar-c`): `S<s> before ours` / `S<s> after ours` the base and "
         "the tuned config, `... paper` the paper's Table 1 ResNet-20 column (the paper's own config)."),
        ("gain_by_severity", sev.pivot_table(index="label", columns="severity", values=["d_noise", "d_all"], sort=False),
         "What each config gains or costs at every severity (`cifar-c`, change from the base in points, mean over the "
         "seeds): `d_noise` the three noises, `d_all` all seven corruptions. The S5 target alone hides the milder "
         "severities, where a corrupted image is close to a clean one and the clean-accuracy cost carries over."),
        ("target_uncertainty", paired,
         "Paired over the 5,000 images (only images on which the base and the fine-tuned model disagree count): each "
         "config's change from the base on clean images and on the noise S5 mean, with its standard error (`se_*`) and "
         "95% interval (`*_lo`, `*_hi`). Every seed is scored on the same images, so the spread over seeds leaves this "
         "sampling error out."),
        ("late_frozen_imagecorruptions", summary_ic,
         f"The tuned config and its control in the `imagecorruptions` suite (seed {seed}, S1/S3/S5): does the "
         "advantage hold with the other corruption constants?")])


def tradeoff_page(ctx: NotebookContext, seeds: Sequence[int], ablation_severities: Sequence[int]) -> Page:
    """Every run of the short-budget study on one plane: clean cost against noise S5 gain, with the
    targets' corner shaded (:data:`.selection.CHOICE_RULE`)."""
    from .. import plots

    before = robustness_result(ctx.exp, "before", "cifar-c")
    runs = {**main_runs(ctx.exp, seeds), **ablation_runs(ctx.exp, ablation_severities), **late_runs(ctx.exp, seeds)}
    every = ablation_summary(before, runs)
    check_ablation_shown(every, before, runs)
    means = every[every.run != "base"].groupby("run", sort=False)[["d_clean", "d_noise_s5"]].mean()
    both = [f"{get(r).label} (`{r}`)" for r, m in means.iterrows() if all(targets_met(m.d_clean, m.d_noise_s5))]
    fig = plots.tradeoff_figure(every, target=TARGET, families={r: get(r).family for r in every.run if r != "base"})
    return Page(f"Runs whose mean over their seeds meets both targets: {'; '.join(both) or 'none'}.",
                checked=["every run's clean and noise S5 change (the figure's input)"], items=[(
                    "tradeoff", fig,
                    "What each run costs in clean accuracy (x) against what it gains on noise at S5 (y), as change "
                    "from the base model in points. One marker shape per question, listed together in the legend; "
                    "each run's large marker is its mean over its seeds (n in the legend), the small dots of the same "
                    f"colour its single seeds. The shaded corner is where both targets hold (at least "
                    f"+{CHOICE_RULE['min_noise_gain']:g} noise points for at most {CHOICE_RULE['max_clean_cost']:g} "
                    "clean points).")])




def clean_cost_page(ctx: NotebookContext, seeds: Sequence[int]) -> Page:
    """Which one-change runs move the paper config's clean cost at the CPU budget, on the report
    half (seed means; the strongest, picked on the selection half, repeated over seeds), each
    with its change from the paper's config and its paired standard error, the measured price
    of its training step, and the runs whose fine-tune diverged."""
    h = cpu_halves(ctx, seeds)
    if not h.ready:
        return Page(NOT_YET)
    report = h.summary("report")
    what = "the paper config's noise S5 change on the report half (seed 0)"
    row = report[(report.run == "demhec") & (report.seed == 0)].iloc[0]
    check_number(row.d_noise_s5, recount(h.runs[("demhec", 0)]["report"], NOISE_S5, base=h.base["report"]), what)
    ranked = ranked_runs(report)
    ratios = step_cost_ratios(ctx.exp.results_dir)  # benchmarks/step_cost.py --out: what each T_he costs
    ranked["step_cost"] = [run_step_cost(ctx.exp, r, ratios) for r in ranked.run]
    save_table(ranked, "halves_ranked", ctx.tables_dir)
    lines = [*h.notes, *describe_ranking(ranked, DISCRIMINATING), strongest_line(ctx), *divergence_lines(h)]
    return Page("\n".join(lines), checked=[what], items=[(
        "halves_ranked", ranked,
        "Per run, on the report half: the mean over its seeds of the change from the base (`d_*`) and from the "
        "paper's config at seed 0 (`r_*`), the spread of that change over seeds (`sd_*`, empty with one seed) and the "
        "standard error paired over the half's 2,500 images (`se_*`); `step_cost` is the measured price of one "
        "training step relative to a plain cross-entropy step (`benchmarks/step_cost.py`; empty where not measured). "
        "Read from the top: a positive `r_clean` is clean accuracy the change gives back compared with the paper's "
        "config, a change only when larger than about twice `r_se_clean`; `r_noise_s5` is what it costs of the noise "
        "gain. The lines above sort the discriminating runs that way.")])
