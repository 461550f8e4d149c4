"""The paper's full fine-tuning schedule on one GPU, inside one call of the device tool.

Every real-data number of the CPU reproduction comes from a 150- to 600-step budget; the paper
fine-tunes for 20 epochs (A.3: batch 128, lr 0.05, 2 warm-up epochs, cosine: 7,020 steps on the
45,000-image training split). This script runs that schedule on the CPU reproduction's data and
split (profiles ``gpu`` and ``gpu_strong`` of :mod:`demhec.experiments.profiles`) as a set of processes that
share one GPU, and packs whatever has finished into ``--out`` after every job, so a run stopped at
its limit still returns all it finished:

* ``bench``: ``benchmarks/step_cost.py`` (bf16, channels_last; T_he 1 and 5) and
  ``benchmarks/epoch_time.py`` alone on the GPU first; ``bench_compile`` (``torch.compile``) last,
  only if time is left.
* ``data``: the JPEG archive decoded once; ``cache``: the 5,000 evaluation images under the seven
  corruptions at S1/S3/S5 (``cifar-c`` suite) on CPU workers.
* Phase A, from the CPU reproduction's committed base (``results/cpu/checkpoints/resnet20_base.pt``):
  ``a_demhec`` (the paper's config), ``a_plain`` (the plain fine-tune), ``a_no_infonce``
  (lambda_C = 0) and ``a_late_frozen_tuned`` (the CPU work's best config), all at once, each then
  evaluated; ``a_before`` evaluates the base.
* Phase B, alongside: ``b_base`` trains a ResNet-20 with the ``gpu_strong`` profile's recipe (60
  epochs) and evaluates it; ``b_demhec`` and ``b_plain`` then fine-tune it with the same A.3
  schedule and are evaluated.
* Phase C, then: the comparison with the methods of the paper's Tables 3-4
  (``demhec.experiments.comparison``, profile ``gpu_a3``) at seeds 0, 1 and 2, seed by seed:
  ``c_<run>_s<seed>`` trains one run (``c_pushpull_base`` the push-pull base first).
* Phase S scores them: ``s_cache`` builds the fifteen corruptions at S1-S5 on CPU workers and
  records their digests (:func:`demhec.experiments.inputs.record_corrupted_sets`, beside the CPU
  reproduction's, so that a page says whether both scored the same images); ``s_<run>[_s<seed>]``
  then scores each model present (this call's or a committed one), exactly as
  ``scripts/comparison.py --profile gpu_a3 --stages score,adapt`` does on a CPU: clean and the
  fifteen corruptions at S1-S5 on both halves, then BN adaptation and TENT.

Results land in ``<results-dir>/gpu/`` (``cpu_base/`` and ``strong_base/``, the layout of
``results/cpu/``, plus ``run.json``: device, per-job wall times, how each model was made (trained
here, resumed at step N, or loaded from an earlier call) and the steps this call ran, the
benchmark lines) and in ``--out`` as ``gpu_results.tar.gz`` (JSONs and logs), ``gpu_weights*.tar``
(the state dicts this call made) and ``gpu_resume*.tar`` (resume checkpoints of unfinished runs),
each archive under the device tool's 16 MiB a file (:func:`volumes`).

**The plan spans calls.** A call seldom finishes everything (the first loan's did not: four
Dem-HEC runs sharing the GPU reached step 6,669 of 7,020 by the limit). ``--unpack`` brings back
the resume checkpoints, which are committed (``results/gpu/*/checkpoints/*.ckpt``), so they travel
with the working tree to the next call, where each unfinished run resumes from its checkpoint and
each finished one is loaded from its committed state dict (seconds). ``--unpack`` files each
call's ``run.json`` and logs under ``results/gpu/calls/<n>/``.

Plan against the device tool's limits (one command of at most 10 minutes, 15 minutes of device
time in all, the machine's start included): the script stops its jobs at ``--budget`` seconds
(default 520) and packs. A Dem-HEC step of ResNet-20 at batch 128 is about 180 GFLOP (17
forward-equivalents, 2 T_he + 7), well under a millisecond of H200 arithmetic, so the step is
bound by kernel launches: ``benchmarks/op_count.py`` counts 2,333 ATen operator calls in one
Dem-HEC step (647 in a plain one), and at the 8-15 microseconds that eager PyTorch spends
launching each, a step takes about 19-35 ms, the 7,020 steps of a run 2.2-4.1 minutes. The runs of
a phase are separate processes, so their launches overlap on the 16 host cores. Measured on the
H200 (``results/gpu/calls/1``): 8.6 ms a plain step and 53 ms a Dem-HEC step alone, about 71 ms
with four Dem-HEC runs and three others sharing the GPU.

On the device tool: ``make gpu-carry`` here (the archive, the ``imagecorruptions-imaug`` wheel and
the commit into the ignored ``.gpu_carry/``; it fails when the checkout and the carry together are
over the 64 MiB a call sends, naming the heaviest folders: ``--check-travel``; ``--aside`` then moves
what the device does not read (and the comparison's scored state dicts) into the ignored ``.gpu_aside/``, ``--put-back`` returns it after
the call), commit nothing after it, then one call with
``carry: [".gpu_carry"]``, ``timeout_s: 600`` and the command ``bash scripts/gpu_reproduction.sh``
(``python3 scripts/gpu_reproduction.py --carry .gpu_carry --out "$OUT"``). Back here, from the
folder the files came back to::

    .venv/bin/python scripts/gpu_reproduction.py --unpack FILES_AT   # into results/gpu/

The device has torch (2.11), torchvision, timm, numpy, pandas, scipy, scikit-image, OpenCV and
numba (calls 4-6 recorded it), but not ``imagecorruptions`` (installed here from the carried
wheel, ``--no-deps``). On a machine without numba, which that package imports for glass blur
alone, a stand-in module is put on the path whose ``njit`` functions refuse to run (phase S then
fails at glass blur; the other phases do not use it); ``run.json`` records which. ``--smoke`` runs the whole
plan on a CPU in about a minute (profiles ``gpu_smoke``/``gpu_strong_smoke``: a few hundred
images, three steps a run); ``tests/test_gpu_reproduction.py`` runs it. ``--phases c`` (say) runs
only phase C and what it needs: a later call skips the benchmark and the phases already committed.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import importlib.util
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

log = logging.getLogger("gpu_reproduction")


# --- environment -------------------------------------------------------------------------------


def prepare_imports(carry: Path | None, work: Path) -> dict[str, str]:
    """Make ``imagecorruptions`` importable on a machine without it (and without numba), in this
    process and in every child (through ``PYTHONPATH``); returns what was done, for run.json."""
    done: dict[str, str] = {}
    extra: list[str] = []
    if importlib.util.find_spec("numba") is None:
        shim = work / "shim"
        (shim / "numba").mkdir(parents=True, exist_ok=True)
        (shim / "numba" / "__init__.py").write_text(
            '"""Stand-in for numba (absent here): imagecorruptions imports njit for glass blur only."""\n\n\n'
            "def njit(*args, **kwargs):\n"
            "    def refuse(*a, **k):\n"
            "        raise RuntimeError('this corruption needs numba, which is not installed')\n\n"
            "    if len(args) == 1 and callable(args[0]) and not kwargs:\n"
            "        return refuse\n"
            "    return lambda fn: refuse\n")
        extra.append(str(shim))
        done["numba"] = "absent: stand-in whose njit functions refuse (glass blur unavailable)"
    else:
        done["numba"] = "installed"
    if importlib.util.find_spec("imagecorruptions") is None:
        wheels = sorted(carry.glob("imagecorruptions_imaug-*.whl")) if carry else []
        if not wheels:
            raise SystemExit("imagecorruptions is not installed and no imagecorruptions_imaug wheel "
                             f"is in --carry {carry}; see this script's doc")
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                              str(wheels[0])], capture_output=True, text=True)
        if pip.returncode == 0:
            done["imagecorruptions"] = f"installed from {wheels[0].name} (--no-deps)"
        else:  # a wheel is a zip: import it from the path
            extra.append(str(wheels[0].resolve()))
            done["imagecorruptions"] = f"imported from {wheels[0].name} on the path (pip failed)"
        importlib.invalidate_caches()
    else:
        done["imagecorruptions"] = "installed"
    for p in reversed([*extra, str(ROOT)]):
        sys.path.insert(0, p)
    os.environ["PYTHONPATH"] = os.pathsep.join([*extra, str(ROOT), os.environ.get("PYTHONPATH", "")])
    if carry and (carry / "COMMIT").is_file() and "DEMHEC_GIT_COMMIT" not in os.environ:
        os.environ["DEMHEC_GIT_COMMIT"] = (carry / "COMMIT").read_text().strip()
    return done


def tune_torch(device: str, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True


# --- the jobs (each runs in its own process: ``--job NAME``) ----------------------------------


def experiment(args: argparse.Namespace, phase: str):
    from demhec.experiments import Experiment

    profile = {"a": "gpu", "b": "gpu_strong", "c": "gpu_a3", "s": "gpu_a3"}[phase] + ("_smoke" if args.smoke else "")
    return Experiment(profile=profile, dataset="cifar10", backbone="resnet20", seed=0,
                      results_dir=str(args.results_dir), data_root=str(args.data_root),
                      device=args.device)


def wait_for(status_dir: Path, name: str, deadline: float) -> bool:
    """Wait until job ``name`` has ended; whether it succeeded."""
    while time.time() < deadline:
        for state, ok in (("done", True), ("failed", False)):
            if (status_dir / f"{name}.{state}").exists():
                return ok
        time.sleep(0.5)
    return False


def run_bench(args: argparse.Namespace, compile_: bool) -> dict:
    """The GPU check of benchmarks/ (step-cost ratio with bf16 and channels_last, one Dem-HEC
    epoch's time; ``compile_``: the torch.compile step cost); their printed lines."""
    dev = ["--device", args.device, "--channels-last"]
    if compile_:
        runs = [("step_cost.py", [*dev, "--amp", "--compile", "--steps", "30", "--the", "5", "--rounds", "1"])]
    elif args.smoke:
        runs = [("step_cost.py", [*dev, "--steps", "4", "--the", "1", "--rounds", "1", "--batch-size", "16"]),
                ("epoch_time.py", ["--device", args.device, "--images", "64", "--batch-size", "16", "--no-amp"])]
    else:
        runs = [("step_cost.py", [*dev, "--amp", "--steps", "20", "--the", "1", "5", "--rounds", "2"]),
                ("epoch_time.py", ["--device", args.device, "--images", "45000"])]
    lines: dict[str, list[str]] = {}
    for script, cmd in runs:
        stdout = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *cmd], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout
        lines[f"{script} {' '.join(cmd)}"] = stdout.strip().splitlines()
    out: dict = {"lines": lines}
    for text in (line for printed in lines.values() for line in printed):
        if m := re.match(r"T_he=\s*(\d+): median ratio ([\d.]+)", text):
            out[f"ratio_the{m[1]}{'_compile' if compile_ else ''}"] = float(m[2])
        if m := re.search(r"plain CE step ([\d.]+) ms", text):
            out.setdefault("plain_step_ms" + ("_compile" if compile_ else ""), []).append(float(m[1]))
        if m := re.search(r"T_he=\s*5: Dem-HEC step ([\d.]+) ms", text):
            out.setdefault("demhec_step_ms" + ("_compile" if compile_ else ""), []).append(float(m[1]))
        if m := re.match(r"one Dem-HEC epoch .*: ([\d.]+) s", text):
            out["demhec_epoch_s"] = float(m[1])
    return out


