"""Profiles and experiments: the scale of every experiment in one name, and one setting.

A *profile* fixes the scale of every experiment:

* ``smoke``: a few digits images and a couple of steps; what the tests run (seconds).
* ``demo``: the embedded scikit-learn digits dataset (offline), ResNet-20 trained from
  scratch, then Dem-HEC; minutes on a CPU; what ``make demo`` runs.
* ``cpu``: real CIFAR-10 training images (the JPEG q75 mirror) with a 5,000-image
  evaluation split, at a CPU-sized budget.
* ``paper``: the paper's datasets (downloaded), the zoo's pretrained weights and the recipe of
  appendix A.3; needs a GPU.

An :class:`Experiment` is one (profile, dataset, backbone, seed) setting; where its files live is
:func:`.layout.result_path`'s docstring.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .._common import check_choice, check_range
from ..data import DATASETS_BY_PROFILE
from ..models import check_backbone
from ..results import REPO_ROOT
from ..training import DemHECConfig, TrainConfig

__all__ = ["BASE_SEED", "CORRUPTION_SEED", "DATASETS_BY_PROFILE", "PROFILES", "REPO_ROOT", "SUBSET_SEED",
           "Experiment", "Profile", "base_weights", "experiment_config", "get_profile"]


@dataclass(frozen=True)
class Profile:
    """The scale of every experiment in one name."""

    name: str
    description: str
    dataset: str | None  # substitute dataset for every notebook (None: the requested one)
    train_limit: int | None  # training images used (None: all)
    eval_limit: int | None  # evaluation images used (None: all)
    base: TrainConfig  # recipe for a base model that cannot be downloaded
    demhec: DemHECConfig  # fine-tuning budget and hyperparameters
    pretrained: bool  # use the zoo's / ImageNet pretrained weights where they exist
    eval_batch_size: int = 256
    entropy_images: int = 200  # images per distribution in Figures 3-4
    substitutes: dict[str, str] = field(default_factory=dict)  # backbone -> CPU stand-in
    # Per-family changes to ``base`` / ``demhec``: {"vit": {"base": {...}, "demhec": {...}}},
    # the family being the backbone name's prefix.
    overrides: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    home: str | None = None  # folder under results_dir (None: the profile's name)
    eval_per_class: int = 500  # cifar10_jpeg: images of each class held out for evaluation
    # Committed base state dicts (backbone -> path relative to the repository root) used instead
    # of training one, so that runs of another profile start from exactly the same weights;
    # another backbone's base is trained with ``base``.
    base_weights: dict[str, str] = field(default_factory=dict)
    checkpoints: str | None = None  # folder under results_dir for its models (None: <home>/checkpoints)


# Backbones too large to train on a CPU in minutes, and their stand-ins in smoke/demo (AlexNet
# also needs >= 63 px inputs, more than the embedded 32 px digits).
# ViTs trained from scratch need AdamW (SGD barely moves them in minutes); the paper's own
# ViT-L recipe (A.3) fine-tunes with batch 32, 10 epochs and lr 0.0005.
_VIT_FROM_SCRATCH = {"vit": {"base": dict(optimizer="adamw", lr=3e-3, weight_decay=0.05,
                                          warmup_epochs=1.0, epochs=15),
                             "demhec": dict(optimizer="adamw", lr=2e-4, weight_decay=0.05)}}

_CPU_STAND_INS = {"resnet50": "resnet18", "alexnet": "resnet18",
                  "vit_large_patch16_384": "vit_test", "vit_base_patch16_224": "vit_test",
                  "vit_small_patch16_224": "vit_test", "vit_tiny_patch16_224": "vit_test"}

# The demo must finish in minutes: every ImageNet-family CNN runs as the CIFAR ResNet-20 (shared
# with Table 1, so trained once) and every ViT as the small ViT. The deeper CIFAR ResNets and the
# wider RepVGGs run as ResNet-20 and RepVGG-A0: ResNet-56 with the demo recipe took 13 minutes of a
# busy 2-core machine (its base epoch costs about 1.7 times ResNet-20's, a Dem-HEC step
# about 1.4 times, measured), and `papermill 03_table1.ipynb out.ipynb -p backbone resnet56` is to
# finish in minutes.
_DEMO_STAND_INS = {**_CPU_STAND_INS, "resnet18": "resnet20", "resnet50": "resnet20",
                   "alexnet": "resnet20", "resnet32": "resnet20", "resnet44": "resnet20",
                   "resnet56": "resnet20", "repvgg_a1": "repvgg_a0", "repvgg_a2": "repvgg_a0"}

PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        "smoke", "a few digits images and two optimisation steps (tests)", "digits", 64, 24,
        TrainConfig(epochs=1, batch_size=32, lr=0.05),
        DemHECConfig(epochs=1, batch_size=16, max_steps=2, warmup_epochs=0, steps=2),
        pretrained=False, eval_batch_size=64, entropy_images=16,
        # notebook 14's default backbone, by the smallest timm ResNet (timm's own test model)
        substitutes={**_CPU_STAND_INS, "timm:resnet10t": "timm:test_resnet"}),
    "demo": Profile(
        "demo", "the embedded digits dataset, models trained here from scratch, then Dem-HEC (CPU, minutes)",
        "digits", None, None, TrainConfig(epochs=8, batch_size=64, lr=0.05),
        DemHECConfig(epochs=3, batch_size=64, warmup_epochs=0.5, lr=0.02), pretrained=False,
        eval_batch_size=256, entropy_images=200, substitutes=_DEMO_STAND_INS, overrides=_VIT_FROM_SCRATCH),
    "cpu": Profile(
        "cpu", "real CIFAR-10 train images (JPEG q75 mirror), 45k/5k split, CPU budget",
        "cifar10_jpeg", None, None, TrainConfig(epochs=15, batch_size=128, lr=0.1),
        DemHECConfig(epochs=1, batch_size=128, warmup_epochs=0.1, max_steps=150),
        pretrained=False, eval_batch_size=500, entropy_images=500),
    "paper": Profile(
        "paper", "the paper's datasets, pretrained zoo weights and recipe (A.3); GPU",
        None, None, None, TrainConfig(epochs=30, batch_size=128, lr=0.01), DemHECConfig(),
        pretrained=True, eval_batch_size=512, entropy_images=1000,
        overrides={"vit": {"demhec": dict(batch_size=32, epochs=10, lr=0.0005)}}),
}
# Positional fields above: name, description, dataset, train_limit, eval_limit, base, demhec.

# scripts/gpu_reproduction.py: the CPU reproduction's data and split at the paper's full A.3
# schedule (20 epochs, DemHECConfig's defaults) on one GPU, from the CPU reproduction's committed
# base ("gpu") and from a stronger base trained there with the zoo recipe ("gpu_strong", its
# epochs fitted to a time budget through Experiment.base_epochs). The "_smoke" twins run the same
# script on a CPU in about a minute (its test) on whatever archive the caller passes.
_CPU_BASE = "results/cpu/checkpoints/resnet20_base.pt"
_SMOKE_FINETUNE = DemHECConfig(epochs=1, batch_size=32, max_steps=3, warmup_epochs=0, steps=2)
_JPEG_GPU = "real CIFAR-10 train images (JPEG q75 mirror)"
PROFILES.update({
    "gpu": Profile(
        "gpu", f"{_JPEG_GPU}, the CPU base, A.3's full schedule; GPU", "cifar10_jpeg", None, None,
        PROFILES["cpu"].base, DemHECConfig(), pretrained=False, eval_batch_size=1000,
        entropy_images=500, home="gpu/cpu_base", base_weights={"resnet20": _CPU_BASE}),
    "gpu_strong": Profile(
        "gpu_strong", f"{_JPEG_GPU}, a zoo-recipe base trained on the GPU, A.3's full schedule; GPU",
        "cifar10_jpeg", None, None, TrainConfig(epochs=60, batch_size=128, lr=0.1), DemHECConfig(),
        pretrained=False, eval_batch_size=1000, entropy_images=500, home="gpu/strong_base"),
    "gpu_smoke": Profile(
        "gpu_smoke", "the GPU script's plan on a CPU: a few hundred images, three steps (its test)",
        "cifar10_jpeg", None, None, PROFILES["cpu"].base, _SMOKE_FINETUNE, pretrained=False,
        eval_batch_size=64, entropy_images=16, eval_per_class=5, home="gpu_smoke/cpu_base",
        base_weights={"resnet20": _CPU_BASE}),
    "gpu_strong_smoke": Profile(
        "gpu_strong_smoke", "the GPU script's stronger base on a CPU: a few hundred images (its test)",
        "cifar10_jpeg", None, None, TrainConfig(epochs=1, batch_size=64, lr=0.05), _SMOKE_FINETUNE,
        pretrained=False, eval_batch_size=64, entropy_images=16, eval_per_class=5,
        home="gpu_smoke/strong_base"),
})

# The comparison with the methods the paper compares against (Tables 3-4), on the CPU at A.3's
# full schedule: every fine-tune starts from the CPU reproduction's committed base; an architecture
# without a committed base (push-pull) is trained from scratch with the same recipe as that base.
# Models are kept where a reader looks for them (results/cpu/checkpoints/a3/).
PROFILES["a3"] = Profile(
    "a3", "real CIFAR-10 train images (JPEG q75 mirror), the CPU base, A.3's full schedule; CPU",
    "cifar10_jpeg", None, None, PROFILES["cpu"].base, DemHECConfig(), pretrained=False,
    eval_batch_size=500, entropy_images=500, home="cpu/a3", base_weights={"resnet20": _CPU_BASE},
    checkpoints="cpu/checkpoints/a3")
# The same comparison on a GPU at three seeds (scripts/gpu_reproduction.py trains and scores its
# models; scripts/comparison.py can score them on a CPU), and its smoke twin.
PROFILES["gpu_a3"] = dataclasses.replace(
    PROFILES["a3"], name="gpu_a3", description=f"{_JPEG_GPU}, the CPU base, A.3's schedule, the "
    "comparison's methods; trained on a GPU", eval_batch_size=1000, home="gpu/a3", checkpoints="gpu/a3/checkpoints")
PROFILES["a3_smoke"] = Profile(
    "a3_smoke", "the comparison's queue on a few hundred images, two steps per run (its test)",
    "cifar10_jpeg", 64, None, TrainConfig(epochs=1, batch_size=32, lr=0.05), _SMOKE_FINETUNE,
    pretrained=False, eval_batch_size=64, entropy_images=16, eval_per_class=5, home="a3_smoke",
    checkpoints="a3_smoke/checkpoints")
PROFILES["gpu_a3_smoke"] = dataclasses.replace(
    PROFILES["a3_smoke"], name="gpu_a3_smoke", base_weights={"resnet20": _CPU_BASE}, home="gpu_smoke/a3",
    checkpoints="gpu_smoke/a3/checkpoints")

# The corrupted evaluation sets are data, fixed like the released CIFAR-10-C files: every
# training seed is evaluated on the same corrupted images.
CORRUPTION_SEED = 0
BASE_SEED = 0  # the seed of every base model (see Experiment.base_config)
SUBSET_SEED = 0  # which images a profile's train_limit / eval_limit keeps


def get_profile(name: str) -> Profile:
    """The profile called ``name`` (smoke, demo, cpu, paper)."""
    return PROFILES[check_choice("profile", name, PROFILES)]


@dataclass(frozen=True)
class Experiment:
    """One (profile, dataset, backbone) setting and where its files live."""

    profile: str = "demo"
    dataset: str = "cifar10"
    backbone: str = "resnet20"
    seed: int = 0
    results_dir: str = "results"
    data_root: str = "data"
    device: str = "cpu"
    allow_train: bool = True
    recompute: bool = False
    progress: bool = False
    download: bool = False
    channels_last: bool = True  # faster convolutions on CPU and GPU; same numbers
    base_epochs: int | None = None  # replaces the profile's base epochs (time-budgeted runs)
    weights: str = ""  # a state dict to use as the base model (notebook 14); "" = the profile's

    def __post_init__(self) -> None:
        get_profile(self.profile)
        check_choice("dataset", self.dataset, DATASETS_BY_PROFILE)
        check_backbone(self.backbone)
        check_range("seed", self.seed, 0, integer=True)
        if self.base_epochs is not None:
            check_range("base_epochs", self.base_epochs, 1, integer=True)

    @property
    def prof(self) -> Profile:
        return get_profile(self.profile)

    @property
    def effective_dataset(self) -> str:
        """The dataset actually used: the profile's substitute or the requested one."""
        return self.prof.dataset or self.dataset

    @property
    def effective_backbone(self) -> str:
        return self.prof.substitutes.get(self.backbone, self.backbone)

    @property
    def root(self) -> Path:
        return Path(self.results_dir) / (self.prof.home or self.profile)

    @property
    def model_key(self) -> str:
        """The backbone as a file-name part ("timm:resnet18" -> "timm-resnet18"), with the
        stem of ``weights`` when those replace the profile's base model."""
        key = self.effective_backbone.replace(":", "-")
        return f"{key}-{Path(self.weights).stem}" if self.weights else key

    @property
    def cell_dir(self) -> Path:
        return self.root / self.effective_dataset / self.model_key

    def _override(self, which: str) -> dict[str, Any]:
        for family, changes in self.prof.overrides.items():
            if self.effective_backbone.startswith(family):
                return changes.get(which, {})
        return {}

    @property
    def base_config(self) -> TrainConfig:
        """The profile's base recipe for this backbone. Its seed is :data:`BASE_SEED` whatever the
        experiment's seed: one base model per (profile, dataset, backbone) is shared by every
        fine-tuning seed, so that runs of different seeds differ by their fine-tune alone."""
        epochs = {} if self.base_epochs is None else {"epochs": self.base_epochs}
        return replace(self.prof.base, seed=BASE_SEED, **{**self._override("base"), **epochs})

    @property
    def demhec_config(self) -> DemHECConfig:
        """The profile's Dem-HEC config for this backbone, with this experiment's seed."""
        return replace(self.prof.demhec, seed=self.seed, **self._override("demhec"))

    @property
    def base_weights_path(self) -> str | None:
        """The committed base state dict this backbone starts from in this profile (None: its base
        is trained, or downloaded)."""
        return self.prof.base_weights.get(self.effective_backbone)

    def checkpoint(self, name: str) -> Path:
        """``<root>/checkpoints/[<dataset>_]<backbone>_<name>.pt`` (or the profile's own checkpoint
        folder); the dataset is left out when the profile fixes it
        (``results/cpu/checkpoints/resnet20_base.pt``)."""
        prefix = "" if self.prof.dataset else f"{self.effective_dataset}_"
        folder = Path(self.results_dir) / self.prof.checkpoints if self.prof.checkpoints else self.root / "checkpoints"
        return folder / f"{prefix}{self.model_key}_{name}.pt"


def base_weights(exp: Experiment) -> dict[str, str]:
    """The committed base state dict a profile starts from, by path and content hash."""
    path = REPO_ROOT / exp.base_weights_path
    return {"path": exp.base_weights_path, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def experiment_config(exp: Experiment) -> dict:
    """The experiment as every result records it."""
    out = {"profile": exp.profile, "dataset": exp.effective_dataset,
           "requested_dataset": exp.dataset, "backbone": exp.effective_backbone,
           "requested_backbone": exp.backbone, "seed": exp.seed, "device": exp.device}
    if exp.base_epochs is not None:
        out["base_epochs"] = exp.base_epochs
    if exp.base_weights_path:
        out["base_weights"] = base_weights(exp)
    return out
