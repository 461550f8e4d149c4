"""Profiles and the experiment pipeline behind the notebooks and the CLI.

A *profile* fixes the scale of every experiment:

* ``smoke``: a few digits images and a couple of steps; what the tests run (seconds).
* ``demo``: the embedded scikit-learn digits dataset (offline), ResNet-20 trained from
  scratch, then Dem-HEC; minutes on a CPU; what ``make demo`` runs.
* ``cpu``: real CIFAR-10 training images (the JPEG q75 mirror) with a 5,000-image
  evaluation split, at a CPU-sized budget.
* ``paper``: the paper's datasets (downloaded), the zoo's pretrained weights and the recipe of
  appendix A.3; needs a GPU.

The pipeline is cached at two levels: model checkpoints under
``<results_dir>/<profile>/checkpoints/`` and one JSON result per table cell under
``<results_dir>/<profile>/<dataset>/<backbone>/``. Everything is computed only when
``allow_train`` is set; otherwise a missing file is named in the error.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ._common import DemHECError, atomic_write, check_choice, check_range
from .results import check_writable, compare_with_paper, get_or_compute, paper_table, read_result
from .training import DemHECConfig, TrainConfig, finetune, train

log = logging.getLogger(__name__)

__all__ = [
    "PROFILES",
    "Experiment",
    "Profile",
    "base_model",
    "before_after_table",
    "demhec_model",
    "entropy_result",
    "eval_data",
    "get_profile",
    "robustness_result",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JPEG_ARCHIVE = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg-train.tar.gz"


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
# with Table 1, so trained once) and every ViT as the small ViT.
_DEMO_STAND_INS = {**_CPU_STAND_INS, "resnet18": "resnet20", "resnet50": "resnet20",
                   "alexnet": "resnet20"}

PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        description="a few digits images and two optimisation steps (tests)",
        dataset="digits", train_limit=64, eval_limit=24,
        base=TrainConfig(epochs=1, batch_size=32, lr=0.05),
        demhec=DemHECConfig(epochs=1, batch_size=16, max_steps=2, warmup_epochs=0, steps=2),
        pretrained=False, eval_batch_size=64, entropy_images=16,
        # notebook 10's default backbone, by the smallest timm ResNet (timm's own test model)
        substitutes={**_CPU_STAND_INS, "timm:resnet10t": "timm:test_resnet"},
    ),
    "demo": Profile(
        name="demo",
        description="the embedded digits dataset, ResNet-20 from scratch, then Dem-HEC (CPU, minutes)",
        dataset="digits", train_limit=None, eval_limit=None,
        base=TrainConfig(epochs=8, batch_size=64, lr=0.05),
        demhec=DemHECConfig(epochs=3, batch_size=64, warmup_epochs=0.5, lr=0.02),
        pretrained=False, eval_batch_size=256, entropy_images=200,
        substitutes=_DEMO_STAND_INS, overrides=_VIT_FROM_SCRATCH,
    ),
    "cpu": Profile(
        name="cpu",
        description="real CIFAR-10 train images (JPEG q75 mirror), 45k/5k split, CPU budget",
        dataset="cifar10_jpeg", train_limit=None, eval_limit=None,
        base=TrainConfig(epochs=15, batch_size=128, lr=0.1),
        demhec=DemHECConfig(epochs=1, batch_size=128, warmup_epochs=0.1, max_steps=150),
        pretrained=False, eval_batch_size=500, entropy_images=500,
    ),
    "paper": Profile(
        name="paper",
        description="the paper's datasets, pretrained zoo weights and recipe (A.3); GPU",
        dataset=None, train_limit=None, eval_limit=None,
        base=TrainConfig(epochs=30, batch_size=128, lr=0.01),
        demhec=DemHECConfig(),
        pretrained=True, eval_batch_size=512, entropy_images=1000,
        overrides={"vit": {"demhec": dict(batch_size=32, epochs=10, lr=0.0005)}},
    ),
}

# The corrupted evaluation sets are data, fixed like the released CIFAR-10-C files: every
# training seed is evaluated on the same corrupted images.
CORRUPTION_SEED = 0

DATASETS_BY_PROFILE = ("cifar10", "cifar100", "tinyimagenet", "imagenette", "digits",
                       "cifar10_jpeg", "imagefolder")


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
    weights: str = ""  # a state dict to use as the base model (notebook 10); "" = the profile's

    def __post_init__(self) -> None:
        from .models import check_backbone

        get_profile(self.profile)
        check_choice("dataset", self.dataset, DATASETS_BY_PROFILE)
        check_backbone(self.backbone)
        check_range("seed", self.seed, 0, integer=True)

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
        return Path(self.results_dir) / self.profile

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
        """The profile's base recipe for this backbone, with this experiment's seed."""
        return replace(self.prof.base, seed=self.seed, **self._override("base"))

    @property
    def demhec_config(self) -> DemHECConfig:
        """The profile's Dem-HEC config for this backbone, with this experiment's seed."""
        return replace(self.prof.demhec, seed=self.seed, **self._override("demhec"))

    def checkpoint(self, name: str) -> Path:
        """``<root>/checkpoints/[<dataset>_]<backbone>_<name>.pt``; the dataset is left out when
        the profile fixes it (``results/cpu/checkpoints/resnet20_base.pt``)."""
        prefix = "" if self.prof.dataset else f"{self.effective_dataset}_"
        return self.root / "checkpoints" / f"{prefix}{self.model_key}_{name}.pt"


# --- data ---------------------------------------------------------------------------------


def _subset(arrays: Any, limit: int | None, seed: int) -> Any:
    if limit is None or limit >= len(arrays):
        return arrays
    idx = np.sort(np.random.default_rng(seed).choice(len(arrays), size=limit, replace=False))
    prov = {**arrays.provenance, "subset": f"{limit} images (seed {seed})"}
    return dataclasses.replace(arrays, images=arrays.images[idx], labels=arrays.labels[idx],
                               provenance=prov)


def load_named(name: str, split: str, data_root: str | os.PathLike = "data", *,
               download: bool = False, cache_dir: str | os.PathLike = "results/cache",
               progress: bool = False) -> Any:
    """Any dataset the profiles use, by name, as :class:`~demhec.data.ImageArrays`.

    ``cifar10_jpeg`` is the CPU profile's split of the CIFAR-10 JPEG mirror: ``data_root`` is
    the archive or its extracted folder (default: ``../shared/data`` beside the checkout).
    """
    from .data import cifar10_jpeg_split, load_arrays

    check_choice("dataset", name, DATASETS_BY_PROFILE)
    check_choice("split", split, ("train", "test"))
    if name == "cifar10_jpeg":
        source = Path(data_root) if str(data_root) not in ("", "data") else DEFAULT_JPEG_ARCHIVE
        train, held_out = cifar10_jpeg_split(source, Path(cache_dir) / "jpeg",
                                             eval_per_class=500, split_seed=0, progress=progress)
        arrays = train if split == "train" else held_out
        source_name = {"source": f"CIFAR-10 train images from a JPEG quality-75 mirror ({source.name})"}
        return dataclasses.replace(arrays, provenance={**arrays.provenance, **source_name})
    kw: dict[str, Any] = {}
    if name == "imagenette":
        kw = {"size": "320px", "image_size": 224}
    arrays = load_arrays(name, split, data_root, download, progress=progress, **kw)
    # Results must not hold absolute paths of this machine.
    prov = {k: v.replace(str(Path(data_root).resolve()), "<data_root>").replace(str(data_root), "<data_root>")
            for k, v in arrays.provenance.items()}
    return dataclasses.replace(arrays, provenance=prov)


def _load(exp: Experiment, split: str) -> Any:
    arrays = load_named(exp.effective_dataset, split, exp.data_root, download=exp.download,
                        cache_dir=Path(exp.results_dir) / "cache", progress=exp.progress)
    limit = exp.prof.train_limit if split == "train" else exp.prof.eval_limit
    return _subset(arrays, limit, seed=0)


def train_data(exp: Experiment) -> Any:
    return _load(exp, "train")


def eval_data(exp: Experiment) -> Any:
    return _load(exp, "test")


def _provenance(arrays: Any) -> dict:
    prov = dict(arrays.provenance)
    prov["count"] = str(len(arrays))
    return prov


# --- models -------------------------------------------------------------------------------


def _new_model(exp: Experiment, num_classes: int, pretrained: bool | str) -> nn.Module:
    from .models import get_model

    return get_model(exp.effective_backbone, num_classes=num_classes, pretrained=pretrained)


def _save_state(model: nn.Module, path: Path) -> None:
    with atomic_write(path) as f:
        torch.save(model.state_dict(), f)


def _model_from(path: Path, exp: Experiment, num_classes: int) -> nn.Module:
    model = _new_model(exp, num_classes, pretrained=str(path))
    return model.to(exp.device).eval()


def _cached_model(exp: Experiment, path: Path, num_classes: int, what: str,
                  fit: Callable[[Any, Path], nn.Module]) -> nn.Module:
    """Load the state dict at ``path`` or, when allowed, ``fit`` a model (resumable through
    ``<path>.ckpt``), save it atomically and drop the resume checkpoint."""
    if path.exists() and not exp.recompute:
        return _model_from(path, exp, num_classes)
    if not exp.allow_train:
        raise DemHECError(f"{what} checkpoint {path.name} is missing under {path.parent}; "
                          "set allow_train=True to compute it")
    check_writable(path.parent)
    resume = path.with_suffix(".ckpt")
    model = fit(train_data(exp), resume)
    _save_state(model, path)
    resume.unlink(missing_ok=True)
    return model.eval()


def base_model(exp: Experiment, num_classes: int | None = None) -> nn.Module:
    """The model before Dem-HEC: the zoo's pretrained weights (paper profile, CIFAR zoo
    backbones) or one trained here with the profile's base recipe (cached checkpoint)."""
    from .models import CIFAR_WEIGHT_URLS

    k = num_classes if num_classes is not None else len(train_data(exp).classes)
    if exp.weights:
        return _model_from(Path(exp.weights), exp, k)
    if exp.prof.pretrained and (exp.effective_backbone, exp.effective_dataset) in CIFAR_WEIGHT_URLS:
        return _new_model(exp, k, pretrained=True).to(exp.device).eval()

    def fit(data: Any, resume: Path) -> nn.Module:
        model = _new_model(exp, k, pretrained=exp.prof.pretrained)
        log.info("training base %s on %s (%d images)", exp.effective_backbone,
                 exp.effective_dataset, len(data))
        return train(model, data, exp.base_config, device=exp.device, checkpoint=resume,
                     progress=exp.progress, channels_last=exp.channels_last)

    return _cached_model(exp, exp.checkpoint("base"), k, "base model", fit)