def run_job(args: argparse.Namespace) -> dict:
    """One job of the plan, in this process; returns what run.json records of it."""
    from demhec.experiments.inputs import (
        build_eval_cache,
        eval_data,
        record_corrupted_sets,
        train_data,
    )
    from demhec.experiments.layout import model_path
    from demhec.experiments.model_cache import base_model
    from demhec.experiments.pipeline import robustness_result
    from demhec.experiments.runs import get
    from demhec.experiments.study import ablation_model, ablation_result

    name, status = args.job, Path(args.status_dir)
    deadline = args.deadline
    if name in ("bench", "bench_compile"):
        return run_bench(args, compile_=name == "bench_compile")
    if name == "data":
        exp = experiment(args, "a")
        return {"train": len(train_data(exp)), "eval": len(eval_data(exp))}
    if name == "cache":
        build_eval_cache(experiment(args, "a"), workers=args.cache_workers)
        return {}
    if name == "s_cache":
        from demhec.corruptions import CORRUPTIONS

        rec = record_corrupted_sets(experiment(args, "s"), "cifar-c", list(CORRUPTIONS), [1, 2, 3, 4, 5],
                                    workers=args.cache_workers)
        return {"cells": rec["metrics"]["cells"]}
    phase, run = name.split("_", 1)
    if phase == "c":
        return comparison_job(args, run)
    if phase == "s":
        return scoring_job(args, run)
    exp = experiment(args, phase)
    if run == "before":
        wait_for(status, "cache", deadline)
        return {"clean_accuracy": robustness_result(exp, "before")["metrics"]["clean_accuracy"]}
    if run == "base":
        cfg, path, make = exp.base_config, exp.checkpoint("base"), lambda: base_model(exp)
    else:
        cfg = exp.demhec_config
        path = model_path(exp, get(run))
        make = lambda: ablation_model(exp, run)  # noqa: E731
    steps = cfg.epochs * (len(train_data(exp)) // cfg.batch_size)  # training drops the last batch
    if getattr(cfg, "max_steps", None):
        steps = min(steps, cfg.max_steps)
    info = trained(path, make, steps)
    wait_for(status, "cache", deadline)
    rec = robustness_result(exp, "before") if run == "base" else ablation_result(exp, run)
    return {**info, "clean_accuracy": rec["metrics"]["clean_accuracy"]}


def _comparison_setting(args: argparse.Namespace, name: str):
    """The run and experiment of a phase C or S job's name (``<run>_s<seed>``, or a base's ``<run>``)."""
    from demhec.experiments.comparison import comparison_experiment, comparison_run

    run_name, _, seed = name.rpartition("_s") if re.search(r"_s\d+$", name) else (name, "", "0")
    run = comparison_run(run_name)
    return run, comparison_experiment(run, profile=experiment(args, "c").profile, seed=int(seed),
                                      results_dir=str(args.results_dir), data_root=str(args.data_root),
                                      device=args.device)


def comparison_job(args: argparse.Namespace, name: str) -> dict:
    """Train one run of the comparison (``<run>_s<seed>``, or a base without a seed)."""
    from demhec.experiments.comparison import (
        checkpoint_path,
        is_fully_scored,
        run_config,
        train_run_model,
    )
    from demhec.experiments.inputs import train_data

    run, exp = _comparison_setting(args, name)
    cfg = run_config(exp, run) or exp.base_config
    steps = cfg.epochs * (len(train_data(exp)) // cfg.batch_size)
    if getattr(cfg, "max_steps", None):
        steps = min(steps, cfg.max_steps)
    path = checkpoint_path(run, exp)
    if (run.fine_tuned and not path.exists() and not path.with_suffix(".ckpt").exists()
            and is_fully_scored(run, exp)):  # set aside: scored_state_dicts
        return {"steps": steps, "trained": "earlier call (scored; its state dict stayed home)"}
    return trained(path, lambda: train_run_model(run, exp), steps)


def scoring_job(args: argparse.Namespace, name: str) -> dict:
    """Score one model of the comparison as ``scripts/comparison.py --stages score,adapt`` does:
    clean and the fifteen corruptions at S1-S5 on both halves, then BN adaptation and TENT on the
    paper's seven at S1/S3/S5. A model scored by an earlier call needs nothing (not even its state
    dict); one with no state dict (not trained yet) is left alone."""
    from demhec.experiments.comparison import (
        ADAPTATIONS,
        checkpoint_path,
        is_fully_scored,
        score_run,
    )

    run, exp = _comparison_setting(args, name)
    if is_fully_scored(run, exp):
        return {"scored": "earlier call"}
    if not checkpoint_path(run, exp).is_file():
        return {"scored": "no state dict: not trained yet"}
    t0 = time.perf_counter()
    halves = score_run(run, exp)
    for adapt in ADAPTATIONS:
        score_run(run, exp, adapt)
    return {"scored": "here", "score_s": round(time.perf_counter() - t0, 1),
            "clean_accuracy": {h: r["metrics"]["clean_accuracy"] for h, r in halves.items()}}


def trained(path: Path, make, steps: int) -> dict:
    """Build the model at ``path`` (``make``) and say how: loaded from an earlier call's state
    dict, resumed from its checkpoint (an earlier call stopped at its limit), or trained here;
    the step time counts only the steps this call ran."""
    before = path.stat().st_mtime_ns if path.exists() else None
    start = _resume_step(path.with_suffix(".ckpt")) if path.with_suffix(".ckpt").exists() else None
    t0 = time.perf_counter()
    make()
    train_s = time.perf_counter() - t0
    if before is not None and path.stat().st_mtime_ns == before:
        return {"steps": steps, "trained": "earlier call (state dict loaded)"}
    ran = steps - (start or 0)
    out = {"steps": steps, "trained": "here" if start is None else f"here, resumed at step {start}",
           "steps_run": ran, "train_s": round(train_s, 1)}
    if ran > 0:
        out["step_ms"] = round(1e3 * train_s / ran, 2)
    return out


# --- the scheduler -----------------------------------------------------------------------------


@dataclass
class Job:
    name: str
    needs: tuple[str, ...] = ()  # jobs that must have succeeded
    after: tuple[str, ...] = ()  # jobs that must have ended (in any state)
    gpu: bool = True
    proc: subprocess.Popen | None = None
    state: str = "pending"  # pending, running, done, failed, killed, skipped, not started
    started: float | None = None
    ended: float | None = None
    info: dict = field(default_factory=dict)


SMOKE_COMPARISON = ("plain", "ba")  # the smoke plan's phase C: two cheap runs at seed 0


def comparison_jobs(smoke: bool) -> list[Job]:
    """Phase C: every run of the comparison (experiments.comparison) at each seed, seed by seed,
    trained here; the push-pull base (one per backbone, whatever the seed) before its Dem-HEC."""
    from demhec.experiments.comparison import COMPARISON, GPU_SEEDS

    seeds, names = ((0,), SMOKE_COMPARISON) if smoke else (GPU_SEEDS, [r.name for r in COMPARISON])
    runs = [r for r in COMPARISON if r.name in names]
    jobs = [Job(f"c_{r.name}", needs=("data",), after=("bench",)) for r in runs
            if not r.fine_tuned and r.backbone != "resnet20"]
    bases = {r.backbone: f"c_{r.name}" for r in runs if not r.fine_tuned and r.backbone != "resnet20"}
    for seed in seeds:
        jobs += [Job(f"c_{r.name}_s{seed}", needs=("data", *([bases[r.backbone]] if r.backbone in bases else [])),
                     after=("bench",)) for r in runs if r.fine_tuned]
    return jobs


def scoring_jobs(smoke: bool) -> list[Job]:
    """Phase S: the corrupted sets of the comparison's scoring (``s_cache``), then one job per
    model of phase C (a base once), each after its training job when that is in the plan."""
    from demhec.experiments.comparison import COMPARISON, GPU_SEEDS

    # The smoke plan scores a base and a fine-tune (the 75 cells cost half a minute a model there).
    seeds, names = ((0,), ("base", SMOKE_COMPARISON[0])) if smoke else (GPU_SEEDS, [r.name for r in COMPARISON])
    jobs = [Job("s_cache", needs=("data",), after=("cache",), gpu=False)]  # one builder per cell at a time
    for seed in seeds:
        for r in (r for r in COMPARISON if r.name in names and (r.fine_tuned or seed == seeds[0])):
            model = f"{r.name}_s{seed}" if r.fine_tuned else r.name
            jobs.append(Job(f"s_{model}", needs=("s_cache",), after=(f"c_{model}",)))
    return jobs


PHASES = ("bench", "a", "b", "c", "s")


def plan(smoke: bool = False, phases: tuple[str, ...] = PHASES, only: tuple[str, ...] = ()) -> list[Job]:
    """The jobs of ``phases`` (those matching one of the shell patterns ``only``, if given) and
    those they need (``data``, ``cache``, ``c_pushpull_base``): a later call runs only what
    earlier calls have not measured."""
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        raise ValueError(f"unknown phase(s) {unknown}; valid: {', '.join(PHASES)}")
    jobs = {j.name: j for j in _all_jobs(smoke)}
    wanted = {n for n in jobs if n.split("_", 1)[0] in phases
              and (not only or any(fnmatch.fnmatchcase(n, pat) for pat in only))}
    if only and not wanted:
        raise ValueError(f"no job of phases {', '.join(phases)} matches {', '.join(only)}; jobs: {', '.join(jobs)}")
    if any(n.startswith(("a_", "b_")) for n in wanted):
        wanted.add("cache")  # their evaluations wait for the corrupted sets (not a need: training starts first)
    todo = list(wanted)
    while todo:  # what the wanted jobs need, transitively
        for n in jobs[todo.pop()].needs:
            if n not in wanted:
                wanted.add(n)
                todo.append(n)
    kept = [j for n, j in jobs.items() if n in wanted]
    for j in kept:  # an ordering constraint on a job left out holds trivially
        j.after = tuple(n for n in j.after if n in wanted)
    return kept


def _all_jobs(smoke: bool) -> list[Job]:
    from demhec.experiments.gpu import GPU_A_RUNS, GPU_B_RUNS

    gpu_start = ("bench",)  # the benchmark has the GPU to itself
    jobs = [Job("bench"), Job("data", gpu=False), Job("cache", needs=("data",), gpu=False),
            Job("a_before", needs=("data",), after=gpu_start)]
    jobs += [Job(f"a_{run}", needs=("data",), after=gpu_start) for run in GPU_A_RUNS]
    jobs += [Job("b_base", needs=("data",), after=gpu_start)]
    jobs += [Job(f"b_{run}", needs=("b_base",)) for run in GPU_B_RUNS]
    return jobs + comparison_jobs(smoke) + scoring_jobs(smoke)


def _resume_step(path: Path) -> int | None:
    from demhec._common import load_tensors

    try:  # read with the safe unpickler: resume archives come back from another machine
        return int(load_tensors(path, "resume checkpoint", holds="checkpoint")["step"])
    except Exception:  # noqa: BLE001 - a run killed while writing it leaves no usable step
        return None


class Runner:
    def __init__(self, args: argparse.Namespace, env_info: dict[str, str]) -> None:
        self.args = args
        self.t0 = time.time()
        self.deadline = self.t0 + args.budget
        self.jobs = {j.name: j for j in plan(args.smoke, args.phases, args.only)}
        self.env_info = env_info
        self.gpu_root = Path(args.results_dir) / ("gpu_smoke" if args.smoke else "gpu")
        self.status = self.gpu_root / "status"
        self.logs = self.gpu_root / "logs"
        for d in (self.status, self.logs):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)

    def say(self, msg: str) -> None:
        print(f"[{time.time() - self.t0:6.1f} s] {msg}", flush=True)

    def child_argv(self, job: Job) -> list[str]:
        a = self.args
        argv = [sys.executable, str(Path(__file__).resolve()), "--job", job.name,
                "--results-dir", str(a.results_dir), "--data-root", str(a.data_root),
                "--device", a.device, "--status-dir", str(self.status),
                "--deadline", str(self.deadline), "--cache-workers", str(a.cache_workers)]
        if a.smoke:
            argv.append("--smoke")
        return argv

    def start(self, job: Job) -> None:
        env = dict(os.environ, OMP_NUM_THREADS=str(self.args.threads))
        # Its own process group (not session), so that stopping it reaches its benchmark
        # subprocesses and corruption workers, and the device tool still ends them with us.
        with open(self.logs / f"{job.name}.log", "w") as log_file:
            job.proc = subprocess.Popen(self.child_argv(job), cwd=ROOT, env=env, stdout=log_file,
                                        stderr=subprocess.STDOUT, preexec_fn=os.setpgrp)
        job.state, job.started = "running", time.time()
        self.say(f"start {job.name}")

    def finish(self, job: Job, code: int) -> None:
        job.ended = time.time()
        job.state = "done" if code == 0 else "failed"
        info = self.status / f"{job.name}.json"
        if info.exists():
            job.info = json.loads(info.read_text())
        (self.status / f"{job.name}.{job.state}").touch()
        extra = "" if code == 0 else f" (exit {code}; see logs/{job.name}.log)"
        shown = {k: v for k, v in job.info.items() if k != "lines"}
        self.say(f"{job.state} {job.name} in {job.ended - job.started:.0f} s{extra} {shown}")

    def ready(self, job: Job) -> bool | None:
        """True to start, False to wait, None when it can never start."""
        if any(self.jobs[n].state in ("failed", "killed", "skipped", "not started") for n in job.needs):
            return None
        return (all(self.jobs[n].state == "done" for n in job.needs)
                and all(self.jobs[n].state not in ("pending", "running") for n in job.after))

    def run(self) -> None:
        while time.time() < self.deadline:
            for job in self.jobs.values():
                if job.state == "running" and (code := job.proc.poll()) is not None:
                    self.finish(job, code)
                    self.pack()
            for job in self.jobs.values():
                if job.state == "pending":
                    go = self.ready(job)
                    if go is None:
                        job.state = "skipped"
                        self.say(f"skip {job.name} (a job it needs did not succeed)")
                    elif go and self.running() < self.args.parallel:
                        self.start(job)
            if all(j.state not in ("pending", "running") for j in self.jobs.values()):
                break
            time.sleep(0.2)
        if self.args.compile and "bench" in self.args.phases and self.deadline - time.time() > self.args.compile_time:
            job = self.jobs.setdefault("bench_compile", Job("bench_compile"))
            self.start(job)
            while job.proc.poll() is None and time.time() < self.deadline:
                time.sleep(0.5)
            if job.proc.poll() is not None:
                self.finish(job, job.proc.returncode)

    def running(self) -> int:
        return sum(j.state == "running" for j in self.jobs.values())

    def stop_the_rest(self) -> None:
        running = [j for j in self.jobs.values() if j.state == "running"]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for job in running:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(job.proc.pid, sig)
            if sig == signal.SIGTERM and running:
                time.sleep(2)
        for job in self.jobs.values():
            if job.state == "running":
                job.proc.wait()
                job.state, job.ended = "killed", time.time()
                self.say(f"stopped {job.name} at the time limit")
            elif job.state == "pending":
                job.state = "not started"

    def record(self) -> dict:
        from demhec.experiments.gpu import GPU_A_RUNS, GPU_B_RUNS
        from demhec.results import write_result

        jobs = {}
        for job in self.jobs.values():
            entry = {"state": job.state, **job.info}
            if job.started is not None:
                entry["started_s"] = round(job.started - self.t0, 1)
                entry["wall_s"] = round((job.ended or time.time()) - job.started, 1)
            jobs[job.name] = entry
        # Unfinished runs: the step of their last (epoch-end) checkpoint.
        resume = {f"{c.parent.parent.name}/{c.name}": _resume_step(c)
                  for c in sorted(self.gpu_root.glob("*/checkpoints/*.ckpt"))}
        return write_result(
            self.gpu_root / "run.json", kind="gpu_run", profile=self.gpu_root.name,
            config={"budget_s": self.args.budget, "phases": list(self.args.phases), "only": list(self.args.only),
                    "parallel": self.args.parallel, "device": self.args.device,
                    "a_runs": list(GPU_A_RUNS), "b_runs": list(GPU_B_RUNS),
                    "environment": self.env_info},
            metrics={"device_name": device_name(self.args.device), "elapsed_s": round(time.time() - self.t0, 1),
                     "jobs": jobs, "resume_checkpoint_steps": resume},
            data={"source": Path(self.args.data_root).name,
                  "note": "CIFAR-10 training images from a JPEG quality-75 mirror, split 45,000/5,000 "
                          "(seed 0); not the CIFAR-10 test set"},
            seed=0)

    def pack(self) -> None:
        """Write what exists now into --out: each archive replaced atomically."""
        self.record()
        out = Path(self.args.out) if self.args.out else None
        if out is None:
            return
        out.mkdir(parents=True, exist_ok=True)
        base = Path(self.args.results_dir)
        # State dicts an earlier call made are committed back home: only this call's travel.
        made_here = [p for p in sorted(self.gpu_root.glob("*/checkpoints/*.pt")) if p.stat().st_mtime >= self.t0]
        groups = {"gpu_results.tar.gz": [*self.gpu_root.glob("**/*.json"), *self.logs.glob("*.log")],
                  **volumes("gpu_weights", made_here),
                  **volumes("gpu_resume", sorted(self.gpu_root.glob("*/checkpoints/*.ckpt")))}
        if len(groups) > MAX_FILES:
            self.say(f"warning: {len(groups)} archives, more than the {MAX_FILES} files a device call returns")
        for stale in out.glob("gpu_*.tar*"):  # e.g. resume checkpoints of runs that have finished since
            if stale.name not in groups:
                stale.unlink()
        for name, paths in groups.items():
            paths = [p for p in paths if "status" not in p.parts]
            if not paths:
                (out / name).unlink(missing_ok=True)
                continue
            tmp = out / f".{name}.partial"
            with tarfile.open(tmp, "w:gz" if name.endswith(".gz") else "w") as tar:
                for p in sorted(set(paths)):
                    if p.suffix == ".log":  # the library logs absolute paths; the archive keeps none
                        data = portable_log(p.read_text(errors="replace")).encode()
                        info = tar.gettarinfo(p, arcname=str(p.relative_to(base)))
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
                    else:
                        tar.add(p, arcname=str(p.relative_to(base)))
            os.replace(tmp, out / name)


TRAVEL_BYTES = 64 * 2**20  # the device tool's limit on the working tree it sends, carried paths included


def travel_bytes(root: Path, carry: Path | None) -> tuple[int, dict[str, int]]:
    """What a device call sends: git's tracked and untracked-not-ignored files present on disk,
    plus ``carry``; returns the total and the bytes under each top two folders (the largest
    first), so that a tree over :data:`TRAVEL_BYTES` says where its weight is."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                           capture_output=True, check=True).stdout.decode().split("\0")
    files = [root / n for n in names if n]
    if carry is not None and (root / carry).is_dir():
        files += list((root / carry).resolve().rglob("*"))
    by_folder: dict[str, int] = {}
    total = 0
    for f in files:
        if not f.is_file() or f.is_symlink():
            continue
        n = f.stat().st_size
        total += n
        parts = f.resolve().relative_to(root.resolve()).parts
        top = "/".join(parts[:2]) if len(parts) > 2 else (parts[0] if len(parts) > 1 else ".")
        by_folder[top] = by_folder.get(top, 0) + n
    return total, dict(sorted(by_folder.items(), key=lambda kv: -kv[1]))


def check_travel(root: Path, carry: Path | None, limit: int = TRAVEL_BYTES) -> int:
    """Fail, naming the heaviest folders, when a device call would be refused for its size."""
    total, by_folder = travel_bytes(root, carry)
    if total > limit:
        heaviest = ", ".join(f"{k} {v / 2**20:.1f}" for k, v in list(by_folder.items())[:6])
        raise SystemExit(
            f"a device call would send {total / 2**20:.1f} MiB, over its {limit / 2**20:.0f} MiB (heaviest, MiB: "
            f"{heaviest}). `scripts/gpu_reproduction.py --aside` moves what the device does not read "
            f"into {ASIDE_DIR}/ for the call; `--put-back` returns it.")
    return total


# What a device call does not read: the executed pages, the figures, the demo's results and the CPU
# reproduction's (but its base, which phase A fine-tunes).
ASIDE = ("notebooks/executed", "figures", "results/demo", "results/cpu")
ASIDE_KEEP = ("results/cpu/checkpoints/resnet20_base.pt", "results/cpu/checkpoints/resnet20_base.fingerprint.json")
ASIDE_DIR = ".gpu_aside"  # ignored by git, so nothing in it travels


def scored_state_dicts(root: Path) -> list[str]:
    """The GPU comparison's fine-tuned state dicts (profile ``gpu_a3``) whose scoring is complete
    (clean, BN adaptation and TENT, both halves), relative to ``root``: phase S reads them no more
    and phase C does not retrain them (:func:`comparison_job`), so they need not travel. Bases stay:
    a fine-tune starts from one."""
    from demhec.experiments.comparison import (
        COMPARISON,
        GPU_SEEDS,
        GPU_TWIN,
        checkpoint_path,
        comparison_experiment,
        is_fully_scored,
    )

    out = []
    for run in (r for r in COMPARISON if r.fine_tuned):
        for seed in GPU_SEEDS:
            exp = comparison_experiment(run, profile=GPU_TWIN["a3"], seed=seed, results_dir=str(root / "results"))
            path = checkpoint_path(run, exp)
            if path.is_file() and is_fully_scored(run, exp):
                out.append(path.relative_to(root).as_posix())
    return out


def set_aside(root: Path) -> list[str]:
    """Move :data:`ASIDE` and :func:`scored_state_dicts` into ``root/.gpu_aside/`` (copying
    :data:`ASIDE_KEEP` back), so that a device call sends what it reads and no more;
    :func:`put_back` undoes it. Refuses to move over an earlier set-aside copy, which would be lost."""
    aside = root / ASIDE_DIR
    if aside.exists() and any(aside.iterdir()):
        raise SystemExit(f"{aside} is not empty: run --put-back first")
    moved = []
    for rel in (*ASIDE, *scored_state_dicts(root)):
        if (root / rel).exists():
            (aside / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(root / rel, aside / rel)
            moved.append(rel)
    for rel in ASIDE_KEEP:
        if (aside / rel).exists():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(aside / rel, root / rel)
    return moved


def put_back(root: Path) -> list[str]:
    """Return what :func:`set_aside` moved, replacing the copies of :data:`ASIDE_KEEP` it left."""
    aside = root / ASIDE_DIR
    back = []
    for path in sorted(aside.glob("results/gpu/**/*.pt")):  # state dicts set aside one by one
        rel = path.relative_to(aside).as_posix()
        if (root / rel).exists():
            raise SystemExit(f"{root / rel} was written while {ASIDE_DIR}/ held it: compare the two, keep one")
        shutil.move(path, root / rel)
        back.append(rel)
    for rel in ASIDE:
        if (aside / rel).exists():
            if (root / rel).exists():
                extra = [f for f in (root / rel).rglob("*")
                         if f.is_file() and str(f.relative_to(root)) not in ASIDE_KEEP]
                if extra:
                    raise SystemExit(f"{root / rel} has files that {ASIDE_DIR}/ would overwrite: "
                                     f"{', '.join(str(f.relative_to(root)) for f in extra[:5])}")
                shutil.rmtree(root / rel)
            shutil.move(aside / rel, root / rel)
            back.append(rel)
    shutil.rmtree(aside, ignore_errors=True)
    return back


VOLUME_BYTES = 15 * 2**20  # the device tool returns files of at most 16 MiB, at most 8 of them
MAX_FILES = 8


def volumes(stem: str, paths: list[Path], limit: int = VOLUME_BYTES) -> dict[str, list[Path]]:
    """``paths`` in tar archives of at most ``limit`` bytes each (``<stem>.tar``, ``<stem>.1.tar``,
    ...), so that none is left behind for its size; a file larger than ``limit`` gets its own."""
    groups: list[list[Path]] = []
    size = 0
    for p in paths:
        n = p.stat().st_size + 1024  # its tar header and padding
        if not groups or size + n > limit:
            groups.append([])
            size = 0
        groups[-1].append(p)
        size += n
    return {f"{stem}{'' if i == 0 else f'.{i}'}.tar": g for i, g in enumerate(groups)}


def portable_log(text: str) -> str:
    """A log with this checkout's absolute paths made relative to it (they name the machine)."""
    return text.replace(f"{ROOT}/", "").replace(str(ROOT), ".")


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return "cpu"


def verify_unpacked(folder: Path) -> None:
    """Check every file a device call returned before it is used: a JSON parses, a state dict or
    resume checkpoint loads with the safe unpickler (nothing in it can run), a log is text."""
    from demhec._common import DemHECError, load_tensors
    from demhec.training import read_checkpoint

    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder)
        try:
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".pt":
                load_tensors(path, "state dict")
            elif path.suffix == ".ckpt":
                read_checkpoint(path)
            elif path.suffix == ".log":
                path.read_text()
            else:
                raise DemHECError("not a file a device call returns (.json, .pt, .ckpt, .log)")
        except (DemHECError, ValueError) as e:
            raise SystemExit(f"refusing the returned file {name}: {e}") from None


