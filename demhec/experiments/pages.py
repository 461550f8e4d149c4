"""What a notebook page shows, built in the library: each function returns a :class:`Page` (its
sentences, tables and figures), so a notebook cell only calls it and shows the result.

* :func:`table3_page` / :func:`table4_page`: the paper's Tables 3 and 4. In the ``cpu`` profile they
  show the comparison at A.3 on real images (:mod:`.comparison`: every method fine-tuned from the
  CPU base, scored on the report half) beside the paper's rows; in the other profiles, Table 3's
  from-scratch baselines and Table 4's before/after of the profile's own models.
* :func:`start_your_model`, :func:`your_model_page`, :func:`your_model_entropy_page`,
  :func:`your_model_robustness_page`: the your-own-model page (notebook 14).

The CPU reproduction's pages (notebooks 09-13) are :mod:`.cpu_pages`, :mod:`.ablation_pages` and
:mod:`.selection_pages`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..results import paper_table, save_table
from .checks import (
    check_families,
    check_number,
    check_recounted,
    check_shown,
    check_summary,
    recount,
)
from .comparison import GPU_SEEDS, GPU_TWIN, PROFILE
from .comparison_tables import (
    COMPARISON_METRICS,
    comparison_figure_input,
    comparison_headline,
    comparison_records,
    comparison_table,
    comparison_verdict,
    corrupted_sets_note,
    describe_comparison,
    seed_table,
    table3_rows,
    table4_rows,
    with_wall_times,
)
from .pipeline import robustness_result
from .prose import describe_families, describe_summary
from .tables import before_after_table, family_table, result_table, summary_vs_paper

__all__ = ["Page", "comparison_page", "comparison_status", "ranked_comparison", "start_your_model", "table3_page",
           "table3_plan", "table4_page", "table4_plan", "your_model_entropy_page", "your_model_page",
           "your_model_robustness_page"]

# Our run names -> the paper's Table 3 method keys (results/paper/table3.csv).
PAPER_TABLE3 = {"plain": "pad_crop", "trivialaugment": "trivialaugment", "ba": "batch_augment",
                "ba_aa": "batch_augment_autoaugment", "augmix": "augmix", "augmax": "augmax", "ipmix": "ipmix",
                "dv_ap_jsd": "dv_ap_jsd", "demhec": "dem_hec"}
PAPER_TABLE4 = {"demhec": "dem_hec", "pushpull_base": "push_pull_ranabhat2025"}


@dataclass
class Page:
    """A page section: its sentences, then its tables and figures, each followed by a line on how
    to read it. :meth:`show` displays them in order in a notebook (a figure is saved first and the
    saved PNG shown, :func:`demhec.plots.show_figure`)."""

    text: str
    items: list[tuple[str, Any, str]] = field(default_factory=list)  # (name, table or figure, caption)
    # The key numbers shown that were recomputed from a result file's raw outcomes (and agreed).
    checked: list[str] = field(default_factory=list)

    @property
    def tables(self) -> dict[str, pd.DataFrame]:
        return {name: obj for name, obj, _ in self.items if isinstance(obj, pd.DataFrame)}

    @property
    def figures(self) -> dict[str, Any]:
        return {name: obj for name, obj, _ in self.items if not isinstance(obj, pd.DataFrame)}

    def show(self, figures_dir: str | Path) -> None:
        from IPython.display import Markdown, display

        from .. import plots

        print(self.text)
        for name, obj, caption in self.items:
            if isinstance(obj, pd.DataFrame):
                display(obj)
            else:
                plots.show_figure(obj, name, figures_dir)
            display(Markdown(caption))


def ranked_comparison(table: pd.DataFrame) -> pd.DataFrame:
    """The measured models ranked by the noise S5 mean, with clean and the all-15 S5 mean, each
    model's change from the base, Dem-HEC minus it with its paired standard error, the step cost
    and the training wall time."""
    cols = ["label", "kind", "clean", "noise_s5", "all15_s5", "d_clean", "d_noise_s5", "d_all15_s5",
            *(f"{p}_{m}" for m in COMPARISON_METRICS for p in ("vs_demhec", "se")), "mce", "ece_clean",
            "step_cost", "train_wall_h"]
    measured = table[table.missing == ""].reindex(columns=cols)
    return measured.sort_values("noise_s5", ascending=False).set_index("label")


def _beside_paper(rows: pd.DataFrame, table: pd.DataFrame, paper: pd.DataFrame, mapping: dict[str, str],
                  columns: list[str], key: str) -> pd.DataFrame:
    """``rows`` (one per our model) with the paper's value of each column for the same method."""
    out = rows.copy()
    names = dict(zip(table.label, table.run))
    for col in columns:
        ref = paper[paper[key] == col].set_index("method")["accuracy"]
        out[f"paper {col}"] = [ref.get(mapping.get(names.get(lab, ""), ""), float("nan"))
                               if table.loc[table.label == lab, "adapt"].iloc[0] == "none" else float("nan")
                               for lab in out.index]
    return out


