"""The models of an experiment, cached: the base model, Dem-HEC fine-tunes and Table 3's baselines.

Each state dict is kept where :func:`.layout.model_path` says, beside a fingerprint of what made
it (:func:`model_spec`: the kind, the backbone, the training data and the resolved config), and is
reused only for the same request. A missing or mismatched model is trained only when the
experiment allows it (``allow_train``); otherwise the error names the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._common import DemHECError, atomic_write, check_choice
from ..baselines import BASELINES
from ..models import CIFAR_WEIGHT_URLS, get_model
from ..results import cache_holds, check_writable, fingerprint
from ..runs import TrainRun
from ..training import DemHECConfig, finetune, train, train_baseline
from .inputs import data_request, train_data
from .layout import model_path
from .profiles import REPO_ROOT, Experiment, base_weights
from .runs import BASE, Run, baseline

log = logging.getLogger(__name__)


def train_run(exp: Experiment, resume: Path) -> dict[str, Any]:
    """How every training entry point runs for ``exp`` (:class:`~demhec.runs.TrainRun`)."""
    return TrainRun(device=exp.device, channels_last=exp.channels_last, checkpoint=resume,
                    progress=exp.progress).keywords()


def demhec_config(exp: Experiment, **overrides: Any) -> DemHECConfig:
    """The experiment's Dem-HEC config with ``overrides`` (validated by the dataclass)."""
    fields = {f.name for f in dataclasses.fields(DemHECConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise DemHECError(f"unknown Dem-HEC setting(s) {unknown}; valid: {', '.join(sorted(fields))}")
    return dataclasses.replace(exp.demhec_config, **overrides)


def model_spec(exp: Experiment, kind: str, config: Any = None) -> dict[str, Any]:
    """What makes a cached model (its fingerprint before flattening): ``kind`` ("base",
    "demhec" or "baseline:<method>"), the backbone, the training data and the resolved config;
    a fine-tune records its base's recipe too, since it starts from that model."""
    spec: dict[str, Any] = {"kind": kind, "backbone": exp.effective_backbone,
                            "pretrained": exp.prof.pretrained, "data": data_request(exp, "train"),
                            "config": exp.base_config if config is None else config}
    if kind == "demhec":
        spec["base"] = exp.base_config
    if exp.base_weights_path and kind in ("base", "demhec"):
        spec["base_weights"] = base_weights(exp)
    if exp.weights and kind in ("base", "demhec"):
        spec["weights"] = {"path": Path(exp.weights).name,
                           "sha256": hashlib.sha256(Path(exp.weights).read_bytes()).hexdigest()}
    return spec


def run_spec(exp: Experiment, run: Run) -> dict[str, Any]:
    """:func:`model_spec` of ``run``'s model at ``exp``'s seed."""
    if run.fine_tuned:
        return model_spec(exp, "demhec", run.config(exp.demhec_config))
    return model_spec(exp, "base" if run.phase == "before" else run.phase)


def _new_model(exp: Experiment, num_classes: int, pretrained: bool | str) -> nn.Module:
    # Initialised from the base config's seed: a model trained afresh is the same model on every
    # run and every machine (torch otherwise seeds a process's initialisation at random), and the
    # caller's random stream is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(exp.base_config.seed)
        return get_model(exp.effective_backbone, num_classes=num_classes, pretrained=pretrained)


def _model_from(path: Path, exp: Experiment, num_classes: int) -> nn.Module:
    model = _new_model(exp, num_classes, pretrained=str(path))
    return model.to(exp.device).eval()


def _fingerprint_path(path: Path) -> Path:
    return path.with_suffix(".fingerprint.json")


def _cached_model(exp: Experiment, path: Path, num_classes: int, what: str, spec: dict[str, Any],
                  fit: Callable[[Any, Path], nn.Module]) -> nn.Module:
    """Load the state dict at ``path`` when its fingerprint (``<path>.fingerprint.json``) is
    ``spec``'s or, when allowed, ``fit`` a model (resumable through ``<path>.ckpt``), save it and
    its fingerprint atomically and drop the resume checkpoint."""
    wanted = fingerprint(spec)
    if path.exists() and not exp.recompute:
        side = _fingerprint_path(path)
        recorded = json.loads(side.read_text()) if side.exists() else None
        if cache_holds(path, recorded, wanted, allow_train=exp.allow_train, what=what):
            return _model_from(path, exp, num_classes)
    elif not exp.allow_train:
        raise DemHECError(f"{what} checkpoint {path.name} is missing under {path.parent}; "
                          "set allow_train=True to compute it")
    check_writable(path.parent)
    resume = path.with_suffix(".ckpt")
    model = fit(train_data(exp), resume)
    with atomic_write(path) as f:
        torch.save(model.state_dict(), f)
    with atomic_write(_fingerprint_path(path), "w") as f:
        json.dump(wanted, f, indent=1)
    resume.unlink(missing_ok=True)
    return model.eval()


def base_model(exp: Experiment, num_classes: int | None = None) -> nn.Module:
    """The model before Dem-HEC: the zoo's pretrained weights (paper profile, CIFAR zoo
    backbones) or one trained here with the profile's base recipe (cached checkpoint)."""
    k = num_classes if num_classes is not None else len(train_data(exp).classes)
    if exp.weights:
        return _model_from(Path(exp.weights), exp, k)
    if exp.prof.pretrained and (exp.effective_backbone, exp.effective_dataset) in CIFAR_WEIGHT_URLS:
        return _new_model(exp, k, pretrained=True).to(exp.device).eval()
    if exp.base_weights_path:
        return _model_from(REPO_ROOT / exp.base_weights_path, exp, k)

    def fit(data: Any, resume: Path) -> nn.Module:
        model = _new_model(exp, k, pretrained=exp.prof.pretrained)
        log.info("training base %s on %s (%d images)", exp.effective_backbone,
                 exp.effective_dataset, len(data))
        return train(model, data, exp.base_config, **train_run(exp, resume))

    return _cached_model(exp, model_path(exp, BASE), k, "base model", model_spec(exp, "base"), fit)


def demhec_model(exp: Experiment, config: DemHECConfig | None = None, tag: str = "demhec",
                 num_classes: int | None = None) -> nn.Module:
    """The base model fine-tuned with Dem-HEC (``config`` defaults to the profile's, with the
    experiment's seed), kept under the checkpoint name ``tag`` (:func:`.layout.model_path`)."""
    cfg = dataclasses.replace(config, seed=exp.seed) if config else exp.demhec_config
    k = num_classes or len(train_data(exp).classes)

    def fit(data: Any, resume: Path) -> nn.Module:
        return finetune(base_model(exp, k), data, cfg, **train_run(exp, resume))

    return _cached_model(exp, model_path(exp, tag), k, "Dem-HEC", model_spec(exp, "demhec", cfg), fit)


def baseline_model(exp: Experiment, method: str, num_classes: int) -> nn.Module:
    """A base model trained with an augmentation baseline (Table 3) and the profile's recipe."""
    check_choice("baseline", method, BASELINES)
    if method == "pad_crop":
        return base_model(exp, num_classes)  # the base recipe is Pad-Crop (crop + flip)

    def fit(data: Any, resume: Path) -> nn.Module:
        model = _new_model(exp, num_classes, pretrained=exp.prof.pretrained)
        return train_baseline(model, data, method, exp.base_config, **train_run(exp, resume))

    return _cached_model(exp, model_path(exp, baseline(method)), num_classes,
                         f"baseline {method}", model_spec(exp, f"baseline:{method}"), fit)


def run_model(exp: Experiment, run: Run, num_classes: int | None = None) -> nn.Module:
    """The model of ``run`` at ``exp``'s seed: the base model, a baseline trained from scratch, or
    the base fine-tuned with the run's config (cached like the others)."""
    if run.fine_tuned:
        return demhec_model(exp, run.config(exp.demhec_config), tag=run.model_name, num_classes=num_classes)
    if run.phase == "before":
        return base_model(exp, num_classes)
    k = num_classes if num_classes is not None else len(train_data(exp).classes)
    return baseline_model(exp, run.phase.split(":", 1)[1], k)
