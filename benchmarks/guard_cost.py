"""Cost of the corrupted-set guard before scoring: the time to check that this machine's cached
corrupted evaluation sets are the recorded ones (read and hash every set, compare with the
profile's record), against the time to score one model on the same sets, one torch thread.

Before a comparison run is scored, :func:`demhec.experiments.inputs.checked_corrupted_sets`
hashes every set it is about to score, so that a machine making other images stops instead of
mixing scores of different images in one table. This measures what that costs, as a ratio in
one run: the guard over all 75 sets (15 corruptions x S1-S5) and scoring of the committed CPU
base on ``--score-corruptions`` of them (every severity), per set. It reads the real images
(the JPEG CIFAR-10 mirror) and needs the sets cached first
(``scripts/comparison.py --build-cache --runs base --stages manifest``); a set that is missing
would be built inside the guard's time, so the benchmark refuses to start.

    python benchmarks/guard_cost.py --data-root ../shared/data/cifar10-jpeg-train.tar.gz \
        --out results/cpu/bench/guard_cost.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import demhec.results
from demhec.corruptions import CORRUPTIONS
from demhec.evaluation import evaluate
from demhec.experiments.comparison import RUNS, comparison_experiment, train_run_model
from demhec.experiments.inputs import (
    checked_corrupted_sets,
    corrupted_eval_kw,
    eval_data,
    uncached_sets,
)

SEVERITIES = [1, 2, 3, 4, 5]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="data")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--score-corruptions", type=int, default=3,
                   help="how many of the 15 corruptions (at every severity) the scoring side covers")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=None, help="write the ratio to this result JSON")
    args = p.parse_args()
    exp = comparison_experiment(RUNS["base"], results_dir=args.results_dir, data_root=args.data_root,
                                allow_train=False)
    missing = uncached_sets(exp, "cifar-c", list(CORRUPTIONS), SEVERITIES)
    if missing:
        raise SystemExit(f"{len(missing)} corrupted sets are not cached ({', '.join(missing[:4])}, ...): "
                         "build them first (scripts/comparison.py --build-cache)")
    data = eval_data(exp)
    model = train_run_model(RUNS["base"], exp).eval()
    scored = list(CORRUPTIONS)[:args.score_corruptions]
    kw = corrupted_eval_kw(exp)
    kw = {k: v for k, v in kw.items() if k != "progress"}
    guard_s, score_s = [], []
    for r in range(args.rounds):
        # Alternating order, so a slow stretch of the shared machine hits both sides.
        for side in ("guard", "score") if r % 2 == 0 else ("score", "guard"):
            t = time.perf_counter()
            if side == "guard":
                checked_corrupted_sets(exp, "cifar-c", list(CORRUPTIONS), SEVERITIES)
                guard_s.append(time.perf_counter() - t)
            else:
                evaluate(model, data, scored, SEVERITIES, "cifar-c", **kw)
                score_s.append(time.perf_counter() - t)
        print(f"round {r + 1}: guard {guard_s[-1]:.2f} s (75 sets), scoring {score_s[-1]:.1f} s "
              f"({len(scored) * len(SEVERITIES)} sets and clean)")
    per_set_guard = statistics.median(guard_s) / (len(CORRUPTIONS) * len(SEVERITIES))
    per_set_score = statistics.median(score_s) / (len(scored) * len(SEVERITIES) + 1)
    ratio = per_set_guard / per_set_score
    print(f"guard / scoring, per set: {ratio:.4f} ({len(data.labels):,} images a set)")
    if args.out:
        demhec.results.write_result(
            args.out, kind="cost/guard", profile=exp.profile,
            config={k: v for k, v in vars(args).items() if k not in ("out", "data_root", "results_dir")},
            metrics={"ratio_guard_over_scoring_per_set": ratio, "guard_s": guard_s, "score_s": score_s,
                     "sets_guarded": len(CORRUPTIONS) * len(SEVERITIES),
                     "sets_scored": len(scored) * len(SEVERITIES) + 1, "images_per_set": len(data.labels)},
            data={"source": "the JPEG quality-75 CIFAR-10 mirror's evaluation split (real images), "
                            "its corrupted sets from the cache", "cpu_count": str(os.cpu_count())},
            seed=0)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
