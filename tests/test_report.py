"""demhec.report: robustness summaries of several results side by side (notebooks 13 and 14)."""

from __future__ import annotations

import pytest

from demhec import DemHECError
from demhec.report import per_corruption_table, robustness_summary, your_model_setup


def _record(clean: float, noise: float, snow: float, cost: float | None = None) -> dict:
    rows = [{"corruption": "clean", "severity": 0, "accuracy": clean, "ece": 2.0}]
    for s in (1, 5):
        for c in ("gaussian_noise", "shot_noise", "impulse_noise"):
            rows.append({"corruption": c, "severity": s, "accuracy": noise + (10 if s == 1 else 0), "ece": 4.0})
        rows.append({"corruption": "snow", "severity": s, "accuracy": snow, "ece": 6.0})
    metrics = {"table": rows, **({"relative_cost": cost} if cost is not None else {})}
    return {"metrics": metrics}


def test_summary_means_mce_and_changes_from_the_reference():
    records = {"base": _record(90, 50, 70), "base + BN": _record(88, 70, 70, cost=2.5)}
    s = robustness_summary(records).set_index("label")
    assert s.loc["base", "noise_s5"] == 50 and s.loc["base + BN", "noise_s5"] == 70
    assert s.loc["base", "all_s5"] == pytest.approx((3 * 50 + 70) / 4)
    assert s.loc["base", "all_cells"] == pytest.approx((3 * 60 + 3 * 50 + 2 * 70) / 8)
    assert s.loc["base + BN", "d_clean"] == -2 and s.loc["base + BN", "d_noise_s5"] == 20
    # mCE: per corruption, errors summed over severities over the reference's, then the mean.
    noise = ((100 - 80) + (100 - 70)) / ((100 - 60) + (100 - 50))  # S1 and S5 errors, per noise
    assert s.loc["base", "mce"] == pytest.approx(100)
    assert s.loc["base + BN", "mce"] == pytest.approx(100 * (3 * noise + 1) / 4)
    assert s.loc["base", "ece_corrupted"] == pytest.approx((6 * 4 + 2 * 6) / 8)
    assert s.loc["base", "relative_cost"] == 1 and s.loc["base + BN", "relative_cost"] == 2.5
    with pytest.raises(DemHECError, match="valid references: base, base \\+ BN"):
        robustness_summary(records, reference="plain")


def test_per_corruption_table_rows_and_severities():
    records = {"a": _record(90, 50, 70), "b": _record(80, 40, 60)}
    t = per_corruption_table(records, severities=[5])
    assert list(t.index) == ["clean", "gaussian_noise", "shot_noise", "impulse_noise", "snow"]
    assert t.loc["gaussian_noise", "a"] == 50 and t.loc["clean", "b"] == 80
    assert per_corruption_table(records).loc["shot_noise", "b"] == 45


def test_your_model_setup_validates_its_parameters(tmp_path):
    ctx = your_model_setup(profile="smoke", backbone="timm:resnet10t", data_root="", weights="",
                           results_dir=str(tmp_path))
    assert ctx.exp.effective_dataset == "digits" and ctx.severities == (5,)
    assert ctx.exp.model_key == "timm-test_resnet"  # the smoke profile's stand-in, file-safe
    with pytest.raises(DemHECError, match="needs data_root"):
        your_model_setup(profile="paper", backbone="timm:resnet10t", data_root="", weights="")
    with pytest.raises(DemHECError, match="does not exist"):
        your_model_setup(profile="demo", backbone="resnet20", data_root="", weights=str(tmp_path / "no.pt"))
    with pytest.raises(DemHECError, match="valid backbones"):
        your_model_setup(profile="demo", backbone="resnet57", data_root="", weights="")


def test_cost_table_ratios_to_the_plain_evaluation():
    from demhec.report import cost_table

    rec = {"metrics": {"before/clean": {"plain": {"cpu_s": 2.0, "wall_s": 4.0}, "tent": {"cpu_s": 6.0, "wall_s": 6.0}}}}
    t = cost_table(rec).set_index("method")
    assert t.loc["tent", "cpu_ratio"] == 3 and t.loc["tent", "wall_ratio"] == 1.5 and t.loc["plain", "cpu_ratio"] == 1
    assert (t["model"] == "before").all() and (t["set"] == "clean").all()