def comparison_page(ctx: Any, shape: str, profile: str = PROFILE) -> Page:
    """The comparison at A.3 (``ctx``'s results folder, the ``a3`` profile) in the shape of the
    paper's ``shape`` ("table3": family means; "table4": clean and the seven corruptions over
    S1/S3/S5; ``profile`` "a3_smoke" in tests), with the ranked table, the verdict's sentences and the
    trade-off figures (clean
    against the noise S5 mean and against the all-15 S5 mean; fine-tuned, from-scratch and
    test-time models marked apart). Tables are saved under ``ctx.tables_dir``."""
    from .. import plots

    results_dir = ctx.exp.results_dir
    records = comparison_records(profile, results_dir)
    table = with_wall_times(comparison_table(records, "report", 0, profile, results_dir), profile, results_dir)
    verdict = comparison_verdict(records, table)
    if shape == "table3":
        shown = _beside_paper(table3_rows(table), table, paper_table("table3"), PAPER_TABLE3,
                              ["noise", "blur", "weather", "digital"], "family")
    else:
        from ..corruptions import PAPER_CORRUPTIONS

        shown = _beside_paper(table4_rows(table), table, paper_table("table4"), PAPER_TABLE4,
                              ["clean", *PAPER_CORRUPTIONS], "corruption")
    checked = []
    noise = [(c, s) for c in ("gaussian_noise", "shot_noise", "impulse_noise") for s in range(1, 6)]
    for run in ("demhec", "base"):  # a key number against the file's per-image outcomes
        rec = records.get((run, 0), {}).get("none", {}).get("report")
        if rec is not None:
            shown_noise = table.loc[(table.run == run) & (table.adapt == "none"), "noise"].iloc[0]
            check_number(shown_noise, recount(rec, noise), f"{run}'s noise-family mean", tol=1e-4)
            checked.append(f"{run}'s noise-family mean")
    ranked = ranked_comparison(table)
    for stem, df in ((f"comparison_{shape}", shown), ("comparison_ranked", ranked), ("comparison_verdict", verdict)):
        save_table(df.reset_index() if df.index.name else df, stem, ctx.tables_dir)
    paper_setting = ("the paper's own Table 3 is Tiny-ImageNet with ViT-L, so its columns show how the methods "
                     "ranked there, not values to match" if shape == "table3" else
                     "the paper's rows are its Table 4 (CIFAR-10, ResNet-20, its own pretrained base)")
    items: list[tuple[str, Any, str]] = [(
        shape, shown,
        f"One row per model, on the report half ({SETTING}): the measured columns are ours, the `paper ...` "
        f"columns the paper's value for the same method where it reports one ({paper_setting}); `missing` says "
        "what a row without numbers still lacks. `+ BN adaptation` / `+ TENT` rows adapt that model at test time.")]
    items.append(("ranked", ranked,
                  "The measured models ranked by the noise S5 mean. `d_*`: change from the base model in points; "
                  "`vs_demhec_*`: Dem-HEC minus the row, with `se_*` its standard error paired over the same images "
                  "(a difference beyond 1.96 `se` is more than the images' noise); `mce`: mean corruption error over "
                  "the scored cells, the base = 100; `step_cost`: a training step in plain steps "
                  "(`benchmarks/method_cost.py`); `train_wall_h`: the training's wall time on this machine's "
                  "loaded cores, not a property of the method, and empty where training went on from a resume "
                  "checkpoint (its record times only the rest)."))
    for metric in ("noise_s5", "all15_s5"):
        points = comparison_figure_input(table, metric)
        if points.empty:
            continue
        name = COMPARISON_METRICS[metric]
        fig = plots.tradeoff_figure(points, y=(f"d_{metric}", name), families=dict(zip(points.run, points.kind)))
        items.append((f"comparison_tradeoff_{metric}", fig,
                      f"Each measured model's change from the base in clean accuracy (x) and in the {name} (y), in "
                      "points, on the report half; the marker's shape is how the model was made (fine-tuned from the "
                      "base, trained from scratch, or adapted at test time). Up and to the right is better on both."))
    text = f"Verdict: {comparison_headline(table, verdict)}\n\n{describe_comparison(table, verdict)}"
    if shape == "table3":
        gpu_profile = GPU_TWIN.get(profile)
        seeds = seed_table(gpu_profile, GPU_SEEDS, results_dir) if gpu_profile else None
        if seeds is not None and len(seeds):
            n = int(seeds.seeds.max())
            items.append(("comparison_gpu_seeds", seeds,
                          f"The same comparison trained on a GPU (bf16) at up to {n} seeds (profile `{gpu_profile}`, "
                          "scored on the same report half): each column the mean over the seeds in `seeds`, "
                          "`*_sd` its standard deviation over them (what re-running a method may move it by), "
                          "`vs_demhec_*` Dem-HEC minus the row, paired per seed, over the `paired_seeds` at which "
                          "Dem-HEC's own run is scored too. "
                          + corrupted_sets_note(profile, gpu_profile, results_dir)))
        elif gpu_profile:
            text += (f"\nThe GPU's {len(GPU_SEEDS)}-seed run of this table (profile `{gpu_profile}`): no model of it is "
                     f"scored yet (on the GPU: `scripts/gpu_reproduction.py --phases s`; here: "
                     f"`scripts/comparison.py --profile {gpu_profile} --seeds {','.join(map(str, GPU_SEEDS))} "
                     "--stages score,adapt`).")
    return Page(text=text, items=items, checked=checked)


