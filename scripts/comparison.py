"""The comparison queue: every method of the paper's Tables 3-4 fine-tuned from the CPU base at A.3's
full schedule, scored on both halves, with test-time adaptation on top (``demhec.experiments.comparison``).

    python scripts/comparison.py                           # every run, every stage
    python scripts/comparison.py --runs demhec,augmix      # some runs
    python scripts/comparison.py --stages score,adapt      # only what needs no training
    python scripts/comparison.py --build-cache             # the corrupted evaluation sets first (and their digests)

Each run's stages: ``train`` (resumable from ``results/cpu/checkpoints/a3/*.ckpt``: a stopped run
continues at its last epoch end), ``score`` (clean and the 15 corruptions at S1-S5 on both halves)
``adapt`` (BatchNorm adaptation and TENT on the paper's seven corruptions at S1/S3/S5, both
halves); then ``manifest`` rewrites ``results/cpu/checkpoints/a3/manifest.json`` over every state
dict present. Several queues can run side by side: a run is locked while one works on it, and the others
move on to the next (``--wait`` makes them wait instead). Every stage that did work records its wall
time.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from demhec._common import DemHECError
from demhec.experiments.comparison import (
    ADAPTATIONS,
    COMPARISON,
    PROFILE,
    Run,
    comparison_experiment,
    comparison_run,
    resumes,
    score_run,
    stage_name,
    train_run_model,
    write_manifest,
)
from demhec.experiments.inputs import build_eval_cache, record_corrupted_sets, uncached_sets
from demhec.experiments.profiles import Experiment
from demhec.experiments.stage_times import record_stage_time

STAGES = ("train", "score", "adapt", "manifest")


@contextlib.contextmanager
def locked(path: Path, wait: bool) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` (True), or yield False when another queue holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def timed(exp: Experiment, stage: str, fn: Callable[[], object]) -> None:
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    record_stage_time(exp, stage, seconds)
    print(f"{stage}: {seconds:.1f} s", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="all", help="comma-separated run names (default: all, in table order)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--profile", default=PROFILE,
                   help=f"{PROFILE} (default), gpu_a3 (the GPU script's models, to score them here) or {PROFILE}_smoke (its test)")
    p.add_argument("--seeds", default="0", help="comma-separated fine-tuning seeds")
    p.add_argument("--data-root", default="data", help="the CIFAR-10 JPEG archive or its folder")
    p.add_argument("--threads", type=int, default=1, help="torch threads (one per queue beside other work)")
    p.add_argument("--build-cache", action="store_true",
                   help="generate the corrupted evaluation sets first and record their digests")
    p.add_argument("--wait", action="store_true", help="wait for a run another queue holds instead of skipping it")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    stages = [s for s in args.stages.split(",") if s]
    for s in stages:
        if s not in STAGES:
            raise SystemExit(f"unknown stage {s!r}; valid stages: {', '.join(STAGES)}")
    try:
        runs = list(COMPARISON) if args.runs == "all" else [comparison_run(n) for n in args.runs.split(",") if n]
    except DemHECError as e:
        raise SystemExit(str(e)) from None
    common = dict(profile=args.profile, results_dir=args.results_dir, data_root=args.data_root,
                  progress=not args.no_progress)
    if args.build_cache:
        from demhec.corruptions import CORRUPTIONS

        exp = comparison_experiment(COMPARISON[0], **common)
        grid = ("cifar-c", list(CORRUPTIONS), [1, 2, 3, 4, 5])
        if uncached_sets(exp, *grid):  # a stage time is a build's, never a cache hit's
            timed(exp, "corrupted evaluation sets (15 corruptions, S1-S5)", lambda: build_eval_cache(exp, *grid))
        record_corrupted_sets(exp, *grid)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    for seed in seeds:
        for run in runs:
            if seed != seeds[0] and not run.fine_tuned:
                continue  # a base has one seed
            exp = comparison_experiment(run, seed=seed, **common)
            with locked(exp.root / "locks" / f"{run.name}_seed{seed}.lock", args.wait) as mine:
                if mine:
                    run_stages(run, exp, stages)
                else:
                    print(f"{run.name} (seed {seed}): another queue is on it; next", flush=True)
    if "manifest" in stages:
        print(f"wrote {write_manifest(comparison_experiment(COMPARISON[0], **common))}")


def run_stages(run: Run, exp: Experiment, stages: list[str]) -> None:
    print(f"== {run.name} ({run.label}), seed {exp.seed}", flush=True)
    # A base without committed weights (push-pull) is trained from scratch.
    if "train" in stages and (run.fine_tuned or not exp.base_weights_path):
        stage = stage_name(run, exp, f"model (A.3{', the rest after a resume checkpoint' if resumes(run, exp) else ''})")
        timed(exp, stage, lambda: train_run_model(run, exp))
    if "score" in stages:
        timed(exp, stage_name(run, exp, "scoring (15 corruptions, S1-S5, both halves)"), lambda: score_run(run, exp))
    if "adapt" in stages:
        for adapt in ADAPTATIONS:
            timed(exp, stage_name(run, exp, f"+ {adapt} (both halves)"), lambda a=adapt: score_run(run, exp, a))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt as stop:  # training saved its step first (see demhec.training)
        raise SystemExit(f"interrupted{f': {stop}' if str(stop) else ''}; re-run the same command to resume") from None
