"""The paper's figures (2-5) and result plots, as matplotlib figures.

Every function builds and returns a :class:`matplotlib.figure.Figure` created without pyplot,
so no global figure registry fills up, no backend is needed until saving (Agg-safe), and the
caller owns the figure. Nothing here writes files except :func:`save_figure`, which writes a
PNG and a PDF atomically and without timestamps, so re-running an experiment reproduces
byte-identical figures.

Colours are fixed across figures (:data:`PALETTE`): clean / before Dem-HEC are blue,
corrupted inputs red, after Dem-HEC orange.
"""

from __future__ import annotations

import functools
import io
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ._common import DemHECError, atomic_write, check_choice

log = logging.getLogger(__name__)

__all__ = [
    "PALETTE",
    "ablation_figure",
    "clean_accuracy_figure",
    "corruption_grid_figure",
    "delta_heatmap",
    "entropy_figure",
    "entropy_grid_figure",
    "pretty_name",
    "robustness_figure",
    "save_figure",
    "show_figure",
    "tradeoff_figure",
    "training_curve_figure",
]

# Fixed colours per role; the paper's Figures 3/4 draw clean samples blue and corrupted red.
PALETTE: Mapping[str, str] = {
    "clean": "#1f77b4",
    "before": "#1f77b4",
    "corrupted": "#d62728",
    "after": "#ff7f0e",
    "dem_hec": "#ff7f0e",
}
# Colours for any other series (e.g. Table 3's augmentation methods), in order of appearance;
# tab10 without the blue, orange and red reserved above.
_OTHER_COLOURS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
_PAPER_MARKER_COLOUR = "black"

# Display names of registry names, as the paper prints them (Figure 2, Tables 1-6); names not
# listed are shown title-cased.
_PRETTY: Mapping[str, str] = {
    "gaussian_noise": "Gaussian",
    "shot_noise": "Shot",
    "impulse_noise": "Impulse",
    "snow": "Snow",
    "frost": "Frost",
    "pixelate": "Pixelate",
    "jpeg_compression": "JPEG",
    "clean": "Clean",
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
    "tinyimagenet": "Tiny-ImageNet",
    "imagenette": "ImageNette",
    "resnet20": "ResNet-20",
    "resnet56": "ResNet-56",
    "resnet18": "ResNet-18",
    "resnet50": "ResNet-50",
    "repvgg_a0": "RepVGG-A0",
    "repvgg_a2": "RepVGG-A2",
    "resnet32": "ResNet-32",
    "resnet44": "ResNet-44",
    "repvgg_a1": "RepVGG-A1",
    "vit_large_patch16_384": "ViT-L",
    "vit_test": "ViT-Test",
    "alexnet": "AlexNet",
    "dem_hec": "Dem-HEC",
    "digits": "Digits",
    "cifar10_jpeg": "CIFAR10 (JPEG)",
    "cifar-c": "cifar-c",
    "imagecorruptions": "imagecorruptions",
}

# Written into every saved figure; fixed so that reruns give identical bytes.
_DPI = 150
_SAVE_METADATA: Mapping[str, Mapping[str, Any]] = {
    "png": {"Software": None},
    "pdf": {"CreationDate": None},
}
_STYLE = "whitegrid"

# Loss terms of eq. 12 as logged by demhec.training.finetune, with their display names.
_LOSS_TERMS: Mapping[str, str] = {"loss": "total (eq. 12)", "ce_clean": "CE clean", "ce_he": "CE high-entropy",
                                   "info_nce": "InfoNCE", "kd": "KD"}

_F = TypeVar("_F", bound=Callable[..., Figure])


def pretty_name(name: str) -> str:
    """The paper's display name for a corruption, dataset or backbone registry name; other
    names title-cased, with the model families spelt as their papers do ("vit_small" ->
    "ViT Small", "timm:resnet10t" -> "timm:resnet10t": external names are left as typed)."""
    name = str(name)
    if name in _PRETTY:
        return _PRETTY[name]
    if ":" in name:
        return name
    words = name.replace("_", " ").title().split(" ")
    fixed = {"Vit": "ViT", "Resnet": "ResNet", "Repvgg": "RepVGG", "Jpeg": "JPEG", "Bn": "BN"}
    return " ".join(fixed.get(w, w) for w in words)


