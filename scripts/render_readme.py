"""Render the generated blocks of README.md and docs/*.md from the committed result JSONs.

Each block sits between ``<!-- BEGIN generated:NAME -->`` and ``<!-- END generated:NAME -->`` in
README.md or a page of docs/ and is produced by the function of that name below (:data:`BLOCKS`)
from ``results/`` (the ``notebooks`` block from the notebooks on disk, ``open-choices`` from the
table of docs/compared_methods.md), so no number in it is typed
by hand. ``--check`` exits non-zero when a block differs from what the results give
(``tests/test_readme.py`` runs it); without it the blocks are rewritten in place::

    .venv/bin/python scripts/render_readme.py            # after committing new results
    .venv/bin/python scripts/render_readme.py --check    # exit 1 while a block is stale
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from demhec import experiments as ex  # noqa: E402
from demhec.experiments.comparison import (  # noqa: E402
    COMPARISON,
    CPU_SEEDS,
    GPU_SEEDS,
    GPU_TWIN,
    PROFILE,
    checkpoint_path,
    comparison_experiment,
    is_fully_scored,
    is_scored,
)
from demhec.experiments.comparison_tables import (  # noqa: E402
    comparison_records,
    comparison_table,
    comparison_verdict,
    corrupted_sets_note,
    describe_comparison,
    seed_table,
)
from demhec.experiments.findings import PRECEDENCE, findings, headline  # noqa: E402
from demhec.results import markdown_table, read_result  # noqa: E402

BLOCK = re.compile(r"(<!-- BEGIN generated:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- END generated:(?P=name) -->)", re.S)


def _signed(v: float) -> str:
    return "--" if v != v else f"{v:+.2f}"


def gpu(results: Path) -> str:
    """The GPU script's runs (A.3's 7,020 steps) beside the paper's Table 1 ResNet-20 column, the
    target verdicts of the paper's config, and the measured step times."""
    records = ex.gpu.gpu_records(results)
    if not records:
        return "No GPU results are committed yet (`results/gpu/` is empty).\n"
    summary = ex.gpu.gpu_summary(records)
    table = pd.DataFrame({
        "source": summary.source, "run": summary.label,
        "clean": [f"{c:.2f} ({_signed(d)})" if c == c else "--" for c, d in zip(summary.clean, summary.d_clean)],
        "noise S5 mean": [f"{c:.2f} ({_signed(d)})" for c, d in zip(summary.noise_s5, summary.d_noise_s5)],
        "all 7, S5 mean": [f"{c:.2f} ({_signed(d)})" for c, d in zip(summary.all_s5, summary.d_all_s5)]})
    lines = [markdown_table(table), ""]
    for row in summary[(summary.run == "demhec") & summary.source.str.startswith("GPU")].itertuples():
        text = (f"- {row.source}, the paper's config against its base: clean {row.d_clean:+.2f} points "
                f"(target within 4: {'met' if row.d_clean >= -4 else 'not met'}), noise S5 mean "
                f"{row.d_noise_s5:+.2f} (target >= +10: {'met' if row.d_noise_s5 >= 10 else 'not met'})")
        plain = summary[(summary.source == row.source) & (summary.run == "plain")]
        if len(plain):
            p = plain.iloc[0]
            text += (f"; against the plain fine-tune of the same schedule: clean {row.clean - p.clean:+.2f}, "
                     f"noise S5 mean {row.noise_s5 - p.noise_s5:+.2f}")
        lines.append(text + ".")
    calls = sorted((results / "gpu" / "calls").glob("*/run.json"), key=lambda p: int(p.parent.name))
    for path in calls:
        run = json.loads(path.read_text())
        jobs, m = run["metrics"]["jobs"], run["metrics"]
        bench = jobs.get("bench", {})
        made = Counter(_how_made(j["trained"]) for j in jobs.values() if "trained" in j)
        scored = sum(j.get("scored") == "here" for j in jobs.values())
        done = sum(j["state"] == "done" for j in jobs.values())
        text = (f"- Call {path.parent.name} (`{path.parent.relative_to(results.parent)}`): {m['device_name']}, "
                f"torch {run['versions']['torch']}, commit {run['git_commit'][:7]}; {done} of {len(jobs)} jobs done "
                f"in {m['elapsed_s']:.0f} s")
        if bench.get("plain_step_ms"):
            text += (f"; a plain step {min(bench['plain_step_ms']):.1f} ms and a Dem-HEC step (T_he 5) "
                     f"{min(bench['demhec_step_ms']):.1f} ms alone on the GPU (ratio {bench['ratio_the5']:.2f})")
        if made:
            text += "; models: " + ", ".join(f"{n} {how}" for how, n in sorted(made.items()))
        if scored:
            text += f"; {scored} model{'s' if scored > 1 else ''} scored on the 15 corruptions at S1-S5"
        lines.append(text + ".")
    return "\n".join(lines) + "\n"