SETTING = ("CIFAR-10 JPEG mirror, 2,500 held-out images; every model fine-tuned from the CPU base at A.3's "
           "schedule, the push-pull ResNet-20 trained from scratch with the base's recipe")


def table3_page(ctx: Any, methods: list[str]) -> Page:
    """The paper's Table 3: the comparison at A.3 in the ``cpu`` profile (:func:`comparison_page`);
    elsewhere the profile's from-scratch baselines ``methods`` (and test-time adaptation of the base
    and Dem-HEC models, for backbones with BatchNorm) beside the paper's family means."""
    if ctx.exp.profile == "cpu":
        return comparison_page(ctx, "table3")
    from .. import adaptation, get_model

    def result(phase: str, adapt: str | None = None) -> dict:
        return robustness_result(ctx.exp, phase, ctx.suite, ctx.corruptions, ctx.severities, adapt=adapt)

    records = {m: result(f"baseline:{m}") for m in methods}
    records["dem_hec"] = result("after")
    note = ""
    if adaptation.has_batch_norm(get_model(ctx.exp.effective_backbone, num_classes=10)):
        for name, (phase, adapt) in {"bn_adapt": ("before", "bn"), "tent": ("before", "tent"),
                                     "dem_hec_bn_adapt": ("after", "bn")}.items():
            records[name] = result(phase, adapt)
    else:
        note = f"\n{ctx.exp.effective_backbone} has no BatchNorm layers: no BN adaptation / TENT rows."
    table = family_table(records, paper_backbone=ctx.exp.backbone)
    check_families(table, records)  # the shown means are the result files'
    noise = result_table(records["dem_hec"]).query("family == 'noise'")
    checked = []
    if len(noise):  # Dem-HEC's noise mean, recounted from its file's counts
        check_number(table.query("method == 'dem_hec' and family == 'noise'").ours.iloc[0],
                     recount(records["dem_hec"], list(zip(noise.corruption, noise.severity))), "Dem-HEC's noise-family mean")
        checked.append("Dem-HEC's noise-family mean")
    save_table(table, f"table3_{ctx.exp.effective_dataset}_{ctx.exp.effective_backbone}", ctx.tables_dir)
    return Page(text=describe_families(table) + note, checked=checked, items=[("table3", table, (
        "One row per (family, method): `ours` is the mean accuracy (%) over the family's corruptions and severities, "
        "`paper` the paper's Table 3 value where it reports one, `delta` ours minus paper. `bn_adapt`, `tent` and "
        "`dem_hec_bn_adapt` are test-time adaptation of the base model (BatchNorm statistics, Schneider et al. 2020; "
        "TENT, Wang et al. 2021) and of the Dem-HEC model, with no training; the paper does not report them."))])