def _styled(fn: _F) -> _F:
    """Build the figure under one seaborn style without touching the caller's rcParams."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with sns.axes_style(_STYLE):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _colours(names: Sequence[str]) -> dict[str, str]:
    others = iter(_OTHER_COLOURS * (len(names) // len(_OTHER_COLOURS) + 1))
    return {n: PALETTE[n] if n in PALETTE else next(others) for n in names}


def _unique(values: Any) -> list:
    return list(dict.fromkeys(values))


def _check_columns(df: pd.DataFrame, what: str, required: Sequence[str]) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DemHECError(f"{what} needs columns {list(required)}; missing {missing}")
    if df.empty:
        raise DemHECError(f"{what} got an empty table")


def _check_unique(df: pd.DataFrame, what: str, keys: Sequence[str]) -> None:
    if df.duplicated(subset=list(keys)).any():
        raise DemHECError(
            f"{what} needs one row per {tuple(keys)}; filter the table (e.g. to one dataset "
            "and backbone) first"
        )


def _check_images(name: str, images: Any) -> np.ndarray:
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4
            and images.shape[-1] == 3 and len(images) > 0):
        got = getattr(images, "shape", type(images).__name__)
        raise DemHECError(f"{name} must be non-empty uint8 images N x H x W x 3, got {got}")
    return images


def _severity_label(severity: int) -> str:
    return "clean" if severity == 0 else f"S{severity}"


@_styled
def corruption_grid_figure(
    clean: np.ndarray,
    corrupted: Mapping[tuple[str, int], np.ndarray],
    corruptions: Sequence[str],
    severities: Sequence[int],
    title: str | None = None,
) -> Figure:
    """Figure 2: a grid with one column per corruption, the clean images in the first row and
    one row per severity below.

    Column j shows image ``j % N`` of ``clean`` and of each ``corrupted[(corruption,
    severity)]`` (uint8 N x H x W x 3, same shape as ``clean``), so every column follows one
    image through increasing severity, as in the paper.
    """
    clean = _check_images("clean", clean)
    corruptions, severities = list(corruptions), list(severities)
    if not corruptions or not severities:
        raise DemHECError("corruption_grid_figure needs at least one corruption and severity")
    for c in corruptions:
        for s in severities:
            check_choice("corrupted cell", (c, s), corrupted.keys())
            cell = _check_images(f"corrupted[{(c, s)!r}]", corrupted[(c, s)])
            if cell.shape != clean.shape:
                raise DemHECError(
                    f"corrupted[{(c, s)!r}] has shape {cell.shape}, clean has {clean.shape}"
                )
    nrows, ncols = 1 + len(severities), len(corruptions)
    # Fixed geometry (inches) instead of constrained layout: with fixed-aspect images that
    # layout never settles, so repeated saves would differ. Margins hold titles and labels.
    cell, gap, left, right, bottom = 1.5, 0.08, 0.35, 0.05, 0.05
    top = 0.3 + (0.35 if title else 0.0)
    width = left + right + ncols * cell + (ncols - 1) * gap
    height = top + bottom + nrows * cell + (nrows - 1) * gap
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(nrows, ncols, squeeze=False, gridspec_kw=dict(
        left=left / width, right=1 - right / width, bottom=bottom / height,
        top=1 - top / height, wspace=gap / cell, hspace=gap / cell))
    for j, c in enumerate(corruptions):
        k = j % len(clean)
        rows = [clean[k]] + [corrupted[(c, s)][k] for s in severities]
        for i, img in enumerate(rows):
            ax = axes[i, j]
            # Nearest keeps 32 x 32 CIFAR pixels visible instead of blurring them.
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
        axes[0, j].set_title(pretty_name(c), fontsize=10)
    for i, label in enumerate(["Clean"] + [_severity_label(s) for s in severities]):
        axes[i, 0].set_ylabel(label, fontsize=10)
    if title:
        fig.suptitle(title)
    return fig


def _as_numpy(values: Any, name: str) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise DemHECError(f"entropies of layer {name!r} must be a non-empty 1-D array (N,), "
                          f"got shape {arr.shape}")
    return arr


@_styled
def entropy_figure(
    clean: Mapping[str, Any],
    corrupted: Mapping[str, Any],
    title: str | None = None,
    layer_labels: Mapping[str, str] | None = None,
    normalise_by: Mapping[str, float] | None = None,
) -> Figure:
    """Figures 3/4: per-layer distributions of the eq. 4 entropy, clean (blue, left half) vs
    corrupted (red, right half) split violins, layers from shallow to deep in ``clean``'s order.

    Values are arrays or tensors (N,) per layer, e.g. from :func:`demhec.entropy.layer_entropy`.
    ``normalise_by`` divides each layer's values (e.g. by log d, see
    :func:`demhec.entropy.normalised`) so layers of different widths share one scale; the
    layer "" (the whole model) is shown as "logits" unless ``layer_labels`` names it.
    """
    fig = Figure(figsize=(max(4.0, 1.1 * len(clean) + 1.5), 3.8), layout="constrained")
    ax = fig.add_subplot()
    _entropy_violins(ax, clean, corrupted, layer_labels, normalise_by)
    if title:
        ax.set_title(title)
    return fig


@_styled
def entropy_grid_figure(
    panels: Mapping[tuple[str, str], tuple[Mapping[str, Any], Mapping[str, Any]]],
    title: str | None = None,
    layer_labels: Mapping[str, str] | None = None,
    normalise_by: Mapping[str, float] | None = None,
) -> Figure:
    """Figures 3/4 for several models and corruptions at once: ``panels`` maps (row, column)
    labels, e.g. (model, corruption), to the (clean, corrupted) per-layer entropies that
    :func:`entropy_figure` draws; one shared y axis so the rows compare at a glance."""
    if not panels:
        raise DemHECError("entropy_grid_figure needs at least one panel")
    rows = _unique(r for r, _ in panels)
    cols = _unique(c for _, c in panels)
    n_layers = len(next(iter(panels.values()))[0])
    fig = Figure(figsize=(max(4.0, 1.0 * n_layers + 1.0) * len(cols), 2.9 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(cols), sharey=True, squeeze=False)
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            ax = axes[i][j]
            if (row, col) not in panels:
                ax.set_axis_off()
                continue
            clean, corrupted = panels[(row, col)]
            _entropy_violins(ax, clean, corrupted, layer_labels, normalise_by, legend=(i, j) == (0, 0))
            ax.set_title(f"{row}: {col}", fontsize="medium")
            if i < len(rows) - 1:
                ax.set_xlabel("")
            if j > 0:
                ax.set_ylabel("")
    if title:
        fig.suptitle(title)
    return fig


def _entropy_violins(ax: Any, clean: Mapping[str, Any], corrupted: Mapping[str, Any],
                     layer_labels: Mapping[str, str] | None, normalise_by: Mapping[str, float] | None,
                     legend: bool = True) -> None:
    layers = list(clean)
    if not layers:
        raise DemHECError("entropy_figure needs at least one layer")
    if set(corrupted) != set(layers):
        raise DemHECError(f"clean and corrupted must have the same layers; clean has {layers}, "
                          f"corrupted has {list(corrupted)}")
    labels = dict(layer_labels or {})
    scale = dict(normalise_by or {})
    for name in scale:
        check_choice("layer", name, layers)
    for name, value in scale.items():
        if not (np.isfinite(value) and value > 0):
            raise DemHECError(f"normalise_by[{name!r}] must be a positive number, got {value!r}")
    display = [labels.get(n, n if n else "logits") for n in layers]
    frames = []
    for name, shown in zip(layers, display):
        for kind, source in (("clean", clean), ("corrupted", corrupted)):
            values = _as_numpy(source[name], name) / scale.get(name, 1.0)
            frames.append(pd.DataFrame({"layer": shown, "kind": kind, "entropy": values}))
    long = pd.concat(frames, ignore_index=True)
    kinds = ["clean", "corrupted"]
    # cut=0 keeps the violins inside the observed range (entropy cannot exceed log d);
    # width-normalised so shallow layers with tight distributions stay visible.
    sns.violinplot(data=long, x="layer", y="entropy", hue="kind", order=display,
                   hue_order=kinds, palette=_colours(kinds), saturation=1.0, split=True,
                   inner="quart", cut=0, density_norm="width", linewidth=0.8, legend=False,
                   ax=ax)
    if legend:
        ax.legend(handles=[Patch(facecolor=PALETTE[k], label=k) for k in kinds], loc="best")
    ax.set_xlabel("layer (shallow \u2192 deep)")
    ax.set_ylabel("normalised entropy H / log d" if scale else "entropy H (nats, eq. 4)")
    if len(layers) > 6:
        ax.tick_params(axis="x", labelrotation=30)


@_styled
def clean_accuracy_figure(df: pd.DataFrame) -> Figure:
    """Figure 5: clean accuracy before (blue) and after (orange) Dem-HEC, one panel per
    dataset, grouped bars per backbone, each bar annotated with its value.

    ``df`` has columns dataset, backbone, phase ("before"/"after"), accuracy (percent) and
    optionally paper_accuracy, the paper's reported value for that bar (NaN where it reports
    none), drawn as a black marker on the bar.
    """
    _check_columns(df, "clean_accuracy_figure", ["dataset", "backbone", "phase", "accuracy"])
    phases = ["before", "after"]
    for p in _unique(df["phase"]):
        check_choice("phase", p, phases)
    _check_unique(df, "clean_accuracy_figure", ["dataset", "backbone", "phase"])
    datasets = _unique(df["dataset"])
    n_backbones = [df.loc[df["dataset"] == d, "backbone"].nunique() for d in datasets]
    fig = Figure(figsize=(1.6 * sum(n_backbones) + 1.5, 3.8), layout="constrained")
    axes = fig.subplots(1, len(datasets), squeeze=False, sharey=True,
                        gridspec_kw={"width_ratios": n_backbones})[0]
    has_paper = "paper_accuracy" in df.columns and df["paper_accuracy"].notna().any()
    width = 0.38
    for ax, dataset in zip(axes, datasets):
        sub = df[df["dataset"] == dataset]
        backbones = _unique(sub["backbone"])
        x = np.arange(len(backbones))
        for k, phase in enumerate(phases):
            rows = sub[sub["phase"] == phase].set_index("backbone").reindex(backbones)
            present = rows["accuracy"].notna().to_numpy()
            if not present.any():
                continue
            pos = x[present] + (k - 0.5) * width
            bars = ax.bar(pos, rows["accuracy"].to_numpy()[present], width,
                          color=PALETTE[phase])
            # Values sit inside the bars so the paper markers on the bar tops stay legible.
            ax.bar_label(bars, fmt="%.1f", fontsize=8, label_type="center", color="white")
            if has_paper:
                paper = rows["paper_accuracy"].to_numpy(dtype=float)[present]
                ax.plot(pos, paper, linestyle="none", marker="D", markersize=5,
                        color=_PAPER_MARKER_COLOUR)
        ax.set_xticks(x, [pretty_name(b) for b in backbones])
        ax.set_xlim(-0.6, len(backbones) - 0.4)
        ax.grid(axis="x", visible=False)
        ax.set_title(pretty_name(dataset))
        ax.set_xlabel("backbone")
    axes[0].set_ylabel("clean accuracy (%)")
    top = np.nanmax(df[["accuracy", "paper_accuracy"]].to_numpy(dtype=float)) if has_paper \
        else df["accuracy"].max()
    # Headroom for the paper markers above the tallest bar.
    axes[0].set_ylim(0, min(100.0, top * 1.05) if top > 0 else 1.0)
    handles = [Patch(facecolor=PALETTE[p], label=p) for p in phases if (df["phase"] == p).any()]
    if has_paper:
        handles.append(Line2D([], [], linestyle="none", marker="D", markersize=5,
                              color=_PAPER_MARKER_COLOUR, label="paper (reported)"))
    fig.legend(handles=handles, loc="outside upper center", ncols=len(handles))
    return fig


@_styled
def robustness_figure(df: pd.DataFrame, by: str | None = None, title: str | None = None) -> Figure:
    """Corrupted accuracy (eq. 1) against severity, one panel per corruption, one line per
    value of ``by`` (default: the "phase" column, else "method", else a single line).

    With a ``source`` column, rows whose source is "paper" (e.g. Table 1) are drawn dashed in
    the colour of the matching line, so reproduced ("ours") and reported numbers compare at a
    glance. Clean rows (corruption "clean", as :func:`demhec.evaluation.evaluate` returns)
    start each line at x = "clean".
    """
    _check_columns(df, "robustness_figure", ["corruption", "severity", "accuracy"])
    if by is None:
        by = next((c for c in ("phase", "method") if c in df.columns), None)
    else:
        check_choice("column", by, df.columns)
    data = df.assign(_series="accuracy" if by is None else df[by].astype(str))
    data = data.assign(_source=data["source"].astype(str) if "source" in data.columns else "")
    if "source" in data.columns:
        for s in _unique(data["_source"]):
            check_choice("source", s, ["ours", "paper"])
    _check_unique(data, "robustness_figure", ["corruption", "severity", "_series", "_source"])
    corruptions = [c for c in _unique(data["corruption"]) if c != "clean"]
    if not corruptions:
        raise DemHECError("robustness_figure needs rows with a corruption other than 'clean'")
    series = _unique(data["_series"])
    colours = _colours(series)
    clean = data[data["corruption"] == "clean"]
    severities = sorted(int(s) for s in data.loc[data["corruption"] != "clean", "severity"].unique())
    ticks = ([0] if not clean.empty else []) + severities

    ncols = min(len(corruptions), 4)
    nrows = -(-len(corruptions) // ncols)
    fig = Figure(figsize=(3.0 * ncols + 0.5, 2.6 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    handles: dict[str, Line2D] = {}
    for ax, corruption in zip(axes.flat, corruptions):
        for (name, source), group in data[data["corruption"] == corruption].groupby(
                ["_series", "_source"], sort=False):
            start = clean[(clean["_series"] == name) & (clean["_source"] == source)]
            pts = pd.concat([start, group]).sort_values("severity")
            label = f"{name} ({source})" if source else name
            (line,) = ax.plot(pts["severity"].astype(int), pts["accuracy"], marker="o",
                              markersize=4, color=colours[name], label=label,
                              linestyle="--" if source == "paper" else "-",
                              alpha=0.7 if source == "paper" else 1.0)
            handles.setdefault(label, line)
        ax.set_title(pretty_name(corruption))
        ax.set_xticks(ticks, [_severity_label(s) for s in ticks])
    for ax in axes.flat[len(corruptions):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (%)")
    for j in range(ncols):
        # The lowest visible panel of each column carries the x label.
        last = max(i for i in range(nrows) if i * ncols + j < len(corruptions))
        axes[last, j].set_xlabel("severity")
        axes[last, j].xaxis.set_tick_params(labelbottom=True)
    # A title takes the top; the legend then goes below the panels.
    fig.legend(handles=list(handles.values()), loc="outside lower center" if title else "outside upper center",
               ncols=min(len(handles), 4))
    if title:
        fig.suptitle(title)
    return fig


@_styled
def delta_heatmap(df: pd.DataFrame, title: str | None = None) -> Figure:
    """Heatmap of accuracy gains (points, e.g. after - before Dem-HEC) with corruptions as
    rows and severities as columns, on a colour scale centred at zero (green gains, red
    losses), each cell annotated. Clean rows are left out; missing cells stay blank.
    """
    _check_columns(df, "delta_heatmap", ["corruption", "severity", "delta"])
    data = df[df["corruption"] != "clean"]
    if data.empty:
        raise DemHECError("delta_heatmap needs rows with a corruption other than 'clean'")
    _check_unique(data, "delta_heatmap", ["corruption", "severity"])
    corruptions = _unique(data["corruption"])
    severities = sorted(int(s) for s in data["severity"].unique())
    grid = (data.assign(severity=data["severity"].astype(int))
            .pivot(index="corruption", columns="severity", values="delta")
            .reindex(index=corruptions, columns=severities).astype(float))
    extent = float(np.nanmax(np.abs(grid.to_numpy())))
    extent = extent if extent > 0 else 1.0
    fig = Figure(figsize=(1.0 * len(severities) + 2.6, 0.45 * len(corruptions) + 1.4),
                 layout="constrained")
    ax = fig.add_subplot()
    sns.heatmap(grid, ax=ax, cmap="RdYlGn", center=0.0, vmin=-extent, vmax=extent,
                annot=True, fmt="+.1f", linewidths=0.5,
                xticklabels=[_severity_label(s) for s in severities],
                yticklabels=[pretty_name(c) for c in corruptions],
                cbar_kws={"label": "accuracy gain (points)"})
    ax.set_xlabel("severity")
    ax.set_ylabel("corruption")
    ax.tick_params(axis="y", labelrotation=0)
    if title:
        ax.set_title(title)
    return fig


@_styled
def training_curve_figure(history: Sequence[Mapping[str, float]],
                          title: str | None = None) -> Figure:
    """Loss against optimisation step: the total loss of eq. 12 and, where logged, its terms
    (ce_clean, ce_he, info_nce, kd; unweighted, as :func:`demhec.training.finetune` reports
    them). Each entry needs "step" and "loss"."""
    if not history:
        raise DemHECError("training_curve_figure needs a non-empty history")
    for i, entry in enumerate(history):
        missing = [k for k in ("step", "loss") if k not in entry]
        if missing:
            raise DemHECError(f"history[{i}] lacks {missing}; each entry needs 'step' and 'loss'")
    steps = np.array([float(h["step"]) for h in history])
    order = np.argsort(steps, kind="stable")
    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    ax = fig.add_subplot()
    colours = _colours([t for t in _LOSS_TERMS if t != "loss"])
    for term, label in _LOSS_TERMS.items():
        if not any(term in h for h in history):
            continue
        values = np.array([float(h.get(term, np.nan)) for h in history])[order]
        total = term == "loss"
        ax.plot(steps[order], values, label=label, color="black" if total else colours[term],
                linewidth=1.8 if total else 1.0,
                # A single logged step would otherwise draw an invisible zero-length line.
                marker="o" if len(history) == 1 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    if title:
        ax.set_title(title)
    return fig


@_styled
def ablation_figure(df: pd.DataFrame,
                    metrics: Sequence[tuple[str, str]] = (("d_noise_s5", "noise S5 mean"),
                                                          ("d_all_s5", "all S5 mean"),
                                                          ("d_clean", "clean"))) -> Figure:
    """Change from the base model (points) of each fine-tuning run, one panel per metric: a
    bar at the mean over seeds, every seed as a dot, so the spread is visible.

    ``df`` is :func:`demhec.experiments.tables.ablation_summary`'s table (columns label, seed and
    the metric columns); rows labelled "base model" are left out.
    """
    _check_columns(df, "ablation_figure", ["label", "seed", *[m for m, _ in metrics]])
    df = df[df["label"] != "base model"]
    if df.empty:
        raise DemHECError("ablation_figure got no fine-tuning runs")
    labels = _unique(df["label"])
    y = np.arange(len(labels))
    fig = Figure(figsize=(3.2 * len(metrics) + 3.0, 0.42 * len(labels) + 1.4), layout="constrained")
    axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    colours = _colours(labels)
    for ax, (col, title) in zip(axes, metrics):
        means = df.groupby("label", sort=False)[col].mean().reindex(labels)
        ax.barh(y, means.to_numpy(), color=[colours[lab] for lab in labels], alpha=0.8)
        for k, lab in enumerate(labels):
            vals = df.loc[df["label"] == lab, col].to_numpy(dtype=float)
            ax.plot(vals, np.full(len(vals), k), linestyle="none", marker="o", markersize=4,
                    color=_PAPER_MARKER_COLOUR)
            ax.annotate(f"{means.iloc[k]:+.1f}", (means.iloc[k], k), xytext=(3, 0),
                        textcoords="offset points", va="center", fontsize=8)
        ax.axvline(0.0, color=_PAPER_MARKER_COLOUR, linewidth=0.8)
        ax.set_title(title)
        ax.set_xlabel("change from base (points)")
        ax.grid(axis="y", visible=False)
    axes[0].set_yticks(y, labels)
    axes[0].invert_yaxis()
    return fig


@_styled
def tradeoff_figure(df: pd.DataFrame, x: tuple[str, str] = ("d_clean", "clean accuracy"),
                    y: tuple[str, str] = ("d_noise_s5", "noise S5 mean"),
                    target: tuple[float, float] | None = None,
                    families: Mapping[str, str] | None = None) -> Figure:
    """What each fine-tuning run pays in one metric for what it gains in another: one large
    marker per run at its mean over seeds, each seed a small dot of the same colour, both as
    change from the base model in points. ``target`` = (x_min, y_min) shades the region where
    both targets hold. ``families`` maps the ``run`` column's values to a family (e.g.
    :attr:`demhec.experiments.runs.Run.family`): runs of one family share a marker shape and
    are listed together in the legend; within a family no two of the first 20 runs share a colour.

    ``df`` is :func:`demhec.experiments.tables.ablation_summary`'s table; rows labelled "base
    model" are left out. With a ``split`` column holding both halves of the selection protocol
    (:func:`demhec.experiments.selection.halves_summary` of each half, concatenated), each run is
    drawn on both: hollow where it was chosen (selection half), filled where it is reported
    (report half), joined by a thin line, so a reader sees how far the choice moved between the
    halves.
    """
    (xc, xname), (yc, yname) = x, y
    _check_columns(df, "tradeoff_figure", ["label", "seed", xc, yc, *(["run"] if families else [])])
    df = df[df["label"] != "base model"]
    if df.empty:
        raise DemHECError("tradeoff_figure got no fine-tuning runs")
    if families:
        missing = sorted(set(df["run"]) - set(families))
        if missing:
            raise DemHECError(f"tradeoff_figure: no family for runs {missing}")
        family_of = {lab: families[run] for lab, run in zip(df["label"], df["run"])}
    else:
        family_of = {lab: "" for lab in df["label"]}
    order = _unique(family_of[lab] for lab in df["label"])
    labels = sorted(_unique(df["label"]), key=lambda lab: order.index(family_of[lab]))
    markers = dict(zip(order, "DsP^vX*<>ph" * (len(order) // 11 + 1)))
    # tab10's ten colours, then their light shades: a family of up to 20 runs has no repeat
    tab20 = matplotlib.colormaps["tab20"].colors
    colours = tab20[0::2] + tab20[1::2]
    style, counts = {}, dict.fromkeys(order, 0)
    for lab in labels:  # colours restart in each family: a run is found by its shape and colour
        fam = family_of[lab]
        style[lab] = (colours[counts[fam] % len(colours)], markers[fam])
        counts[fam] += 1
    halves = "split" in df.columns and df["split"].nunique() > 1
    if halves and set(df["split"]) != {"selection", "report"}:
        raise DemHECError(f"tradeoff_figure: split must hold 'selection' and 'report', got {sorted(set(df['split']))}")
    shown = df[df["split"] == "report"] if halves else df
    # many runs: the legend goes under the axes in two columns, so long labels do not squeeze them
    below = len(labels) > 8
    fig = Figure(figsize=(10.0, 9.0) if below else (8.5, 5.4), layout="constrained")
    ax = fig.subplots()
    means = shown.groupby("label", sort=False)[[xc, yc]].mean().reindex(labels)
    handles: list[Any] = []
    if target is not None:
        x_lo = min(target[0], float(df[xc].min())) - 1.0
        y_hi = max(target[1], float(df[yc].max())) + 1.0
        handles.append(ax.fill_between([target[0], max(0.5, float(df[xc].max()) + 0.5)], target[1], y_hi,
                                       color=PALETTE["clean"], alpha=0.12, linewidth=0,
                                       label="both targets met"))
        ax.set_xlim(left=x_lo)
    current = None
    for lab in labels:
        seeds = shown[shown["label"] == lab]
        colour, marker = style[lab]
        if families and family_of[lab] != current:
            current = family_of[lab]
            handles.append(Line2D([], [], linestyle="none", label=current.upper()))
        if halves:
            sel = df[(df["label"] == lab) & (df["split"] == "selection")]
            if len(sel):
                sx, sy = float(sel[xc].mean()), float(sel[yc].mean())
                ax.plot([sx, means.loc[lab, xc]], [sy, means.loc[lab, yc]], color=colour, linewidth=0.7, alpha=0.6)
                ax.plot(sx, sy, linestyle="none", marker=marker, markersize=7, markerfacecolor="none",
                        markeredgecolor=colour, markeredgewidth=1.0)
        ax.plot(seeds[xc], seeds[yc], linestyle="none", marker="o", markersize=3, color=colour, alpha=0.6)
        handles.append(ax.plot(means.loc[lab, xc], means.loc[lab, yc], linestyle="none", marker=marker,
                               markersize=7, color=colour, markeredgecolor="black", markeredgewidth=0.4,
                               label=f"{lab} (n={len(seeds)})")[0])
    handles.append(Line2D([], [], linestyle="none", marker="o", markersize=3, color="grey",
                          label="small dot: one seed; large marker: mean over seeds"))
    if halves:
        handles.append(Line2D([], [], linestyle="-", linewidth=0.7, marker="o", markersize=6, color="grey",
                              markerfacecolor="none",
                              label="hollow: selection half (chosen on); filled: report half (reported)"))
    ax.axhline(0.0, color=_PAPER_MARKER_COLOUR, linewidth=0.8)
    ax.axvline(0.0, color=_PAPER_MARKER_COLOUR, linewidth=0.8)
    ax.set_xlabel(f"{xname}: change from base (points)")
    ax.set_ylabel(f"{yname}: change from base (points)")
    if below:
        fig.legend(handles=handles, fontsize=7, loc="outside lower center", ncols=2, frameon=False)
    else:
        ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return fig


def save_figure(fig: Figure, stem: str, figures_dir: str | os.PathLike) -> list[Path]:
    """Write ``fig`` as ``<figures_dir>/<stem>.png`` (150 dpi) and ``.pdf``; return both paths.

    Both files are rendered in memory first and then written atomically, so a failure leaves
    neither a partial file nor a half-updated pair. Timestamps and software versions are left
    out of the metadata, so saving the same figure twice gives identical bytes.
    """
    if not isinstance(stem, str) or not stem or stem in (".", "..") or Path(stem).name != stem:
        raise DemHECError(f"stem must be a plain file name without directories, got {stem!r}")
    rendered = {}
    for ext, metadata in _SAVE_METADATA.items():
        kwargs = dict(format=ext, dpi=_DPI, metadata=dict(metadata), bbox_inches="tight")
        # Constrained layout needs a second draw at the output resolution to reach its fixed
        # point; the throwaway first render makes the saved bytes independent of how (and
        # whether) the figure was drawn before.
        fig.savefig(io.BytesIO(), **kwargs)
        buf = io.BytesIO()
        fig.savefig(buf, **kwargs)
        rendered[ext] = buf.getvalue()
    paths = []
    for ext, data in rendered.items():
        path = Path(figures_dir) / f"{stem}.{ext}"
        with atomic_write(path, "wb") as f:
            f.write(data)
        paths.append(path)
    log.info("saved figure %s (.png, .pdf)", Path(figures_dir) / stem)
    return paths


def show_figure(fig: Figure, stem: str, figures_dir: str | os.PathLike) -> None:
    """Save ``fig`` like :func:`save_figure` and display the saved PNG in the notebook: what a
    reader sees is the file, byte for byte (no timestamp, no path), so an executed notebook is
    reproducible. Outside IPython it only saves."""
    png = next(p for p in save_figure(fig, stem, figures_dir) if p.suffix == ".png")
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:  # pragma: no cover - IPython is a notebooks extra
        return
    if get_ipython() is not None:
        display(Image(data=png.read_bytes(), format="png"))
