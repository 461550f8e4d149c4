"""The checks a notebook runs on what it shows: every table's numbers are its result files'
cells (``check_*_shown``), a fine-tuned model's result is not its base's all over again
(:func:`check_changed`), and key numbers follow from the files' raw outcomes (:func:`recount`,
:func:`check_number`). Each raises :class:`~demhec.DemHECError` saying what does not hold."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .._common import DemHECError
from ..evaluation import family_means
from .halves import outcomes
from .runs import NOISE
from .tables import entropy_scale, result_table, severity_means

log = logging.getLogger(__name__)


def check_shown(long: pd.DataFrame, records: dict[str, dict], value: str = "ours") -> None:
    """What a notebook shows is what its results hold: every ``value`` of a long before/after
    table (:func:`.tables.before_after_table`) is a number and equals its cell in the record of its
    phase (``records``: phase -> result), and the "after" record's accuracies and calibration
    errors are not all the "before" one's (:func:`check_changed`). Raises :class:`DemHECError`
    saying what does not hold."""
    if long[value].isna().any():
        bad = long[long[value].isna()][["corruption", "severity", "phase"]].to_dict("records")
        raise DemHECError(f"the table shows no number for {bad}")
    for phase, record in records.items():
        held = result_table(record).set_index(["corruption", "severity"])["accuracy"]
        shown = long[long.phase == phase].set_index(["corruption", "severity"])[value]
        if not shown.index.isin(held.index).all() or (held.reindex(shown.index) - shown).abs().max() > 1e-9:
            raise DemHECError(f"the {phase} rows shown differ from the result file's cells")
    if {"before", "after"} <= set(records):
        check_changed(records["before"], records["after"])


def check_changed(before: dict, after: dict, what: str = "after") -> None:
    """A fine-tuned model's result (``after``) is not its base model's (``before``) all over again:
    some cell's accuracy or calibration error differs (calibration too: a short fine-tune can leave
    every accuracy of a small set as it was, but not the confidences of a model that changed).
    Identical results mean the base model was scored twice, a :class:`DemHECError`, except in the
    ``smoke`` profile and its twins (``gpu_smoke``, ...), where it is a warning: a model that
    saturates (a 2-step smoke base of a deep ResNet) scores the same after a fine-tune that did
    change its weights."""
    cols = [c for c in ("accuracy", "ece") if c in result_table(before) and c in result_table(after)]
    if not result_table(before)[cols].equals(result_table(after)[cols]):
        return
    message = f"{what} equals before in every cell: was the fine-tuned model used?"
    if str(after.get("profile")).split("_")[-1] == "smoke":
        log.warning(message)
    else:
        raise DemHECError(f"{message} (profile {after.get('profile', 'not recorded')!r})")


def check_entropy_shown(summary: pd.DataFrame, records: dict[str, dict], normalised: bool = False,
                        key: str = "phase") -> None:
    """Figures 3-4 as shown (:func:`.tables.entropy_summary` rows with a column ``key`` naming the
    record): each record's layer means (divided by log width when ``normalised``) are the
    record's, every one finite. Raises :class:`DemHECError`."""
    for phase, record in records.items():
        shown = summary[summary[key] == phase].set_index("layer")
        scale = entropy_scale(record) if normalised else {}
        for which in ("clean", "corrupted"):
            want = pd.Series({layer: float(np.mean(v)) / scale.get(layer, 1.0)
                              for layer, v in record["metrics"][which].items()})
            got = shown[which].reindex(want.index).astype(float)
            if not np.isfinite(got).all() or (got - want).abs().max() > 1e-9:
                raise DemHECError(f"the {phase} {which} entropies shown differ from the result file")


def check_clean_shown(table: pd.DataFrame, records: dict[str, dict]) -> None:
    """Figure 5 as shown (:func:`.tables.clean_accuracy_with_paper`): every accuracy is a number and the
    rows of ``records`` (phase -> result) hold their clean accuracy. Raises :class:`DemHECError`."""
    if table.accuracy.isna().any():
        raise DemHECError("the clean-accuracy table shows a row without a number")
    for phase, record in records.items():
        e = record["config"]["experiment"]
        row = table[(table.dataset == e["dataset"]) & (table.backbone == e["backbone"]) & (table.phase == phase)]
        if len(row) != 1 or abs(float(row.accuracy.iloc[0]) - record["metrics"]["clean_accuracy"]) > 1e-9:
            raise DemHECError(f"the {phase} clean accuracy shown for {e['backbone']} differs from its result file")


def check_ablation_shown(summary: pd.DataFrame, base: dict, runs: dict[tuple[str, int], dict]) -> None:
    """An :func:`.tables.ablation_summary` as shown: each (run, seed) row's clean accuracy is its record's,
    its noise S5 mean the mean of the record's three noise cells at S5, the changes are from the
    base record, nothing is missing, and no run's record is the base's all over again
    (:func:`check_changed`). Raises :class:`DemHECError`."""
    def noise_s5(record: dict) -> float:
        t = result_table(record)
        return float(t[t.corruption.isin(NOISE) & (t.severity == 5)].accuracy.mean())

    if summary[["clean", "noise_s5", "d_clean", "d_noise_s5"]].isna().any().any():
        raise DemHECError("the summary shows a row without a number")
    for (run, seed), record in runs.items():
        row = summary[(summary.run == run) & (summary.seed == seed)]
        want = {"clean": record["metrics"]["clean_accuracy"], "noise_s5": noise_s5(record),
                "d_clean": record["metrics"]["clean_accuracy"] - base["metrics"]["clean_accuracy"],
                "d_noise_s5": noise_s5(record) - noise_s5(base)}
        if len(row) != 1 or any(abs(float(row[k].iloc[0]) - v) > 1e-9 for k, v in want.items()):
            raise DemHECError(f"the row of {run!r} seed {seed} shown differs from its result file")
        check_changed(base, record, f"{run!r} seed {seed}")


