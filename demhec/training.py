"""Base training and Dem-HEC fine-tuning (paper Alg. 1, eq. 12, appendix A.3).

Both loops share one engine (:func:`run_steps`) that steps the learning rate per iteration,
checkpoints atomically every ``checkpoint_every`` steps and at each epoch's end, resumes from
its checkpoint when re-run with the same config, and stops on a non-finite loss without
overwriting the last good checkpoint. All randomness of step ``s`` (batch order and
augmentation through the epoch's seeded generator, the random start of the ascent, dropout)
is derived from ``(config.seed, s)``, so a resumed run reproduces an uninterrupted one.

Inside a ``torch.distributed`` process group (``torchrun``, or processes the caller starts)
both loops run data-parallel with DistributedDataParallel: ``batch_size`` is per rank, each
rank takes its share of every global batch (see :class:`~demhec.batches.TensorBatches`), the
teacher and the high-entropy generation run on every rank's shard, InfoNCE gathers the
features of the global batch, logged values are averaged over ranks, and only rank 0 writes
checkpoints. BatchNorm statistics are per rank unless ``sync_bn`` converts the model to
SyncBatchNorm (CUDA only).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import logging
import math
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import (
    DemHECError,
    TrainingDiverged,
    atomic_write,
    check_choice,
    check_range,
)
from .baselines import Step, gaussian_augment, get_method
from .batches import AUGMENTS, TensorBatches, as_batches, check_labels, num_classes_of
from .checkpoints import (
    convert_checkpoint,
    load_checkpoint,
    read_checkpoint,
    rng_state,
    set_rng_state,
)
from .distributed import (
    data_parallel,
    gather,
    gather_with_grad,
    is_main,
    mean_over_ranks,
    rank_and_world,
)
from .generation import DIRECTIONS, OBJECTIVES, SAMPLES, high_entropy_samples, uniform_ball_samples
from .losses import forward_with_features, info_nce, kd_loss
from .results import without_unchanged
from .runs import TrainRun

log = logging.getLogger(__name__)

__all__ = ["DemHECConfig", "TrainConfig", "convert_checkpoint", "finetune", "freeze_parameters",
           "read_checkpoint", "train", "train_baseline"]

OPTIMIZERS = ("sgd", "adamw")
# No recipe here comes near it (SGD at 0.1, AdamW at 3e-3); above it a run only diverges.
MAX_LR = 10.0


@dataclass(frozen=True)
class TrainConfig:
    """Supervised training of a base model: the CIFAR model-zoo recipe (chenyaofo)."""

    epochs: int = 200  # the zoo's schedule; callers shorten it
    batch_size: int = 128  # images per step
    lr: float = 0.1  # peak learning rate
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = True  # Nesterov momentum
    weight_decay: float = 5e-4  # L2 weight decay
    warmup_epochs: float = 0.0  # linear warm-up before the cosine decay, in epochs
    label_smoothing: float = 0.0  # of the cross-entropy targets
    augment: str = "crop_flip"  # random crop with 4 px padding + horizontal flip
    optimizer: str = "sgd"  # "sgd" (the zoo's) or "adamw" (transformers from scratch)
    seed: int = 0

    def __post_init__(self) -> None:
        _check_common(self)


# How the student's trainable BatchNorm layers treat the two passes of Alg. 1, which the paper
# leaves open. "train": each pass normalises with its own batch statistics and both update the
# running statistics, so the test-time statistics mix clean and high-entropy images. "clean":
# as "train", but only the clean pass updates the running statistics. "frozen": every
# BatchNorm layer keeps the pretrained running statistics (eval mode); its affine weights train.
BN_MODES = ("train", "clean", "frozen")
# InfoNCE's negatives: "all" (eq. 10: every other image of the batch) or "other_classes" (the
# other images of the anchor's class removed).
NEGATIVES = ("all", "other_classes")
# Fields added after results were committed: a fingerprint records one only where it is set away
# from its default, so every cache made before the field existed (at its default) stays valid.
_IF_CHANGED = {"fingerprint": "if_changed"}


def _freeze_from_text(text: str) -> str | tuple[str, ...]:
    """``freeze`` as typed on a command line: a keyword, else comma-separated prefixes."""
    if text in ("auto", "none") or text.startswith(("stages:", "after:")):
        return text
    return tuple(p for p in text.split(",") if p)


@dataclass(frozen=True)
class DemHECConfig:
    """Dem-HEC fine-tuning (Alg. 1). Defaults are the paper's (A.3) where it states them.

    The paper leaves alpha, the ascent radius/step/steps and the frozen part open; the
    defaults chosen here are marked "ours".
    """

    epochs: int = 20  # A.3
    batch_size: int = 128  # A.3
    lr: float = 0.05  # A.3, SGD
    momentum: float = 0.9  # A.3
    nesterov: bool = False  # plain momentum (A.3 names no Nesterov)
    weight_decay: float = 5e-4  # A.3
    warmup_epochs: float = 2.0  # A.3: 2-epoch linear warm-up, then cosine, per iteration
    alpha: float = 0.5  # ours: weight of CE on high-entropy samples (eq. 12)
    lambda_c: float = 1.0  # A.3: weight of the InfoNCE term
    tau: float = 0.2  # A.3: InfoNCE temperature
    lambda_kd: float = 0.5  # A.3: weight of the KD term
    kd_temperature: float = 2.0  # A.3: T
    kd_direction: str = "teacher_student"  # see losses.kd_loss; the paper writes the reverse
    eps: float = 8 / 255  # ours: L-inf radius of the ascent, pixel units
    step_size: float = 2 / 255  # ours: ascent step eta, pixel units
    steps: int = 5  # ours: ascent steps T_he
    random_start: bool = True  # Alg. 2, line 1
    objective: str = "output"  # "output" (eq. 7) or "features" (penultimate entropy)
    direction: str = "high"  # "low" = Democratic Training's direction (ablation only)
    freeze: str | tuple[str, ...] = field(default="auto", metadata={"from_text": _freeze_from_text})  # ours: "auto" = "stages:1" = stem + first stage; "none", "stages:N", "after:N" or comma-separated parameter-name prefixes; see freeze_parameters
    bn: str = "train"  # ours: BatchNorm statistics while fine-tuning, see BN_MODES
    augment: str = "crop_flip"  # "crop_flip" (random crop with 4 px padding + flip) or "none"
    head: str | None = None  # classifier name for g(x); None = model.head_name
    max_steps: int | None = None  # stop after this many optimizer steps (budgeted runs)
    optimizer: str = "sgd"  # A.3: SGD; "adamw" for transformers trained from scratch here
    seed: int = 0
    # Controls and compared methods; the defaults are the paper's method.
    samples: str = field(default="ascent", metadata=_IF_CHANGED)  # x': "ascent" (Alg. 2) or "uniform" (random-noise control: a uniform point of the same eps-ball, no ascent)
    negatives: str = field(default="all", metadata=_IF_CHANGED)  # InfoNCE negatives: "all" (eq. 10) or "other_classes" (same-class images removed)
    noise_sigma: float = field(default=0.0, metadata=_IF_CHANGED)  # Gaussian-noise augmentation (Rusak et al. 2020): per image sigma ~ U(0, noise_sigma) on [0, 1] pixels; 0 = off
    noise_clean_share: float = field(default=0.5, metadata=_IF_CHANGED)  # with noise_sigma > 0: the share of images left clean (Rusak et al. train on half clean, half noisy)
    method: str = field(default="none", metadata=_IF_CHANGED)  # a compared training method (demhec.baselines.METHODS) whose loss replaces the clean cross-entropy of eq. 12; "none" = eq. 12 as configured

    def __post_init__(self) -> None:
        _check_common(self)
        check_choice("sample generation", self.samples, SAMPLES)
        check_choice("InfoNCE negatives", self.negatives, NEGATIVES)
        check_range("noise_sigma", self.noise_sigma, 0.0, 1.0)
        check_range("noise_clean_share", self.noise_clean_share, 0.0, 1.0)
        if self.method != "none":
            get_method(self.method)
        check_range("alpha", self.alpha, 0.0, 1.0)
        check_range("lambda_c", self.lambda_c, 0.0)
        check_range("lambda_kd", self.lambda_kd, 0.0)
        check_range("tau", self.tau, 0.0, low_open=True)
        check_range("kd_temperature", self.kd_temperature, 0.0, low_open=True)
        check_range("eps", self.eps, 0.0, 1.0)
        check_range("step_size", self.step_size, 0.0, 1.0)
        check_range("steps", self.steps, 1, integer=True)
        check_choice("entropy objective", self.objective, OBJECTIVES)
        check_choice("entropy direction", self.direction, DIRECTIONS)
        check_choice("KD direction", self.kd_direction, ("teacher_student", "student_teacher"))
        check_choice("BatchNorm mode", self.bn, BN_MODES)
        if self.max_steps is not None:
            check_range("max_steps", self.max_steps, 1, integer=True)

    @property
    def needs_samples(self) -> bool:
        """Whether any loss term uses the generated samples (a plain fine-tune does not)."""
        return self.alpha > 0 or self.lambda_c > 0


def _check_common(cfg: Any) -> None:
    check_range("epochs", cfg.epochs, 1, integer=True)
    check_range("batch_size", cfg.batch_size, 1, integer=True)
    check_range("lr", cfg.lr, 0.0, MAX_LR, low_open=True)
    check_range("momentum", cfg.momentum, 0.0, 1.0)
    check_range("weight_decay", cfg.weight_decay, 0.0)
    check_range("warmup_epochs", cfg.warmup_epochs, 0.0)
    check_range("seed", cfg.seed, 0, integer=True)
    check_choice("augmentation", cfg.augment, AUGMENTS)
    check_choice("optimizer", cfg.optimizer, OPTIMIZERS)


# --- partial fine-tuning --------------------------------------------------------------------


def freeze_parameters(model: nn.Module, freeze: str | Sequence[str]) -> list[str]:
    """Turn off gradients for the frozen part; return the frozen parameter names.

    ``"stages:N"`` freezes the stem and the first N stages of a registry model: every
    parameter of the modules registered up to the end of its natural stage ``model.stages[N]``,
    which for the registry's architectures is registration = execution order. ``"auto"`` is
    ``"stages:1"``, the paper's "freeze early layers". ``"after:N"`` freezes the rest instead
    (every later stage and the head), so only the stem and the first N stages train.
    ``"none"`` freezes nothing; a sequence freezes parameters whose names start with any of
    the given prefixes.
    """
    names = [n for n, _ in model.named_parameters()]
    if freeze == "auto":
        freeze = "stages:1"
    kind, _, number = freeze.partition(":") if isinstance(freeze, str) else ("", "", "")
    if freeze == "none" or freeze == ():
        frozen: list[str] = []
    elif kind in ("stages", "after") and number.isdigit():
        n_stages = int(number)
        stages = getattr(model, "stages", None)
        if not stages:
            raise DemHECError(
                f"freeze={freeze!r} needs a registry model with .stages; pass freeze=(prefixes...) "
                f"for {type(model).__name__}"
            )
        if not 1 <= n_stages <= len(stages) - 2:
            raise DemHECError(f"freeze={freeze!r}: {type(model).__name__} has stages {list(stages)}; "
                              f"N must be 1 to {len(stages) - 2}")
        # Stages are the modules whose outputs end them (some hold no parameters, e.g. a pool):
        # split the parameters at the end of stage N's modules.
        modules = [n for n, _ in model.named_modules()]
        end = stages[n_stages]
        last = max(i for i, n in enumerate(modules) if n == end or n.startswith(end + "."))
        owners = set(modules[:last + 1])
        frozen = [n for n in names if (n.rpartition(".")[0] in owners) == (kind == "stages")]
    elif isinstance(freeze, str):
        raise DemHECError(
            f"freeze must be 'auto', 'none', 'stages:N', 'after:N' or a tuple of prefixes, got {freeze!r}"
        )
    else:
        prefixes = tuple(freeze)
        unknown = [p for p in prefixes if not any(n.startswith(p) for n in names)]
        if unknown:
            raise DemHECError(f"freeze prefixes {unknown} match no parameter of the model")
        frozen = [n for n in names if n.startswith(prefixes)]
    frozen_set = set(frozen)
    for n, p in model.named_parameters():
        if n in frozen_set:
            p.requires_grad_(False)
    return frozen


def _norm_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _frozen_norm_layers(model: nn.Module) -> list[nn.Module]:
    """Normalisation layers whose parameters are all frozen: they stay in eval mode."""
    out = []
    for m in _norm_layers(model):
        ps = list(m.parameters(recurse=False))
        if ps and not any(p.requires_grad for p in ps):
            out.append(m)
    return out


@contextlib.contextmanager
def _running_stats_kept(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers in training mode still normalise with the batch's statistics, but
    leave their running statistics as they are (momentum 0)."""
    layers = [m for m in _norm_layers(model) if m.training and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in layers]
    for m in layers:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(layers, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)


