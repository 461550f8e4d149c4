"""Render the README's result blocks from the committed result JSONs.

Each block sits between ``<!-- BEGIN generated:NAME -->`` and ``<!-- END generated:NAME -->`` in
README.md and is produced by the function of that name below from ``results/``, so no number in it
is typed by hand. ``--check`` exits non-zero when a block differs from what the results give
(``tests/test_readme.py`` runs it); without it the blocks are rewritten in place::

    .venv/bin/python scripts/render_readme.py          # after committing new results
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from demhec import experiments as ex  # noqa: E402
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
        made = sorted({j["trained"] for j in jobs.values() if "trained" in j})
        done = sum(j["state"] == "done" for j in jobs.values())
        text = (f"- Call {path.parent.name} (`{path.parent.relative_to(results.parent)}`): {m['device_name']}, "
                f"torch {run['versions']['torch']}, commit {run['git_commit'][:7]}; {done} of {len(jobs)} jobs done "
                f"in {m['elapsed_s']:.0f} s")
        if bench.get("plain_step_ms"):
            text += (f"; a plain step {min(bench['plain_step_ms']):.1f} ms and a Dem-HEC step (T_he 5) "
                     f"{min(bench['demhec_step_ms']):.1f} ms alone on the GPU (ratio {bench['ratio_the5']:.2f})")
        if made:
            text += f"; models: {', '.join(made)}"
        lines.append(text + ".")
    return "\n".join(lines) + "\n"


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
    lines = [f"Recorded choice (`{ex.selection.choice_path(exp).relative_to(results.parent)}`): `{run}`, chosen on the "
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
    lines += [f"- {line}" for line in ex.prose.describe_recommendation(exp, verdicts["cifar-c"], cost)]
    lines += [f"- {line}" for line in ex.prose.describe_suites(verdicts)]
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


BLOCKS: dict[str, Callable[[Path], str]] = {"gpu": gpu, "cpu-controls": cpu_controls, "cpu-recommended": cpu_recommended,
                                            "cpu-stage-times": cpu_stage_times}


def render(text: str, results: Path) -> str:
    def body(m: re.Match) -> str:
        name = m["name"]
        if name not in BLOCKS:
            raise SystemExit(f"README block {name!r} has no renderer; known: {', '.join(BLOCKS)}")
        return m[1] + BLOCKS[name](results) + m[4]

    return BLOCK.sub(body, text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--readme", type=Path, default=ROOT / "README.md")
    p.add_argument("--results", type=Path, default=ROOT / "results")
    p.add_argument("--check", action="store_true", help="fail when a block is stale instead of rewriting it")
    args = p.parse_args(argv)
    old = args.readme.read_text()
    new = render(old, args.results)
    if new == old:
        return 0
    if args.check:
        print(f"{args.readme.name}'s generated blocks differ from the results; run scripts/render_readme.py")
        return 1
    args.readme.write_text(new)
    print(f"rewrote the generated blocks of {args.readme.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