def check_summary(table: pd.DataFrame, records: dict[str, dict]) -> None:
    """Tables 4 and 6 as shown (:func:`.tables.summary_vs_paper`): each of our rows holds its record's
    clean accuracy and severity means, every one a number. Raises :class:`DemHECError`."""
    shown = table.set_index("model")
    for label, record in records.items():
        want = severity_means(record)
        got = shown.loc[label, want.index].astype(float)
        if got.isna().any() or (got - want).abs().max() > 1e-9:
            raise DemHECError(f"the row {label!r} shown differs from its result file")


def check_families(table: pd.DataFrame, records: dict[str, dict]) -> None:
    """Table 3 as shown (:func:`.tables.family_table`): each method's family means are its record's,
    every one a number. Raises :class:`DemHECError`."""
    for method, record in records.items():
        want = family_means(result_table(record))
        got = table[table.method == method].set_index("family")["ours"].reindex(want.index)
        if got.isna().any() or (got - want).abs().max() > 1e-9:
            raise DemHECError(f"the family means shown for {method!r} differ from its result file")


def recount(record: dict, cells: Sequence[tuple[str, int]] = (("clean", 0),), base: dict | None = None) -> float:
    """The accuracy (percent) of a result on ``cells`` (their mean), recomputed from the result's
    raw outcomes instead of read from its table: every image's 0/1 outcome where the result keeps
    them (a halves result, :func:`.halves.outcomes`), else each cell's count of correct images over its
    count of images. With ``base``, the change from ``base`` in points (per image, paired, where
    both keep per-image outcomes). What a notebook checks its key numbers against
    (:func:`check_number`), beside the ``check_*_shown`` checks of its tables against the files'
    tables."""
    cells = [(c, int(s)) for c, s in cells]
    if not cells:
        raise DemHECError("recount needs at least one (corruption, severity) cell")

    def per_image(rec: dict) -> np.ndarray | None:
        if not isinstance(rec["metrics"].get("correct"), dict):
            return None
        return np.stack([outcomes(rec, c, s) for c, s in cells], 1).astype(float)

    def counted(rec: dict) -> float:
        rows = {(r["corruption"], int(r["severity"])): r for r in rec["metrics"]["table"]}
        missing = [f"{c}/{s}" for c, s in cells if (c, s) not in rows]
        if missing:
            raise DemHECError(f"the result holds no cell {', '.join(missing)}")
        rows = [rows[cell] for cell in cells]
        if any("correct" not in r or "n" not in r for r in rows):
            raise DemHECError("the result's table keeps no counts of correct images (correct, n) to recount from")
        return float(np.mean([100.0 * r["correct"] / r["n"] for r in rows]))

    mine = per_image(record)
    if base is None:
        return counted(record) if mine is None else 100.0 * float(mine.mean())
    theirs = per_image(base)
    if mine is not None and theirs is not None:
        if mine.shape != theirs.shape:
            raise DemHECError("a paired recount needs results of the same images")
        return 100.0 * float((mine - theirs).mean())
    return recount(record, cells) - recount(base, cells)


def recount_gap(record: dict, layer: str, normalised: bool = False) -> float:
    """An entropy result's corrupted-minus-clean gap at ``layer`` (Figures 3-4), recomputed image
    by image from its per-image entropies (each image's corrupted entropy minus its clean one,
    then their mean; divided by the layer's log width when ``normalised``), not from the means
    that :func:`.tables.entropy_summary` shows."""
    m = record["metrics"]
    if layer not in m["clean"] or layer not in m["corrupted"]:
        raise DemHECError(f"the entropy result holds no layer {layer!r}")
    clean, corrupted = np.asarray(m["clean"][layer], float), np.asarray(m["corrupted"][layer], float)
    if clean.shape != corrupted.shape or clean.size == 0:
        raise DemHECError(f"layer {layer!r}: clean and corrupted entropies are not of the same images")
    scale = entropy_scale(record).get(layer, 1.0) if normalised else 1.0
    return float((corrupted - clean).mean()) / scale


def check_number(shown: float, want: float, what: str, tol: float = 1e-6) -> None:
    """A key number a notebook shows (``shown``) is its recomputation (``want``, from
    :func:`recount` or :func:`recount_gap`) to ``tol``; raises :class:`DemHECError` naming both."""
    if not (np.isfinite(shown) and np.isfinite(want)) or abs(float(shown) - float(want)) > tol:
        raise DemHECError(f"{what}: shown {float(shown):.6g}, but the result file's raw outcomes give "
                          f"{float(want):.6g}")


def check_recounted(records: dict[str, dict], long: pd.DataFrame | None = None, value: str = "ours") -> None:
    """Each result's clean accuracy and, with ``long`` (a long before/after table,
    :func:`.tables.before_after_table`, whose ``phase`` names the result of ``records``), every ``value``
    shown, recomputed from the raw outcomes of its result (:func:`recount`). Raises
    :class:`DemHECError` naming the first number that does not follow from them."""
    for phase, record in records.items():
        check_number(record["metrics"]["clean_accuracy"], recount(record), f"the {phase} clean accuracy")
        if long is None:
            continue
        for row in long[long.phase == phase].itertuples():
            check_number(getattr(row, value), recount(record, [(row.corruption, row.severity)]),
                         f"the {phase} accuracy shown for {row.corruption} S{row.severity}")
