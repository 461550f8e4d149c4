"""Cost of test-time adaptation on the CPU reproduction: process CPU time and wall time of
scoring the 5,000 evaluation images (clean and Gaussian noise S5) plainly, with BN adaptation and
with TENT, single-threaded, for the base and Dem-HEC checkpoints (result JSON under results/cpu/).

    python benchmarks/tta_cost.py --data-root ../shared/data/cifar10-jpeg-train.tar.gz
"""

from __future__ import annotations

import argparse

import torch

from demhec.adaptation import AdaptConfig, adaptation_cost
from demhec.corruptions import corrupt_split
from demhec.experiments.inputs import eval_data
from demhec.experiments.model_cache import base_model, demhec_model
from demhec.experiments.profiles import CORRUPTION_SEED, Experiment
from demhec.results import write_result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="data")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)  # the cost of one core, and the shared machine's other users keep theirs
    exp = Experiment(profile="cpu", dataset="cifar10", backbone="resnet20", results_dir=args.results_dir,
                     data_root=args.data_root, allow_train=False)
    data = eval_data(exp)
    k = len(data.classes)
    sets = {"clean": data.images,
            "gaussian_noise_s5": corrupt_split(data.images, "gaussian_noise", 5, suite="cifar-c", seed=CORRUPTION_SEED,
                                               cache_dir=exp.results_dir + "/cache/corruptions",
                                               key=f"{exp.effective_dataset}-eval")}
    configs = {"plain": None, "bn": AdaptConfig(method="bn"), "tent": AdaptConfig(method="tent")}
    metrics = {}
    for phase, model in (("before", base_model(exp, k)), ("after", demhec_model(exp, num_classes=k))):
        for name, images in sets.items():
            cost = adaptation_cost(model, images, configs, rounds=args.rounds)
            for method in ("bn", "tent"):
                for unit in ("cpu_s", "wall_s"):
                    cost[method][f"{unit}_ratio"] = cost[method][unit] / cost["plain"][unit]
            metrics[f"{phase}/{name}"] = cost
            print(phase, name, {m: {u: round(v, 2) for u, v in c.items()} for m, c in cost.items()}, flush=True)
    write_result(exp.cell_dir / "tta_cost_cifar-c.json", kind="cost/test-time-adaptation", profile=exp.profile,
                 config={"experiment": {"profile": "cpu", "dataset": exp.effective_dataset, "backbone": "resnet20"},
                         "adapt": configs, "rounds": args.rounds, "torch_threads": torch.get_num_threads(),
                         "images_per_set": len(data), "sets": list(sets)},
                 metrics=metrics, data={**data.provenance, "count": str(len(data))}, seed=0)


if __name__ == "__main__":
    main()