# --- the engine -----------------------------------------------------------------------------


def _lr_lambda(total: int, warmup: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


_NOISE_STREAM = 0x6E6F697365  # the Gaussian-augmentation draws' own stream of a step


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7919 + 17) % (2**63 - 1)


def _non_finite(model: nn.Module) -> list[str]:
    """Names of the weights and buffers (BatchNorm statistics) holding NaN or inf."""
    return [n for n, t in model.state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _diverged(kind: str, step: int, what: str, parts: dict[str, float], cfg: Any,
              last_good: str) -> TrainingDiverged:
    terms = ", ".join(f"{k} {v:.4g}" for k, v in parts.items())
    return TrainingDiverged(f"{kind} diverged at step {step}: {what} (losses: {terms}); {last_good}; "
                            f"lower the learning rate (lr={cfg.lr:g}) or check the data", step, what, parts)


def _digest(tensors: Any) -> str:
    """A content hash of tensors (their shapes, dtypes and bytes, whatever their memory format)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _fingerprint(kind: str, cfg: Any) -> dict:
    # The world size changes which images make a step, so a resume must keep it. Fields added to a
    # config since a run started leave its checkpoint valid while they hold their defaults.
    return {"kind": kind, **without_unchanged(cfg), "world_size": rank_and_world()[1]}


# The share of ranks asked to stop, carried in the step's all-reduce of the logged values.
_STOP_ASKED = "_stop_asked"


@contextlib.contextmanager
def _stop_at_step_end(enabled: bool) -> Iterator[Callable[[], bool]]:
    """While a training loop runs, SIGINT and SIGTERM ask it to stop at the end of the step under
    way, where it saves its checkpoint and raises KeyboardInterrupt: Ctrl-C, a scheduler's stop or
    a preemptible machine's SIGTERM loses no step. (A checkpoint taken inside a step would hold
    BatchNorm statistics that the step has already moved, and the resume would move them twice.)
    A second signal interrupts at once. Off outside the main thread (signals reach only that one).
    In a distributed run the ranks agree on the step through the step's all-reduce
    (:func:`run_steps`), so a signal that reaches some ranks only stops them all at one step."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    asked: list[int] = []

    def ask(signum: int, frame: object) -> None:
        if asked:
            raise KeyboardInterrupt
        asked.append(signum)
        log.warning("%s: stopping at the end of this step (send it again to stop at once)",
                    signal.Signals(signum).name)

    previous = {s: signal.signal(s, ask) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: bool(asked)
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)


