"""Step cost of Dem-HEC relative to a plain cross-entropy step .

Both steps run the library's own loops (``demhec.train`` and ``demhec.finetune``) on the same
model architecture and the same batches; the per-step wall time comes from the ``on_step``
callback, the first steps are discarded as warm-up, and the median is reported. The compute
bound for T_he ascent steps is (2*T_he + 7) / 3 plain steps (see docs/distributed.md).

    python benchmarks/step_cost.py --steps 12 --the 1 5 10 --rounds 3
    python benchmarks/step_cost.py --the 1 2 5 --freeze auto --out results/cpu/bench/step_cost_the.json

``--out`` writes the ratios as a result JSON (config, versions, git commit; no absolute times),
the file notebooks 11 and 12 read for the price of each T_he. ``--the 0`` times the
random-noise control's step (the full loss with x' uniform in the eps-ball, ``samples="uniform"``):
no ascent passes, so its bound is the T_he = 0 value of the formula, 7/3.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import demhec
import demhec.results
from demhec.models import get_model


def step_times(run, steps: int) -> list[float]:
    stamps: list[float] = []
    run(lambda step, parts: stamps.append(time.perf_counter()))
    return [b - a for a, b in zip(stamps, stamps[1:])][2:]  # drop warm-up


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--the", type=int, nargs="+", default=[1, 5, 10], help="ascent steps T_he; 0 = the random-noise control (no ascent)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--amp", action="store_true", help="bf16 autocast for the training passes")
    p.add_argument("--freeze", default="none", help="'none' (full cost, as in the bound) or 'auto'")
    p.add_argument("--compile", action="store_true", help="torch.compile the training passes")
    p.add_argument("--rounds", type=int, default=3, help="alternating measurement rounds")
    p.add_argument("--out", default=None, help="write the ratios to this result JSON")
    args = p.parse_args()
    torch.manual_seed(0)
    n = args.batch_size * args.steps
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (n,))

    def model():
        torch.manual_seed(0)
        return get_model(args.model, num_classes=10).to(args.device)

    plain_cfg = demhec.TrainConfig(epochs=1, batch_size=args.batch_size, augment="none")

    def plain_step() -> float:
        return statistics.median(step_times(
            lambda cb: demhec.train(model(), (x, y), plain_cfg, device=args.device,
                                    channels_last=args.channels_last, compile=args.compile,
                                    on_step=cb), args.steps))

    def demhec_step(t_he: int) -> float:
        ascent = {"steps": t_he} if t_he > 0 else {"samples": "uniform"}
        cfg = demhec.DemHECConfig(epochs=1, batch_size=args.batch_size, augment="none",
                                  warmup_epochs=0, freeze=args.freeze, **ascent)
        return statistics.median(step_times(
            lambda cb: demhec.finetune(model(), (x, y), cfg, device=args.device,
                                       channels_last=args.channels_last, amp=args.amp,
                                       compile=args.compile, on_step=cb), args.steps))

    # Rounds alternate plain and Dem-HEC measurements, and each round's ratio uses its own plain
    # step, so slow drifts of a shared machine cancel; the median over rounds is reported.
    ratios: dict[int, list[float]] = {t: [] for t in args.the}
    for r in range(args.rounds):
        plain = plain_step()
        print(f"round {r + 1}: plain CE step {plain * 1e3:.1f} ms ({args.model}, batch "
              f"{args.batch_size}, {args.device})")
        for t_he in args.the:
            t = demhec_step(t_he)
            ratios[t_he].append(t / plain)
            print(f"round {r + 1}: T_he={t_he:2d}: Dem-HEC step {t * 1e3:.1f} ms, ratio {t / plain:.2f}")
    for t_he in args.the:
        rs = ", ".join(f"{v:.2f}" for v in ratios[t_he])
        print(f"T_he={t_he:2d}: median ratio {statistics.median(ratios[t_he]):.2f} over rounds [{rs}] "
              f"(compute bound {(2 * t_he + 7) / 3:.2f})")
    key = 5 if 5 in ratios else args.the[-1]
    print(f"ratio (T_he={key}): {statistics.median(ratios[key]):.2f}")
    if args.out:
        demhec.results.write_result(
            args.out, kind="cost/dem-hec-step", profile="cpu" if args.device == "cpu" else args.device,
            config={k: v for k, v in vars(args).items() if k != "out"},
            metrics={"ratio": {str(t): statistics.median(v) for t, v in ratios.items()},
                     "round_ratios": {str(t): v for t, v in ratios.items()},
                     "compute_bound": {str(t): (2 * t + 7) / 3 for t in ratios}},
            data={"source": "random uint8 images (timing only)", "threads": str(torch.get_num_threads())},
            seed=0)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
