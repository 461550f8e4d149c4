"""The verdicts of the selection protocol: whether a run beats its controls by more than the
images' noise, and whether the recommended configuration meets the targets, in numbers and
lines (the prose around them is :mod:`.prose`)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from .._common import DemHECError
from .checks import check_ablation_shown
from .runs import get
from .selection import CHOICE_RULE, halves_summary


def targets_met(d_clean: float, d_noise_s5: float, rule: dict[str, float] = CHOICE_RULE) -> tuple[bool, bool]:
    """Whether a change from the base model meets ``rule``'s targets: (clean within
    ``max_clean_cost`` points, noise S5 mean at least ``min_noise_gain`` points up)."""
    return bool(d_clean >= -rule["max_clean_cost"]), bool(d_noise_s5 >= rule["min_noise_gain"])


def describe_targets(d_clean: float, d_noise_s5: float, rule: dict[str, float] = CHOICE_RULE) -> str:
    """A change from the base model against ``rule``'s targets, in words: "clean -2.54 points
    (target: within 4 of the base: met), noise S5 mean +17.35 points (target: at least +10: met)"."""
    clean_ok, noise_ok = targets_met(d_clean, d_noise_s5, rule)
    return (f"clean {d_clean:+.2f} points (target: within {rule['max_clean_cost']:g} of the base: "
            f"{'met' if clean_ok else 'not met'}), noise S5 mean {d_noise_s5:+.2f} points (target: at least "
            f"+{rule['min_noise_gain']:g}: {'met' if noise_ok else 'not met'})")


def controls_verdict(summary: pd.DataFrame, run: str = "demhec",
                     controls: Sequence[str] = ("random_noise", "gaussian_aug", "plain"), z: float = 1.96) -> list[str]:
    """Plain-language lines from a :func:`.selection.halves_summary` (one half, ``reference`` = ``run``): the
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
    lines = [f"{get(run).label} on the {half} half: clean {said(r.d_clean, r.se_clean)} points, "
             f"noise S5 mean {said(r.d_noise_s5, r.se_noise_s5)} points from the base "
             f"(targets: clean >= -{cost:g}, noise >= +{gain:g}: {'met' if r.d_clean >= -cost and r.d_noise_s5 >= gain else 'not met'})."]
    for c in controls:
        if c not in m.index:
            lines.append(f"{get(c).label}: not run on the {half} half yet.")
            continue
        k = m.loc[c]
        # r_* is control minus run: the run's advantage is its negative
        adv, adv_se, cl, cl_se = 0.0 - k.r_noise_s5, k.r_se_noise_s5, 0.0 - k.r_clean, k.r_se_clean
        verdict = ("ahead by at least 3 points" if adv - z * adv_se >= 3 else
                   "ahead, but by less than 3 points or not beyond the images' noise" if adv > 0 else "not ahead")
        lines.append(f"{run} minus {get(c).label}: noise S5 {said(adv, adv_se)}, clean {said(cl, cl_se)} "
                     f"points: {verdict} on noise.")
    return lines


def recommended_summary(base: dict[str, dict], runs: dict[tuple[str, int], dict[str, dict]], run: str,
                        half: str = "report") -> pd.DataFrame:
    """:func:`.selection.halves_summary` of the recommended ``run`` and its controls on ``half``, seed by
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
    """The recommended configuration's acceptance on a :func:`recommended_summary` of the report half: the means over
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