def unpack(folder: Path, results_dir: Path) -> None:
    """Extract the archives the device run returned into ``results_dir`` (``results/gpu/...``):
    each archive is checked (only regular files, none outside the target) and extracted into a
    scratch folder whose every file is verified (:func:`verify_unpacked`) before anything is moved
    into place; the resume checkpoints replace every earlier one (a run that has finished since
    has none), and the call's ``run.json`` and logs go to ``gpu*/calls/<n>/``, next to the earlier
    calls'."""
    from demhec._common import DemHECError, safe_extract

    archives = sorted(folder.glob("gpu_*.tar*"))
    if not archives:
        raise SystemExit(f"no gpu_*.tar* archive in {folder}")
    results_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=results_dir, prefix=".unpack.") as tmp:
        scratch = Path(tmp)
        for archive in archives:
            try:
                safe_extract(archive, scratch)
            except (DemHECError, tarfile.TarError) as e:
                raise SystemExit(f"{archive.name}: {e}") from None
        verify_unpacked(scratch)
        for stale in results_dir.glob("gpu*/*/checkpoints/*.ckpt"):
            stale.unlink()
        for path in sorted(p for p in scratch.rglob("*") if p.is_file()):
            dest = results_dir / path.relative_to(scratch)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
        for archive in archives:
            print(f"extracted {archive.name} into {results_dir}")
    for run in results_dir.glob("gpu*/run.json"):
        calls = run.parent / "calls"
        done = [int(p.name) for p in calls.glob("*") if p.name.isdigit()]
        dest = calls / str(max(done, default=0) + 1)
        dest.mkdir(parents=True)
        run.rename(dest / "run.json")
        if (run.parent / "logs").is_dir():
            (run.parent / "logs").rename(dest / "logs")
        print(f"filed this call's run.json and logs under {dest.relative_to(results_dir)}")


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated command-line list."""
    return tuple(x for x in text.split(",") if x)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--carry", type=Path, default=None,
                   help="the carried folder: the JPEG archive, the imagecorruptions wheel, COMMIT")
    p.add_argument("--data-root", type=Path, default=None,
                   help="the CIFAR-10 JPEG archive (default: <carry>/cifar10-jpeg-train.tar.gz)")
    p.add_argument("--results-dir", type=Path, default=ROOT / "results")
    p.add_argument("--out", default=os.environ.get("OUT"), help="where the archives go (the device's $OUT)")
    p.add_argument("--device", default=None, help="default: cuda, or cpu with --smoke")
    p.add_argument("--budget", type=float, default=None, help="seconds before every job is stopped (520; smoke 600, a guard)")
    p.add_argument("--parallel", type=int, default=None, help="jobs at once (default 9; smoke 2)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per job")
    p.add_argument("--cache-workers", type=int, default=None, help="processes building the corrupted sets")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="measure the torch.compile step cost at the end if time is left (default: not in smoke)")
    p.add_argument("--compile-time", type=float, default=150.0, help="seconds bench_compile needs")
    p.add_argument("--smoke", action="store_true", help="the whole plan on a CPU in about a minute")
    p.add_argument("--phases", type=_names, default=PHASES,
                   help=f"comma-separated subset of {','.join(PHASES)} (default: all): skip what earlier calls measured")
    p.add_argument("--only", type=_names, default=(),
                   help="comma-separated shell patterns of job names (e.g. 'c_plain_s2,c_ba_*'): only those")
    p.add_argument("--unpack", type=Path, default=None, help="extract returned archives into --results-dir")
    # a child process's own arguments
    p.add_argument("--job", help=argparse.SUPPRESS)
    p.add_argument("--status-dir", help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    p.add_argument("--check-travel", action="store_true",
                   help="only check that the checkout and --carry fit in what a device call sends")
    p.add_argument("--aside", action="store_true",
                   help=f"move what a device call does not read into {ASIDE_DIR}/ (before the call)")
    p.add_argument("--put-back", action="store_true", help="return what --aside moved (after the call)")
    args = p.parse_args(argv)
    if args.aside or args.put_back:
        moved = set_aside(ROOT) if args.aside else put_back(ROOT)
        total, _ = travel_bytes(ROOT, args.carry)
        print(f"{'set aside' if args.aside else 'put back'}: {', '.join(moved) or 'nothing'}; "
              f"a device call now sends {total / 2**20:.1f} MiB of {TRAVEL_BYTES / 2**20:.0f}")
        return None
    if args.check_travel:
        total = check_travel(ROOT, args.carry)
        print(f"a device call sends {total / 2**20:.1f} MiB of {TRAVEL_BYTES / 2**20:.0f}")
        return None
    if args.unpack:
        return unpack(args.unpack, args.results_dir)
    args.device = args.device or ("cpu" if args.smoke else "cuda")
    args.budget = args.budget or (600.0 if args.smoke else 520.0)
    args.parallel = args.parallel or (2 if args.smoke else 9)
    cores = os.cpu_count() or 2
    args.threads = args.threads or max(1, cores // max(args.parallel, 1))
    args.cache_workers = args.cache_workers or max(1, cores // 2)
    args.compile = (not args.smoke) if args.compile is None else args.compile
    if args.data_root is None:
        args.data_root = (args.carry or Path("data")) / "cifar10-jpeg-train.tar.gz"
    # Children start in the repository root, wherever this process was started.
    args.data_root, args.results_dir = args.data_root.resolve(), args.results_dir.resolve()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.job:  # a child: the parent prepared the imports through PYTHONPATH
        tune_torch(args.device, args.threads)
        status = Path(args.status_dir)
        info = run_job(args)
        (status / f"{args.job}.json").write_text(json.dumps(info))
        return None

    if not Path(args.data_root).exists():
        raise SystemExit(f"the CIFAR-10 JPEG archive {args.data_root} is missing; see this script's doc")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda, but torch sees no GPU; use --smoke on a CPU")
    env_info = prepare_imports(args.carry, args.results_dir / ("gpu_smoke" if args.smoke else "gpu") / "tmp")
    runner = Runner(args, env_info)
    runner.say(f"plan: {', '.join(runner.jobs)}; budget {args.budget:.0f} s on {device_name(args.device)}; "
               f"{args.parallel} at once, {args.threads} threads each; {env_info}")

    def stopped(signum: int, frame: object) -> None:  # the device tool's limit: pack what exists
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stopped)
    try:
        runner.run()
    finally:
        runner.stop_the_rest()
        runner.pack()
    states = {j.name: j.state for j in runner.jobs.values()}
    runner.say(f"finished: {states}")
    return None


if __name__ == "__main__":
    main()
