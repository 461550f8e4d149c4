"""Run every experiment of the CPU reproduction (notebooks 09-13) and print each stage's wall time.

Each stage is cached (checkpoints and one JSON per result under ``results/<profile>/``), so an
interrupted run resumes where it stopped; ``--recompute`` redoes everything.

    python scripts/cpu_reproduction.py                 # profile cpu, seeds 0, 1 and 2
    python scripts/cpu_reproduction.py --data-root /path/to/imagefolder_or_archive
    python scripts/cpu_reproduction.py --halves demhec,plain,random_noise --seeds 0   # the selection protocol
    python scripts/cpu_reproduction.py --gpu-halves    # the GPU run's committed checkpoints, re-scored
    python scripts/cpu_reproduction.py --figures34     # Figures 3-4 on the report half
    python scripts/cpu_reproduction.py --recommend --seeds 0,1,2   # the chosen config vs its controls
    python scripts/cpu_reproduction.py --strongest 3 --seeds 1,2   # the 3 strongest discriminating runs

``--halves`` scores the base model and each named run (a key of ``experiments.runs.RUNS``; fine-tuned
where its checkpoint is missing) on both halves of the evaluation split, the selection protocol:
configurations are chosen on the "selection" half and reported on the "report" half.
``--gpu-halves`` does the same for the committed state dicts of scripts/gpu_reproduction.py's
phase A (the "gpu" profile), without training anything. ``--figures34`` computes notebook 12's
Figures 3-4 on the report half: the base model, the paper's config and the configuration chosen on
the selection half among the runs with halves results (fine-tuned where its checkpoint is missing).
``--recommend`` records that choice once (``halves/choice_cifar-c.json``), trains it and its three
controls (same freezing, learning rate, radius and budget) on every seed, scores them on both halves
in both suites, and copies the seed-0 state dicts to ``checkpoints/resnet20_{recommended,plain,
random_noise,gaussian_aug}.pt``. ``--strongest K`` repeats, on ``--seeds``, the K runs of
``experiments.runs.DISCRIMINATING`` that give back the most clean accuracy on the selection half at seed 0.

Every stage that did work records its wall time (``experiments.stage_times.record_stage_time``: one JSON under
``<cell>/stage_times/``, with the thread count and the load average), which notebook 12 and the
README show.
"""

from __future__ import annotations

import argparse
import logging
import time

from demhec._common import DemHECError, TrainingDiverged
from demhec.adaptation import ADAPT_METHODS
from demhec.corruptions import SUITES
from demhec.experiments import Experiment
from demhec.experiments.gpu import GPU_A_RUNS
from demhec.experiments.layout import model_path
from demhec.experiments.model_cache import base_model, run_spec
from demhec.experiments.pipeline import halves_result, robustness_result
from demhec.experiments.runs import (
    ABLATIONS,
    CONTROL_RUNS,
    DISCRIMINATING,
    FIGURE34_CORRUPTIONS,
    LATE_RUNS,
    RUNS,
    control_of,
    get,
)
from demhec.experiments.selection import chosen_run, record_choice, record_strongest
from demhec.experiments.stage_times import record_stage_time
from demhec.experiments.study import (
    ablation_checkpoint,
    ablation_halves,
    ablation_result,
    entropy_records,
    export_checkpoints,
    paired_gain_result,
    record_divergence,
)

MAIN_RUNS = ("demhec", "plain")