def _seeds_block(results: Path, profile: str, seeds: tuple[int, ...], none_scored: str, min_seeds: int = 1) -> str:
    """The comparison of ``profile`` at ``seeds``: per model, the seeds trained and scored (a base
    is trained once), then the seed table (:func:`seed_table`) of the models scored at
    ``min_seeds`` seeds or more, once there are any."""
    rows = []
    for run in COMPARISON:
        own = seeds if run.fine_tuned else seeds[:1]
        exps = [comparison_experiment(run, profile=profile, seed=s, results_dir=str(results)) for s in own]
        trained = sum(checkpoint_path(run, e).is_file() or is_scored(run, e) for e in exps)
        scored = sum(is_fully_scored(run, e) for e in exps)
        rows.append({"model": run.label, "seeds trained": f"{trained} of {len(own)}",
                     "seeds scored": f"{scored} of {len(own)}"})
    lines = [markdown_table(pd.DataFrame(rows)), ""]
    table = seed_table(profile, seeds, results)
    table = table[table.seeds >= min_seeds]
    if len(table):
        shown = table.copy()
        for c in shown.columns:
            if shown[c].dtype.kind == "f":
                shown[c] = shown[c].map(lambda v: "--" if v != v else f"{v:.2f}")
        note = "" if profile == PROFILE else f" {corrupted_sets_note(PROFILE, profile, results)}"
        lines += [f"On the report half, mean over the seeds scored (`*_sd`: spread over them; `vs_demhec_*`: "
                  f"Dem-HEC minus the row, paired per seed, over the `paired_seeds` at which Dem-HEC's own run is "
                  f"scored too).{note}", "", markdown_table(shown), ""]
    else:
        lines.append(none_scored)
    return "\n".join(lines) + "\n"


def gpu_comparison(results: Path) -> str:
    """The comparison trained on the GPU at three seeds (phases C and S) (:func:`_seeds_block`)."""
    profile = GPU_TWIN[PROFILE]
    return _seeds_block(results, profile, GPU_SEEDS, f"No model of `{profile}` is scored yet: "
                        "`scripts/gpu_reproduction.py --phases s` scores them on the device.")


def cpu_seeds(results: Path) -> str:
    """The CPU comparison at a second fine-tuning seed (:func:`_seeds_block`), as far as it is run."""
    return _seeds_block(results, PROFILE, CPU_SEEDS, "No model is scored at a second seed yet.", min_seeds=2)


def _how_made(trained: str) -> str:
    """How a GPU call's run.json says a model was made, as a call line counts it."""
    if trained == "here":
        return "trained here"
    if trained.startswith("here, resumed"):
        return "resumed from an earlier call's checkpoint"
    if trained.startswith("earlier call (scored"):
        return "scored by an earlier call (state dict left home)"
    return "loaded from an earlier call"


def _pm(v: float, se: float) -> str:
    return "--" if v != v else f"{v:+.2f} ± {se:.2f}"


def _cost(v: float) -> str:
    return "not measured" if v != v else f"{v:.2f}"


def _sd(v: float) -> str:
    return "--" if v != v else f"{v:.2f}"


