"""Dem-HEC: high-entropy contrastive fine-tuning for robustness to natural corruptions.

Reference implementation of the paper's method (Alg. 1 and 2, eq. 4-12) as a library that
applies to any PyTorch classifier, plus the paper's datasets, model zoo, corruption suites
and evaluation.
"""

from __future__ import annotations

from ._common import DemHECError, parse_number
from .adaptation import AdaptConfig
from .entropy import layer_entropy, prediction_entropy
from .evaluation import (
    as_float_images,
    evaluate,
    expected_calibration_error,
    family_means,
    mean_corruption_error,
    predict,
)
from .generation import high_entropy_samples
from .losses import forward_with_features, info_nce, kd_loss
from .models import get_model, list_models, register_model
from .training import DemHECConfig, TrainConfig, finetune, freeze_parameters, train

__version__ = "0.1.0"

__all__ = [
    "AdaptConfig",
    "DemHECConfig",
    "DemHECError",
    "as_float_images",
    "TrainConfig",
    "evaluate",
    "expected_calibration_error",
    "family_means",
    "finetune",
    "forward_with_features",
    "freeze_parameters",
    "get_model",
    "high_entropy_samples",
    "info_nce",
    "kd_loss",
    "layer_entropy",
    "list_models",
    "mean_corruption_error",
    "parse_number",
    "predict",
    "prediction_entropy",
    "register_model",
    "train",
]
