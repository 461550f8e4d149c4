"""Step cost of every compared method relative to a plain fine-tune step, in one run.

Each method is the comparison's fine-tune (``demhec.experiments.comparison.COMPARISON``: A.3's
config with the run's changes, the paper's trainable layers) stepped through the library's own
``demhec.finetune`` on the same random batches; the per-step wall time comes from the ``on_step``
callback, the first steps are dropped, and the median is taken. Rounds alternate the plain step
and each method so that a drift of a shared machine cancels; each round's ratio uses its own plain
step, and the median over rounds is reported.

    python benchmarks/method_cost.py --threads 1 --out results/cpu/bench/method_cost.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

import demhec
import demhec.results
from demhec.experiments.comparison import COMPARISON, comparison_experiment, run_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=6, help="steps per measurement; the first 2 are warm-up")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", default="", help="comma-separated comparison runs (default: every fine-tune)")
    p.add_argument("--out", default=None, help="write the ratios to this result JSON")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n = args.batch_size * args.steps
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (n,))
    wanted = [r for r in args.runs.split(",") if r]
    runs = [r for r in COMPARISON if r.fine_tuned and (not wanted or r.name in wanted)]
    configs = {r.name: (r.backbone, replace(run_config(comparison_experiment(r), r), epochs=1, warmup_epochs=0,
                                            batch_size=args.batch_size)) for r in runs}
    plain_backbone, plain_cfg = configs.get("plain") or (
        "resnet20", replace(demhec.DemHECConfig(epochs=1, warmup_epochs=0, batch_size=args.batch_size),
                            alpha=0.0, lambda_c=0.0, lambda_kd=0.0))

    def step(backbone: str, cfg: demhec.DemHECConfig) -> float:
        torch.manual_seed(0)
        stamps: list[float] = []
        demhec.finetune(demhec.get_model(backbone, num_classes=10), (x, y), cfg, channels_last=True,
                        on_step=lambda s, parts: stamps.append(time.perf_counter()))
        return statistics.median([b - a for a, b in zip(stamps, stamps[1:])][1:])

    ratios: dict[str, list[float]] = {name: [] for name in configs}
    for r in range(args.rounds):
        for name, (backbone, cfg) in configs.items():
            plain = step(plain_backbone, plain_cfg)
            t = step(backbone, cfg)
            ratios[name].append(t / plain)
            print(f"round {r + 1}: {name}: {t * 1e3:.0f} ms against plain {plain * 1e3:.0f} ms, ratio "
                  f"{t / plain:.2f}", flush=True)
    summary = {k: statistics.median(v) for k, v in ratios.items()}
    for k, v in summary.items():
        print(f"{k}: {v:.2f} plain steps")
    if args.out:
        demhec.results.write_result(
            args.out, kind="cost/method-step", profile="cpu",
            config={**{k: v for k, v in vars(args).items() if k != "out"}, "runs": list(configs)},
            metrics={"ratio": summary, "round_ratios": ratios},
            data={"source": "random uint8 images (timing only)", "threads": str(torch.get_num_threads())},
            seed=0)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
