"""Figures: real content (panels, images, bars, violins, legends) and deterministic saving."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from demhec import plots  # noqa: E402
from demhec._common import DemHECError  # noqa: E402

SEVEN = ["gaussian_noise", "shot_noise", "impulse_noise", "snow", "frost", "pixelate",
         "jpeg_compression"]


def _visible_axes(fig: Figure) -> list:
    # Colorbars are axes too; panels are the axes that carry a title or a y label.
    return [ax for ax in fig.axes if ax.get_visible() and (ax.get_title() or ax.get_ylabel())]


def _legend_texts(fig: Figure) -> list[str]:
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    return [t.get_text() for leg in legends for t in leg.get_texts()]


def _images(n: int = 2, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# ---------------------------------------------------------------- names


@pytest.mark.parametrize(("name", "shown"), [
    ("gaussian_noise", "Gaussian"), ("jpeg_compression", "JPEG"), ("pixelate", "Pixelate"),
    ("motion_blur", "Motion Blur"), ("repvgg_a0", "RepVGG-A0"), ("tinyimagenet", "Tiny-ImageNet"),
    ("vit_test", "ViT-Test"), ("resnet44", "ResNet-44"), ("vit_small_patch16_224", "ViT Small Patch16 224"),
    ("timm:resnet10t", "timm:resnet10t"), ("digits", "Digits"),
])
def test_pretty_name(name: str, shown: str) -> None:
    assert plots.pretty_name(name) == shown


# ---------------------------------------------------------------- Figure 2


@pytest.mark.parametrize(("corruptions", "severities"), [
    (SEVEN, [3, 5]), (["snow"], [5]), (["gaussian_noise", "elastic_transform", "frost"], [1]),
])
def test_corruption_grid_layout_and_pixels(corruptions: list[str], severities: list[int]) -> None:
    clean = _images(2)
    corrupted = {(c, s): _images(2, seed=10 * i + s) for i, c in enumerate(corruptions)
                 for s in severities}
    fig = plots.corruption_grid_figure(clean, corrupted, corruptions, severities, title="Fig 2")
    nrows, ncols = 1 + len(severities), len(corruptions)
    assert len(fig.axes) == nrows * ncols
    assert sum(len(ax.images) for ax in fig.axes) == nrows * ncols
    grid = np.array(fig.axes).reshape(nrows, ncols)
    assert [ax.get_title() for ax in grid[0]] == [plots.pretty_name(c) for c in corruptions]
    assert [ax.get_ylabel() for ax in grid[:, 0]] == ["Clean"] + [f"S{s}" for s in severities]
    assert fig._suptitle.get_text() == "Fig 2"
    for j, c in enumerate(corruptions):
        k = j % len(clean)  # one image per column, the same index in every row
        np.testing.assert_array_equal(grid[0, j].images[0].get_array(), clean[k])
        for i, s in enumerate(severities, start=1):
            np.testing.assert_array_equal(grid[i, j].images[0].get_array(), corrupted[(c, s)][k])


def test_corruption_grid_rejects_missing_cells_and_bad_images() -> None:
    clean = _images(2)
    with pytest.raises(DemHECError, match="corrupted cell"):
        plots.corruption_grid_figure(clean, {("snow", 3): clean}, ["snow"], [3, 5])
    with pytest.raises(DemHECError, match="uint8"):
        plots.corruption_grid_figure(clean.astype(np.float32), {("snow", 3): clean}, ["snow"], [3])
    with pytest.raises(DemHECError, match="shape"):
        plots.corruption_grid_figure(clean, {("snow", 3): _images(3)}, ["snow"], [3])


# ---------------------------------------------------------------- Figures 3/4


def _halves(ax) -> dict[str, list]:
    """Half-violins of a split violin plot by colour name."""
    out: dict[str, list] = {"clean": [], "corrupted": []}
    for coll in ax.collections:
        for kind in out:
            if np.allclose(coll.get_facecolor()[0], to_rgba(plots.PALETTE[kind])):
                out[kind].append(coll)
    return out


def test_entropy_figure_separates_clean_and_corrupted() -> None:
    rng = np.random.default_rng(0)
    layers = ["stem", "layer2", ""]
    clean = {n: torch.tensor(rng.normal(1.0, 0.1, 64)) for n in layers}  # tensors accepted
    corrupted = {n: rng.normal(1.0 + i, 0.1, 64) for i, n in enumerate(layers)}
    fig = plots.entropy_figure(clean, corrupted, title="Figure 3", layer_labels={"stem": "conv1"})
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["conv1", "layer2", "logits"]
    assert _legend_texts(fig) == ["clean", "corrupted"]
    assert ax.get_ylabel().startswith("entropy") and "layer" in ax.get_xlabel()
    assert ax.get_title() == "Figure 3"
    halves = _halves(ax)
    assert len(halves["clean"]) == len(halves["corrupted"]) == len(layers)
    # The corrupted half of layer i is centred near 1 + i, the clean one near 1.
    for i, (c, r) in enumerate(zip(halves["clean"], halves["corrupted"])):
        assert abs(np.median(c.get_paths()[0].vertices[:, 1]) - 1.0) < 0.3
        assert abs(np.median(r.get_paths()[0].vertices[:, 1]) - (1.0 + i)) < 0.3


def test_entropy_figure_single_layer_and_normalisation() -> None:
    rng = np.random.default_rng(1)
    clean, corrupted = {"fc": rng.normal(4.0, 0.2, 32)}, {"fc": rng.normal(6.0, 0.2, 32)}
    fig = plots.entropy_figure(clean, corrupted, normalise_by={"fc": 2.0})
    (ax,) = fig.axes
    assert "normalised" in ax.get_ylabel()
    halves = _halves(ax)
    assert len(halves["clean"]) == len(halves["corrupted"]) == 1
    assert abs(np.median(halves["corrupted"][0].get_paths()[0].vertices[:, 1]) - 3.0) < 0.3


def test_entropy_figure_rejects_mismatched_layers() -> None:
    x = np.ones(4)
    with pytest.raises(DemHECError, match="same layers"):
        plots.entropy_figure({"a": x}, {"b": x})
    with pytest.raises(DemHECError, match="layer"):
        plots.entropy_figure({"a": x}, {"a": x}, normalise_by={"b": 2.0})
    with pytest.raises(DemHECError, match="1-D"):
        plots.entropy_figure({"a": np.ones((2, 2))}, {"a": x})


# ---------------------------------------------------------------- Figure 5


def _bars(ax) -> list:
    return [p for c in ax.containers for p in c.patches]


def test_clean_accuracy_figure_bars_labels_and_paper_markers() -> None:
    df = pd.DataFrame({
        "dataset": ["cifar100"] * 4 + ["tinyimagenet"] * 2,
        "backbone": ["resnet20", "resnet20", "resnet56", "resnet56", "resnet50", "resnet50"],
        "phase": ["before", "after"] * 3,
        "accuracy": [68.0, 66.0, 72.0, 70.0, 63.0, 67.0],
        "paper_accuracy": [np.nan, np.nan, 72.61, 69.78, 64.22, 67.82],
    })
    fig = plots.clean_accuracy_figure(df)
    panels = _visible_axes(fig)
    assert [ax.get_title() for ax in panels] == ["CIFAR100", "Tiny-ImageNet"]
    assert panels[0].get_ylabel() == "clean accuracy (%)"
    assert [t.get_text() for t in panels[0].get_xticklabels()] == ["ResNet-20", "ResNet-56"]
    assert [len(_bars(ax)) for ax in panels] == [4, 2]
    assert sorted(b.get_height() for b in _bars(panels[0])) == [66.0, 68.0, 70.0, 72.0]
    blue, orange = to_rgba(plots.PALETTE["before"]), to_rgba(plots.PALETTE["after"])
    before = [b for b in _bars(panels[0]) if np.allclose(b.get_facecolor(), blue)]
    after = [b for b in _bars(panels[0]) if np.allclose(b.get_facecolor(), orange)]
    assert [b.get_height() for b in before] == [68.0, 72.0]
    assert [b.get_height() for b in after] == [66.0, 70.0]
    assert {t.get_text() for t in panels[1].texts} == {"63.0", "67.0"}
    assert _legend_texts(fig) == ["before", "after", "paper (reported)"]
    markers = [y for ln in panels[0].lines for y in ln.get_ydata() if np.isfinite(y)]
    assert markers == [72.61, 69.78]


def test_clean_accuracy_figure_single_bar_without_paper() -> None:
    df = pd.DataFrame({"dataset": ["cifar10"], "backbone": ["resnet20"], "phase": ["after"],
                       "accuracy": [91.5]})
    fig = plots.clean_accuracy_figure(df)
    (ax,) = _visible_axes(fig)
    assert [b.get_height() for b in _bars(ax)] == [91.5]
    assert _legend_texts(fig) == ["after"]
    assert not ax.lines


def test_clean_accuracy_figure_validates() -> None:
    df = pd.DataFrame({"dataset": ["c"] * 2, "backbone": ["r"] * 2, "phase": ["before"] * 2,
                       "accuracy": [1.0, 2.0]})
    with pytest.raises(DemHECError, match="one row per"):
        plots.clean_accuracy_figure(df)
    with pytest.raises(DemHECError, match="phase"):
        plots.clean_accuracy_figure(df.assign(phase=["before", "during"]))
    with pytest.raises(DemHECError, match="missing"):
        plots.clean_accuracy_figure(df.drop(columns="accuracy"))


# ---------------------------------------------------------------- robustness / heatmap


def _table(corruptions: list[str], severities: list[int], by: str = "phase",
           values: tuple[str, ...] = ("before", "after")) -> pd.DataFrame:
    rows = [{"corruption": c, "severity": s, by: v, "accuracy": 90.0 - 10 * s - 5 * (v == vs[0])}
            for vs in [values] for c in corruptions for s in severities for v in values]
    return pd.DataFrame(rows)


def test_robustness_figure_panels_lines_and_paper_dashes() -> None:
    ours = _table(SEVEN[:5], [1, 3, 5]).assign(source="ours")
    paper = _table(SEVEN[:5], [1, 3, 5]).assign(source="paper", accuracy=lambda d: d.accuracy + 1)
    clean = pd.DataFrame({"corruption": "clean", "severity": 0, "phase": ["before", "after"],
                          "accuracy": [95.0, 93.0], "source": "ours"})
    fig = plots.robustness_figure(pd.concat([ours, paper, clean]))
    panels = _visible_axes(fig)
    assert [ax.get_title() for ax in panels] == [plots.pretty_name(c) for c in SEVEN[:5]]
    assert sum(ax.get_visible() for ax in fig.axes) == 5  # 2 x 4 grid, 3 hidden
    assert _legend_texts(fig) == ["before (ours)", "after (ours)", "before (paper)",
                                  "after (paper)"]
    for ax in panels:
        assert len(ax.lines) == 4
        styles = {ln.get_label(): ln.get_linestyle() for ln in ax.lines}
        assert styles["before (paper)"] == styles["after (paper)"] == "--"
        assert styles["before (ours)"] == "-"
        ours_before = next(ln for ln in ax.lines if ln.get_label() == "before (ours)")
        # Our lines start at the clean accuracy; the paper's have no clean row.
        assert list(ours_before.get_xdata()) == [0, 1, 3, 5]
        assert list(ours_before.get_ydata()) == [95.0, 75.0, 55.0, 35.0]
        assert to_rgba(ours_before.get_color()) == to_rgba(plots.PALETTE["before"])
    assert [t.get_text() for t in panels[-1].get_xticklabels()] == ["clean", "S1", "S3", "S5"]
    assert any(ax.get_xlabel() == "severity" for ax in panels)


def test_robustness_figure_single_cell_by_method() -> None:
    df = _table(["snow"], [5], by="method", values=("augmix", "dem_hec"))
    fig = plots.robustness_figure(df)
    (ax,) = _visible_axes(fig)
    assert [ln.get_label() for ln in ax.lines] == ["augmix", "dem_hec"]
    assert _legend_texts(fig) == ["augmix", "dem_hec"]
    assert ax.get_ylabel() == "accuracy (%)" and ax.get_xlabel() == "severity"


def test_robustness_figure_without_series_column_and_duplicates() -> None:
    df = _table(["frost"], [1, 3]).drop(columns="phase").drop_duplicates(["severity"])
    fig = plots.robustness_figure(df)
    assert _legend_texts(fig) == ["accuracy"]
    two_backbones = pd.concat([_table(["frost"], [1]).assign(backbone=b) for b in ("r20", "r56")])
    with pytest.raises(DemHECError, match="one row per"):
        plots.robustness_figure(two_backbones)
    with pytest.raises(DemHECError, match="source"):
        plots.robustness_figure(_table(["frost"], [1]).assign(source="theirs"))


def test_delta_heatmap_cells_annotations_and_centre() -> None:
    df = pd.DataFrame({"corruption": ["snow", "snow", "frost", "clean"],
                       "severity": [1, 5, 5, 0], "delta": [-2.0, 8.5, 4.25, 1.0]})
    fig = plots.delta_heatmap(df, title="gains")
    ax = next(a for a in fig.axes if a.get_title() == "gains")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Snow", "Frost"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["S1", "S5"]
    # Three cells hold values; the missing (frost, S1) cell and the clean row are not drawn.
    assert sorted(t.get_text() for t in ax.texts) == ["+4.2", "+8.5", "-2.0"]
    mesh = ax.collections[0]
    assert mesh.norm.vmin == -8.5 and mesh.norm.vmax == 8.5
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("severity", "corruption")


def test_delta_heatmap_single_cell_and_duplicates() -> None:
    fig = plots.delta_heatmap(pd.DataFrame({"corruption": ["snow"], "severity": [3],
                                            "delta": [0.0]}))
    ax = next(a for a in fig.axes if a.get_ylabel() == "corruption")
    assert [t.get_text() for t in ax.texts] == ["+0.0"]
    with pytest.raises(DemHECError, match="one row per"):
        plots.delta_heatmap(pd.DataFrame({"corruption": ["snow"] * 2, "severity": [3, 3],
                                          "delta": [1.0, 2.0]}))


# ---------------------------------------------------------------- training curve


def test_training_curve_figure_terms() -> None:
    history = [{"step": i, "loss": 2.0 - 0.1 * i, "ce_clean": 1.0, "kd": 0.5 + i}
               for i in range(5)]
    history[2].pop("kd")  # a term missing in one entry becomes a gap, not an error
    fig = plots.training_curve_figure(history, title="fine-tune")
    (ax,) = fig.axes
    assert _legend_texts(fig) == ["total (eq. 12)", "CE clean", "KD"]
    lines = {ln.get_label(): ln for ln in ax.lines}
    np.testing.assert_allclose(lines["total (eq. 12)"].get_ydata(), [2.0, 1.9, 1.8, 1.7, 1.6])
    assert np.isnan(lines["KD"].get_ydata()[2])
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("step", "loss")


def test_training_curve_figure_single_step_and_validation() -> None:
    fig = plots.training_curve_figure([{"step": 0, "loss": 1.0}])
    (line,) = fig.axes[0].lines
    assert line.get_marker() == "o"
    with pytest.raises(DemHECError, match="step"):
        plots.training_curve_figure([{"loss": 1.0}])
    with pytest.raises(DemHECError, match="non-empty"):
        plots.training_curve_figure([])


# ---------------------------------------------------------------- saving


def _small_figure() -> Figure:
    return plots.training_curve_figure([{"step": i, "loss": 1.0 / (i + 1)} for i in range(4)])


def _grid() -> Figure:
    clean = _images(2)
    cells = {(c, s): clean for c in ("snow", "frost") for s in (3, 5)}
    return plots.corruption_grid_figure(clean, cells, ["snow", "frost"], [3, 5], title="Fig 2")


def _entropy() -> Figure:
    rng = np.random.default_rng(0)
    return plots.entropy_figure({"a": rng.normal(size=32), "b": rng.normal(size=32)},
                                {"a": rng.normal(size=32), "b": rng.normal(size=32)})


def _clean_accuracy() -> Figure:
    return plots.clean_accuracy_figure(pd.DataFrame({
        "dataset": "cifar10", "backbone": "resnet20", "phase": ["before", "after"],
        "accuracy": [92.0, 90.0], "paper_accuracy": [np.nan, 89.5]}))


def _robustness() -> Figure:
    return plots.robustness_figure(_table(["snow", "frost"], [1, 3, 5]))


def _delta() -> Figure:
    table = _table(["snow", "frost"], [1, 3, 5])
    return plots.delta_heatmap(table.assign(delta=table["accuracy"] - 50)
                               .drop_duplicates(["corruption", "severity"]))


def _tradeoff() -> Figure:
    return plots.tradeoff_figure(pd.DataFrame({
        "label": ["base model", "a", "a", "b"], "seed": [0, 0, 1, 0],
        "d_clean": [0.0, -3.0, -5.0, -8.0], "d_noise_s5": [0.0, 12.0, 10.0, 4.0]}), target=(-4.0, 10.0))


BUILDERS = {"grid": _grid, "entropy": _entropy, "clean_accuracy": _clean_accuracy,
            "robustness": _robustness, "delta": _delta, "curve": _small_figure, "tradeoff": _tradeoff}


def test_builders_do_not_register_with_pyplot() -> None:
    before = plt.get_fignums()
    for build in BUILDERS.values():
        build()
    assert plt.get_fignums() == before


def test_save_figure_writes_png_and_pdf(tmp_path) -> None:
    paths = plots.save_figure(_small_figure(), "curve", tmp_path / "figs")
    assert paths == [tmp_path / "figs" / "curve.png", tmp_path / "figs" / "curve.pdf"]
    png, pdf = (p.read_bytes() for p in paths)
    assert png.startswith(b"\x89PNG") and pdf.startswith(b"%PDF")
    assert b"CreationDate" not in pdf and b"Software" not in png
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["curve.pdf", "curve.png"]


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_save_figure_is_deterministic(tmp_path, name: str) -> None:
    # Constrained layout moves things on early draws, so a naive first save differs from the
    # second; save_figure must give the same bytes however often the figure was drawn.
    fig = BUILDERS[name]()
    first = [p.read_bytes() for p in plots.save_figure(fig, name, tmp_path)]
    fig.draw_without_rendering()
    again = [p.read_bytes() for p in plots.save_figure(fig, name + "-again", tmp_path)]
    assert first == again


@pytest.mark.parametrize("failing_format", ["png", "pdf"])
def test_save_figure_leaves_nothing_on_failure(tmp_path, monkeypatch, failing_format) -> None:
    fig = _small_figure()
    (tmp_path / "curve.png").write_bytes(b"old")
    real = Figure.savefig

    def savefig(self, fname, *args, **kwargs):
        if kwargs.get("format") == failing_format:
            raise RuntimeError("renderer crashed")
        return real(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        plots.save_figure(fig, "curve", tmp_path)
    # No new file, no temporary left over, and the previous PNG is untouched.
    assert [p.name for p in tmp_path.iterdir()] == ["curve.png"]
    assert (tmp_path / "curve.png").read_bytes() == b"old"


@pytest.mark.parametrize("stem", ["", "a/b", "..", "../x"])
def test_save_figure_rejects_bad_stems(tmp_path, stem: str) -> None:
    with pytest.raises(DemHECError, match="stem"):
        plots.save_figure(_small_figure(), stem, tmp_path)


def test_tradeoff_figure_means_seeds_and_target_region() -> None:
    ax = _tradeoff().axes[0]
    means = {line.get_label(): line.get_xydata().tolist() for line in ax.lines if not line.get_label().startswith("_")}
    assert means == {"a (n=2)": [[-4.0, 11.0]], "b (n=1)": [[-8.0, 4.0]]}  # the base row is left out
    seed_dots = [line.get_xydata().tolist() for line in ax.lines if line.get_marker() == "o"]
    assert [[-3.0, 12.0], [-5.0, 10.0]] in seed_dots
    (region,) = ax.collections
    xs, ys = region.get_paths()[0].vertices.T
    assert xs.min() == -4.0 and ys.min() == 10.0
    with pytest.raises(DemHECError, match="no fine-tuning runs"):
        plots.tradeoff_figure(pd.DataFrame({"label": ["base model"], "seed": [0], "d_clean": [0.0],
                                            "d_noise_s5": [0.0]}))
    with pytest.raises(DemHECError, match="d_noise_s5"):
        plots.tradeoff_figure(pd.DataFrame({"label": ["a"], "seed": [0], "d_clean": [0.0]}))


def test_tradeoff_figure_groups_runs_by_family() -> None:
    df = pd.DataFrame({"run": ["x", "y", "z", "y"], "label": ["run x", "run y", "run z", "run y"], "seed": [0, 0, 0, 1],
                       "d_clean": [-1.0, -2.0, -3.0, -4.0], "d_noise_s5": [1.0, 2.0, 3.0, 4.0]})
    fig = plots.tradeoff_figure(df, families={"x": "first", "y": "second", "z": "first"})
    ax = fig.axes[0]
    marker = {line.get_label(): line.get_marker() for line in ax.lines if not line.get_label().startswith("_")}
    assert marker["run x (n=1)"] == marker["run z (n=1)"] != marker["run y (n=2)"]
    texts = _legend_texts(fig)
    # Each family's runs are listed together under its name; the seed dots are explained.
    assert texts.index("FIRST") < texts.index("run x (n=1)") < texts.index("run z (n=1)") < texts.index("SECOND")
    assert any("one seed" in t for t in texts)
    with pytest.raises(DemHECError, match="no family"):
        plots.tradeoff_figure(df, families={"x": "first"})


@pytest.mark.parametrize("n_runs", [3, 12, 20])
def test_tradeoff_figure_gives_each_run_of_a_family_its_own_colour(n_runs: int) -> None:
    # The comparison draws a dozen fine-tuned runs with one marker shape: colour alone tells them apart.
    runs = [f"run {i}" for i in range(n_runs)]
    df = pd.DataFrame({"run": runs, "label": runs, "seed": 0,
                       "d_clean": np.arange(n_runs, dtype=float), "d_noise_s5": 1.0})
    ax = plots.tradeoff_figure(df, families=dict.fromkeys(runs, "fine-tuned")).axes[0]
    colours = [tuple(line.get_color()) for line in ax.lines if line.get_label().endswith("(n=1)")]
    assert len(colours) == n_runs == len(set(colours))


def test_show_figure_saves_outside_a_notebook(tmp_path) -> None:
    assert plots.show_figure(_small_figure(), "curve", tmp_path) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.pdf", "curve.png"]


def test_robustness_figure_title_moves_the_legend_down() -> None:
    fig = plots.robustness_figure(_table(["snow"], [1, 3]), title="ResNet-20 on Digits")
    assert fig.get_suptitle() == "ResNet-20 on Digits"


def test_tradeoff_figure_draws_both_halves() -> None:
    df = pd.DataFrame({"run": ["x", "x", "x"], "label": ["run x"] * 3, "seed": [0, 0, 1],
                       "split": ["selection", "report", "report"],
                       "d_clean": [-2.0, -3.0, -5.0], "d_noise_s5": [9.0, 8.0, 6.0]})
    fig = plots.tradeoff_figure(df)
    ax = fig.axes[0]
    # The filled marker is the report half's mean; the hollow one the selection half's, joined to it.
    filled = [line.get_xydata().tolist() for line in ax.lines if line.get_label() == "run x (n=2)"]
    assert filled == [[[-4.0, 7.0]]]
    hollow = [line.get_xydata().tolist() for line in ax.lines if line.get_markerfacecolor() == "none"]
    assert [[-2.0, 9.0]] in hollow
    assert [[-2.0, 9.0], [-4.0, 7.0]] in [line.get_xydata().tolist() for line in ax.lines]
    assert any("selection half" in t for t in _legend_texts(fig))
    with pytest.raises(DemHECError, match="split"):
        plots.tradeoff_figure(df.assign(split=["selection", "whole", "whole"]))


def test_tradeoff_figure_puts_a_long_legend_under_the_axes() -> None:
    runs = [f"r{i}" for i in range(9)]
    df = pd.DataFrame({"run": runs, "label": [f"run {r} with a long label" for r in runs], "seed": 0,
                       "d_clean": range(9), "d_noise_s5": range(9)})
    fig = plots.tradeoff_figure(df)
    assert len(fig.legends) == 1 and fig.axes[0].get_legend() is None
    assert "run r8 with a long label (n=1)" in _legend_texts(fig)
    assert plots.tradeoff_figure(df.head(3)).axes[0].get_legend() is not None  # a short one stays beside
