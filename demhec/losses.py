"""The loss terms of Dem-HEC (paper section 3.3, eq. 10-12) and the embedding g(x).

The embedding g(x) is the penultimate feature vector: the input of the model's final
classifier. Registry models name that classifier in ``model.head_name``; for a user's own
model pass ``head="fc"`` (any name from ``named_modules()`` whose input is the (N, D)
feature batch). It is captured with a forward pre-hook, so the logits and the features come
from one forward pass.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import DemHECError

__all__ = ["forward_with_features", "head_name", "info_nce", "js_divergence_loss", "kd_loss"]

KDDirection = Literal["teacher_student", "student_teacher"]


def head_name(model: nn.Module, head: str | None = None) -> str:
    """Resolve the name of the final classifier whose input is g(x)."""
    if head is not None:
        return head
    if hasattr(model, "head_name"):
        return model.head_name
    inner = getattr(model, "module", None)  # DistributedDataParallel / compiled wrappers
    if inner is not None and hasattr(inner, "head_name"):
        return f"module.{inner.head_name}"
    inner = getattr(model, "_orig_mod", None)
    if inner is not None and hasattr(inner, "head_name"):
        return f"_orig_mod.{inner.head_name}"
    raise DemHECError(
        f"{type(model).__name__} has no .head_name; pass head=<name of its final classifier "
        "in named_modules()> so that its input can serve as the embedding g(x)"
    )


def forward_with_features(model: nn.Module, x: Tensor, head: str | None = None) -> tuple[Tensor, Tensor]:
    """One forward pass returning (logits, g(x)), g(x) flattened to (N, D)."""
    captured: list[Tensor] = []
    module = model.get_submodule(head_name(model, head))
    handle = module.register_forward_pre_hook(lambda _m, inp: captured.append(inp[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    if not captured:
        raise DemHECError(f"head {head_name(model, head)!r} was not called in the forward pass")
    return logits, captured[-1].flatten(1)


def info_nce(v: Tensor, v_prime: Tensor, tau: float = 0.2, labels: Tensor | None = None) -> Tensor:
    """Eq. 10: symmetric InfoNCE between paired embeddings with in-batch negatives.

    Both sets are l2-normalised here (norm(g(x)) in Alg. 1), so sim is cosine similarity.
    Row i of ``v`` is the positive of row i of ``v_prime``; every other row is a negative.
    With ``labels`` (B,), the other images of row i's class are removed from its negatives
    (masked InfoNCE, one of the controls): eq. 10 pushes g(x_i) away from every other image's g(x'_j),
    same-class ones included, which a supervised model's features should not do.
    """
    if v.shape != v_prime.shape or v.dim() != 2:
        raise DemHECError(f"info_nce needs two (B, D) tensors of one shape, got {tuple(v.shape)} "
                          f"and {tuple(v_prime.shape)}")
    v = F.normalize(v.float(), dim=1)
    v_prime = F.normalize(v_prime.float(), dim=1)
    sim = v @ v_prime.t() / tau
    target = torch.arange(len(v), device=v.device)
    if labels is not None:
        labels = torch.as_tensor(labels, device=v.device)
        if labels.shape != (len(v),):
            raise DemHECError(f"info_nce labels must be shaped ({len(v)},), got {tuple(labels.shape)}")
        same = labels[:, None] == labels[None, :]
        same.fill_diagonal_(False)  # the positive stays
        sim = sim.masked_fill(same, float("-inf"))  # symmetric mask: sim.t() is masked alike
    return 0.5 * (F.cross_entropy(sim, target) + F.cross_entropy(sim.t(), target))


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    T: float = 2.0,
    direction: KDDirection = "teacher_student",
) -> Tensor:
    """Eq. 11: T^2 times the KL divergence between softened distributions, batch mean.

    The paper writes KL(sigma(z_S/T) || sigma(z_T/T)). Standard distillation (Hinton et al.,
    2015) uses KL(teacher || student), whose gradient pulls the student towards every mode of
    the teacher; that is the default here. ``direction="student_teacher"`` gives the literal
    eq. 11.
    """
    log_s = F.log_softmax(student_logits.float() / T, dim=1)
    log_t = F.log_softmax(teacher_logits.float() / T, dim=1)
    if direction == "teacher_student":
        kl = (log_t.exp() * (log_t - log_s)).sum(1)
    elif direction == "student_teacher":
        kl = (log_s.exp() * (log_s - log_t)).sum(1)
    else:
        raise DemHECError(f"unknown KD direction {direction!r}; valid: teacher_student, student_teacher")
    return T * T * kl.mean()


def js_divergence_loss(*logits: Tensor) -> Tensor:
    """The Jensen-Shannon consistency loss of AugMix (Hendrycks et al., 2019, eq. 1), over any
    number of views: ``mean_i KL(p_i || M)`` with ``M`` the mean of the views' softmax
    distributions, averaged over the batch. AugMix, AugMax, IPMix and DV+AP+JSD use it.

    As in AugMix's official code, ``M`` is clamped to [1e-7, 1] before its log, which keeps the
    loss finite when a class probability underflows. Symmetric in its inputs; bounded by
    log(number of views).
    """
    if len(logits) < 2:
        raise DemHECError(f"the consistency loss needs at least two views, got {len(logits)}")
    probs = [F.softmax(z.float(), dim=1) for z in logits]
    log_mixture = torch.clamp(sum(probs) / len(probs), 1e-7, 1).log()
    return sum(F.kl_div(log_mixture, p, reduction="batchmean") for p in probs) / len(probs)