def demhec_model(exp: Experiment, config: DemHECConfig | None = None, tag: str = "demhec",
                 num_classes: int | None = None) -> nn.Module:
    """The base model fine-tuned with Dem-HEC (``config`` defaults to the profile's)."""
    path = exp.checkpoint(tag if exp.seed == 0 else f"{tag}_seed{exp.seed}")
    cfg = replace(config, seed=exp.seed) if config else exp.demhec_config
    k = num_classes or len(train_data(exp).classes)

    def fit(data: Any, resume: Path) -> nn.Module:
        return finetune(base_model(exp, k), data, cfg, device=exp.device, checkpoint=resume,
                        progress=exp.progress, channels_last=exp.channels_last)

    return _cached_model(exp, path, k, "Dem-HEC", fit)


# --- results --------------------------------------------------------------------------------


def _corrupted_eval_kw(exp: Experiment) -> dict[str, Any]:
    """Where and how the experiment's corrupted evaluation sets are made, cached and scored:
    every result that reads them must see the same images."""
    return dict(seed=CORRUPTION_SEED, cache_dir=Path(exp.results_dir) / "cache" / "corruptions",
                key=f"{exp.effective_dataset}-eval", batch_size=exp.prof.eval_batch_size, device=exp.device)


def robustness_result(
    exp: Experiment,
    phase: str = "before",
    suite: str = "cifar-c",
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] | None = None,
    *,
    config: DemHECConfig | None = None,
    tag: str | None = None,
    adapt: str | None = None,
) -> dict:
    """The JSON result of evaluating the ``phase`` model ("before" = base, "after" = Dem-HEC,
    or "baseline:<method>") on clean data and on every corruption cell; with ``adapt`` ("bn",
    "tent"), adapted at test time (:mod:`demhec.adaptation`, its default settings) and timed
    against a plain evaluation of the same model on the same cached sets."""
    from .corruptions import PAPER_CORRUPTIONS, PAPER_SEVERITIES
    from .evaluation import evaluate

    corruptions = list(PAPER_CORRUPTIONS if corruptions is None else corruptions)
    severities = list(PAPER_SEVERITIES if severities is None else severities)
    if phase == "after" and tag is None:
        tag = config_tag(exp, config)
    name = tag or phase.replace(":", "_")
    name += f"_{adapt}" if adapt else ""
    suffix = "" if exp.seed == 0 else f"_seed{exp.seed}"
    path = exp.cell_dir / f"{name}_{suite}{suffix}.json"

    def compute() -> dict:
        data = eval_data(exp)
        k = len(data.classes)
        if phase == "before":
            model, cfg = base_model(exp, k), exp.base_config
        elif phase == "after":
            cfg = replace(config, seed=exp.seed) if config else exp.demhec_config
            model = demhec_model(exp, cfg, tag=name.removesuffix(f"_{adapt}").replace("after", "demhec", 1),
                                 num_classes=k)
        elif phase.startswith("baseline:"):
            model, cfg = baseline_model(exp, phase.split(":", 1)[1], k), exp.base_config
        else:
            raise DemHECError(f"unknown phase {phase!r}; valid: before, after, baseline:<method>")
        run = functools.partial(evaluate, model, data, corruptions, severities, suite,
                                progress=exp.progress, **_corrupted_eval_kw(exp))
        extra_config, extra_metrics = {}, {}
        if adapt is not None:
            from .adaptation import AdaptConfig
            from .corruptions import corruption_grid

            kw = _corrupted_eval_kw(exp)
            for _ in corruption_grid(data.images, corruptions, severities, suite=suite, seed=kw["seed"],
                                     cache_dir=kw["cache_dir"], key=kw["key"]):
                pass  # make the cache first, so that neither timing includes generating it
            t0 = time.perf_counter()
            run()
            plain = time.perf_counter() - t0
            t0 = time.perf_counter()
            table = run(adapt=adapt)
            adapted = time.perf_counter() - t0
            extra_config = {"adapt": dataclasses.replace(AdaptConfig(), method=adapt),
                            "torch_threads": torch.get_num_threads()}
            extra_metrics = {"seconds_plain": plain, "seconds_adapted": adapted,
                             "relative_cost": adapted / plain}
        else:
            table = run()
        return dict(kind=f"robustness/{phase}" + (f"+{adapt}" if adapt else ""), profile=exp.profile,
                    config={"experiment": _exp_config(exp), "model": cfg, "suite": suite,
                            "corruptions": corruptions, "severities": severities,
                            "corruption_seed": CORRUPTION_SEED, **extra_config},
                    metrics={"clean_accuracy": float(table.loc[table.corruption == "clean", "accuracy"].iloc[0]),
                             "table": table, **extra_metrics},
                    data=_provenance(data), seed=exp.seed)

    return get_or_compute(path, compute, allow_train=exp.allow_train, recompute=exp.recompute,
                          what=f"{phase}{' + ' + adapt if adapt else ''} on {suite}")


