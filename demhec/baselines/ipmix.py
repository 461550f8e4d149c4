"""IPMix (Huang et al., NeurIPS 2023, "IPMix: Label-Preserving Data Augmentation Method for
Training Robust Classifiers"), trained with AugMix's Jensen-Shannon consistency loss, as its
official code (github.com/hzlsaber/IPMix, ``cifar.py`` and ``IPMix_utils.py``) does by default.

One IPMix view of an image ``x`` with its mixing picture ``p`` (``cifar.py``'s ``ipmix``)::

    x_IPMix = (1 - m) x + m sum_i w_i chain_i(x),   w ~ Dirichlet(1, ..., 1) over k chains,
                                                    m ~ Beta(1, 1)

Each of the ``k`` chains starts from ``x`` and is, with probability 1/2 each, one of

* image level: 0 ... ``t`` (uniform) label-preserving operations, each drawn uniformly from
  equalize, posterize, rotate, solarize, shear x/y, translate x/y, mirror and invert at AugMix's
  severity scale (AugMix's list without autocontrast, plus mirror and invert; the operations
  that overlap with the -C corruptions, colour, contrast, brightness, sharpness, are left out);
* patch level ("P" operations): 0 ... ``t`` patch mixings; each takes a patch of side 1/8, 1/4,
  1/2 or the whole image (4, 8, 16, 32 px on CIFAR), square or (probability 1/2) with each side
  drawn from [2, side], at a uniform position, and replaces it by the pixel-level mixing of the
  patch with the same patch of ``p``;
* pixel level, inside each patch mixing: one of PixMix's ``add`` and ``multiply`` (weights from
  Beta(beta, 1) / Beta(1, beta), ``beta`` the mixing severity) or IPMix's random mixings
  ``random_pixels`` (a per-pixel mask, the same for the channels) and ``random_elems`` (a mask
  per element), whose mask keeps a pixel of the image with a probability drawn from U(0, 1).

The loss is ``CE(f(x), y) + 12 JS(p(x), p(x_1), p(x_2))`` with two IPMix views ``x_1, x_2`` of
every image, the three views through one forward pass (``cifar.py``'s ``train``). Both views of an
image use the same mixing picture (``IPMixDataset`` draws one per image).

Settings the paper and code leave open, and the choices made here:

* the mixing set: the paper's is a set of fractals and other structurally complex synthetic
  pictures, distributed as a download beside the official code, which cannot be fetched here.
  Ours is ``mixing_set_size`` iterated-function-system fractals generated procedurally and
  deterministically (numpy generator with ``mixing_seed``, never the training RNG) once per
  process and cached in memory: each of 2-4 random contractive affine maps
  (drawn with the sigma-factor rule of Anderson & Farrell, 2022, "Improving Fractal
  Pre-training"), chaos-game points coloured by the maps they pass through, on black, rendered at
  ``mixing_side`` px with log-density brightness. The README of the official code states that
  IPMix is insensitive to the mixing set and any unlabeled synthetic pictures may be used.
* the mixing picture's crop: ``cifar.py`` resizes every picture to 36 px and crops 32 x 32 at
  random; for another image size the pictures are resized to ``mixing_side / 32`` times the image
  side and cropped to it (ours), and the patch sides and translations scale with the image side.
* the official code passes every patch mixing through ``ToPILImage``, whose float -> uint8
  conversion (``mul(255).byte()``) truncates and wraps out-of-range values around (1.2 -> 50);
  here the chains stay in float and every pixel-level mixing is clipped to [0, 1], as PixMix's
  code clips its mixings (ours).
* the view is rounded to the uint8 grid at the end, as the other augmentation baselines' views are
  (the official code feeds the float mix): an error of at most 1/510.
* the image-level operations are torchvision's on uint8 tensors instead of PIL's (bilinear
  rotation and shear, the shear about the top-left corner as PIL's affine); translations are
  integer shifts with black fill, as PIL's.
* randomness: every draw comes from torch's global RNG in a fixed order (documented at each
  function), Beta(1, 1) and Dirichlet(1, ..., 1) and the Beta(beta, 1) / Beta(1, beta) weights by
  inverse-CDF transforms of uniforms (exact samplers), so runs are reproducible and resumable.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from .._common import DemHECError, check_choice, check_range
from ..losses import js_divergence_loss
from .registry import Method, Step, register_method

__all__ = ["IMAGE_OPS", "IPMIX", "PIXEL_MIXINGS", "IPMixSettings", "draw_mixing_pictures",
           "fractal_pictures", "image_op", "ipmix_image", "ipmix_view", "mixing_set", "patch_mix",
           "pixel_mix"]

log = logging.getLogger(__name__)

# IPMix_utils.augmentations: AugMix's operations without autocontrast, plus mirror and invert.
IMAGE_OPS = ("equalize", "posterize", "rotate", "solarize", "shear_x", "shear_y", "translate_x",
             "translate_y", "mirror", "invert")
# IPMix_utils.mixings: PixMix's two and IPMix's two random mixings.
PIXEL_MIXINGS = ("add", "multiply", "random_pixels", "random_elems")
# The image side the official CIFAR settings are stated for (patch sizes, mixing-picture resize).
_CIFAR_SIDE = 32


@dataclass(frozen=True)
class IPMixSettings:
    """IPMix hyperparameters: the defaults of the official CIFAR code (``cifar.py``'s arguments
    and its ``ipmix``; Huang et al., 2023)."""

    k: int = 3  # --k 3: chains mixed per view
    t: int = 3  # --t 3: a chain draws 0 ... t operations uniformly
    beta: float = 3.0  # --beta 3 (CIFAR; 4 on ImageNet): severity of the add/multiply mixings
    severity: float = 3.0  # --aug-severity 3: image-level level ~ U(0.1, severity) of 10
    p_patch_chain: float = 0.5  # random.choice(['IMG', 'P']): a chain is a patch chain
    # cifar.py's patch_sizes [4, 8, 16, 32] on 32 px images, as fractions of the image side
    patch_fractions: tuple[float, ...] = (1 / 8, 1 / 4, 1 / 2, 1.0)
    ops: tuple[str, ...] = IMAGE_OPS  # IPMix_utils.augmentations (augmentations_all is unused)
    mixings: tuple[str, ...] = PIXEL_MIXINGS  # IPMix_utils.mixings
    jsd_weight: float = 12.0  # lambda of the consistency term, hard-coded 12 in cifar.py
    mixing_set_size: int = 300  # ours: procedural fractals (the paper's set is downloaded)
    mixing_side: int = 36  # cifar.py: pictures Resize(36), then a random 32 x 32 crop
    mixing_seed: int = 0  # ours: the seed of the mixing set's own generator

    def __post_init__(self) -> None:
        check_range("IPMix k", self.k, 1, integer=True)
        check_range("IPMix t", self.t, 0, integer=True)
        check_range("IPMix beta", self.beta, 0, low_open=True)
        check_range("IPMix severity", self.severity, 0.1, 10)
        check_range("IPMix p_patch_chain", self.p_patch_chain, 0, 1)
        check_range("number of IPMix patch fractions", len(self.patch_fractions), 1, integer=True)
        for f in self.patch_fractions:
            check_range("IPMix patch fraction", f, 0, 1, low_open=True)
        check_range("number of IPMix operations", len(self.ops), 1, integer=True)
        for op in self.ops:
            check_choice("IPMix operation", op, IMAGE_OPS)
        check_range("number of IPMix mixings", len(self.mixings), 1, integer=True)
        for op in self.mixings:
            check_choice("IPMix mixing", op, PIXEL_MIXINGS)
        check_range("IPMix jsd_weight", self.jsd_weight, 0)
        check_range("IPMix mixing_set_size", self.mixing_set_size, 1, integer=True)
        check_range("IPMix mixing_side", self.mixing_side, 2, integer=True)
        check_range("IPMix mixing_seed", self.mixing_seed, 0, integer=True)


IPMIX = IPMixSettings()


# --- draws from the global RNG ----------------------------------------------------------------

def _uniform() -> float:
    return float(torch.rand(()))


def _randint(low: int, high: int) -> int:
    """Uniform integer in [low, high], both included (Python's random.randint)."""
    return int(torch.randint(low, high + 1, ()))


def _pick(options: tuple[str, ...]) -> str:
    return options[int(torch.randint(len(options), ()))]


def _beta_b1(beta: float) -> float:
    """Beta(beta, 1) by inverse CDF: U ** (1 / beta)."""
    return _uniform() ** (1 / beta)


def _beta_1b(beta: float) -> float:
    """Beta(1, beta) by inverse CDF: 1 - U ** (1 / beta)."""
    return 1 - _uniform() ** (1 / beta)


def _dirichlet_ones(k: int) -> Tensor:
    """Dirichlet(1, ..., 1): normalised Exp(1) draws -log(1 - U), from ``k`` uniforms."""
    e = -torch.log1p(-torch.rand(k, dtype=torch.float64))
    return (e / e.sum().clamp_min(1e-300)).float()


# --- the mixing set ---------------------------------------------------------------------------

def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    i = np.floor(h * 6)
    f = h * 6 - i
    i = i.astype(np.int64) % 6
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], -1)