def cpu_controls(results: Path) -> str:
    """The selection protocol at the CPU budget (150 steps): every run with halves results on the report half,
    means over its seeds, ranked by how much of the paper config's clean cost it gives back; the
    configuration chosen on the selection half; the controls' verdict; the price of T_he."""
    exp = ex.Experiment(profile="cpu", dataset="cifar10", backbone="resnet20", results_dir=str(results))
    runs = ["demhec", *[r for r in ex.runs.RUNS if r != "demhec"]]
    base, got = ex.study.existing_halves(exp, runs, (0, 1, 2))
    if base is None or ("demhec", 0) not in got:
        return "No CPU halves results of the paper's config are committed yet.\n"
    summary = ex.selection.half_summary(base, got, "report")
    report = ex.selection.ranked_runs(summary)
    cost = ex.selection.step_cost_ratios(results)
    table = pd.DataFrame({
        "run": [f"`{r}`" for r in report.run], "change": report.label, "seeds": report.seeds,
        "clean vs base": [_pm(d, se) for d, se in zip(report.d_clean, report.se_clean)],
        "clean sd over seeds": [_sd(v) for v in report.sd_clean],
        "clean vs paper config": [_signed(v) for v in report.r_clean],
        "noise S5 vs base": [_pm(d, se) for d, se in zip(report.d_noise_s5, report.se_noise_s5)],
        "noise sd over seeds": [_sd(v) for v in report.sd_noise_s5],
        "step cost (plain = 1)": [_cost(ex.selection.run_step_cost(exp, r, cost)) for r in report.run]})
    lines = [f"Report half ({int(base['report']['metrics']['n'])} images), cifar-c suite, means over each run's "
             "seeds; ± is the paired standard error over the half's images, \"sd over seeds\" the spread of the "
             "change between seeds (-- with one seed):", "", markdown_table(table), ""]
    lines += [f"- {line}" for line in ex.prose.describe_ranking(report, ex.runs.DISCRIMINATING)]
    strongest = ex.selection.strongest_path(exp)
    if strongest.exists():
        picked = read_result(strongest)["metrics"]["runs"]
        lines.append(f"- Picked to be repeated over seeds: {', '.join(f'`{r}`' for r in picked)}, the discriminating runs "
                     "that give back the most clean accuracy on the selection half at seed 0 (the seeds column says "
                     "how many seeds are scored).")
    seed0 = {k: v for k, v in got.items() if k[1] == 0}
    choice = ex.selection.select_run(ex.selection.half_summary(base, seed0, "selection"))
    rep = report.set_index("run").loc[choice["run"]]
    lines.append(f"- Chosen on the selection half at seed 0 ({choice['rule']}, among {len(choice['candidates'])} "
                 f"configuration{'s' if len(choice['candidates']) > 1 else ''} of the paper's loss): `{choice['run']}`; on the report half clean "
                 f"{_pm(rep.d_clean, rep.se_clean)}, noise S5 mean {_pm(rep.d_noise_s5, rep.se_noise_s5)} "
                 f"points from the base (mean of {int(rep.seeds)} seed{'s' if rep.seeds > 1 else ''}).")
    lines += [f"- {line}" for line in ex.verdict.controls_verdict(summary)]
    diverged = ex.study.existing_divergences(exp, list(ex.runs.CONTROLS))
    lines += [f"- {line}" for line in ex.prose.describe_divergences(diverged)]
    return "\n".join(lines) + "\n"