def config_tag(exp: Experiment, config: DemHECConfig | None) -> str:
    """File tag of a Dem-HEC run: "after" for the profile's config, else "after_<changes>"."""
    if config is None:
        return "after"
    default = exp.demhec_config
    changed = [f"{f.name}={getattr(config, f.name)}" for f in dataclasses.fields(config)
               if f.name != "seed" and getattr(config, f.name) != getattr(default, f.name)]
    if not changed:
        return "after"
    return "after_" + hashlib.sha1(";".join(changed).encode()).hexdigest()[:10]


def baseline_model(exp: Experiment, method: str, num_classes: int) -> nn.Module:
    """A base model trained with an augmentation baseline (Table 3) and the profile's recipe."""
    from .baselines import BASELINES, train_baseline

    check_choice("baseline", method, BASELINES)
    if method == "pad_crop":
        return base_model(exp, num_classes)  # the base recipe is Pad-Crop (crop + flip)

    def fit(data: Any, resume: Path) -> nn.Module:
        model = _new_model(exp, num_classes, pretrained=exp.prof.pretrained)
        return train_baseline(model, data, method, exp.base_config, device=exp.device,
                              checkpoint=resume, progress=exp.progress)

    return _cached_model(exp, exp.checkpoint(f"baseline_{method}"), num_classes,
                         f"baseline {method}", fit)


