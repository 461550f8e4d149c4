"""The GPU run of the CPU reproduction's configs (``scripts/gpu_reproduction.py``, A.3's full
schedule), read back from its result files and set beside the CPU runs and the paper."""

from __future__ import annotations

import os

import pandas as pd

from ..results import paper_table, read_result
from .layout import result_path
from .profiles import Experiment
from .runs import DEMHEC, NOISE, RUNS, get
from .tables import ablation_summary

GPU_BASES = {"gpu": "CPU base", "gpu_strong": "GPU-trained base"}


# What the script fine-tunes from each base: the paper's config, its plain control, the InfoNCE
# ablation and the CPU reproduction's best config, and the two controls of the paper's
# config (random noise in the eps-ball, Gaussian-noise augmentation); from the stronger base the
# first two.
GPU_A_RUNS = ("demhec", "plain", "no_infonce", "late_frozen_tuned", "random_noise", "gaussian_aug")


GPU_B_RUNS = ("demhec", "plain")


def gpu_records(results_dir: str | os.PathLike, smoke: bool = False) -> dict[str, tuple[dict, dict]]:
    """The GPU script's robustness results (``cifar-c``) that exist, per profile: ``(before,
    {(run, 0): after})``. Empty when the script has not been run (no GPU lent yet)."""
    out = {}
    for profile in GPU_BASES:
        exp = Experiment(profile=profile + ("_smoke" if smoke else ""), dataset="cifar10",
                         backbone="resnet20", results_dir=str(results_dir), allow_train=False)
        before = exp.cell_dir / "before_cifar-c.json"
        if not before.exists():
            continue
        runs = {}
        for run in RUNS:
            path = result_path(exp, get(run))
            if path.exists():
                runs[(run, 0)] = read_result(path)
        out[profile] = (read_result(before), runs)
    return out


def gpu_summary(records: dict[str, tuple[dict, dict]], cpu: tuple[dict, dict] | None = None) -> pd.DataFrame:
    """The GPU runs (A.3's 20 epochs) as :func:`.tables.ablation_summary` rows, one block per base, with
    the CPU reproduction's same runs (its short budget; ``cpu`` = (before, runs)) and the paper's
    Table 1 ResNet-20 column (noise and all-corruption means at S5; the paper states no clean
    accuracy for it) beside them."""
    blocks = []
    for profile, (before, runs) in records.items():
        base = GPU_BASES[profile]
        if profile == "gpu_strong":  # its recipe's epochs: the first loan's base had one
            n = before["config"]["model"]["epochs"]
            base += f" ({n} epoch{'s' * (n != 1)})"
        blocks.append(ablation_summary(before, runs).assign(source=f"GPU, A.3 schedule, {base}"))
    if cpu is not None:
        before, runs = cpu
        blocks.append(ablation_summary(before, runs).assign(source="CPU, 150-step budget, CPU base"))
    ref = paper_table("table1")
    ref = ref[(ref.dataset == "cifar10") & (ref.backbone == "resnet20") & (ref.severity == 5)]
    rows = []
    for phase in ("before", "after"):
        t = ref[ref.phase == phase]
        rows.append({"run": "base" if phase == "before" else "demhec",
                     "label": "base model" if phase == "before" else DEMHEC.label,
                     "seed": None, "clean": float("nan"),
                     "noise_s5": float(t[t.corruption.isin(NOISE)].accuracy.mean()),
                     "all_s5": float(t.accuracy.mean())})
    paper = pd.DataFrame(rows)
    for col in ("clean", "noise_s5", "all_s5"):
        paper[f"d_{col}"] = paper[col] - paper[col].iloc[0]
    blocks.append(paper.assign(source="paper, Table 1 (ResNet-20)"))
    out = pd.concat(blocks, ignore_index=True)
    return out[["source", "run", "label", "seed", "clean", "noise_s5", "all_s5", "d_clean", "d_noise_s5", "d_all_s5"]]
