"""Findings in words, computed from the numbers shown: every sentence a notebook or the README
prints about a result is built here from that result, so no claim outruns its numbers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from .profiles import Experiment
from .runs import get
from .tables import gain_table


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
    """Whether the text around Figures 3-4 holds in ``summary`` (:func:`.tables.entropy_summary` rows
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
            out.append(f"{get(run).label} ({vals}{f'; mean of {n} seeds' if n > 1 else ''})")
    return "; ".join(out)


def describe_ranking(ranked: pd.DataFrame, runs: Sequence[str], z: float = 1.96) -> list[str]:
    """Which discriminating runs move the clean cost, in words, from :func:`.selection.ranked_runs`: which of ``runs`` move the
    paper config's clean cost by more than ``z`` paired standard errors of the half's images (and
    by how much, with the spread over seeds where there are several), and which do not; best
    first. A run absent from ``ranked`` is named as not scored."""
    rows = ranked.set_index("run")
    moved, within = [], []
    for run in (r for r in rows.index if r in runs):
        r = rows.loc[run]
        spread = f", sd {r.sd_clean:.2f} over {int(r.seeds)} seeds" if r.seeds > 1 else ", 1 seed"
        text = (f"{get(run).label} (`{run}`): {r.r_clean:+.2f} ± {r.r_se_clean:.2f} clean{spread}; noise S5 "
                f"{r.r_noise_s5:+.2f} against the paper config")
        (moved if abs(r.r_clean) > z * r.r_se_clean else within).append(text)
    lines = [f"Moves the clean cost (by more than {z:g} paired standard errors): " + ("; ".join(moved) or "none") + ".",
             "Within the images' noise: " + ("; ".join(within) or "none") + "."]
    missing = [r for r in runs if r not in rows.index]
    if missing:
        lines.append(f"No accuracy yet (not run, or diverged): {', '.join(f'`{r}`' for r in missing)}.")
    return lines


def describe_divergences(records: dict[str, dict]) -> list[str]:
    """One line per run whose fine-tune diverged (:func:`.study.existing_divergences`): at
    which step, what was non-finite and at which learning rate; such a run has no accuracy, and
    a table that left it out would hide the outcome."""
    return [f"{get(run).label} (`{run}`): the fine-tune diverged at step {rec['metrics']['step']} "
            f"({rec['metrics']['what']}) with lr {rec['config']['model']['lr']:g}; no accuracy to report."
            for run, rec in records.items()]


def _value(field: str, value: Any) -> str:
    if field in ("eps", "step_size"):
        return f"{value * 255:g}/255"
    if field == "freeze":
        return {"after:2": "the later stages frozen, the stem and the first two stages train",
                "auto": "the stem and the first stage frozen"}.get(str(value), str(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _setting(field: str, value: Any) -> str:
    return f"freezing: {_value(field, value)}" if field == "freeze" else f"{field} = {_value(field, value)}"


def config_changes(exp: Experiment, run: str) -> list[str]:
    """What ``run`` (a key of :data:`.runs.RUNS`) sets differently from the profile's Dem-HEC config (the
    paper's), in words, each with the paper config's value beside it."""
    cfg, paper = get(run).config(exp.demhec_config), exp.demhec_config
    return [f"{_setting(f, getattr(cfg, f))} (paper config: {_value(f, getattr(paper, f))})"
            for f in cfg.__dataclass_fields__ if f != "seed" and getattr(cfg, f) != getattr(paper, f)]


_CONTROL_NAMES = {"plain": "plain fine-tune", "random_noise": "random-noise", "gaussian_aug": "Gaussian-augmentation"}


def describe_recommendation(exp: Experiment, verdict: dict, step_cost: float,
                             name: str = "the recommended run") -> list[str]:
    """The plain-language conclusion of the selection protocol, built from :func:`.verdict.recommendation_verdict`'s
    numbers: what to set, what it costs and gains, how it compares with its controls (``name``:
    how the lines call the run), and whether the targets hold; no claim that the numbers do not
    carry."""
    run, n = verdict["run"], len(verdict["seeds"])

    def sd(v: float, k: int = n) -> str:
        return f" (sd {v:.2f} over {k} seeds)" if k > 1 else ""

    lines = [f"What to set (chosen on the selection half): {get(run).label}; against the paper's config: "
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
                     f"{name} is {v['advantage']:+.2f} points on noise S5{sd(v['sd'], len(v['seeds']))} and "
                     f"{v['clean_advantage']:+.2f} on clean ({'at least' if v['met'] else 'less than'} 3 points ahead on noise).")
    targets = [("clean within 4 points of the base", verdict["clean_met"]),
               ("noise S5 at least 10 points above the base", verdict["noise_met"]),
               ("at least 3 points above each control on noise", verdict["controls_met"])]
    lines.append("Targets: " + "; ".join(f"{t}: {'met' if ok else 'not met'}" for t, ok in targets) + ". "
                 + ("All three hold." if verdict["all_met"] else
                    "Not every target holds: this is the configuration the selection rule picks among those tried "
                    "within the paper's loss at this budget, not one that reaches the targets."))
    return lines


def describe_suites(verdicts: dict[str, dict], name: str = "the recommended run") -> list[str]:
    """One line per suite after the first of ``verdicts`` (suite -> :func:`.verdict.recommendation_verdict`
    of the same run, the first suite being the acceptance's): how the recommended run's noise gain
    and its advantage over each control read there, beside the first suite's, with each suite's
    base accuracy on the noises at S5 (the suites' severities differ in strength); ``name``: how the
    lines call the run."""
    (first, ref), *others = verdicts.items()
    lines = []
    for suite, v in others:
        n = len(v["seeds"])
        sd = f" (sd {v['d_noise_s5_sd']:.2f} over {n} seeds)" if n > 1 else ""
        done = {c: a for c, a in v["controls"].items() if a is not None}
        versus = ", ".join(f"{_CONTROL_NAMES[c.split('@')[0]]} {a['advantage']:+.2f} (that control gains "
                           f"{v['d_noise_s5'] - a['advantage']:+.2f})" for c, a in done.items())
        lines.append(f"In the `{suite}` suite (the base gets {v['base_noise_s5']:.2f}% on the three noises at S5 "
                     f"there, {ref['base_noise_s5']:.2f}% in `{first}`), {name} changes noise S5 by "
                     f"{v['d_noise_s5']:+.2f} points{sd} (against {ref['d_noise_s5']:+.2f} in `{first}`) and clean by "
                     f"{v['d_clean']:+.2f}; its advantage on noise S5 over each control: {versus or 'no control scored'}; "
                     f"targets there: noise {'met' if v['noise_met'] else 'not met'}, controls "
                     f"{'met' if v['controls_met'] else 'not met'}.")
    return lines