def entropy_result(exp: Experiment, phase: str, corruption: str, severity: int,
                   suite: str = "cifar-c", pooled: bool = False) -> dict:
    """Per-layer entropies (eq. 4) of clean vs corrupted evaluation images (Figures 3-4)."""
    from .corruptions import corrupt_split
    from .entropy import layer_entropy
    from .evaluation import as_float_images

    path = exp.cell_dir / f"entropy_{phase}_{corruption}_s{severity}_{suite}{'_pooled' if pooled else ''}.json"

    def compute() -> dict:
        data = _subset(eval_data(exp), exp.prof.entropy_images, seed=1)
        k = len(data.classes)
        model = base_model(exp, k) if phase == "before" else demhec_model(exp, num_classes=k)
        corrupted = corrupt_split(data.images, corruption, severity, suite=suite, seed=CORRUPTION_SEED)

        def run(images: np.ndarray) -> dict:
            x = as_float_images(images, exp.device)
            ent = layer_entropy(model, x, pooled=pooled, batch_size=exp.prof.eval_batch_size)
            return {n: [round(float(v), 6) for v in e] for n, e in ent.items()}

        return dict(kind=f"entropy/{phase}", profile=exp.profile,
                    config={"experiment": _exp_config(exp), "corruption": corruption,
                            "severity": severity, "suite": suite, "pooled": pooled},
                    metrics={"clean": run(data.images), "corrupted": run(corrupted)},
                    data=_provenance(data), seed=exp.seed)

    return get_or_compute(path, compute, allow_train=exp.allow_train, recompute=exp.recompute,
                          what=f"entropy {phase} {corruption} S{severity}")


def _exp_config(exp: Experiment) -> dict:
    return {"profile": exp.profile, "dataset": exp.effective_dataset,
            "requested_dataset": exp.dataset, "backbone": exp.effective_backbone,
            "requested_backbone": exp.backbone, "seed": exp.seed, "device": exp.device}


def result_table(record: dict) -> pd.DataFrame:
    """The tidy evaluation table stored in a robustness result."""
    return pd.DataFrame(record["metrics"]["table"])


def before_after_table(before: dict, after: dict, paper: str | None = None,
                       paper_dataset: str | None = None, paper_backbone: str | None = None) -> pd.DataFrame:
    """Table 1-style comparison: accuracy per corruption and severity before and after
    Dem-HEC, with the paper's numbers (``paper`` = "table1", "table2" or "table5") beside them."""
    rows = []
    for phase, rec in (("before", before), ("after", after)):
        t = result_table(rec)
        t = t[t.corruption != "clean"].assign(phase=phase)
        rows.append(t[["corruption", "severity", "phase", "accuracy"]])
    ours = pd.concat(rows, ignore_index=True)
    if paper is None:
        return ours
    ref = paper_table(paper)
    ref = ref[(ref.dataset == paper_dataset) & (ref.backbone == paper_backbone)]
    return compare_with_paper(ours, ref, on=["corruption", "severity", "phase"])



# --- notebooks ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NotebookContext:
    """Validated notebook parameters: the experiment and where figures and tables go."""

    exp: Experiment
    corruptions: tuple[str, ...]
    severities: tuple[int, ...]
    suite: str
    figures_dir: Path
    tables_dir: Path

    def note(self) -> str:
        """One line saying what actually runs (profile, dataset, backbone, substitutions)."""
        e = self.exp
        parts = [f"profile {e.profile!r}: {e.prof.description}"]
        if e.effective_dataset != e.dataset:
            parts.append(f"dataset {e.dataset} -> {e.effective_dataset} (profile substitute)")
        if e.effective_backbone != e.backbone:
            parts.append(f"backbone {e.backbone} -> {e.effective_backbone} (CPU stand-in)")
        return "; ".join(parts)


