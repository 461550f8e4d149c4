"""How many torch threads should the tests and the notebook kernels use? Two over one, idle and loaded.

A 2-core CI machine is often busy with something else. A multi-threaded op ends each parallel
region at a barrier, so when another process holds one core the thread on that core makes the
other wait for its time slice on every op. This benchmark steps the same plain fine-tune
(ResNet-20, the paper's trainable layers) with 1 and with 2 torch threads, first on an otherwise
idle machine and then beside ``--burners`` busy-loop processes, and reports the ratio
(2 threads / 1 thread) of the median step time in each setting. Each run is a fresh process, so
the thread count is set before torch starts its pools, and the rounds alternate the two
counts so that a drift of a shared machine hits both sides of a ratio.

    python benchmarks/thread_load.py --out results/cpu/bench/thread_load.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import torch

import demhec.results

STEP = r"""
import json, statistics, sys, time
import torch
import demhec
from demhec.models import get_model
batch, steps = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
x = torch.randint(0, 256, (batch * steps, 3, 32, 32), dtype=torch.uint8)
y = torch.randint(0, 10, (batch * steps,))
cfg = demhec.DemHECConfig(epochs=1, batch_size=batch, warmup_epochs=0, alpha=0.0, lambda_c=0.0, lambda_kd=0.0)
stamps = []
demhec.finetune(get_model("resnet20", num_classes=10), (x, y), cfg,
                on_step=lambda step, parts: stamps.append(time.perf_counter()))
print(json.dumps({"threads": torch.get_num_threads(),
                  "step_s": statistics.median([b - a for a, b in zip(stamps, stamps[1:])][2:])}))
"""


def step_seconds(threads: int, batch: int, steps: int) -> float:
    """The median plain step of a fresh process with ``threads`` torch threads."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", STEP, str(batch), str(steps)], env=env, check=True,
                         capture_output=True, text=True).stdout
    row = json.loads(out.strip().splitlines()[-1])
    assert row["threads"] == threads, row
    return row["step_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="steps per run; the first 3 are warm-up")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--burners", type=int, default=1, help="busy-loop processes in the loaded setting")
    p.add_argument("--out", default=None, help="write the ratios to this result JSON")
    args = p.parse_args()
    settings: dict[str, dict[str, list[float]]] = {}
    for setting, burners in (("idle", 0), ("loaded", args.burners)):
        procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(burners)]
        try:
            times: dict[str, list[float]] = {"1": [], "2": []}
            for r in range(args.rounds):
                for threads in (1, 2) if r % 2 == 0 else (2, 1):
                    times[str(threads)].append(step_seconds(threads, args.batch_size, args.steps))
                print(f"{setting}, round {r + 1}: 1 thread {times['1'][-1] * 1e3:.0f} ms, "
                      f"2 threads {times['2'][-1] * 1e3:.0f} ms")
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
        settings[setting] = times
    ratio = {s: statistics.median(t["2"]) / statistics.median(t["1"]) for s, t in settings.items()}
    for s, v in ratio.items():
        print(f"{s}: 2 threads / 1 thread step = {v:.2f}")
    if args.out:
        demhec.results.write_result(
            args.out, kind="cost/threads", profile="cpu",
            config={k: v for k, v in vars(args).items() if k != "out"},
            metrics={"ratio_two_over_one_thread": ratio,
                     "step_ms": {s: {k: [round(x * 1e3, 1) for x in v] for k, v in t.items()}
                                 for s, t in settings.items()}},
            data={"source": "random uint8 images (timing only)", "cpu_count": str(os.cpu_count())},
            seed=0)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
