"""The project's conclusions, built from all committed evidence, each saying what it rests on.

A finding answers one question (does Dem-HEC help, does it beat the plain fine-tune, Gaussian-noise
augmentation, test-time adaptation, the paper's compared methods, and which configuration to set)
from the best evidence the results folder holds, by a stated precedence:

1. the paper's schedule (A.3: 20 epochs) over a short budget (the CPU reproduction's 150 steps);
2. more fine-tuning seeds over fewer;
3. the report half of the evaluation split (never used for a choice) over the whole split;
4. images the project never saw over images it reused (no such evidence is committed: an outside
   check of the committed checkpoints would rank first).

The sentence of a finding gives the numbers of its best evidence; lower-ranked evidence on the same
question is listed beside it (``also``), so a reader sees where budgets disagree instead of two
pages saying different things: the configuration the selection rule picks at 150 steps is listed
beside the one it picks at the paper's schedule, not offered as a second recommendation. The
README's summary, the notebooks' closing sentences (:func:`.cpu_pages.findings_page`) and the
site's front page are rendered from :func:`findings`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..evaluation import paired_difference
from .halves import unpack_outcomes

__all__ = ["Evidence", "Finding", "PRECEDENCE", "evidence_sources", "findings", "findings_table", "headline"]

NOISE = ("gaussian_noise", "shot_noise", "impulse_noise")
PRECEDENCE = ("the paper's schedule (A.3) over a 150-step budget", "more seeds over fewer",
              "the report half over the whole split", "images never seen over reused ones")


@dataclass
class Evidence:
    """One body of results on one half: a label, what ranks it, and per run its records by seed."""

    label: str
    budget: str  # "A.3" or "150 steps"
    half: str  # "report" or "whole split"
    runs: dict[str, dict[int, dict]] = field(default_factory=dict)  # run -> seed -> record
    files: list[str] = field(default_factory=list)

    def seeds(self, *runs: str) -> list[int]:
        """The fine-tuning seeds all of ``runs`` have; a base (and its test-time adaptation) is one
        model whatever the seed, so it pairs with every seed of a fine-tune."""
        tuned = [r for r in runs if not r.startswith("base")] or list(runs)
        return sorted(set.intersection(*(set(self.runs.get(r, {})) for r in tuned)))

    def record(self, run: str, seed: int) -> dict:
        return self.runs[run][0 if run.startswith("base") else seed]

    def rank(self, *runs: str) -> tuple:
        return (self.budget == "A.3", len(self.seeds(*runs)), self.half == "report")

    def has(self, *runs: str) -> bool:
        return all(self.runs.get(r) for r in runs)


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def _cells_of(record: dict, metric: str) -> list[tuple[str, int]]:
    if metric == "clean":
        return [("clean", 0)]
    rows = [r for r in record["metrics"]["table"] if r["corruption"] != "clean" and int(r["severity"]) == 5]
    return [(r["corruption"], 5) for r in rows if metric != "noise_s5" or r["corruption"] in NOISE]


def _accuracy(record: dict, metric: str) -> float:
    rows = {(r["corruption"], int(r["severity"])): r["accuracy"] for r in record["metrics"]["table"]}
    return float(np.mean([rows[c] for c in _cells_of(record, metric)]))


def _difference(a: dict, b: dict, metric: str) -> tuple[float, float]:
    """``b`` minus ``a`` on ``metric`` (points) and its standard error paired over images (NaN
    without per-image outcomes)."""
    cells = _cells_of(a, metric)
    if isinstance(a["metrics"].get("correct"), dict) and isinstance(b["metrics"].get("correct"), dict):
        def out(rec: dict) -> np.ndarray:
            n = int(rec["metrics"]["n"])
            return np.stack([unpack_outcomes(rec["metrics"]["correct"][f"{c}/{s}"], n) for c, s in cells], 1)

        p = paired_difference(out(a), out(b))
        return p["diff"], p["se"]
    return _accuracy(b, metric) - _accuracy(a, metric), math.nan


def _halves_runs(folder: Path, names: dict[str, str], seeds: Sequence[int], suffix: str = "") -> tuple[dict, list]:
    runs, files = {}, []
    for run, tag in names.items():
        for seed in seeds:
            path = folder / f"{tag}{suffix}{'' if seed == 0 else f'_seed{seed}'}_report.json"
            if path.is_file():
                runs.setdefault(run, {})[seed] = _read(path)
                files.append(path.as_posix())
    return runs, files


def evidence_sources(results: str | Path = "results") -> list[Evidence]:
    """Every committed body of evidence the findings can rest on."""
    results = Path(results)
    out = []
    # The comparison at A.3 on the CPU (one seed so far), and on the GPU at three seeds (trained and
    # scored there, on corrupted sets it made itself: each body pairs its own runs only), with
    # test-time adaptation per half.
    names = {"base": "before", "demhec": "demhec", "plain": "plain", "gaussian_aug": "gaussian_aug",
             "random_noise": "random_noise"}
    for home, label, seeds in (("cpu/a3", "CPU, A.3 (7,020 steps), the comparison", [0]),
                               ("gpu/a3", "GPU, A.3 (7,020 steps, bf16), the comparison", [0, 1, 2])):
        folder = results / home / "cifar10_jpeg" / "resnet20" / "halves"
        runs, files = _halves_runs(folder, names, seeds, "_cifar-c_all")
        for adapt in ("bn", "tent"):
            more, f = _halves_runs(folder, {f"base+{adapt}": "before", f"demhec+{adapt}": "demhec"}, seeds,
                                   f"_{adapt}_cifar-c")
            runs.update(more)
            files += f
        out.append(Evidence(label, "A.3", "report", runs, files))
    cpu_a3 = out[0]
    gpu = results / "gpu" / "cpu_base" / "cifar10_jpeg" / "resnet20" / "halves"
    runs, files = _halves_runs(gpu, {"base": "before", "demhec": "after", "plain": "after_plain",
                                     "gaussian_aug": "after_gaussian_aug"}, [0], "_cifar-c")
    out.append(Evidence("GPU, A.3 (7,020 steps, bf16), from the CPU base", "A.3", "report", runs, files))
    if runs.get("demhec"):
        # Until the CPU's own Dem-HEC run at A.3 lands: the GPU's beside the CPU's other A.3 runs.
        # One base and the same report-half images (so the differences pair image by image), two
        # devices (bf16 against float32). Coming after the single-device bodies, it answers only
        # where none of equal rank can (the sort that ranks evidence keeps ties in this order).
        mixed = {k: v for k, v in cpu_a3.runs.items() if not k.startswith("demhec")}
        mixed["demhec"] = runs["demhec"]
        gpu_file = [f for f in files if "/after_cifar-c" in f]
        out.append(Evidence("A.3 (7,020 steps): Dem-HEC on the GPU (bf16), the other run on the CPU, one base",
                            "A.3", "report", mixed, cpu_a3.files + gpu_file))
    cpu = results / "cpu" / "cifar10_jpeg" / "resnet20"
    names = {"base": "before", "demhec": "after", "plain": "after_plain", "gaussian_aug": "after_gaussian_aug",
             "random_noise": "after_random_noise"}
    runs, files = _halves_runs(cpu / "halves", names, [0, 1, 2], "_cifar-c")
    out.append(Evidence("CPU, 150 steps", "150 steps", "report", runs, files))
    whole = {run: {0: _read(cpu / f"{tag}_cifar-c.json")} for run, tag in
             {"base": "before", "demhec": "after", "base+bn": "before_bn", "base+tent": "before_tent",
              "demhec+tent": "after_tent", "demhec+bn": "after_bn"}.items() if (cpu / f"{tag}_cifar-c.json").is_file()}
    out.append(Evidence("CPU, 150 steps, test-time adaptation", "150 steps", "whole split", whole,
                        [(cpu / f"{t}_cifar-c.json").as_posix() for t in ("before_tent", "after_tent")]))
    return out


@dataclass
class Finding:
    question: str
    answer: str
    evidence: str  # the label of the evidence the answer rests on, and its rank
    files: list[str]
    also: list[str] = field(default_factory=list)  # lower-ranked evidence on the same question
    key: str = ""  # which question: "<run> vs <ref>", "what to set", "compared methods" or "pushpull combination"


def _against(ev: Evidence, run: str, ref: str, metrics: Sequence[str]) -> str:
    """``run`` minus ``ref`` on each metric: mean over the seeds both have, with the paired standard
    error of one seed or the spread over seeds."""
    seeds = ev.seeds(run, ref)
    parts = []
    for m in metrics:
        diffs = [_difference(ev.record(ref, s), ev.record(run, s), m) for s in seeds]
        mean = float(np.mean([d for d, _ in diffs]))
        spread = (f" ± {diffs[0][1]:.2f}" if len(seeds) == 1 and math.isfinite(diffs[0][1])
                  else f" (sd {np.std([d for d, _ in diffs], ddof=1):.2f} over {len(seeds)} seeds)" if len(seeds) > 1 else "")
        parts.append(f"{_METRICS[m]} {mean:+.2f}{spread}")
    return ", ".join(parts)


_METRICS = {"clean": "clean", "noise_s5": "noise S5 mean", "all_s5": "S5 mean over every corruption scored"}


def _rank_text(ev: Evidence, *runs: str) -> str:
    seeds = len(ev.seeds(*runs))
    return f"{ev.label}; {seeds} seed{'s' if seeds > 1 else ''}, {ev.half}"


def _question(sources: list[Evidence], question: str, run: str, ref: str, what: Callable[[str], str],
              metrics: Sequence[str] = ("clean", "noise_s5")) -> Finding | None:
    usable = sorted((e for e in sources if e.has(run, ref) and e.seeds(run, ref)), key=lambda e: e.rank(run, ref),
                    reverse=True)
    if not usable:
        return None
    best, rest = usable[0], usable[1:]
    files = [f for f in best.files if f"/{run}" in f or f"_{run}" in f or "before" in f] or best.files
    answer = _against(best, run, ref, metrics)
    # A body holding the very records of the best one (the GPU's Dem-HEC against the one base) adds nothing.
    also = [f"{_rank_text(e, run, ref)}: {d}" for e in rest if (d := _against(e, run, ref, metrics)) != answer]
    return Finding(question, what(answer), _rank_text(best, run, ref), files, also, key=f"{run} vs {ref}")


QUESTIONS: list[tuple[str, str, str, Callable[[str], str]]] = [
    ("Does Dem-HEC (the paper's config) make the base more robust, and at what clean cost?", "demhec", "base",
     lambda d: f"Dem-HEC against its base: {d} points."),
    ("Does it beat the plain fine-tune of the same schedule (clean cross-entropy only)?", "demhec", "plain",
     lambda d: f"Dem-HEC minus the plain fine-tune: {d} points."),
    ("Is it the entropy ascent that helps (against noise of the same size, no ascent)?", "demhec", "random_noise",
     lambda d: f"Dem-HEC minus the random-noise control: {d} points."),
    ("Does it beat Gaussian-noise augmentation of the same schedule?", "demhec", "gaussian_aug",
     lambda d: f"Dem-HEC minus Gaussian-noise augmentation: {d} points."),
    ("Does it beat TENT on the untouched base (no training)?", "demhec", "base+tent",
     lambda d: f"Dem-HEC minus TENT on the base: {d} points."),
    ("Does TENT on top of Dem-HEC add to it?", "demhec+tent", "demhec",
     lambda d: f"Dem-HEC + TENT minus Dem-HEC: {d} points."),
]


COMPARISON_EVIDENCE = "CPU, A.3 (7,020 steps), the comparison; 1 seed, report"
WHAT_TO_SET = "Which configuration should a user set (the selection rule, chosen on the selection half)?"


def _choices(results: Path) -> list[tuple[tuple, str, str, list[str]]]:
    """Each body of evidence on which the selection rule (:data:`.selection.CHOICE_RULE`, applied
    on the selection half) chose a configuration: (rank as :meth:`Evidence.rank`, its label, the
    choice and its report-half numbers in words, the files read). The GPU run at A.3 chooses
    among the configurations it fine-tuned; the CPU study's choice at 150 steps is its recorded
    one (:func:`.selection.record_choice`), reported over its seeds."""
    from .gpu import GPU_A_RUNS
    from .profiles import Experiment
    from .runs import CONTROL_RUNS, control_of, get
    from .selection import choice_path, half_summary, recommended_halves, select_run
    from .study import existing_halves
    from .verdict import describe_targets, recommendation_verdict, recommended_summary

    out = []
    gpu = Experiment(profile="gpu", dataset="cifar10", backbone="resnet20", results_dir=str(results), allow_train=False)
    base, got = existing_halves(gpu, GPU_A_RUNS)
    if base is not None and ("demhec", 0) in got:
        choice = select_run(half_summary(base, got, "selection"))
        row = half_summary(base, got, "report").set_index("run").loc[choice["run"]]
        text = (f"{get(choice['run']).label}, picked on the selection half ({choice['rule']}) among "
                f"{', '.join(choice['candidates'])}; on the report half, against its base: "
                f"{describe_targets(row.d_clean, row.d_noise_s5)} (paired standard errors {row.se_clean:.2f} "
                f"and {row.se_noise_s5:.2f}).")
        out.append(((True, 1, True), "GPU, A.3 (7,020 steps, bf16), from the CPU base; 1 seed, report", text,
                    [(gpu.cell_dir / "halves").as_posix()]))
    cpu = Experiment(profile="cpu", dataset="cifar10", backbone="resnet20", results_dir=str(results), allow_train=False)
    recorded, base, runs = recommended_halves(cpu, (0, 1, 2))
    if recorded is not None and base is not None and (recorded["metrics"]["run"], 0) in runs:
        run = recorded["metrics"]["run"]
        verdict = recommendation_verdict(recommended_summary(base, runs, run, "report"), run,
                                         [control_of(c, run) for c in CONTROL_RUNS])
        n = len(verdict["seeds"])
        text = (f"{get(run).label}, the recorded choice at that budget ({recorded['metrics']['rule']}, among "
                f"{', '.join(recorded['metrics']['candidates'])}); on the report half, mean of {n} seed{'s' * (n > 1)}, "
                f"against its base: {describe_targets(verdict['d_clean'], verdict['d_noise_s5'])}.")
        out.append(((False, n, True), f"CPU, 150 steps; {n} seed{'s' * (n > 1)}, report", text,
                    [choice_path(cpu).as_posix()]))
    return sorted(out, key=lambda c: c[0], reverse=True)


def findings(results: str | Path = "results") -> list[Finding]:
    """Each question's answer from its best evidence (see the module's precedence)."""
    sources = evidence_sources(results)
    out = [f for q, run, ref, what in QUESTIONS if (f := _question(sources, q, run, ref, what)) is not None]
    choices = _choices(Path(results))
    if choices:
        (_, label, text, files), *rest = choices
        out.append(Finding(WHAT_TO_SET, text, label, files, [f"{lab}: {t}" for _, lab, t, _ in rest], key="what to set"))
    got = _comparison(results)
    if got is not None:
        table, verdict = got
        compared = verdict[(verdict.kind == "compared") & (verdict.metric == "noise_s5")]
        wins = compared[compared.outcome == "Dem-HEC better"].against.tolist()
        losses = compared[compared.outcome == "Dem-HEC worse"].against.tolist()
        ties = compared[compared.outcome == "within the images' noise"].against.tolist()
        missing = table[(table.missing != "") & (table.adapt == "none")].label.tolist()
        out.append(Finding(
            "Which of the methods the paper compares with does Dem-HEC beat on the noise S5 mean?",
            f"Better than {len(wins)} ({', '.join(wins) or 'none'}), worse than {len(losses)} "
            f"({', '.join(losses) or 'none'}), tied with {len(ties)} ({', '.join(ties) or 'none'}), "
            f"of {len(compared)} measured"
            + (f"; not measured yet: {', '.join(missing)}." if missing else "."),
            COMPARISON_EVIDENCE, ["results/cpu/a3/"], key="compared methods"))
        out.append(_pushpull_combination(table, verdict))
    return out


def _pushpull_combination(table: pd.DataFrame, verdict: pd.DataFrame) -> Finding:
    """Dem-HEC on the push-pull model against both its parts (the push-pull base, and Dem-HEC on
    the plain ResNet-20), from the comparison's combination rows; until it is scored, what it lacks."""
    from .comparison import RUNS
    from .comparison_tables import combination_sentences

    label = RUNS["pushpull_demhec"].label
    said = combination_sentences(verdict).get(label)
    if said:
        answer = f"{label}, combination minus part: " + "; ".join(said) + "."
    else:
        row = table[(table.run == "pushpull_demhec") & (table.adapt == "none")]
        lacks = row.missing.iloc[0] if len(row) and row.missing.iloc[0] else "its parts are not both scored"
        answer = f"Not measured yet: {label} ({lacks})."
    return Finding("Does Dem-HEC on the push-pull model beat both its parts (the push-pull base, and Dem-HEC "
                   "on the ResNet-20)?", answer, COMPARISON_EVIDENCE, ["results/cpu/a3/"], key="pushpull combination")


def _comparison(results: str | Path) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The comparison at A.3 on the report half (seed 0): its table and its verdict, or None
    before Dem-HEC's row is scored."""
    from .comparison_tables import comparison_records, comparison_table, comparison_verdict

    records = comparison_records("a3", results)
    if ("demhec", 0) not in records:
        return None
    table = comparison_table(records, "report", 0, "a3", results)
    return table, comparison_verdict(records, table)


def headline(results: str | Path = "results") -> str | None:
    """The project's one verdict (:func:`.comparison_tables.comparison_headline` on the comparison
    at the paper's schedule), which the README, the site's front page and the Table 3 page print;
    None before the comparison has Dem-HEC's row."""
    from .comparison_tables import comparison_headline

    got = _comparison(results)
    if got is None:
        return None
    return comparison_headline(*got) + f" (Rests on: {COMPARISON_EVIDENCE}.)"


def findings_table(results: str | Path = "results") -> pd.DataFrame:
    """:func:`findings` as a table: question, answer, the evidence it rests on, and what
    lower-ranked evidence said."""
    return pd.DataFrame([{"question": f.question, "answer": f.answer, "rests on": f.evidence,
                          "lower-ranked evidence": "; ".join(f.also)} for f in findings(results)])
