"""Does ``torch.compile`` shorten a CPU training step? Compiled over eager, in one run.

For a plain fine-tune (clean cross-entropy only) and a Dem-HEC fine-tune (A.3's loss, T_he = 5),
both with the paper's trainable layers (``freeze="auto"``), the same batches are stepped eagerly
and with ``compile=True``; rounds alternate the two so that a drift of a shared machine cancels,
and each round's ratio uses its own eager step. The first steps of every run (compilation
included) are dropped. The compiled and eager runs start from the same weights and see the same
batches, so their weights after the last step are compared too: a compiled queue is only worth
running when it computes the same model within float tolerance.

    python benchmarks/compile_cost.py --threads 1 --out results/cpu/bench/compile_cost.json
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import demhec
import demhec.results
from demhec.models import get_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=14, help="steps per run; the first 4 are warm-up")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write the ratios to this result JSON")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n = args.batch_size * args.steps
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (n,))
    configs = {
        "plain": demhec.DemHECConfig(epochs=1, batch_size=args.batch_size, warmup_epochs=0,
                                     alpha=0.0, lambda_c=0.0, lambda_kd=0.0),
        "demhec": demhec.DemHECConfig(epochs=1, batch_size=args.batch_size, warmup_epochs=0),
    }

    def run(cfg: demhec.DemHECConfig, compile: bool) -> tuple[float, torch.nn.Module]:
        torch.manual_seed(0)
        model = get_model(args.model, num_classes=10)
        stamps: list[float] = []
        out = demhec.finetune(model, (x, y), cfg, compile=compile, channels_last=True,
                              on_step=lambda step, parts: stamps.append(time.perf_counter()))
        return statistics.median([b - a for a, b in zip(stamps, stamps[1:])][3:]), out

    ratios: dict[str, list[float]] = {k: [] for k in configs}
    max_diff: dict[str, float] = {}
    eager_ms: dict[str, list[float]] = {k: [] for k in configs}
    for r in range(args.rounds):
        for name, cfg in configs.items():
            t_eager, m_eager = run(cfg, False)
            t_comp, m_comp = run(cfg, True)
            ratios[name].append(t_comp / t_eager)
            eager_ms[name].append(t_eager * 1e3)
            diff = max((a.float() - b.float()).abs().max().item()
                       for a, b in zip(m_eager.state_dict().values(), m_comp.state_dict().values())
                       if a.is_floating_point())
            max_diff[name] = max(diff, max_diff.get(name, 0.0))
            print(f"round {r + 1}: {name}: eager {t_eager * 1e3:.1f} ms, compiled {t_comp * 1e3:.1f} ms, "
                  f"ratio {t_comp / t_eager:.2f}; weights differ by at most {diff:.2e}")
    summary = {k: statistics.median(v) for k, v in ratios.items()}
    for k, v in summary.items():
        print(f"{k}: compiled / eager step = {v:.2f} (median of {args.rounds} rounds); "
              f"largest weight difference after {args.steps} steps {max_diff[k]:.2e}")
    if args.out:
        demhec.results.write_result(
            args.out, kind="cost/compile", profile="cpu",
            config={k: v for k, v in vars(args).items() if k != "out"},
            metrics={"ratio_compiled_over_eager": summary, "round_ratios": ratios,
                     "max_weight_difference": max_diff},
            data={"source": "random uint8 images (timing only)", "threads": str(torch.get_num_threads())},
            seed=0)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