def table4_page(ctx: Any) -> Page:
    """The paper's Table 4: the comparison at A.3 in the ``cpu`` profile (:func:`comparison_page`,
    with the push-pull ResNet-20 trained here); elsewhere the profile's base and Dem-HEC models
    beside the paper's Dem-HEC and push-pull rows."""
    if ctx.exp.profile == "cpu":
        return comparison_page(ctx, "table4")

    before = robustness_result(ctx.exp, "before", ctx.suite, ctx.corruptions, ctx.severities)
    after = robustness_result(ctx.exp, "after", ctx.suite, ctx.corruptions, ctx.severities)
    records = {"ours: base": before, "ours: Dem-HEC": after}
    table = summary_vs_paper(records, "table4")
    check_summary(table, records)  # the shown rows are the result files'
    long = before_after_table(before, after).rename(columns={"accuracy": "ours"})
    check_shown(long, {"before": before, "after": after})  # after == before is an error outside smoke
    check_recounted({"before": before, "after": after}, long)  # recounted from the files' counts
    save_table(table, f"table4_{ctx.exp.effective_dataset}_{ctx.exp.effective_backbone}", ctx.tables_dir)
    return Page(text=describe_summary(table, ["ours: base", "ours: Dem-HEC"]), checked=["every number shown"],
                items=[("table4", table, (
        "One row per model: `clean` is the clean accuracy (%), each corruption's column its accuracy averaged over "
        "the severities evaluated here; the `ours:` rows are this run, the `paper:` rows Table 4 (the paper's Dem-HEC "
        "and the push-pull model of Ranabhat et al.). Where the setup says the profile substitutes the data or the "
        "model, compare directions, not values."))])


def comparison_status(results_dir: str | Path = "results") -> str:
    """One line: how many of the comparison's rows are measured, and what the others lack."""
    table = comparison_table(comparison_records(PROFILE, results_dir), "report", 0, PROFILE, results_dir)
    rows = table[table.adapt == "none"]
    missing = rows[rows.missing != ""]
    line = (f"the comparison at A.3 (profile {PROFILE!r}, read from {Path(results_dir).name}/cpu/a3/): "
            f"{len(rows) - len(missing)} of {len(rows)} models measured")
    if len(missing):
        line += "; not yet: " + ", ".join(f"{r.label} ({r.missing})" for r in missing.itertuples())
    return line + ". Nothing is computed here: scripts/comparison.py makes them."


def table3_plan(ctx: Any, methods: list[str]) -> str:
    """What showing Table 3 needs: the comparison's state in the ``cpu`` profile, else the missing
    baseline and Dem-HEC results (:meth:`~.notebook.NotebookContext.plan`)."""
    if ctx.exp.profile == "cpu":
        return comparison_status(ctx.exp.results_dir)
    return ctx.plan(["after", *(f"baseline:{m}" for m in methods)])