def run_steps(
    kind: str,
    model: nn.Module,
    batches: Any,
    cfg: Any,
    loss_fn: Callable[[Tensor, Tensor, int], tuple[Tensor, dict[str, float]]],
    *,
    device: torch.device,
    run: TrainRun,
    extra_state: dict[str, Any] | None = None,
    eval_norms: bool = False,
) -> nn.Module:
    checkpoint, checkpoint_every, progress, on_step = run.checkpoint, run.checkpoint_every, run.progress, run.on_step
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise DemHECError("every parameter is frozen; nothing to train")
    if cfg.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
    spe = len(batches)
    if spe == 0:
        raise DemHECError(
            f"the training set has fewer images than one batch ({cfg.batch_size}); "
            "lower batch_size"
        )
    total = spe * cfg.epochs
    if getattr(cfg, "max_steps", None):
        if cfg.max_steps > total:
            log.warning("max_steps %d exceeds %d epoch(s) x %d steps per epoch: %s stops after %d "
                        "steps; raise epochs to train longer", cfg.max_steps, cfg.epochs, spe, kind, total)
        total = min(total, cfg.max_steps)
    # A step budget (max_steps) compresses the whole warm-up + cosine schedule into it.
    scale = total / (spe * cfg.epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total, int(round(cfg.warmup_epochs * spe * scale)))
    )
    frozen_norms = _norm_layers(model) if eval_norms else _frozen_norm_layers(model)
    fingerprint = _fingerprint(kind, cfg)
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt is not None:
        # A resume must continue the same run: the same images, and for a fine-tune the same
        # starting weights and teacher (a base trained from scratch is replaced by the checkpoint).
        fingerprint["data"] = _digest([batches.images, batches.labels])
        if kind == "finetune":
            fingerprint["start_weights"] = _digest(model.state_dict().values())
            fingerprint["teacher"] = _digest((extra_state or {})["teacher"].values())
    step = 0
    state = load_checkpoint(ckpt, fingerprint) if ckpt is not None and ckpt.exists() and is_main() else None
    if rank_and_world()[1] > 1:
        # Rank 0 reads the checkpoint and sends it, so every rank resumes at the same step even
        # when the others cannot see its file system.
        box = [state]
        dist.broadcast_object_list(box, src=0)
        state = box[0]
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = state["step"]
        if "rng" in state:
            set_rng_state(state["rng"])
        log.info("resumed %s from %s at step %d/%d", kind, ckpt.name, step, total)

    saved_at: list[int] = [step] if state is not None else []

    def last_good() -> str:
        if ckpt is None:
            return "no checkpoint was being written"
        if not saved_at:
            return f"no checkpoint was written (nothing at {ckpt.name})"
        return f"the last good checkpoint is {ckpt.name} (step {saved_at[-1]}), kept"

    def check_weights(parts: dict[str, float]) -> None:
        bad = _non_finite(model)
        if bad:
            raise _diverged(kind, step, f"non-finite weights or statistics in {len(bad)} tensors "
                            f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})", parts, cfg, last_good())

    def save(parts: dict[str, float]) -> None:
        # Weights that diverged never replace a good checkpoint.
        check_weights(parts)
        if ckpt is None or not is_main():
            return
        state = {
            "fingerprint": fingerprint, "step": step, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            **(extra_state or {}),
        }
        with atomic_write(ckpt) as f:
            torch.save(state, f)
        saved_at.append(step)

    bar = None
    if progress and is_main():
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=step, desc=kind, unit="step", dynamic_ncols=True)
    parts: dict[str, float] = {}
    distributed_run = rank_and_world()[1] > 1
    with contextlib.ExitStack() as stack:
        asked_here = stack.enter_context(_stop_at_step_end(True))
        # In one process a signal stops the step under way; across ranks, the step at whose
        # all-reduce any rank had been asked, so that no rank waits on one that has stopped.
        agreed = [False]

        def stop_asked() -> bool:
            return agreed[0] if distributed_run else asked_here()

        stack.callback(lambda: bar is not None and bar.close())
        while step < total:
            epoch, skip = divmod(step, spe)
            for x, y in batches.epoch(epoch, skip=skip):
                model.train()
                for m in frozen_norms:
                    m.eval()
                torch.manual_seed(_step_seed(cfg.seed, step))
                loss, parts = loss_fn(x, y, step)
                # Logged values are means over ranks; every rank stops on the same step.
                if distributed_run:
                    parts = {**parts, _STOP_ASKED: float(asked_here())}
                parts = mean_over_ranks(parts, device)
                agreed[0] = parts.pop(_STOP_ASKED, 0.0) > 0
                if not math.isfinite(parts["loss"]):
                    raise _diverged(kind, step, f"non-finite loss ({parts['loss']})", parts, cfg, last_good())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                # Checked before the update, so non-finite gradients never reach the weights
                # (DDP has averaged them: every rank stops at the same step).
                grads = [p.grad.detach().norm() for p in params if p.grad is not None]
                if grads and not math.isfinite(torch.stack(grads).norm().item()):
                    raise _diverged(kind, step, "non-finite gradients", parts, cfg, last_good())
                optimizer.step()
                scheduler.step()
                step += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{parts['loss']:.3f}")
                if on_step is not None:
                    on_step(step, parts)
                if checkpoint_every and step % checkpoint_every == 0:
                    save(parts)
                if step >= total or stop_asked():
                    break
            if step % spe == 0 or step >= total or (stop_asked() and saved_at[-1:] != [step]):
                save(parts)
            if stop_asked():
                raise KeyboardInterrupt(f"{kind} stopped at step {step}/{total}"
                                        + (f"; {ckpt.name} holds it" if ckpt is not None else ""))
    # A finished run whose weights diverged is an error, not a result.
    check_weights(parts)
    model.eval()
    return model