def cpu_recommended(results: Path) -> str:
    """The recommended configuration: the one recorded as chosen on the selection half, against its
    own controls on the report half (means over the seeds that exist, both suites), and the
    plain-language conclusion built from those numbers."""
    exp = ex.Experiment(profile="cpu", dataset="cifar10", backbone="resnet20", results_dir=str(results))
    read = {suite: ex.selection.recommended_halves(exp, (0, 1, 2), suite) for suite in ("cifar-c", "imagecorruptions")}
    choice, base, runs = read["cifar-c"]
    if choice is None or base is None or (choice["metrics"]["run"], 0) not in runs:
        return "No recommended configuration is scored yet (`scripts/cpu_reproduction.py --recommend`).\n"
    run = choice["metrics"]["run"]
    controls = [ex.runs.control_of(c, run) for c in ex.runs.CONTROL_RUNS]
    m = choice["metrics"]
    lines = [f"Recorded choice at the 150-step budget (`{ex.selection.choice_path(exp).relative_to(results.parent)}`): `{run}`, chosen on the "
             f"{choice['split']} half ({m['rule']}) among {', '.join(f'`{c}`' for c in m['candidates'])}.", ""]
    verdicts = {}
    for suite, (_, b, r) in read.items():
        if b is None or (run, 0) not in r:
            lines += [f"Not scored in the `{suite}` suite yet.", ""]
            continue
        summary = ex.verdict.recommended_summary(b, r, run, "report")
        rows = summary[summary.run != "base"].groupby(["run", "label"], sort=False)
        table = pd.DataFrame([{"run": f"`{k[0]}`", "change": k[1], "seeds": len(g),
                               "clean vs base": _signed(g.d_clean.mean()),
                               "noise S5 vs base": _signed(g.d_noise_s5.mean()),
                               "noise S5, control minus recommended": "--" if k[0] == run else _signed(g.r_noise_s5.mean())}
                              for k, g in rows])
        lines += [f"`{suite}` suite, report half ({int(b['report']['metrics']['n'])} images), means over the seeds:", "",
                  markdown_table(table), ""]
        verdicts[suite] = ex.verdict.recommendation_verdict(summary, run, controls)
    cost = ex.selection.run_step_cost(exp, run, ex.selection.step_cost_ratios(results))
    # The choice of the 150-step budget; what to set is the findings' answer (the paper's schedule
    # ranks above this budget), so its first line ("What to set") is not repeated here.
    name = "the 150-step choice"
    lines += [f"- {line}" for line in ex.prose.describe_recommendation(exp, verdicts["cifar-c"], cost, name=name)[1:]]
    lines += [f"- {line}" for line in ex.prose.describe_suites(verdicts, name=name)]
    return "\n".join(lines) + "\n"


def cpu_stage_times(results: Path) -> str:
    """The wall time of each stage of ``scripts/cpu_reproduction.py`` that recorded one."""
    exp = ex.Experiment(profile="cpu", dataset="cifar10", backbone="resnet20", results_dir=str(results))
    rows = ex.stage_times.stage_times(exp)
    if not rows:
        return "No stage times are recorded yet.\n"
    table = pd.DataFrame({"date": [r["date"] for r in rows], "stage": [r["stage"] for r in rows],
                          "wall time (s)": [f"{r['wall_s']:,.0f}" for r in rows],
                          "torch threads / cores": [f"{r['torch_threads']} / {r['cpu_count']}" for r in rows],
                          "load average": [f"{r['load_average_1min']:.1f}" for r in rows]})
    return ("Recorded by the script (`<cell>/stage_times/*.json`); the load average, taken when the stage ended, "
            "says how many jobs shared the cores:\n\n" + markdown_table(table) + "\n")


def guard_cost(results: Path) -> str:
    """What the corrupted-set check before scoring costs (``benchmarks/guard_cost.py``): its time
    per set against scoring one model per set, measured in one run."""
    path = results / "cpu" / "bench" / "guard_cost.json"
    if not path.is_file():
        return "- What the check costs is not measured yet (`benchmarks/guard_cost.py` measures it).\n"
    rec = read_result(path)
    m = rec["metrics"]
    return (f"- What the check costs (`benchmarks/guard_cost.py`, `{path.relative_to(results.parent).as_posix()}`, "
            f"one torch thread, commit {rec['git_commit'][:7]}): reading and hashing the {m['sets_guarded']} "
            f"cached sets of {m['images_per_set']:,} images takes {100 * m['ratio_guard_over_scoring_per_set']:.2f}% "
            f"of the time that scoring one ResNet-20 on the same sets takes, per set (medians of "
            f"{len(m['guard_s'])} rounds, the two timed in turn).\n")


def findings_block(results: Path) -> str:
    """The project's findings (:func:`demhec.experiments.findings.findings`): each question, its
    answer from the best evidence, what that evidence is, and what lower-ranked evidence said. The
    site's front page (``scripts/build_site.py``) shows the same sentences."""
    found = findings(results)
    if not found:
        return "No findings yet: no result files are committed.\n"
    verdict = headline(results)
    lines = ([f"**Verdict.** {verdict}", ""] if verdict else []) + [
        f"- **{f.question}** {f.answer} *Rests on: {f.evidence}.*" for f in found]
    lines.append(f"- Precedence of evidence: {'; '.join(PRECEDENCE)}. What lower-ranked evidence says on each "
                 f"question: [{EVIDENCE_PAGE}]({EVIDENCE_PAGE}#evidence-on-each-question).")
    return "\n".join(lines) + "\n"


EVIDENCE_PAGE = "docs/cpu_reproduction.md"


