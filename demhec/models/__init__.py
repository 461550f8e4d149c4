"""Model registry: every backbone of the paper behind one uniform :class:`Classifier` wrapper.

Section 4.1 of the paper fine-tunes CIFAR ResNet-20/56 and RepVGG-A0/A2 (pretrained weights
of chenyaofo/pytorch-cifar-models) on CIFAR-10/100, and ResNet-18/50 and ViT-L on
Tiny-ImageNet. Dem-HEC needs three things from each of them, which the wrapper provides
uniformly:

* images in [0, 1]; the per-channel normalisation the weights were trained with lives inside
  the wrapper (non-persistent buffers, so checkpoints stay in the zoo's layout);
* ``head_name``: the final linear layer whose *input* is the penultimate feature vector the
  contrastive loss (eq. 8) pulls apart; entropy is computed "at the final pooling or dense
  layer" (section 4.1);
* ``stages``: the natural stages, shallow to deep, for the layer-wise entropy analysis
  (section 3.1, figure 3).

One module per family, each registering its backbones on import: :mod:`.registry` (the
records, :func:`get_model`, the wrapper), :mod:`.cifar` (the CIFAR zoo's ResNets and RepVGGs),
:mod:`.pushpull` (the push-pull ResNet-20s), :mod:`.external` (torchvision's and timm's
networks, registered and by name).
"""

from __future__ import annotations

from .cifar import (
    CIFAR_WEIGHT_URLS,
    REPVGG_A_BLOCKS,
    REPVGG_BASE_WIDTHS,
    REPVGG_WIDTHS,
    RESNET_CIFAR_BLOCKS,
    BasicBlock,
    CifarRepVGG,
    CifarResNet,
    RepVGGBlock,
    reparameterize,
)
from .external import EXTERNAL_PREFIXES, TIMM_VITS, VIT_TEST_CONFIG
from .pushpull import (
    ChannelAttention,
    MultiScalePushPullConv2d,
    PushPullCifarResNet,
    PushPullConv2d,
    pull_kernel_size,
    upsample_kernel,
)
from .registry import (
    NORMALISATION,
    Classifier,
    ModelInfo,
    Normalisation,
    check_backbone,
    get_model,
    list_models,
    model_info,
    register_model,
    register_model_info,
)

__all__ = [
    "CIFAR_WEIGHT_URLS",
    "EXTERNAL_PREFIXES",
    "NORMALISATION",
    "REPVGG_A_BLOCKS",
    "REPVGG_BASE_WIDTHS",
    "REPVGG_WIDTHS",
    "RESNET_CIFAR_BLOCKS",
    "TIMM_VITS",
    "VIT_TEST_CONFIG",
    "BasicBlock",
    "ChannelAttention",
    "CifarRepVGG",
    "CifarResNet",
    "Classifier",
    "ModelInfo",
    "MultiScalePushPullConv2d",
    "Normalisation",
    "PushPullCifarResNet",
    "PushPullConv2d",
    "RepVGGBlock",
    "check_backbone",
    "get_model",
    "list_models",
    "model_info",
    "pull_kernel_size",
    "register_model",
    "register_model_info",
    "reparameterize",
    "upsample_kernel",
]
