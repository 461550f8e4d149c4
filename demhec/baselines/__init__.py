"""The training methods Dem-HEC is compared with (the paper's Tables 3 and 4), as one registry.

Each method is a :class:`Method`: the loss of one training step on a batch, computed through the
model's forward. The same definition serves two loops:

* fine-tuning from a base model at A.3's schedule, beside Dem-HEC: ``DemHECConfig(method=...)``
  with Dem-HEC's own terms off (:func:`demhec.training.finetune`); the method's loss takes the
  place of the clean cross-entropy of eq. 12;
* training from scratch with the CIFAR zoo recipe (:func:`demhec.training.train_baseline`, the
  demo's Table 3).

Every method's randomness comes from torch's global RNG, which the training engine seeds per step,
so a run is reproducible and a resumed run reproduces an uninterrupted one. The crop + flip of the
CIFAR recipe comes with the training batches; a method that augments several copies of an image
independently (BA) sets ``crops`` and draws a crop + flip per copy itself.

Registered here: ``pad_crop``, ``trivialaugment``, ``autoaugment``, ``augmix``, ``ba``, ``ba_aa``
(:mod:`.augment`), ``augmax`` (:mod:`.augmax`), ``ipmix`` (:mod:`.ipmix`), ``dv_ap_jsd``
(:mod:`.distinct_views`). Gaussian-noise augmentation (:func:`gaussian_augment`) is a field of
:class:`~demhec.training.DemHECConfig` (``noise_sigma``), and the push-pull models are
architectures (``demhec.models``).
"""

from __future__ import annotations

# Importing a method's module registers it.
from . import augmax, augment, distinct_views, ipmix  # noqa: F401
from .noise import gaussian_augment
from .registry import METHODS, Forward, Method, Step, augment_batch, get_method, register_method

BASELINES = tuple(METHODS)

__all__ = ["BASELINES", "METHODS", "Forward", "Method", "Step", "augment_batch", "gaussian_augment",
           "get_method", "register_method"]