def evidence_block(results: Path) -> str:
    """Each finding's question with every body of evidence on it, the best first: what
    :func:`findings_block` keeps off the README."""
    found = findings(results)
    if not found:
        return "No findings yet: no result files are committed.\n"
    lines = []
    for f in found:
        lines.append(f"- **{f.question}**")
        lines.append(f"  - *{f.evidence}* (the README's answer): {f.answer}")
        lines += [f"  - {a.rstrip('.')}." for a in f.also]
    return "\n".join(lines) + "\n"


def _status(missing: str) -> str:
    """What a row without results lacks, without the step of a run in progress (which changes
    every checkpoint and lives in an uncommitted resume file)."""
    return ("model present, not scored yet" if missing == "not scored yet"
            else "not trained yet, or still training in `scripts/comparison.py`'s queues")


def comparison(results: Path) -> str:
    """The comparison with the methods of the paper's Tables 3-4 at A.3 as its result files stand:
    the measured rows on the report half, the verdict when Dem-HEC's own run is in, and which rows
    are still missing."""
    records = comparison_records("a3", results)
    table = comparison_table(records, "report", 0, "a3", results)
    measured = table[table.missing == ""]
    lines = []
    if len(measured):
        n = next(int(got[a]["report"]["metrics"]["n"]) for got in records.values() for a in got)

        def cell(row, m: str) -> str:
            v, d = row.get(m, float("nan")), row.get(f"d_{m}", float("nan"))
            return "--" if v != v else f"{v:.2f}" + ("" if d != d else f" ({d:+.2f})")

        def vs(row, m: str) -> str:
            v, se = row.get(f"vs_demhec_{m}", float("nan")), row.get(f"se_{m}", float("nan"))
            return "--" if v != v else f"{v:+.2f} ± {se:.2f}"

        # One row a model: its test-time-adapted versions are columns, so the front page stays short.
        adapted = {(r["run"], r["adapt"]): r for _, r in measured.iterrows()}

        def with_adapt(row, adapt: str) -> str:
            a = adapted.get((row["run"], adapt))
            return "--" if a is None else f"{a['clean']:.2f} / {a['noise_s5']:.2f}"

        rows = [r for _, r in measured[measured.adapt == "none"].iterrows()]
        df = pd.DataFrame({"model": [r["label"] for r in rows],
                           "clean": [cell(r, "clean") for r in rows],
                           "noise S5 mean": [cell(r, "noise_s5") for r in rows],
                           "all-15 S5 mean": [cell(r, "all15_s5") for r in rows],
                           "+ BN: clean / noise S5": [with_adapt(r, "bn") for r in rows],
                           "+ TENT: clean / noise S5": [with_adapt(r, "tent") for r in rows],
                           "Dem-HEC minus it, noise S5": [vs(r, "noise_s5") for r in rows],
                           "Dem-HEC minus it, all-15 S5": [vs(r, "all15_s5") for r in rows]})
        lines += [f"Report half ({n} images), seed 0, accuracy % (change from the base in points where the base is "
                  "scored); the fifteen corruptions at S1-S5; + BN and + TENT: the model with BatchNorm adaptation "
                  "or TENT at test time, on the paper's seven corruptions at S1/S3/S5; ± is the paired standard "
                  "error over the half's images (the ranked table with every column is on the Table 3 page, "
                  "[notebooks/executed/cpu/06_table3_baselines.ipynb](notebooks/executed/cpu/06_table3_baselines.ipynb)):",
                  "", markdown_table(df), ""]
    else:
        lines += ["No row of the comparison is scored yet.", ""]
    if ("demhec", 0) in records:
        verdict = comparison_verdict(records, table)
        lines += [f"- {ln.removeprefix('- ')}" for ln in describe_comparison(table, verdict).splitlines()[1:]
                  if not ln.startswith("Not measured yet")]
    else:
        lines.append("- No verdict yet: Dem-HEC's own run at A.3 is not scored, so no method is compared with it.")
    missing = table[table.missing != ""]
    # A scored model has a row per adaptation, a missing one a single row: count models, not rows.
    n_models = int((table.adapt == "none").sum())
    for status in dict.fromkeys(_status(m) for m in ("not scored yet", "not trained yet")):
        who = [r.label for r in missing.itertuples() if _status(r.missing) == status]
        if who:
            lines.append(f"- {status[0].upper()}{status[1:]} ({len(who)} of {n_models} models): {', '.join(who)}.")
    return "\n".join(lines) + "\n"


