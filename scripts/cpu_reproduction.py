"""Run every experiment of the CPU reproduction (notebook 09) and print each stage's wall time.

Each stage is cached (checkpoints and one JSON per result under ``results/<profile>/``), so an
interrupted run resumes where it stopped; ``--recompute`` redoes everything.

    python scripts/cpu_reproduction.py                 # profile cpu, seeds 0, 1 and 2
    python scripts/cpu_reproduction.py --data-root /path/to/imagefolder_or_archive
"""

from __future__ import annotations

import argparse
import logging
import time

from demhec.adaptation import ADAPT_METHODS
from demhec.corruptions import SUITES
from demhec.experiments import (
    ABLATIONS,
    LATE_RUNS,
    Experiment,
    ablation_result,
    base_model,
    paired_gain_result,
    robustness_result,
)

MAIN_RUNS = ("demhec", "plain")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="cpu")
    p.add_argument("--seeds", default="0,1,2",
                   help="comma-separated seeds of the main comparison and the late-freezing pair")
    p.add_argument("--data-root", default="data",
                   help="the JPEG archive or any CIFAR-10 ImageFolder root (default: ../shared/data)")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--device", default="cpu")
    p.add_argument("--recompute", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--tta-only", action="store_true",
                   help="run only the test-time adaptation stage (needs the committed checkpoints)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    seeds = [int(s) for s in args.seeds.split(",")]

    def exp(seed: int) -> Experiment:
        return Experiment(profile=args.profile, dataset="cifar10", backbone="resnet20", seed=seed,
                          results_dir=args.results_dir, data_root=args.data_root, device=args.device,
                          recompute=args.recompute, progress=not args.no_progress)

    def stage(name: str, fn, *a, **kw) -> None:
        t0 = time.perf_counter()
        fn(*a, **kw)
        print(f"[stage] {name}: {time.perf_counter() - t0:.0f} s", flush=True)

    first = exp(seeds[0])
    if args.tta_only:
        return tta_stage(first, stage)
    stage("base model", base_model, first)
    for suite in SUITES:
        stage(f"base model on {suite}", robustness_result, first, "before", suite)
    for seed in seeds:
        for run in (*MAIN_RUNS, *LATE_RUNS):
            stage(f"{run} seed {seed} (fine-tune + {SUITES[0]})", ablation_result, exp(seed), run)
    for seed in seeds:
        for run in (MAIN_RUNS[0], LATE_RUNS[0]):
            stage(f"{run} seed {seed} vs the base, paired over images", paired_gain_result, exp(seed), run)
    for run in (*MAIN_RUNS, *LATE_RUNS):
        stage(f"{run} seed {seeds[0]} on {SUITES[1]}", ablation_result, first, run, SUITES[1])
    for run in ABLATIONS:
        if run not in (*MAIN_RUNS, *LATE_RUNS):
            stage(f"ablation {run} (fine-tune + S5)", ablation_result, first, run, severities=(5,))
    tta_stage(first, stage)


def tta_stage(first: Experiment, stage) -> None:
    """Test-time adaptation baselines (issue 20): no training, the base and Dem-HEC checkpoints
    adapted to each evaluation set; each JSON also times a plain evaluation of the same model."""
    for phase in ("before", "after"):
        for adapt in ADAPT_METHODS:
            stage(f"{phase} + {adapt} on {SUITES[0]}", robustness_result, first, phase, SUITES[0], adapt=adapt)


if __name__ == "__main__":
    main()