def table4_plan(ctx: Any) -> str:
    """What showing Table 4 needs (as :func:`table3_plan`)."""
    if ctx.exp.profile == "cpu":
        return comparison_status(ctx.exp.results_dir)
    return ctx.plan(["before", "after"])


# Notebook 14 (your own model): its parameters, besides the standard ones, and its evaluations.
YOUR_MODEL_PARAMETERS = ("profile", "backbone", "data_root", "weights", "suite", "corruptions", "severities", "seed",
                         "device", "results_dir", "figures_dir", "allow_train", "recompute", "download")
YOUR_MODEL_RUNS = {"base": ("before", None), "base + BN": ("before", "bn"), "base + TENT": ("before", "tent"),
                   "Dem-HEC": ("after", None), "Dem-HEC + BN": ("after", "bn"), "Dem-HEC + TENT": ("after", "tent")}


def start_your_model(params: dict[str, Any]) -> Any:
    """The first cell of the your-own-model page: display settings, its parameters validated
    (:func:`demhec.report.your_model_setup`; the entropy profile's ``entropy_corruption`` and
    ``entropy_severity`` against the suite) and a line saying what runs."""
    from ..corruptions import check_corruption, check_severity
    from ..report import your_model_setup
    from .notebook import display_settings

    display_settings()
    ctx = your_model_setup(**{k: params[k] for k in YOUR_MODEL_PARAMETERS})
    check_corruption(params["entropy_corruption"], ctx.suite)
    check_severity(params["entropy_severity"])
    print(ctx.note(), "| severities:", list(ctx.severities))
    return ctx


def your_model_page(ctx: Any) -> Page:
    """The model as the library sees it: its size, normalisation, classifier head (whose input is
    the embedding g(x) of the contrastive loss), natural stages, and what Dem-HEC freezes; the
    base model trained with the profile's recipe where ``weights`` gives none (``allow_train``)."""
    from .inputs import eval_data
    from .model_cache import base_model

    test = eval_data(ctx.exp)
    model = base_model(ctx.exp, len(test.classes))
    return Page("\n".join([
        f"{model.arch}: {sum(p.numel() for p in model.parameters()):,} parameters, {len(test)} evaluation images, "
        f"{len(test.classes)} classes",
        f"normalisation: mean {[round(v, 4) for v in model.mean.tolist()]} std {[round(v, 4) for v in model.std.tolist()]}",
        f"head: {model.head_name} ({model.feature_dim} -> {model.num_classes})",
        f"stages: {', '.join(model.stages)}",
        f"Dem-HEC freeze={ctx.exp.demhec_config.freeze!r}: the stem and first stage ({model.stages[0]}, "
        f"{model.stages[1]}) stay fixed"]))


def your_model_entropy_page(ctx: Any, corruption: str, severity: int) -> Page:
    """Layer-wise entropy (eq. 4) of clean against ``corruption`` at ``severity`` images, before
    and after Dem-HEC: one figure per phase and each stage's corrupted-minus-clean gap, checked
    against the result files (the last stage's gap after Dem-HEC recounted image by image)."""
    from .. import plots
    from .checks import check_entropy_shown, recount_gap
    from .pipeline import entropy_result
    from .prose import describe_entropy
    from .tables import entropy_summary

    e = ctx.exp
    where = f"{plots.pretty_name(e.effective_backbone)} on {plots.pretty_name(e.effective_dataset)}, {ctx.suite} suite"
    records = {phase: entropy_result(e, phase, corruption, severity, ctx.suite) for phase in ("before", "after")}
    items: list[tuple[str, Any, str]] = []
    for phase, rec in records.items():
        fig = plots.entropy_figure(rec["metrics"]["clean"], rec["metrics"]["corrupted"],
                                   title=f"{where}, {plots.pretty_name(corruption)} S{severity}: {phase} Dem-HEC")
        items.append((f"yourmodel_entropy_{phase}_{e.effective_dataset}_{e.model_key}", fig,
                      f"{phase.capitalize()} Dem-HEC: one violin per stage, shallow to deep, the entropy of each image's "
                      "activations at that stage, clean (left half) against corrupted (right half)."))
    entropy = pd.concat([entropy_summary(rec).assign(phase=phase) for phase, rec in records.items()], ignore_index=True)
    check_entropy_shown(entropy, records)  # the shown means are the files'
    last = entropy[entropy.phase == "after"].iloc[-1]
    what = f"the gap after Dem-HEC at {last.layer or 'the logits'}"
    check_number(last.gap, recount_gap(records["after"], last.layer), what)
    save_table(entropy, f"yourmodel_entropy_{e.effective_dataset}_{e.model_key}", ctx.tables_dir)
    items.append(("gaps", entropy.pivot(index="layer", columns="phase", values="gap").loc[list(entropy.layer.unique())],
                  "`gap` is the mean entropy of corrupted minus clean images at each stage (nats); a larger gap means "
                  "the corruption moves that stage's activations further from the clean ones. Compare the two columns "
                  "stage by stage; the sentence above reads them."))
    return Page(describe_entropy(entropy), items, checked=[what])