def _resolve(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else REPO_ROOT / p


def notebook_setup(
    *,
    profile: str,
    dataset: str,
    backbone: str,
    suite: str = "cifar-c",
    corruptions: str | Sequence[str] = "paper",
    severities: Sequence[int] = (1, 3, 5),
    seed: int = 0,
    device: str = "cpu",
    data_root: str = "data",
    results_dir: str = "results",
    figures_dir: str = "figures",
    allow_train: bool = False,
    recompute: bool = False,
    download: bool = False,
    datasets: Sequence[str] | None = None,
) -> NotebookContext:
    """Validate a notebook's ``parameters`` cell (papermill passes whatever the user typed) and
    build its :class:`Experiment`. Relative paths are relative to the repository root, so a
    notebook behaves the same wherever its kernel starts. ``datasets`` restricts the datasets
    this notebook accepts."""
    from .corruptions import (
        CORRUPTIONS,
        PAPER_CORRUPTIONS,
        SUITES,
        check_corruption,
        check_severity,
    )

    for name, flag in (("allow_train", allow_train), ("recompute", recompute), ("download", download)):
        if not isinstance(flag, bool):
            raise DemHECError(f"{name} must be True or False, got {flag!r}")
    check_choice("profile", profile, PROFILES)
    check_choice("dataset", dataset, datasets or DATASETS_BY_PROFILE)
    check_choice("suite", suite, SUITES)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DemHECError(f"seed must be an integer >= 0, got {seed!r}")
    if corruptions == "paper":
        corruptions = PAPER_CORRUPTIONS
    elif corruptions == "all":
        corruptions = CORRUPTIONS
    elif isinstance(corruptions, str):
        corruptions = [c.strip() for c in corruptions.split(",")]
    for c in corruptions:
        check_corruption(c, suite)
    if isinstance(severities, (int, str)):
        severities = [severities]
    for s in severities:
        check_severity(s)
    if not isinstance(device, str) or not (device == "cpu" or device.startswith(("cuda", "mps"))):
        raise DemHECError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")
    results = _resolve(results_dir)
    exp = Experiment(profile=profile, dataset=dataset, backbone=backbone, seed=seed,
                     results_dir=str(results), data_root=str(_resolve(data_root)),
                     device=device, allow_train=allow_train, recompute=recompute, download=download)
    figures = _resolve(figures_dir) / profile
    tables = results / profile / "tables"
    if allow_train or recompute:
        check_writable(results)
    return NotebookContext(exp, tuple(corruptions), tuple(severities), suite, figures, tables)


# --- tables and figure inputs from result files ------------------------------------------------


def severity_means(record: dict) -> pd.Series:
    """Accuracy per corruption averaged over the evaluated severities, plus "clean"."""
    t = result_table(record)
    out = t[t.corruption != "clean"].groupby("corruption", sort=False)["accuracy"].mean()
    return pd.concat([pd.Series({"clean": float(t.loc[t.corruption == "clean", "accuracy"].iloc[0])}), out])


def wide_table(df: pd.DataFrame, values: Sequence[str] = ("ours", "paper", "delta")) -> pd.DataFrame:
    """Pivot a long before/after table to the paper's layout: one row per corruption, columns
    per severity and phase (and source)."""
    values = [v for v in values if v in df.columns]
    wide = df.pivot_table(index="corruption", columns=["severity", "phase"], values=values, sort=False)
    wide = wide.reorder_levels([1, 2, 0], axis=1).sort_index(axis=1, level=[0, 1], ascending=[True, False],
                                                               sort_remaining=False)
    wide.columns = [f"S{s} {p} {v}" for s, p, v in wide.columns]
    return wide.reset_index()


def corruption_examples(exp: Experiment, suite: str, corruptions: Sequence[str],
                        severities: Sequence[int], n_images: int = 7) -> tuple[np.ndarray, dict]:
    """Clean evaluation images and their corrupted versions (Figure 2 inputs)."""
    from .corruptions import corrupt_split

    data = eval_data(exp)
    # One image per class where possible, so the figure shows varied content.
    idx = [int(np.flatnonzero(data.labels == c)[0]) for c in np.unique(data.labels)][:n_images]
    clean = data.images[idx]
    corrupted = {(c, s): np.asarray(corrupt_split(clean, c, s, suite=suite, seed=CORRUPTION_SEED))
                 for c in corruptions for s in severities}
    return clean, corrupted


def collect_clean_accuracy(results_root: str | os.PathLike) -> pd.DataFrame:
    """Clean accuracy before/after Dem-HEC from every robustness result under a profile's
    results folder (Figure 5 inputs), one row per (dataset, backbone, phase)."""
    rows = []
    for path in sorted(Path(results_root).glob("*/*/*.json")):
        rec = read_result(path)
        kind = rec["kind"]
        if not kind.startswith("robustness/"):
            continue
        phase = kind.split("/")[-1]
        # the profile's own runs only: not other seeds, ablation configs or baselines
        if phase not in ("before", "after") or path.stem != f"{phase}_{rec['config']['suite']}":
            continue
        e = rec["config"]["experiment"]
        rows.append({"dataset": e["dataset"], "backbone": e["backbone"],
                     "phase": phase, "accuracy": rec["metrics"]["clean_accuracy"]})
    df = pd.DataFrame(rows, columns=["dataset", "backbone", "phase", "accuracy"])
    return df.drop_duplicates(["dataset", "backbone", "phase"]).reset_index(drop=True)


def demhec_config(exp: Experiment, **overrides: Any) -> DemHECConfig:
    """The experiment's Dem-HEC config with ``overrides`` (validated by the dataclass)."""
    fields = {f.name for f in dataclasses.fields(DemHECConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise DemHECError(f"unknown Dem-HEC setting(s) {unknown}; valid: {', '.join(sorted(fields))}")
    return replace(exp.demhec_config, **overrides)


def check_baselines(names: str | Sequence[str]) -> list[str]:
    """Baseline names from a comma-separated string or a list, validated."""
    from .baselines import BASELINES

    items = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    return [check_choice("baseline", n, BASELINES) for n in items if n]


def entropy_summary(record: dict) -> pd.DataFrame:
    """Mean entropy per layer for clean and corrupted inputs and their gap (Figures 3-4)."""
    m = record["metrics"]
    rows = [{"layer": layer, "clean": float(np.mean(m["clean"][layer])),
             "corrupted": float(np.mean(m["corrupted"][layer]))} for layer in m["clean"]]
    df = pd.DataFrame(rows)
    df["gap"] = df["corrupted"] - df["clean"]
    return df


def gain_table(before: dict, after: dict) -> pd.DataFrame:
    """Accuracy gain of ``after`` over ``before`` per corruption and severity, in points."""
    b = result_table(before).set_index(["corruption", "severity"])["accuracy"]
    a = result_table(after).set_index(["corruption", "severity"])["accuracy"]
    d = (a - b).rename("delta").reset_index()
    return d[d.corruption != "clean"].reset_index(drop=True)


def with_paper_source(long: pd.DataFrame) -> pd.DataFrame:
    """A before/after table with ours and the paper's numbers as rows (``source`` column)."""
    keys = ["corruption", "severity", "phase"]
    parts = [long[keys].assign(accuracy=long["ours"], source="ours")]
    if "paper" in long and long["paper"].notna().any():
        parts.append(long[keys].assign(accuracy=long["paper"], source="paper"))
    return pd.concat(parts, ignore_index=True).dropna(subset=["accuracy"])


def clean_accuracy_with_paper(results_root: str | os.PathLike) -> pd.DataFrame:
    """Figure 5 input: our clean accuracies with the values the paper's text gives."""
    ours = collect_clean_accuracy(results_root)
    ref = paper_table("figure5")[["dataset", "backbone", "phase", "accuracy"]]
    ref = ref.rename(columns={"accuracy": "paper_accuracy"})
    return ours.merge(ref, on=["dataset", "backbone", "phase"], how="left")


def family_table(records: dict[str, dict], paper_backbone: str) -> pd.DataFrame:
    """Table 3: mean accuracy per corruption family for each method, ours beside the paper's.

    Methods we trained get an ``ours`` value; every method the paper reports keeps its
    ``paper`` value, so the baselines we cannot train still appear.
    """
    from .evaluation import family_means

    rows = []
    for method, rec in records.items():
        for family, acc in family_means(result_table(rec)).items():
            rows.append({"family": family, "method": method, "ours": float(acc)})
    ours = pd.DataFrame(rows, columns=["family", "method", "ours"])
    ref = paper_table("table3")
    ref = ref[ref.backbone == paper_backbone][["family", "method", "label", "accuracy"]]
    out = ref.rename(columns={"accuracy": "paper"}).merge(ours, on=["family", "method"], how="outer")
    out["delta"] = out["ours"] - out["paper"]
    return out[["family", "method", "label", "ours", "paper", "delta"]]


def summary_vs_paper(records: dict[str, dict], paper: str) -> pd.DataFrame:
    """Tables 4 and 6: clean accuracy and each corruption's accuracy (mean over the evaluated
    severities) for our models as rows, beside the paper's rows."""
    rows = {label: severity_means(rec) for label, rec in records.items()}
    ref = paper_table(paper)
    key = "method" if "method" in ref.columns else "phase"
    for name, group in ref.groupby(key, sort=False):
        rows[f"paper: {name}"] = group.set_index("corruption")["accuracy"]
    return pd.DataFrame(rows).T.rename_axis("model").reset_index()


# --- controls and ablations (the CPU reproduction) ----------------------------------------------

def _budget(factor: int) -> Callable[[DemHECConfig], dict[str, Any]]:
    """``factor`` times the steps of the same schedule (warm-up share and cosine). max_steps only
    caps epochs x steps per epoch, so the epochs and their warm-up scale with it: scaling
    max_steps alone stops a budget longer than the epochs allow at their end."""
    def overrides(cfg: DemHECConfig) -> dict[str, Any]:
        scaled = dict(epochs=factor * cfg.epochs, warmup_epochs=factor * cfg.warmup_epochs)
        if cfg.max_steps is not None:
            scaled["max_steps"] = factor * cfg.max_steps
        return scaled
    return overrides


# Each run is the profile's Dem-HEC config with these changes, on the same base model and step
# budget. The ascent step is kept at eps/4 (as at the default 8/255 -> 2/255) so the eps runs
# change the radius, not the shape of the ascent. From "low_lr" on, the runs are not ablations but
# what was tried to close the clean-accuracy gap: the schedule (a lower learning rate, more steps;
# relative to the profile's config, so functions of it), the BatchNorm statistics ("bn_clean":
# does the high-entropy pass's batch move them?), which depth trains (the freezing runs), and
# freezing the *late* stages, the opposite of the paper's "freeze early layers": alone, then with
# the smaller radius and learning rate that cost the least clean accuracy, and that config's
# plain-fine-tune control.
ABLATIONS: dict[str, dict[str, Any] | Callable[[DemHECConfig], dict[str, Any]]] = {
    "demhec": {},
    "plain": dict(alpha=0.0, lambda_c=0.0, lambda_kd=0.0),  # clean cross-entropy only
    "no_he_ce": dict(alpha=0.0),
    "no_infonce": dict(lambda_c=0.0),
    "no_kd": dict(lambda_kd=0.0),
    "eps4": dict(eps=4 / 255, step_size=1 / 255),
    "eps16": dict(eps=16 / 255, step_size=4 / 255),
    "features": dict(objective="features"),
    "low_entropy": dict(direction="low"),
    "low_lr": lambda cfg: dict(lr=cfg.lr / 5),
    "budget_x2": _budget(2),
    "budget_x4": _budget(4),
    "bn_clean": dict(bn="clean"),
    "freeze_more": dict(freeze="stages:2"),
    "freeze_none": dict(freeze="none"),
    "late_frozen": dict(freeze="after:2"),
    "late_frozen_tuned": lambda cfg: dict(freeze="after:2", eps=4 / 255, step_size=1 / 255, lr=cfg.lr / 5),
    "plain_late_frozen_tuned": lambda cfg: dict(alpha=0.0, lambda_c=0.0, lambda_kd=0.0, freeze="after:2",
                                                lr=cfg.lr / 5),
}
ABLATION_LABELS = {
    "demhec": "Dem-HEC (eq. 12)",
    "plain": "plain fine-tune (clean CE only)",
    "no_he_ce": "without high-entropy CE (alpha = 0)",
    "no_infonce": "without InfoNCE (lambda_C = 0)",
    "no_kd": "without KD (lambda_KD = 0)",
    "eps4": "eps = 4/255",
    "eps16": "eps = 16/255",
    "features": "entropy of penultimate features",
    "low_entropy": "low-entropy samples (Democratic Training direction)",
    "low_lr": "learning rate / 5 (same budget)",
    "budget_x2": "twice the step budget (same lr)",
    "budget_x4": "four times the step budget (same lr)",
    "bn_clean": "running BatchNorm statistics from clean passes only",
    "freeze_more": "stem + first two stages frozen",
    "freeze_none": "nothing frozen",
    "late_frozen": "stages after the second frozen (stem + stages 1-2 train)",
    "late_frozen_tuned": "late stages frozen, eps = 4/255, learning rate / 5",
    "plain_late_frozen_tuned": "plain fine-tune, late stages frozen, learning rate / 5",
}
# The late-freezing config and its control are compared over the main runs' seeds too.
LATE_RUNS = ("late_frozen_tuned", "plain_late_frozen_tuned")
NOISE = ("gaussian_noise", "shot_noise", "impulse_noise")


def _ablation_config(exp: Experiment, run: str) -> tuple[DemHECConfig, str]:
    check_choice("run", run, ABLATIONS)
    overrides = ABLATIONS[run]
    if callable(overrides):
        overrides = overrides(exp.demhec_config)
    return demhec_config(exp, **overrides), "after" if run == "demhec" else f"after_{run}"


def ablation_result(exp: Experiment, run: str, suite: str = "cifar-c",
                    severities: Sequence[int] | None = None) -> dict:
    """The robustness result of one control/ablation ``run`` (a key of :data:`ABLATIONS`)
    fine-tuned from the experiment's base model with its seed; "demhec" is the profile's run."""
    cfg, tag = _ablation_config(exp, run)
    return robustness_result(exp, "after", suite, severities=severities, config=cfg, tag=tag)


def paired_gain_result(exp: Experiment, run: str, suite: str = "cifar-c", severity: int = 5) -> dict:
    """The acceptance quantities of ``run`` (its change from the base model on clean images and
    on the three noises' mean at ``severity``) with the standard errors that the finite
    evaluation set puts on them (:func:`demhec.evaluation.paired_gain`): is a target met by more
    than the evaluation set's noise? Uses the same checkpoints as :func:`ablation_result`."""
    from .corruptions import check_severity
    from .evaluation import paired_gain

    check_severity(severity)
    cfg, tag = _ablation_config(exp, run)
    suffix = "" if exp.seed == 0 else f"_seed{exp.seed}"
    path = exp.cell_dir / f"paired_{tag}_{suite}_s{severity}{suffix}.json"

    def compute() -> dict:
        data = eval_data(exp)
        k = len(data.classes)
        run_cfg = replace(cfg, seed=exp.seed)
        base = base_model(exp, k)
        model = demhec_model(exp, run_cfg, tag=tag.replace("after", "demhec", 1), num_classes=k)
        gains = paired_gain(base, model, data, NOISE, severity, suite, **_corrupted_eval_kw(exp))
        return dict(kind="paired/after", profile=exp.profile,
                    config={"experiment": _exp_config(exp), "model": run_cfg, "run": run, "suite": suite,
                            "corruptions": list(NOISE), "severity": severity,
                            "corruption_seed": CORRUPTION_SEED},
                    metrics=gains, data=_provenance(data), seed=exp.seed)

    return get_or_compute(path, compute, allow_train=exp.allow_train, recompute=exp.recompute,
                          what=f"{run} vs base, paired, on {suite}")


def paired_summary(records: dict[tuple[str, int], dict], z: float = 1.96) -> pd.DataFrame:
    """One row per (run, seed) of :func:`paired_gain_result` records: each change from the base
    with its standard error and a normal ``z`` interval (1.96: 95%)."""
    rows = []
    for (run, seed), rec in records.items():
        row = {"run": run, "label": ABLATION_LABELS[run], "seed": seed}
        for name, key in (("clean", "clean"), ("noise", "corrupted")):
            m = rec["metrics"][key]
            row.update({f"d_{name}": m["diff"], f"se_{name}": m["se"],
                        f"d_{name}_lo": m["diff"] - z * m["se"], f"d_{name}_hi": m["diff"] + z * m["se"]})
        rows.append(row)
    return pd.DataFrame(rows)


def _mean_accuracy(record: dict, corruptions: Sequence[str], severity: int) -> float:
    t = result_table(record)
    cells = t[t.corruption.isin(corruptions) & (t.severity == severity)]
    if len(cells) != len(corruptions):
        raise DemHECError(f"result lacks some of {list(corruptions)} at severity {severity}")
    return float(cells.accuracy.mean())


def ablation_summary(base: dict, runs: dict[tuple[str, int], dict]) -> pd.DataFrame:
    """One row per (run, seed): clean accuracy, mean accuracy over the three noises at S5 and
    over every evaluated corruption at S5, and each one's change from the base model (points)."""
    def metrics(rec: dict) -> dict:
        t = result_table(rec)
        s5 = sorted(set(t.corruption[(t.corruption != "clean") & (t.severity == 5)]))
        return {"clean": rec["metrics"]["clean_accuracy"],
                "noise_s5": _mean_accuracy(rec, NOISE, 5),
                "all_s5": _mean_accuracy(rec, s5, 5)}

    ref = metrics(base)
    rows = [{"run": "base", "label": "base model", "seed": base["seed"], **ref}]
    for (run, seed), rec in runs.items():
        rows.append({"run": run, "label": ABLATION_LABELS[run], "seed": seed, **metrics(rec)})
    df = pd.DataFrame(rows)
    for col in ("clean", "noise_s5", "all_s5"):
        df[f"d_{col}"] = df[col] - ref[col]
    return df


def severity_gains(base: dict, runs: dict[tuple[str, int], dict]) -> pd.DataFrame:
    """Per run and severity, the change from the base model (points, mean over the seeds in
    ``runs``) of the mean accuracy over the three noises and over every corruption evaluated at
    that severity, with the clean change beside it: the S5 targets read alone hide what a
    fine-tune costs at the milder severities, where corrupted images are closer to clean ones."""
    bt = result_table(base)
    severities = sorted(set(bt.severity[bt.corruption != "clean"]))
    rows = []
    for (run, seed), rec in runs.items():
        t = result_table(rec)
        for s in severities:
            every = sorted(set(t.corruption[(t.corruption != "clean") & (t.severity == s)]))
            if not every:
                raise DemHECError(f"run {run!r} seed {seed} was not evaluated at severity {s}")
            rows.append({"run": run, "label": ABLATION_LABELS[run], "seed": seed, "severity": s,
                         "d_clean": rec["metrics"]["clean_accuracy"] - base["metrics"]["clean_accuracy"],
                         "d_noise": _mean_accuracy(rec, NOISE, s) - _mean_accuracy(base, NOISE, s),
                         "d_all": _mean_accuracy(rec, every, s) - _mean_accuracy(base, every, s)})
    df = pd.DataFrame(rows)
    out = df.groupby(["run", "label", "severity"], sort=False)[["d_clean", "d_noise", "d_all"]].mean()
    return out.join(df.groupby(["run", "label", "severity"], sort=False).seed.nunique().rename("seeds")).reset_index()


def seed_gain(summary: pd.DataFrame, run: str = "demhec", control: str = "plain") -> pd.DataFrame:
    """Per seed, ``run`` minus ``control`` (points), with the mean and the sample standard
    deviation over seeds as the last two rows."""
    cols = ["clean", "noise_s5", "all_s5"]
    a = summary[summary.run == run].set_index("seed")[cols]
    b = summary[summary.run == control].set_index("seed")[cols]
    seeds = sorted(set(a.index) & set(b.index))
    if not seeds:
        raise DemHECError(f"no seed has both {run!r} and {control!r}")
    d = (a.loc[seeds] - b.loc[seeds]).reset_index()
    d["seed"] = d["seed"].astype(str)
    stats = [dict(seed="mean", **d[cols].mean()), dict(seed="std", **d[cols].std(ddof=1))]
    return pd.concat([d, pd.DataFrame(stats)], ignore_index=True)


def suite_agreement(records: dict[str, dict], paper_dataset: str, paper_backbone: str,
                    paper: str = "table1", phase: str = "before") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Which corruption constants reproduce the paper: our accuracy per corruption and
    severity in each suite (``records``: suite -> result) beside the paper's ``phase`` column,
    and per suite the mean absolute and the mean signed difference (ours - paper)."""
    ref = paper_table(paper)
    ref = ref[(ref.dataset == paper_dataset) & (ref.backbone == paper_backbone) & (ref.phase == phase)]
    cells = ref.set_index(["corruption", "severity"])["accuracy"].rename("paper")
    table = cells.to_frame()
    for suite, rec in records.items():
        t = result_table(rec).set_index(["corruption", "severity"])["accuracy"]
        table[suite] = t.reindex(table.index)
    table = table.reset_index()
    summary = pd.DataFrame([{"suite": s, "cells": int(table[s].notna().sum()),
                             "mean_abs_diff": float((table[s] - table.paper).abs().mean()),
                             "mean_diff": float((table[s] - table.paper).mean())}
                            for s in records])
    return table, summary
