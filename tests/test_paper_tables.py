"""Checks the transcription of the paper's reported numbers in results/paper/."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

PAPER_DIR = Path(__file__).parents[1] / "results" / "paper"

SEVEN = {
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "snow",
    "frost",
    "pixelate",
    "jpeg_compression",
}
SEV_COLUMNS = {"table", "dataset", "backbone", "corruption", "severity", "phase", "accuracy"}
CIFAR_BACKBONES = {"resnet20", "resnet56", "repvgg_a0", "repvgg_a2"}
TABLE3_METHODS = {
    "pad_crop",
    "trivialaugment",
    "batch_augment",
    "batch_augment_autoaugment",
    "augmix",
    "augmax",
    "ipmix",
    "dv_ap_jsd",
    "dem_hec",
}

# file -> (columns, rows, key columns that must be unique, expected values of some columns)
SPECS: dict[str, tuple[set[str], int, list[str], dict[str, set]]] = {
    "table1.csv": (
        SEV_COLUMNS,
        168,
        ["backbone", "corruption", "severity", "phase"],
        {"table": {1}, "dataset": {"cifar10"}, "backbone": CIFAR_BACKBONES},
    ),
    "table5.csv": (
        SEV_COLUMNS,
        168,
        ["backbone", "corruption", "severity", "phase"],
        {"table": {5}, "dataset": {"cifar100"}, "backbone": CIFAR_BACKBONES},
    ),
    "table2.csv": (
        SEV_COLUMNS,
        126,
        ["backbone", "corruption", "severity", "phase"],
        {
            "table": {2},
            "dataset": {"tinyimagenet"},
            "backbone": {"resnet18", "resnet50", "vit_large_patch16_384"},
        },
    ),
    "table3.csv": (
        {"table", "dataset", "backbone", "family", "method", "label", "accuracy"},
        36,
        ["family", "method"],
        {
            "table": {3},
            "dataset": {"tinyimagenet"},
            "backbone": {"vit_large_patch16_384"},
            "family": {"noise", "blur", "weather", "digital"},
            "method": TABLE3_METHODS,
        },
    ),
    "table4.csv": (
        {"table", "dataset", "backbone", "method", "corruption", "accuracy"},
        16,
        ["method", "corruption"],
        {
            "table": {4},
            "dataset": {"cifar10"},
            "backbone": {"resnet20"},
            "method": {"push_pull_ranabhat2025", "dem_hec"},
            "corruption": SEVEN | {"clean"},
        },
    ),
    "table6.csv": (
        {"table", "dataset", "backbone", "corruption", "phase", "accuracy"},
        16,
        ["corruption", "phase"],
        {
            "table": {6},
            "dataset": {"imagenette"},
            "backbone": {"alexnet"},
            "corruption": SEVEN | {"clean"},
            "phase": {"before", "after"},
        },
    ),
    "figure5.csv": (
        {"figure", "dataset", "backbone", "phase", "accuracy", "note"},
        4,
        ["dataset", "backbone", "phase"],
        {"figure": {5}, "phase": {"before", "after"}},
    ),
}


def _load(name: str, **kwargs) -> pd.DataFrame:
    return pd.read_csv(PAPER_DIR / name, **kwargs)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_file_shape_and_values(name: str) -> None:
    columns, n_rows, keys, expected = SPECS[name]
    df = _load(name)
    assert set(df.columns) == columns
    assert len(df) == n_rows
    assert not df.isna().any().any()
    assert pd.api.types.is_float_dtype(df["accuracy"])
    assert ((df["accuracy"] > 0) & (df["accuracy"] <= 100)).all()
    assert not df.duplicated(subset=keys).any()
    for column, values in expected.items():
        assert set(df[column]) == values, column


@pytest.mark.parametrize("name", ["table1.csv", "table2.csv", "table5.csv"])
def test_severity_tables_are_complete_grids(name: str) -> None:
    df = _load(name)
    assert set(df["corruption"]) == SEVEN
    assert set(df["severity"]) == {1, 3, 5}
    assert set(df["phase"]) == {"before", "after"}
    sizes = df.groupby(["backbone", "corruption"]).size()
    assert (sizes == 6).all()


def test_table3_labels_match_methods() -> None:
    df = _load("table3.csv")
    pairs = dict(zip(df["method"], df["label"], strict=True))
    assert pairs["trivialaugment"] == "TA"
    assert pairs["batch_augment_autoaugment"] == "BA (AA)"
    assert pairs["dem_hec"] == "Dem-HEC (Ours)"
    assert df.groupby("method")["label"].nunique().eq(1).all()


# (file, {column: value} selecting one row, accuracy exactly as printed in the paper)
SPOT_CHECKS: list[tuple[str, dict[str, object], str]] = [
    (
        "table1.csv",
        dict(backbone="repvgg_a0", corruption="gaussian_noise", severity=5, phase="before"),
        "14.37",
    ),
    (
        "table1.csv",
        dict(backbone="repvgg_a0", corruption="gaussian_noise", severity=5, phase="after"),
        "69.29",
    ),
    (
        "table1.csv",
        dict(backbone="repvgg_a0", corruption="shot_noise", severity=5, phase="after"),
        "71.40",
    ),
    (
        "table1.csv",
        dict(backbone="resnet56", corruption="snow", severity=5, phase="after"),
        "78.39",
    ),
    (
        "table1.csv",
        dict(backbone="resnet20", corruption="jpeg_compression", severity=5, phase="after"),
        "83.29",
    ),
    (
        "table1.csv",
        dict(backbone="repvgg_a2", corruption="pixelate", severity=1, phase="before"),
        "93.20",
    ),
    (
        "table5.csv",
        dict(backbone="resnet20", corruption="jpeg_compression", severity=5, phase="before"),
        "33.90",
    ),
    (
        "table5.csv",
        dict(backbone="resnet20", corruption="jpeg_compression", severity=5, phase="after"),
        "52.65",
    ),
    (
        "table5.csv",
        dict(backbone="repvgg_a2", corruption="shot_noise", severity=5, phase="before"),
        "9.49",
    ),
    (
        "table5.csv",
        dict(backbone="resnet56", corruption="impulse_noise", severity=3, phase="after"),
        "31.15",
    ),
    (
        "table2.csv",
        dict(backbone="resnet50", corruption="frost", severity=5, phase="before"),
        "21.58",
    ),
    (
        "table2.csv",
        dict(backbone="resnet50", corruption="frost", severity=5, phase="after"),
        "31.46",
    ),
    (
        "table2.csv",
        dict(backbone="vit_large_patch16_384", corruption="snow", severity=5, phase="after"),
        "62.98",
    ),
    (
        "table2.csv",
        dict(backbone="resnet18", corruption="gaussian_noise", severity=1, phase="before"),
        "46.08",
    ),
    ("table3.csv", dict(family="weather", method="dem_hec"), "70.71"),
    ("table3.csv", dict(family="noise", method="pad_crop"), "20.94"),
    ("table3.csv", dict(family="digital", method="dv_ap_jsd"), "40.24"),
    ("table3.csv", dict(family="blur", method="trivialaugment"), "31.23"),
    ("table4.csv", dict(method="push_pull_ranabhat2025", corruption="clean"), "83.66"),
    ("table4.csv", dict(method="dem_hec", corruption="jpeg_compression"), "85.43"),
    ("table6.csv", dict(corruption="frost", phase="after"), "67.18"),
    ("table6.csv", dict(corruption="clean", phase="before"), "91.0"),
    ("figure5.csv", dict(dataset="cifar100", backbone="resnet56", phase="before"), "72.61"),
    ("figure5.csv", dict(dataset="tinyimagenet", backbone="resnet50", phase="after"), "67.82"),
]


@pytest.mark.parametrize(("name", "where", "printed"), SPOT_CHECKS)
def test_spot_values_match_paper(name: str, where: dict[str, object], printed: str) -> None:
    # Read as text so that the printed decimals ("33.90", "91.0") are checked, not just the float.
    df = _load(name, dtype=str)
    mask = pd.Series(True, index=df.index)
    for column, value in where.items():
        mask &= df[column] == str(value)
    assert df.loc[mask, "accuracy"].tolist() == [printed]