def your_model_robustness_page(ctx: Any) -> Page:
    """The base and Dem-HEC models, each as it is, with BatchNorm statistics adaptation and with
    TENT, on the same corrupted sets: accuracy, mCE and calibration at the highest severity,
    accuracy per corruption, and the curves; every clean accuracy recounted from its file."""
    from .. import plots
    from ..report import per_corruption_table, robustness_summary

    e, top = ctx.exp, max(ctx.severities)
    records = {label: robustness_result(e, phase, ctx.suite, ctx.corruptions, ctx.severities, adapt=adapt)
               for label, (phase, adapt) in YOUR_MODEL_RUNS.items()}
    summary = robustness_summary(records, reference="base", severity=top)
    for row in summary.itertuples():  # each clean accuracy shown, recounted from its file's correct-image counts
        check_number(row.clean, recount(records[row.label]), f"the clean accuracy of {row.label}")
    save_table(summary, f"yourmodel_summary_{e.effective_dataset}_{e.model_key}", ctx.tables_dir)
    per = per_corruption_table(records)
    save_table(per.reset_index(names="corruption"), f"yourmodel_per_corruption_{e.effective_dataset}_{e.model_key}",
               ctx.tables_dir)
    long = pd.concat([result_table(rec).assign(method=label) for label, rec in records.items()], ignore_index=True)
    s = summary.set_index("label")
    noise = f"noise_s{top}"
    text = (f"Dem-HEC against the base: clean {s.loc['Dem-HEC', 'd_clean']:+.2f}, noise S{top} mean "
            f"{s.loc['Dem-HEC', 'd_' + noise]:+.2f}, all corruptions at S{top} {s.loc['Dem-HEC', f'd_all_s{top}']:+.2f} "
            f"points. Highest noise S{top} mean: {s[noise].idxmax()} ({s[noise].max():.2f}%); lowest mCE: "
            f"{s.mce.idxmin()} ({s.mce.min():.2f}).")
    return Page(text, checked=["the clean accuracy of every row"], items=[
        ("summary", summary.set_index("label"),
         f"Accuracies in %, `d_*` their change from the base model in points; `noise_s{top}` is the mean over Gaussian, "
         f"shot and impulse noise at S{top}, `all_s{top}` over every corruption there, `all_cells` over every corruption "
         "and severity. `mce` is the mean corruption error with the base model as the reference (the base scores 100; "
         "lower is better), `ece_*` the expected calibration error in % (15 bins; lower is better), `relative_cost` the "
         "evaluation's wall time over a plain one."),
        ("per_corruption", per,
         "Accuracy (%) per corruption, averaged over the severities evaluated, for each model and adaptation; the first "
         "row is the clean set (adapted too, where a column adapts)."),
        (f"yourmodel_robustness_{e.effective_dataset}_{e.model_key}", plots.robustness_figure(long, by="method"),
         "Accuracy against severity, one panel per corruption, one line per model and adaptation; each line starts at "
         "its clean accuracy. Lines above the base model's are gains; in the smoke and demo profiles the model and data "
         "are small stand-ins, so the lines check the pipeline, not the method.")])