def _rotation(angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def fractal_pictures(n: int, side: int, seed: int = 0, *, walkers: int = 512, iterations: int = 24,
                     burn_in: int = 8) -> Tensor:
    """``n`` iterated-function-system fractals, float n x 3 x side x side in [0, 1], the same for
    the same arguments on every run; uncached (:func:`mixing_set` caches).

    Each picture has 2-4 affine maps ``A = R(theta) diag(s1, s2) R(phi) D`` (D a random sign flip)
    whose singular values meet Anderson & Farrell's (2022) sigma-factor rule,
    ``sum (s1 + 2 s2)`` uniform in [(5 + N) / 2, (6 + N) / 2] for N maps, which keeps the
    attractors neither dusty nor filled; each map is chosen with a probability proportional to
    its |det|. ``walkers`` chaos-game points per picture run ``iterations`` steps (all pictures
    at once, vectorised); the points after ``burn_in`` steps, on the attractor, are drawn. A point
    carries a colour that moves halfway to its map's colour at each step, so the self-similar
    parts come out in their own hues; brightness is the square root of the log density.
    """
    check_range("number of fractal pictures", n, 1, integer=True)
    check_range("fractal picture side", side, 2, integer=True)
    check_range("fractal seed", seed, 0, integer=True)
    rng = np.random.default_rng(seed)
    m = 4
    maps = rng.integers(2, m + 1, n)
    active = np.arange(m)[None] < maps[:, None]
    sigma = rng.uniform((5 + maps) / 2, (6 + maps) / 2)
    share = rng.dirichlet(np.ones(m), n) * active
    budget = np.clip(sigma[:, None] * share / share.sum(1, keepdims=True), 0.05, 2.9)
    # s1 + 2 s2 = budget with s2 <= s1 < 1 (contractive)
    s1 = rng.uniform(budget / 3, np.minimum(1.0, budget) * 0.999)
    s2 = (budget - s1) / 2
    theta, phi = rng.uniform(0, 2 * np.pi, (2, n, m))
    flips = rng.choice([-1.0, 1.0], (n, m, 2))
    singular = np.stack([s1, s2], -1)[..., None]
    a = _rotation(theta) @ (singular * _rotation(phi)) * flips[..., None, :]
    shift = rng.uniform(-1, 1, (n, m, 2))
    det = np.abs(np.linalg.det(a)) * active
    cum = np.cumsum(det / det.sum(1, keepdims=True), 1)
    cum[:, -1] = 1.0
    colour = _hsv_to_rgb(rng.uniform(0, 1, (n, m)), rng.uniform(0.6, 1, (n, m)), np.ones((n, m)))
    # One gather per step fetches a map's 4 matrix entries, 2 shifts and 3 colour channels.
    table = np.concatenate([a.reshape(n, m, 4), shift, colour], -1).astype(np.float32)
    table = table.reshape(n * m, 9)
    first = (np.arange(n) * m)[:, None]
    x = rng.uniform(-1, 1, (n, walkers)).astype(np.float32)
    y = rng.uniform(-1, 1, (n, walkers)).astype(np.float32)
    c = np.full((n, walkers, 3), 0.5, np.float32)
    kept = iterations - burn_in
    points = np.empty((n, kept, walkers, 2), np.float32)
    colours = np.empty((n, kept, walkers, 3), np.float32)
    u = rng.random((iterations, n, walkers), dtype=np.float32)
    for it in range(iterations):
        row = table[first + (u[it][..., None] > cum[:, None, :]).sum(-1)]
        x, y = (row[..., 0] * x + row[..., 1] * y + row[..., 4],
                row[..., 2] * x + row[..., 3] * y + row[..., 5])
        c = (c + row[..., 6:]) * 0.5
        if it >= burn_in:
            points[:, it - burn_in, :, 0], points[:, it - burn_in, :, 1] = x, y
            colours[:, it - burn_in] = c
    points, colours = points.reshape(n, -1, 2), colours.reshape(n, -1, 3)
    # Frame the bulk of the attractor (1st-99th percentile of a sample of its points).
    lo = np.quantile(points[:, :2048], 0.01, axis=1)
    hi = np.quantile(points[:, :2048], 0.99, axis=1)
    scale = np.maximum((hi - lo).max(1), 1e-6) * 1.1
    pix = np.floor(((points - ((lo + hi) / 2)[:, None]) / scale[:, None, None] + 0.5) * side)
    pix = pix.astype(np.int64)
    inside = ((pix >= 0) & (pix < side)).all(-1)
    index = (np.arange(n)[:, None] * side * side + pix[..., 1] * side + pix[..., 0])[inside]
    bins = n * side * side
    count = np.bincount(index, minlength=bins)
    rgb = np.stack([np.bincount(index, colours[..., j][inside], minlength=bins) for j in range(3)],
                   -1) / np.maximum(count, 1)[:, None]
    count = count.reshape(n, side, side)
    density = np.log1p(count) / np.log1p(np.maximum(count.reshape(n, -1).max(1), 1))[:, None, None]
    image = rgb.reshape(n, side, side, 3) * np.sqrt(density)[..., None]
    return torch.from_numpy(np.clip(image, 0, 1)).permute(0, 3, 1, 2).float().contiguous()


def mixing_set(n: int = IPMIX.mixing_set_size, side: int = IPMIX.mixing_side,
               seed: int = IPMIX.mixing_seed) -> Tensor:
    """The mixing pictures, float n x 3 x side x side in [0, 1]: :func:`fractal_pictures`,
    generated once per process and cached (shared: do not modify it in place)."""
    return _cached_set(n, side, seed)


@functools.lru_cache(maxsize=4)
def _cached_set(n: int, side: int, seed: int) -> Tensor:
    start = time.perf_counter()
    pictures = fractal_pictures(n, side, seed)
    log.debug("generated %d IPMix mixing pictures (%d px) in %.2f s", n, side,
              time.perf_counter() - start)
    return pictures


@functools.lru_cache(maxsize=8)
def _mixing_pool(h: int, w: int, n: int, side: int, seed: int) -> Tensor:
    """The mixing set resized for h x w images: ``side / 32`` times the image (cifar.py's 36 px
    for 32 px images), so a random h x w crop of it plays Resize(36) + RandomCrop(32)."""
    pictures = mixing_set(n, side, seed)
    size = (max(h, round(h * side / _CIFAR_SIDE)), max(w, round(w * side / _CIFAR_SIDE)))
    if size == tuple(pictures.shape[-2:]):
        return pictures
    return F.interpolate(pictures, size=size, mode="bilinear", align_corners=False,
                         antialias=True).clamp_(0, 1)


def draw_mixing_pictures(n: int, h: int, w: int, settings: IPMixSettings = IPMIX) -> Tensor:
    """One mixing picture per image, float n x 3 x h x w on the CPU: a uniform picture of the
    set, cropped at a uniform position. Draws: the n indices, then the n tops, then the n lefts."""
    pool = _mixing_pool(h, w, settings.mixing_set_size, settings.mixing_side, settings.mixing_seed)
    ph, pw = pool.shape[-2:]
    index = torch.randint(len(pool), (n,))
    tops = torch.randint(ph - h + 1, (n,))
    lefts = torch.randint(pw - w + 1, (n,))
    return torch.stack([pool[i, :, t:t + h, s:s + w]
                        for i, t, s in zip(index.tolist(), tops.tolist(), lefts.tolist())])


# --- pixel level ------------------------------------------------------------------------------

def _mixing_weights(beta: float) -> tuple[float, float]:
    """IPMix_utils.get_ab: (a, b) = (Beta(beta, 1), Beta(1, beta)) or, with probability 1/2,
    (1 + Beta(1, beta), -Beta(1, beta)), which extrapolates away from the mixing picture.
    Draws: the branch, then a's uniform, then b's."""
    if _uniform() < 0.5:
        return _beta_b1(beta), _beta_1b(beta)
    return 1 + _beta_1b(beta), -_beta_1b(beta)


def pixel_mix(image: Tensor, picture: Tensor, op: str, beta: float = IPMIX.beta) -> Tensor:
    """The pixel-level mixing ``op`` of a float C x H x W ``image`` with ``picture`` (same shape,
    [0, 1]), clipped to [0, 1] (Huang et al., 2023; IPMix_utils.mixings):

    * ``add``: ``(a (2 x - 1) + b (2 p - 1) + 1) / 2``;
    * ``multiply``: ``(2 x) ** a * (2 p) ** b / 2`` (p clamped to 1e-37 first, as the code);
    * ``random_pixels`` / ``random_elems``: ``B * x + (1 - B) * p`` with ``B = U < r``, ``U``
      uniform per pixel (1 x H x W, shared by the channels) / per element (C x H x W) and
      ``r ~ U(0, 1)``.

    Draws: ``add``/``multiply`` the weights (:func:`_mixing_weights`); the random mixings ``U``,
    then ``r``.
    """
    check_choice("IPMix mixing", op, PIXEL_MIXINGS)
    if op == "add":
        a, b = _mixing_weights(beta)
        out = (a * (image * 2 - 1) + b * (picture * 2 - 1) + 1) / 2
    elif op == "multiply":
        a, b = _mixing_weights(beta)
        out = (image * 2) ** a * (picture * 2).clamp_min(1e-37) ** b / 2
    else:
        channels = 1 if op == "random_pixels" else image.shape[0]
        noise = torch.rand(channels, *image.shape[1:])
        out = torch.where(noise < torch.rand(()), image, picture)
    return out.clamp(0, 1)


# --- patch level ------------------------------------------------------------------------------

def _patch_sides(h: int, w: int, fractions: tuple[float, ...]) -> tuple[int, ...]:
    short = min(h, w)
    return tuple(min(short, max(2, round(f * short))) for f in fractions)


def patch_mix(image: Tensor, picture: Tensor, side: int, op: str,
              beta: float = IPMIX.beta) -> Tensor:
    """One patch mixing (IPMix_utils.patch_mixing): a patch of ``image`` (float C x H x W) is
    replaced by :func:`pixel_mix` of itself with the same patch of ``picture``.

    The patch's top-left corner is uniform in [0, W - side] x [0, H - side]; the patch is
    ``side`` x ``side`` or, with probability 1/2, ``pw`` x ``ph`` with each in [2, side].
    Draws: left, top, the shape, (pw, ph), then the mixing's own.
    """
    _, h, w = image.shape
    left, top = _randint(0, w - side), _randint(0, h - side)
    if _uniform() < 0.5:
        pw = ph = side
    else:
        pw, ph = _randint(2, side), _randint(2, side)
    out = image.clone()
    region = (slice(None), slice(top, top + ph), slice(left, left + pw))
    out[region] = pixel_mix(image[region], picture[region], op, beta)
    return out


# --- image level ------------------------------------------------------------------------------

def _level(severity: float) -> float:
    """IPMix_utils.sample_level: U(0.1, severity), on AugMix's scale of 10."""
    return 0.1 + (severity - 0.1) * _uniform()


def _signed(value: float) -> float:
    return -value if _uniform() > 0.5 else value


def _translate(image: Tensor, dx: int, dy: int) -> Tensor:
    """out[y, x] = image[y + dy, x + dx], black outside (PIL's affine with offsets dx, dy)."""
    h, w = image.shape[-2:]
    out = torch.zeros_like(image)
    if abs(dx) < w and abs(dy) < h:
        out[..., max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)] = \
            image[..., max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
    return out


def _shear(image: Tensor, amount: float, axis: int) -> Tensor:
    shear = [0.0, 0.0]
    shear[axis] = math.degrees(math.atan(amount))
    return TF.affine(image, angle=0.0, translate=[0, 0], scale=1.0, shear=shear,
                     interpolation=InterpolationMode.BILINEAR, center=[0, 0])


def image_op(image: Tensor, op: str, severity: float = IPMIX.severity) -> Tensor:
    """The image-level operation ``op`` on a uint8 C x H x W image (IPMix_utils), its magnitude
    from ``level ~ U(0.1, severity)`` on a scale of 10:

    * ``posterize``: 4 - int(level * 4 / 10) bits; ``solarize``: threshold 256 - int(level * 25.6);
    * ``rotate``: +-int(level * 3) degrees; ``shear_x`` / ``shear_y``: +-level * 0.03;
    * ``translate_x`` / ``translate_y``: +-int(level * side / 30) px (side: W or H);
    * ``equalize``, ``mirror``, ``invert``: no magnitude, no draws.

    Draws: the level, then (signed operations) the sign, negative when a uniform exceeds 1/2.
    """
    check_choice("IPMix operation", op, IMAGE_OPS)
    if op == "equalize":
        return TF.equalize(image)
    if op == "mirror":
        return TF.horizontal_flip(image)
    if op == "invert":
        return TF.invert(image)
    level = _level(severity)
    if op == "posterize":
        return TF.posterize(image, 4 - int(level * 4 / 10))
    if op == "solarize":
        return TF.solarize(image, 256 - int(level * 256 / 10))
    if op == "rotate":
        return TF.rotate(image, _signed(int(level * 30 / 10)),
                         interpolation=InterpolationMode.BILINEAR)
    if op in ("shear_x", "shear_y"):
        return _shear(image, _signed(level * 0.3 / 10), 0 if op == "shear_x" else 1)
    h, w = image.shape[-2:]
    if op == "translate_x":
        return _translate(image, int(_signed(int(level * (w / 3) / 10))), 0)
    return _translate(image, 0, int(_signed(int(level * (h / 3) / 10))))


# --- one view ---------------------------------------------------------------------------------

def ipmix_image(image: Tensor, picture: Tensor, settings: IPMixSettings = IPMIX) -> Tensor:
    """One IPMix view of a float 3 x H x W ``image`` in [0, 1] with its mixing ``picture``
    (cifar.py's ``ipmix``): ``(1 - m) x + m sum_i w_i chain_i(x)``, unrounded float.

    Draws: the k Dirichlet weights, m, then per chain its kind (a patch chain when a uniform is
    below ``p_patch_chain``), its length in [0, t], and per operation: a patch chain's side and
    mixing (:func:`patch_mix`), an image chain's operation (:func:`image_op`).
    """
    weights = _dirichlet_ones(settings.k).tolist()
    m = _uniform()
    sides = _patch_sides(image.shape[1], image.shape[2], settings.patch_fractions)
    image_u8 = image.mul(255).round_().clamp_(0, 255).to(torch.uint8)
    mix = torch.zeros_like(image)
    for weight in weights:
        patch_chain = _uniform() < settings.p_patch_chain
        length = _randint(0, settings.t)
        if patch_chain:
            chain = image
            for _ in range(length):
                side = sides[int(torch.randint(len(sides), ()))]
                chain = patch_mix(chain, picture, side, _pick(settings.mixings), settings.beta)
        else:
            chain_u8 = image_u8
            for _ in range(length):
                chain_u8 = image_op(chain_u8, _pick(settings.ops), settings.severity)
            chain = chain_u8.to(image.dtype) / 255
        mix += weight * chain
    return (1 - m) * image + m * mix


def ipmix_view(x: Tensor, pictures: Tensor | None = None,
               settings: IPMixSettings = IPMIX) -> Tensor:
    """One IPMix view of a float N x 3 x H x W batch in [0, 1], on the uint8 grid, same device,
    dtype and memory format. ``pictures`` (N x 3 x H x W): the images' mixing pictures; drawn by
    :func:`draw_mixing_pictures` when None. The work runs per image on the CPU."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise DemHECError(f"IPMix needs an N x 3 x H x W batch, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if pictures is None:
        pictures = draw_mixing_pictures(len(x), h, w, settings)
    src = x.detach().to(device="cpu", dtype=torch.float32).clamp(0, 1)
    pictures = pictures.to(device="cpu", dtype=torch.float32)
    out = torch.stack([ipmix_image(img, pic, settings) for img, pic in zip(src, pictures)])
    out = out.mul_(255).round_().clamp_(0, 255).div_(255).to(device=x.device, dtype=x.dtype)
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def _ipmix_loss(settings: IPMixSettings):
    def loss(step: Step, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        # One mixing picture per image for both views, as IPMixDataset draws it.
        pictures = draw_mixing_pictures(len(x), *x.shape[-2:], settings)
        views = torch.cat([x, ipmix_view(x, pictures, settings), ipmix_view(x, pictures, settings)])
        # The three views in one forward pass, so BatchNorm sees all of them (cifar.py).
        logits_clean, logits_aug1, logits_aug2 = step.forward(views).split(len(x))
        ce = step.ce(logits_clean, y)
        jsd = js_divergence_loss(logits_clean, logits_aug1, logits_aug2)
        value = ce + settings.jsd_weight * jsd
        return value, {"ce": ce.item(), "jsd": jsd.item()}

    return loss


register_method(Method("ipmix", "IPMix", "Huang et al., 2023 (IPMix + JSD)", _ipmix_loss(IPMIX),
                       augment=functools.partial(ipmix_view, settings=IPMIX), passes=3.0,
                       settings=IPMIX))