def open_choices(results: Path) -> str:
    """The settings the compared methods' papers leave open (or that could not be read) and our
    choice for each, one line per method, as the table of docs/compared_methods.md states them
    (its last column): that table is the one source, this block its summary on the front page."""
    rows = []
    for line in (ROOT / "docs" / "compared_methods.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("|") and len(cells) == 4 and cells[0] not in ("method", "---") and cells[3] != "none":
            rows.append(f"- **{cells[0]}**, {cells[1]}: {cells[3]}")
    return "\n".join(rows) + "\n" if rows else "No compared method leaves a setting open.\n"


def _tracked_notebooks(pattern: str) -> list[Path]:
    """The notebooks matching ``pattern`` on disk that git tracks or would track: not a scratch
    copy that git ignores (the ``out.ipynb`` of the README's papermill command)."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "--",
                                 f":(glob){pattern}"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return sorted(ROOT.glob(pattern))
    return sorted(p for p in (ROOT / name for name in listed) if p.is_file())


def _title(path: Path) -> str:
    for cell in json.loads(path.read_text())["cells"]:
        text = "".join(cell["source"])
        if cell["cell_type"] == "markdown" and text.startswith("#"):
            return text.splitlines()[0].lstrip("#").strip().replace("|", "/")
    return ""


def notebooks(results: Path, page: Path) -> str:
    """Every notebook, its title, and its executed pages, linked from ``page``."""
    rows = []
    for nb in _tracked_notebooks("notebooks/*.ipynb"):
        executed = _tracked_notebooks(f"notebooks/executed/*/{nb.name}")
        links = ", ".join(f"[{p.parent.name}]({Path(os.path.relpath(p, page.parent)).as_posix()})" for p in executed)
        rows.append({"notebook": f"`{nb.stem}`", "what it shows": _title(nb), "executed pages": links or "--"})
    if not rows:
        return "No notebooks are committed.\n"
    return markdown_table(pd.DataFrame(rows)) + "\n"


BLOCKS: dict[str, Callable[[Path], str]] = {"gpu": gpu, "gpu-comparison": gpu_comparison, "cpu-controls": cpu_controls, "cpu-recommended": cpu_recommended,
                                            "cpu-stage-times": cpu_stage_times, "findings": findings_block, "evidence": evidence_block,
                                            "comparison": comparison, "open-choices": open_choices, "guard-cost": guard_cost,
                                            "cpu-seeds": cpu_seeds}
# Blocks whose text depends on the page they sit on (relative links).
PAGE_BLOCKS: dict[str, Callable[[Path, Path], str]] = {"notebooks": notebooks}


def render(text: str, results: Path, page: Path | None = None) -> str:
    page = page or ROOT / "README.md"

    def body(m: re.Match) -> str:
        name = m["name"]
        if name in PAGE_BLOCKS:
            return m[1] + PAGE_BLOCKS[name](results, page) + m[4]
        if name not in BLOCKS:
            raise SystemExit(f"{page.name}: block {name!r} has no renderer; known: {', '.join([*BLOCKS, *PAGE_BLOCKS])}")
        return m[1] + BLOCKS[name](results) + m[4]

    return BLOCK.sub(body, text)


def pages() -> list[Path]:
    """The pages whose blocks are rendered: README.md and every docs/*.md."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--readme", type=Path, action="append", default=None, metavar="PAGE",
                   help="a page to render (repeatable; default: README.md and docs/*.md)")
    p.add_argument("--results", type=Path, default=ROOT / "results")
    p.add_argument("--check", action="store_true", help="fail when a block is stale instead of rewriting it")
    args = p.parse_args(argv)
    stale = []
    for page in args.readme or pages():
        old = page.read_text()
        new = render(old, args.results, page.resolve())
        if new == old:
            continue
        stale.append(page)
        if not args.check:
            page.write_text(new)
            print(f"rewrote the generated blocks of {page.name}")
    if stale and args.check:
        print(f"generated blocks differ from the results in {', '.join(p.name for p in stale)}; "
              "run scripts/render_readme.py")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