def whole_split_severities(run: str) -> tuple[int, ...] | None:
    """The severities notebooks 09-11 read ``run`` at on the whole split: S5 for an ablation; the
    paper's (None) for the main runs, the late-freezing pair and the controls."""
    return (5,) if run in ABLATIONS and run not in (*MAIN_RUNS, *LATE_RUNS) else None


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
    p.add_argument("--halves", default=None,
                   help="comma-separated runs (keys of experiments.runs.RUNS) to score on both halves of the "
                        "evaluation split, after the base model (the selection protocol); only this stage runs")
    p.add_argument("--gpu-halves", action="store_true",
                   help="score the committed GPU phase-A checkpoints on both halves (no training); only this stage runs")
    p.add_argument("--figures34", action="store_true",
                   help="compute notebook 12's Figures 3-4 on the report half (base, paper config, the "
                        "selection half's choice); only this stage runs")
    p.add_argument("--recommend", action="store_true",
                   help="choose the configuration on the selection half (recorded once), "
                        "then train it and its plain, random-noise and Gaussian-augmentation controls on --seeds, "
                        "score them on both halves in both suites and export the seed-0 state dicts; only this "
                        "stage runs")
    p.add_argument("--strongest", type=int, default=0, metavar="K",
                   help="the K discriminating runs (experiments.runs.DISCRIMINATING) that give back "
                        "the most clean accuracy on the selection half at seed 0, on both halves for --seeds; "
                        "refused until every discriminating run has a seed-0 outcome; only this stage runs")
    p.add_argument("--no-base", action="store_true",
                   help="with --halves: do not score the base model (its halves results exist, or the GPU "
                        "profile's of the same committed base state dict stand in for them)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    seeds = [int(s) for s in args.seeds.split(",")]

    def exp(seed: int) -> Experiment:
        return Experiment(profile=args.profile, dataset="cifar10", backbone="resnet20", seed=seed,
                          results_dir=args.results_dir, data_root=args.data_root, device=args.device,
                          recompute=args.recompute, progress=not args.no_progress)

    first = exp(seeds[0])

    def stage(name: str, fn, *a, **kw) -> None:
        t0 = time.perf_counter()
        fn(*a, **kw)
        seconds = time.perf_counter() - t0
        record_stage_time(first, name, seconds)
        print(f"[stage] {name}: {seconds:.0f} s", flush=True)

    if args.gpu_halves:
        return gpu_halves_stage(args, stage)
    if args.figures34:
        return figures34_stage(first, stage)
    if args.recommend:
        return recommend_stage(seeds, exp, stage)
    if args.strongest:
        return strongest_stage(args.strongest, seeds, exp, stage)
    if args.halves is not None:
        return halves_stage(args.halves.split(","), seeds, exp, stage, base=not args.no_base)
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
            stage(f"ablation {run} (fine-tune + S5)", ablation_result, first, run, severities=whole_split_severities(run))
    tta_stage(first, stage)


def gpu_halves_stage(args, stage) -> None:
    """The GPU phase-A state dicts that are committed, scored on both halves on this machine. A
    checkpoint is used only when its fingerprint is the one its run asks for (a fine-tune of the
    GPU profile's schedule is never started here)."""
    import json

    from demhec.results import fingerprint

    gpu = Experiment(profile="gpu", dataset="cifar10", backbone="resnet20", results_dir=args.results_dir,
                     data_root=args.data_root, device=args.device, recompute=args.recompute,
                     progress=not args.no_progress)
    stage("GPU base (the CPU base) on both halves", halves_result, gpu, "before")
    for run in GPU_A_RUNS:
        path = model_path(gpu, get(run))
        side = path.with_suffix(".fingerprint.json")
        wanted = fingerprint(run_spec(gpu, get(run)))
        if not side.exists() or json.loads(side.read_text()) != wanted:
            print(f"[skip] GPU {run}: no committed checkpoint made with its config ({path})", flush=True)
            continue
        stage(f"GPU {run} on both halves", ablation_halves, gpu, run)


def kept(exp: Experiment, run: str) -> str:
    """A suffix for the name of a stage that only scores a kept checkpoint, so that its wall time
    is never read as a fine-tune's."""
    return " (kept checkpoint, scoring only)" if ablation_checkpoint(exp, run).exists() else ""


def halves_stage(names: list[str], seeds: list[int], exp, stage, base: bool = True) -> None:
    """The selection protocol: the base model and each run of ``names``, per seed, on both halves; then, for
    the GPU script's phase-A runs among them, seed 0 (when among ``seeds``) on the whole split as
    well, which notebook 10 sets beside the GPU results."""
    for name in names:
        if name not in RUNS:
            raise SystemExit(f"unknown run {name!r}; valid: {', '.join(RUNS)}")
    if base:
        stage("base model on both halves", halves_result, exp(seeds[0]), "before")
    for seed in seeds:
        for name in names:
            try:
                stage(f"{name} seed {seed} on both halves{kept(exp(seed), name)}", ablation_halves, exp(seed), name)
            except TrainingDiverged as e:  # an outcome of the run, recorded, not a crash of the study
                record_divergence(exp(seed), name, e)
                print(f"[diverged] {name} seed {seed} at step {e.step}: {e.what}; recorded", flush=True)
    for name in names:
        if name in GPU_A_RUNS and 0 in seeds:
            stage(f"{name} seed 0 on the whole split", ablation_result, exp(0), name,
                  severities=whole_split_severities(name))


def strongest_stage(k: int, seeds: list[int], exp, stage) -> None:
    """The ``k`` strongest discriminating runs, picked on the selection half
    among every one of them (``record_strongest``: written once, refused until each has a seed-0
    outcome), repeated on ``seeds``."""
    try:
        runs = record_strongest(exp(0), DISCRIMINATING, k)["metrics"]["runs"]
    except DemHECError as e:
        raise SystemExit(f"{e} (--halves RUN,... --seeds 0)") from None
    print(f"[strongest] picked on the selection half at seed 0: {', '.join(runs)}", flush=True)
    halves_stage(runs, seeds, exp, stage, base=False)


def recommend_stage(seeds: list[int], exp, stage) -> None:
    """The configuration chosen on the selection half (``record_choice``, kept
    once written) against its own controls: the acceptance's suite on every seed first (each
    seed's four runs together, the seed-0 state dicts exported under their committed names as soon
    as they exist), then the other suite."""
    first = exp(seeds[0])
    choice = record_choice(first, list(RUNS))["metrics"]["run"]
    print(f"[recommend] chosen on the selection half: {choice}", flush=True)
    runs = [choice, *(control_of(c, choice) for c in CONTROL_RUNS)]
    for suite in SUITES:  # the acceptance's suite (cifar-c) on every seed first
        stage(f"base model on both halves, {suite}", halves_result, first, "before", suite)
        for seed in seeds:
            for run in runs:
                stage(f"{run} seed {seed} on both halves, {suite}{kept(exp(seed), run)}",
                      ablation_halves, exp(seed), run, suite)
            if seed == 0 and suite == SUITES[0]:
                stage("seed-0 state dicts exported", export_checkpoints, exp(0), choice)


def figures34_stage(first: Experiment, stage) -> None:
    """Notebook 12's Figures 3-4 (its section 3) on the report half, for the runs it shows."""
    choice = chosen_run(first, list(RUNS))
    runs = ["before", "demhec", *([choice["run"]] if choice and choice["run"] != "demhec" else [])]
    print(f"[figures34] runs: {runs}" + (f" ({choice['run']} chosen on the selection half)" if choice else ""), flush=True)
    stage(f"Figures 3-4 of {', '.join(runs)} on the report half", entropy_records, first, runs,
          FIGURE34_CORRUPTIONS, 5)


def tta_stage(first: Experiment, stage) -> None:
    """Test-time adaptation baselines: no training, the base and Dem-HEC checkpoints
    adapted to each evaluation set; each JSON also times a plain evaluation of the same model."""
    for phase in ("before", "after"):
        for adapt in ADAPT_METHODS:
            stage(f"{phase} + {adapt} on {SUITES[0]}", robustness_result, first, phase, SUITES[0], adapt=adapt)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt as stop:  # training saved its step first (see demhec.training)
        raise SystemExit(f"interrupted{f': {stop}' if str(stop) else ''}; re-run the same command to resume") from None