def _device_of(model: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def prepare_data(model: nn.Module, data: Any, cfg: Any, run: TrainRun) -> tuple[torch.device, Any]:
    """Move ``model`` to its device/layout and turn ``data`` into checked batches."""
    dev = _device_of(model, run.device)
    model.to(dev)
    if run.channels_last:
        model.to(memory_format=torch.channels_last)
    batches = as_batches(data, cfg, dev, run.channels_last)
    check_labels(batches.labels, num_classes_of(model))
    return dev, batches


class _StudentPasses(nn.Module):
    """The student's clean and high-entropy passes as one forward, so DDP sees one forward
    per backward; each pass still normalises with its own batch statistics, as Alg. 1 writes
    them."""

    def __init__(self, model: nn.Module, head: str | None, he_updates_stats: bool = True) -> None:
        super().__init__()
        self.model = model
        self.head = head
        self.he_updates_stats = he_updates_stats

    def forward(self, x: Tensor, x_he: Tensor | None = None) -> tuple[Tensor, ...]:
        logits, v = forward_with_features(self.model, x, self.head)
        if x_he is None:
            return logits, v
        keep = contextlib.nullcontext() if self.he_updates_stats else _running_stats_kept(self.model)
        with keep:
            return (logits, v, *forward_with_features(self.model, x_he, self.head))


def _start_noise(x: Tensor, gen: torch.Generator) -> Tensor | None:
    """The ascent's random-start draws for this rank: its slice of the global batch's draws,
    so N ranks reproduce one process (None in one process: the generator draws as usual)."""
    rank, world = rank_and_world()
    if world == 1:
        return None
    n = len(x)
    noise = torch.rand((n * world, *x.shape[1:]), generator=gen, device=x.device, dtype=torch.float32)
    return noise[rank * n:(rank + 1) * n]


def _uncropped(batches: Any, cfg: Any) -> Any:
    """The same images and order without the batches' crop + flip, for a method that draws its
    own per copy (BA); with ``augment="none"`` the method crops nothing either."""
    if cfg.augment != "crop_flip":
        raise DemHECError(f"this method draws its own crop + flip, so config.augment must be 'crop_flip', "
                          f"got {cfg.augment!r}")
    return TensorBatches(batches.images, batches.labels, batch_size=batches.batch_size, shuffle=batches.shuffle,
                         augment="none", seed=batches.seed, device=batches.device, drop_last=batches.drop_last,
                         channels_last=batches.channels_last, rank=batches.rank, world_size=batches.world_size)


# --- public loops ---------------------------------------------------------------------------


def train(
    model: nn.Module,
    train_data: Any,
    config: TrainConfig = TrainConfig(),
    **run: Any,
) -> nn.Module:
    """Supervised training of a base model with the CIFAR zoo recipe (cross-entropy, SGD with
    Nesterov momentum, cosine schedule per iteration, crop+flip augmentation). ``run``: the
    keywords of :class:`~demhec.runs.TrainRun` (device, checkpoint, progress, ``compile`` of
    the model's forward, ...).

    ``train_data`` is an :class:`~demhec.data.ImageArrays`, a ``(images, labels)`` pair
    (uint8 HWC/CHW or float CHW in [0,1]), a :class:`~demhec.batches.TensorBatches` or a
    map-style dataset small enough to hold in memory.
    """
    options = TrainRun(**run)
    dev, batches = prepare_data(model, train_data, config, options)
    net = data_parallel(model, dev, options)

    def loss_fn(x: Tensor, y: Tensor, step: int) -> tuple[Tensor, dict[str, float]]:
        loss = F.cross_entropy(net(x), y, label_smoothing=config.label_smoothing)
        return loss, {"loss": loss.item()}

    return run_steps("train", model, batches, config, loss_fn, device=dev, run=options)


def finetune(
    model: nn.Module,
    train_data: Any,
    config: DemHECConfig = DemHECConfig(),
    *,
    teacher: nn.Module | None = None,
    amp: bool = False,
    **run: Any,
) -> nn.Module:
    """Dem-HEC fine-tuning, Alg. 1 with the total loss of eq. 12::

        (1 - alpha) CE(f(x), y) + alpha CE(f(x'), y)
            + lambda_C InfoNCE(g(x), g(x')) + lambda_KD KD(f(x), f_T(x))

    x' are high-entropy samples (Alg. 2) generated per batch from the current model; g is the
    penultimate feature vector; f_T is the teacher, a frozen copy of ``model`` taken here
    before any update (or the given ``teacher``). Partial fine-tuning: ``config.freeze``
    parameters get no gradient, are not optimised, and their BatchNorm layers stay in eval
    mode. With ``amp`` the training passes run under bf16 autocast; generation stays fp32.
    ``run``: the keywords of :class:`~demhec.runs.TrainRun`; its ``compile`` (True, or a
    ``torch.compile`` backend name) compiles the student's training passes; the ascent passes stay eager, since they toggle modes and gradient flags each step.
    Terms with zero weight are skipped, so alpha = lambda_C = lambda_KD = 0 is a plain
    fine-tune at the same cost as ordinary training.
    """
    if teacher is None:
        teacher = copy.deepcopy(model)
    options = TrainRun(**run)
    dev, batches = prepare_data(model, train_data, config, options)
    teacher.to(dev).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    freeze_parameters(model, config.freeze)
    cfg = config
    student = data_parallel(_StudentPasses(model, cfg.head, he_updates_stats=cfg.bn == "train"),
                            dev, options)
    method = get_method(cfg.method) if cfg.method != "none" else None
    if method is not None and method.crops:
        batches = _uncropped(batches, cfg)

    def forward(images: Tensor, *, update_stats: bool = True) -> Tensor:
        if update_stats:
            return student(images)[0]
        # A pass that only searches for an input: the bare model (one DDP forward per backward),
        # its running statistics kept.
        with _running_stats_kept(model):
            return model(images)

    step_view = Step(forward=forward, ce=F.cross_entropy)

    def loss_fn(x: Tensor, y: Tensor, step: int) -> tuple[Tensor, dict[str, float]]:
        parts: dict[str, Tensor] = {}
        x_he = None
        if cfg.noise_sigma > 0:
            gen = torch.Generator(device=x.device).manual_seed(_step_seed(cfg.seed, step) ^ _NOISE_STREAM)
            x = gaussian_augment(x, cfg.noise_sigma, cfg.noise_clean_share, gen)
        if cfg.needs_samples:
            gen = torch.Generator(device=x.device).manual_seed(_step_seed(cfg.seed, step))
            if cfg.samples == "uniform":
                x_he = uniform_ball_samples(x, cfg.eps, generator=gen, noise=_start_noise(x, gen))
            else:
                # Generation uses the bare model: its input-gradient passes are not training passes.
                x_he = high_entropy_samples(
                    model, x, cfg.eps, cfg.step_size, cfg.steps, cfg.random_start,
                    objective=cfg.objective, direction=cfg.direction, head=cfg.head, generator=gen,
                    noise=_start_noise(x, gen),
                )
        logged: dict[str, float] = {}
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
            if method is not None and cfg.alpha < 1:
                parts["ce_clean"], logged = method.loss(step_view, x, y)
            # A compared method's loss makes its own passes; the student's clean pass is needed
            # beside it only for Dem-HEC's terms or the distillation.
            he: list[Tensor] = []
            if method is None or x_he is not None or cfg.lambda_kd > 0:
                logits, v, *he = student(x, x_he)
            if method is None and cfg.alpha < 1:
                parts["ce_clean"] = F.cross_entropy(logits.float(), y)
            if he:
                logits_he, v_he = he
                if cfg.alpha > 0:
                    parts["ce_he"] = F.cross_entropy(logits_he.float(), y)
                if cfg.lambda_c > 0:
                    # The global batch's negatives, as in one process.
                    labels = gather(y) if cfg.negatives == "other_classes" else None
                    parts["info_nce"] = info_nce(gather_with_grad(v), gather_with_grad(v_he), cfg.tau, labels)
            if cfg.lambda_kd > 0:
                with torch.no_grad():
                    t_logits = teacher(x)
                parts["kd"] = kd_loss(logits, t_logits, cfg.kd_temperature, cfg.kd_direction)
        weights = {"ce_clean": 1 - cfg.alpha, "ce_he": cfg.alpha, "info_nce": cfg.lambda_c,
                   "kd": cfg.lambda_kd}
        loss = sum(weights[k] * v for k, v in parts.items())
        out = {**logged, **{k: v.item() for k, v in parts.items()}}
        out["loss"] = loss.item()
        return loss, out

    return run_steps(
        "finetune", model, batches, config, loss_fn, device=dev, run=options,
        extra_state={"teacher": teacher.state_dict()}, eval_norms=cfg.bn == "frozen",
    )


def train_baseline(
    model: nn.Module,
    train_data: Any,
    method: str,
    config: TrainConfig = TrainConfig(),  # noqa: B008 - frozen, so sharing it is safe
    **run: Any,
) -> nn.Module:
    """Train ``model`` from scratch with a compared method (:data:`demhec.baselines.METHODS`) on
    the CIFAR zoo recipe ``config``, whose ``augment`` must be "crop_flip" since every method
    builds on it: the demo's Table 3. The method's loss replaces the recipe's cross-entropy (e.g.
    ``augmix``: ``CE(f(x), y) + 12 JS(p(x), p(x_aug1), p(x_aug2))``). Same data forms and options
    as :func:`train`; a checkpoint only resumes a run of the same method and config. ``run``: the
    keywords of :class:`~demhec.runs.TrainRun`.
    """
    spec = get_method(method)
    if config.augment != "crop_flip":
        raise DemHECError(
            f"baselines build on the crop+flip recipe; config.augment must be 'crop_flip', "
            f"got {config.augment!r}"
        )
    options = TrainRun(**run)
    dev, batches = prepare_data(model, train_data, config, options)
    if batches.augment != "crop_flip":
        raise DemHECError(
            f"baselines build on the crop+flip recipe; the given TensorBatches must use "
            f"augment='crop_flip', got {batches.augment!r}"
        )
    if spec.crops:
        batches = _uncropped(batches, config)
    net = data_parallel(model, dev, options)

    def forward(images: Tensor, *, update_stats: bool = True) -> Tensor:
        if update_stats:
            return net(images)
        with _running_stats_kept(model):
            return model(images)

    step_view = Step(forward=forward, ce=functools.partial(F.cross_entropy, label_smoothing=config.label_smoothing))

    def loss_fn(x: Tensor, y: Tensor, step: int) -> tuple[Tensor, dict[str, float]]:
        loss, parts = spec.loss(step_view, x, y)
        return loss, {**parts, "loss": loss.item()}

    log.info("training baseline %s for %d epochs", method, config.epochs)
    return run_steps(f"baseline_{method}", model, batches, config, loss_fn, device=dev, run=options)
