"""The comparison at A.3: its runs, the methods' fine-tunes, and the queue script end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import demhec
from demhec.baselines import METHODS, Method, Step, get_method, register_method
from demhec.batches import TensorBatches, random_crop_flip
from demhec.corruptions import CORRUPTIONS
from demhec.experiments.comparison import (
    COMPARISON,
    PROFILE,
    RUNS,
    comparison_experiment,
    run_config,
)
from demhec.models import list_models

from .conftest import TinyNet, jpeg_archive

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("run", COMPARISON, ids=lambda r: r.name)
def test_every_run_is_a_valid_config_of_a_registered_model(run):
    exp = comparison_experiment(run)
    cfg = run_config(exp, run)
    assert run.backbone in list_models()
    if not run.fine_tuned:
        assert cfg is None
        return
    default = demhec.DemHECConfig()
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.warmup_epochs, cfg.freeze) == (20, 128, 0.05, 2.0, "auto")
    if cfg.method != "none":  # a compared method: its own loss, Dem-HEC's terms off
        get_method(cfg.method)
        assert (cfg.alpha, cfg.lambda_c, cfg.lambda_kd) == (0.0, 0.0, 0.0)
    if run.name in ("demhec", "pushpull_demhec"):
        assert cfg == default


@pytest.mark.parametrize("run", [r for r in COMPARISON if r.fine_tuned], ids=lambda r: r.name)
def test_each_seed_has_its_own_checkpoint_where_training_writes_it(run):
    from demhec.experiments.comparison import checkpoint_path
    from demhec.experiments.layout import model_path

    paths = {seed: checkpoint_path(run, comparison_experiment(run, seed=seed)) for seed in (0, 1, 2)}
    assert len(set(paths.values())) == 3, paths  # a seed never takes another seed's model for its own
    exp = comparison_experiment(run, seed=1)
    assert paths[1] == model_path(exp, "demhec" if run.name == "pushpull_demhec" else run.name)


@pytest.mark.parametrize("run", [r for r in COMPARISON if r.name != "base"], ids=lambda r: r.name)
def test_a_run_resumes_when_its_checkpoint_sits_where_training_writes_it(run, tmp_path):
    # The queue names a resumed run's wall time as partial from this; the push-pull Dem-HEC's files
    # are named after the method, not the run, so a check on the run's name missed its checkpoint.
    from demhec.experiments.comparison import checkpoint_path, resume_checkpoint, resumes

    exp = comparison_experiment(run, results_dir=str(tmp_path))
    path = checkpoint_path(run, exp)
    assert not resumes(run, exp) and resume_checkpoint(run, exp) is None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".ckpt").write_bytes(b"")
    assert resumes(run, exp) and resume_checkpoint(run, exp) == path.with_suffix(".ckpt")
    path.write_bytes(b"")
    assert not resumes(run, exp) and resume_checkpoint(run, exp) is None


def test_a_row_without_results_says_how_far_its_training_got(tmp_path):
    # The push-pull Dem-HEC's files are named after the method: its row must find its checkpoint.
    from demhec.experiments.comparison import checkpoint_path
    from demhec.experiments.comparison_tables import _missing

    run = RUNS["pushpull_demhec"]
    exp = comparison_experiment(run, results_dir=str(tmp_path))
    path = checkpoint_path(run, exp)
    assert _missing(run.name, 0, PROFILE, tmp_path) == "not trained yet"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"fingerprint": {}, "step": 1234}, path.with_suffix(".ckpt"))
    # A.3: 20 epochs of the 45,000-image split at batch 128.
    assert _missing(run.name, 0, PROFILE, tmp_path) == "training: step 1,234 of 7,020"
    path.write_bytes(b"")
    assert _missing(run.name, 0, PROFILE, tmp_path) == "not scored yet"


@pytest.mark.parametrize("run", COMPARISON, ids=lambda r: r.name)
def test_each_seed_of_a_run_records_its_stage_times_apart(run, tmp_path):
    # A second seed's times once replaced the first's: the stage name (the record's file) lacked the seed.
    from demhec.experiments.comparison import stage_name
    from demhec.experiments.stage_times import stage_time_path

    exps = [comparison_experiment(run, results_dir=str(tmp_path), seed=s) for s in (0, 1, 2)]
    for what in ("model (A.3)", "scoring (15 corruptions, S1-S5, both halves)", "+ tent (both halves)"):
        assert len({stage_time_path(e, stage_name(run, e, what)) for e in exps}) == 3
    assert stage_name(run, exps[0], "model (A.3)") == f"{run.name} model (A.3)"  # the committed records' names


def test_the_comparison_names_every_method_once():
    names = [r.name for r in COMPARISON]
    assert len(names) == len(set(names))
    compared = {run_config(comparison_experiment(r), r).method for r in COMPARISON if r.fine_tuned}
    assert set(METHODS) - {"pad_crop"} <= compared  # the plain fine-tune is Pad-Crop


def _images(n: int = 8, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g), torch.arange(n) % 4


def test_batch_augmentation_is_m_independent_crops_of_each_image():
    """BA's loss against a hand-built reference: the cross-entropy over M crop + flip draws of
    each image, in the order the global RNG gives them."""
    torch.manual_seed(0)
    net = TinyNet()
    x, y = _images()
    x = x.float() / 255
    seen = []

    def forward(images, *, update_stats=True):
        seen.append(images)
        return net(images)

    method = get_method("ba")
    m = method.settings.m
    torch.manual_seed(5)
    loss, _ = method.loss(Step(forward=forward, ce=F.cross_entropy), x, y)
    torch.manual_seed(5)
    copies = [random_crop_flip(x) for _ in range(m)]
    expected = F.cross_entropy(net(torch.cat(copies)), y.repeat(m))
    assert len(seen) == 1 and seen[0].shape[0] == m * len(x)
    assert torch.equal(seen[0], torch.cat(copies)) and torch.allclose(loss, expected)
    assert not torch.equal(copies[0], copies[1])


@pytest.fixture
def recording_method():
    """A registered method with ``crops`` that records the images it is given."""
    seen: list[torch.Tensor] = []

    def loss(step, x, y):
        seen.append(x.clone())
        value = step.ce(step.forward(x), y)
        return value, {"ce": value.item()}

    register_method(Method("recording_test", "rec", "test", loss, crops=True))
    try:
        yield seen
    finally:
        del METHODS["recording_test"]


def test_a_method_that_crops_its_copies_gets_the_uncropped_images(recording_method):
    images, labels = _images(16)
    cfg = demhec.DemHECConfig(epochs=1, batch_size=8, warmup_epochs=0, alpha=0.0, lambda_c=0.0,
                              lambda_kd=0.0, method="recording_test", freeze="none", seed=3)
    demhec.finetune(TinyNet(), (images, labels), cfg)
    plain = TensorBatches(images, labels, batch_size=8, shuffle=True, augment="none", seed=3, drop_last=True)
    expected = [x for x, _ in plain.epoch(0)]
    assert len(recording_method) == len(expected)
    assert all(torch.equal(a, b) for a, b in zip(recording_method, expected))


@pytest.mark.parametrize("method", ["trivialaugment", "augmix", "ba"])
def test_a_compared_method_fine_tunes_on_its_own_loss(method):
    """The method's loss is what the step optimises: the logged terms are the method's, and the
    fine-tune reproduces itself."""
    images, labels = _images(16)
    cfg = demhec.DemHECConfig(epochs=1, batch_size=8, warmup_epochs=0, alpha=0.0, lambda_c=0.0,
                              lambda_kd=0.0, method=method, freeze="none")
    parts: list[dict] = []

    def trained():
        torch.manual_seed(0)
        return demhec.finetune(TinyNet(), (images, labels), cfg, on_step=lambda s, p: parts.append(p)).state_dict()

    a, b = trained(), trained()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "ce" in parts[0] and parts[0]["ce_clean"] == pytest.approx(parts[0]["loss"])
    if method == "augmix":
        assert parts[0]["jsd"] > 0


@pytest.mark.slow
def test_the_queue_trains_scores_adapts_and_lists_its_models(tmp_path):
    archive = jpeg_archive(tmp_path / "cifar10-jpeg-train.tar.gz", 12)
    results = tmp_path / "results"
    cmd = [sys.executable, str(ROOT / "scripts" / "comparison.py"), "--profile", "a3_smoke", "--runs", "base,ba",
           "--results-dir", str(results), "--data-root", str(archive), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    halves = results / "a3_smoke" / "cifar10_jpeg" / "resnet20" / "halves"
    for tag in ("before", "ba"):
        sel, rep = (json.loads((halves / f"{tag}_cifar-c_all_{h}.json").read_text()) for h in ("selection", "report"))
        assert sel["split"] == "selection" and rep["split"] == "report"
        assert len(sel["metrics"]["table"]) == 1 + 15 * 5 and sel["metrics"]["n"] + rep["metrics"]["n"] == 50
        for adapt in ("bn", "tent"):
            rec = json.loads((halves / f"{tag}_{adapt}_cifar-c_report.json").read_text())
            assert rec["config"]["adapt"]["method"] == adapt and len(rec["metrics"]["table"]) == 1 + 7 * 3
    manifest = json.loads((results / "a3_smoke" / "checkpoints" / "manifest.json").read_text())
    assert set(manifest) == {"base", "ba"}
    for entry in manifest.values():
        model = demhec.get_model(entry["model"], num_classes=10, pretrained=entry["file"])
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    # The pages read what the queue wrote: Tables 3 and 4 in the paper's shape, the ranked table,
    # the figures, and a key number recounted from the per-image outcomes.
    from types import SimpleNamespace

    from demhec.experiments import comparison_tables as ct
    from demhec.experiments.pages import comparison_page

    ctx = SimpleNamespace(exp=SimpleNamespace(results_dir=str(results)), tables_dir=tmp_path / "tables")
    t3 = comparison_page(ctx, "table3", profile="a3_smoke")
    assert t3.checked == ["base's noise-family mean"] and set(t3.figures) == {
        "comparison_tradeoff_noise_s5", "comparison_tradeoff_all15_s5"}
    shown = t3.tables["table3"]
    assert shown.loc["BA", "missing"] == "" and shown.loc["AugMix", "missing"] == "not trained yet"
    assert shown.loc["BA", "paper noise"] == 21.18  # the paper's BA row, results/paper/table3.csv
    assert "not yet" not in comparison_page(ctx, "table4", profile="a3_smoke").tables["table4"].loc["BA", "missing"]
    table = ct.comparison_table(ct.comparison_records("a3_smoke", results), profile="a3_smoke", results_dir=results)
    assert set(table[table.missing == ""].label) >= {"BA", "BA + TENT", "ResNet-20 base (no fine-tune) + BN adaptation"}
    # The GPU's seeds of the same table (trained there, scored anywhere): a line until one is scored,
    # then a table of means and spreads over the seeds.
    assert "no model of it is scored yet" in t3.text and "comparison_gpu_seeds" not in t3.tables
    gpu = [*cmd[:3], "gpu_a3_smoke", "--runs", "base,plain", "--seeds", "0,1", "--stages", "train,score",
           "--build-cache", *cmd[6:]]
    proc = subprocess.run(gpu, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The sets were cached by the first queue: --build-cache read them, so it records no build time.
    assert not list((results / "gpu_smoke" / "a3").rglob("stage_times/corrupted_evaluation_sets*"))
    assert (results / "gpu_smoke" / "a3" / "cifar10_jpeg" / "corrupted_sets_cifar-c.json").is_file()
    page = comparison_page(ctx, "table3", profile="a3_smoke")
    seeds = page.tables["comparison_gpu_seeds"].set_index("label")
    assert seeds.loc["Pad-Crop (plain fine-tune)", "seeds"] == 2 and seeds.loc["ResNet-20 base (no fine-tune)", "seeds"] == 1
    assert np.isfinite(seeds.loc["Pad-Crop (plain fine-tune)", "clean_sd"])
    # Whether the twin was scored on the same corrupted images: unknown until both recorded their
    # sets' digests; then the digests agree set by set, and a set made differently is named.
    caption = next(c for name, _, c in page.items if name == "comparison_gpu_seeds")
    assert "not known: no digests of `a3_smoke`'s" in caption
    import hashlib

    from demhec.corruptions import corrupt_split
    from demhec.experiments.comparison import comparison_experiment, comparison_run
    from demhec.experiments.inputs import corrupted_eval_kw, eval_data, record_corrupted_sets

    exp = comparison_experiment(comparison_run("base"), profile="a3_smoke", results_dir=str(results),
                                data_root=str(archive))
    rec = record_corrupted_sets(exp, "cifar-c", list(CORRUPTIONS), [1, 2, 3, 4, 5])
    kw = corrupted_eval_kw(exp)
    glass = corrupt_split(eval_data(exp).images, "glass_blur", 3, seed=kw["seed"])  # afresh, not from the cache
    assert rec["metrics"]["sha256"]["glass_blur/3"] == hashlib.sha256(glass.tobytes()).hexdigest()
    assert "digests of all 75 corrupted sets agree" in ct.corrupted_sets_note("a3_smoke", "gpu_a3_smoke", results)
    twin = results / "gpu_smoke" / "a3" / "cifar10_jpeg" / "corrupted_sets_cifar-c.json"
    rec = json.loads(twin.read_text())
    rec["metrics"]["sha256"]["glass_blur/3"] = "0" * 64
    twin.write_text(json.dumps(rec))
    assert "differ from `a3_smoke`'s in 1 of 75 sets (glass_blur/3" in ct.corrupted_sets_note(
        "a3_smoke", "gpu_a3_smoke", results)
    # A shown number that does not follow from the file's outcomes stops the page.
    path = halves / "before_cifar-c_all_report.json"
    rec = json.loads(path.read_text())
    for row in rec["metrics"]["table"]:
        if row["corruption"] == "gaussian_noise":
            row["accuracy"] += 10
    path.write_text(json.dumps(rec))
    with pytest.raises(demhec.DemHECError, match="noise-family mean"):
        comparison_page(ctx, "table3", profile="a3_smoke")

    # A second run finds everything done: no model or result is written again (the manifest is
    # rewritten, with the same content).
    def written():
        return {p: p.stat().st_mtime_ns if p.name != "manifest.json" else p.read_text()
                for p in results.rglob("*") if p.is_file() and not {"stage_times", "locks"} & set(p.parts)}

    before = written()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and written() == before


def test_per_half_adaptation_never_lets_one_half_shape_the_other():
    """TENT adapted per group: changing the images of one group leaves the other's logits as
    they were."""
    from demhec.evaluation import cell_logits

    torch.manual_seed(0)
    net = TinyNet(num_classes=4).eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(12) % 4
    groups = [np.arange(0, 12, 2), np.arange(1, 12, 2)]
    a = cell_logits(net, (images, labels), [], [], adapt="tent", groups=groups)[("clean", 0)]
    changed = images.copy()
    changed[groups[1]] = 255 - changed[groups[1]]
    b = cell_logits(net, (changed, labels), [], [], adapt="tent", groups=groups)[("clean", 0)]
    assert torch.equal(a[groups[0]], b[groups[0]]) and not torch.equal(a[groups[1]], b[groups[1]])


def _headline_inputs(gauss_noise: str, gauss_clean: str, missing: str = "") -> tuple[pd.DataFrame, pd.DataFrame]:
    table = pd.DataFrame([
        {"run": "demhec", "adapt": "none", "missing": "", "split": "report", "label": "Dem-HEC", "d_clean": -3.0, "d_noise_s5": 16.0},
        {"run": "gaussian_aug", "adapt": "none", "missing": "", "split": "report", "label": "Gauss", "d_clean": 0.0, "d_noise_s5": 21.0},
        {"run": "ba", "adapt": "none", "missing": missing, "split": "report", "label": "BA", "d_clean": None, "d_noise_s5": None}])
    outcome = {"better": "Dem-HEC better", "worse": "Dem-HEC worse", "tie": "within the images' noise"}
    verdict = pd.DataFrame([
        {"against": "Gauss", "metric": "clean", "demhec_minus": -3.0, "se": 0.7, "outcome": outcome[gauss_clean], "kind": "compared"},
        {"against": "Gauss", "metric": "noise_s5", "demhec_minus": -5.0, "se": 0.6, "outcome": outcome[gauss_noise], "kind": "compared"},
        {"against": "Gauss", "metric": "all15_s5", "demhec_minus": 0.1, "se": 0.4, "outcome": outcome["tie"], "kind": "compared"}])
    return table, verdict


def test_the_headline_names_an_alternative_that_beats_dem_hec_without_costing_clean_accuracy():
    from demhec.experiments.comparison_tables import comparison_headline

    text = comparison_headline(*_headline_inputs("worse", "worse"))
    assert "noise S5 mean by +16.00" in text and "clean accuracy by -3.00" in text
    assert "Gauss on the noise S5 mean (Dem-HEC minus it: -5.00 ± 0.60; clean -3.00 ± 0.70)" in text
    assert "not the method to pick" in text and "not measured yet" not in text
    # Dem-HEC ahead on clean accuracy: a trade-off, not a method that beats it.
    traded = comparison_headline(*_headline_inputs("worse", "better"))
    assert "None of the 1 alternatives" in traded and "not the method to pick" not in traded
    assert "None of" in comparison_headline(*_headline_inputs("tie", "worse"))
    pending = comparison_headline(*_headline_inputs("tie", "tie", missing="not trained yet"))
    assert "1 compared model is not measured yet (BA)" in pending


def test_the_seed_summary_averages_each_model_over_the_seeds_that_measured_it():
    from demhec.experiments.comparison_tables import seed_summary

    def table(gauss_noise: float, ba_missing: str) -> pd.DataFrame:
        return pd.DataFrame([
            {"label": "Dem-HEC", "kind": "fine-tuned", "missing": "", "clean": 82.0, "noise_s5": 70.0},
            {"label": "Gauss", "kind": "fine-tuned", "missing": "", "clean": 86.0, "noise_s5": gauss_noise,
             "vs_demhec_noise_s5": 70.0 - gauss_noise},
            {"label": "BA", "kind": "fine-tuned", "missing": ba_missing, "clean": 87.0 if not ba_missing else None,
             "noise_s5": 55.0 if not ba_missing else None}])

    tables = [table(74.0, ""), table(78.0, "not scored yet"), table(76.0, "not trained yet")]
    got = seed_summary(tables).set_index("label")
    assert list(got.index) == ["Gauss", "Dem-HEC", "BA"]  # ranked by the noise S5 mean
    assert got.loc["Gauss", "seeds"] == 3 and got.loc["Gauss", "noise_s5"] == pytest.approx(76.0)
    assert got.loc["Gauss", "noise_s5_sd"] == pytest.approx(2.0) and got.loc["Gauss", "vs_demhec_noise_s5"] == pytest.approx(-6.0)
    assert got.loc["BA", "seeds"] == 1 and np.isnan(got.loc["BA", "noise_s5_sd"])  # missing seeds do not count
    assert got.loc["Dem-HEC", "clean_sd"] == 0.0 and got.loc["Gauss", "paired_seeds"] == 3
    # A seed at which Dem-HEC's own run is not scored has no paired difference: it is not counted as one.
    tables[0].loc[tables[0].label == "Gauss", "vs_demhec_noise_s5"] = np.nan
    got = seed_summary(tables).set_index("label")
    assert got.loc["Gauss", "seeds"] == 3 and got.loc["Gauss", "paired_seeds"] == 2
    assert got.loc["Gauss", "vs_demhec_noise_s5"] == pytest.approx(-7.0)  # (-8 + -6) / 2
    assert seed_summary([]).empty and seed_summary([table(74.0, "")[:0]]).empty


def test_every_committed_result_that_names_its_corrupted_sets_scored_the_recorded_ones():
    """A result records the digest of the corrupted sets it scored; each committed one agrees
    with the record of its profile (the sets every other result there was scored on)."""
    from demhec.experiments.inputs import scored_other_sets, sets_digest

    for record_path in sorted((ROOT / "results").rglob("corrupted_sets_cifar-c.json")):
        record = json.loads(record_path.read_text())
        for path in sorted(record_path.parent.rglob("*_cifar-c_*.json")):
            result = json.loads(path.read_text())
            if result.get("config", {}).get("suite") != "cifar-c":
                continue
            assert scored_other_sets(result, record) is not True, path.relative_to(ROOT)
    # The check can fail: one set of another machine's images, and the same result disagrees.
    record = {"metrics": {"sha256": {"fog/5": "a" * 64, "snow/5": "b" * 64}}}
    result = {"config": {"corruptions": ["fog"], "severities": [5]},
              "data": {"corrupted_sets_sha256": sets_digest({"fog/5": "a" * 64})}}
    assert scored_other_sets(result, record) is False
    assert scored_other_sets(result, {"metrics": {"sha256": {"fog/5": "c" * 64}}}) is True
    assert scored_other_sets(result, {"metrics": {"sha256": {"snow/5": "b" * 64}}}) is None
    assert scored_other_sets({**result, "data": {}}, record) is None


def _record(n: int, correct: dict[str, int]) -> dict:
    """A half's result whose cell ``c`` has the first ``correct[c]`` of ``n`` images right."""
    from demhec.experiments.halves import pack_outcomes

    cells = {"clean/0": correct["clean"], **{f"{c}/5": correct["noise"] for c in
                                             ("gaussian_noise", "shot_noise", "impulse_noise")}}
    table = [{"corruption": k.split("/")[0], "severity": int(k.split("/")[1]), "accuracy": 100 * v / n} for k, v in cells.items()]
    return {"metrics": {"n": n, "table": table,
                        "correct": {k: pack_outcomes(np.arange(n) < v) for k, v in cells.items()}}}


def test_a_combination_beats_both_its_parts_only_when_it_is_ahead_of_each_beyond_the_paired_error():
    """Dem-HEC on the push-pull model against the push-pull base and against Dem-HEC, Dem-HEC +
    BN adaptation against Dem-HEC and against the adapted base: combination minus part, paired
    over the same images, and the sentence that says whether it beats both."""
    from demhec.experiments.comparison_tables import comparison_verdict, describe_comparison

    n = 400
    got = {("demhec", "none"): {"clean": 320, "noise": 240}, ("base", "bn"): {"clean": 330, "noise": 200},
           ("demhec", "bn"): {"clean": 318, "noise": 280}, ("pushpull_base", "none"): {"clean": 340, "noise": 160},
           ("pushpull_demhec", "none"): {"clean": 328, "noise": 300}}
    records: dict = {}
    for (run, adapt), c in got.items():
        records.setdefault((run, 0), {})[adapt] = {"report": _record(n, c)}
    table = pd.DataFrame([{"run": r, "adapt": a, "label": f"{r}+{a}", "missing": "", "split": "report"} for r, a in got])
    verdict = comparison_verdict(records, table)
    combos = verdict[verdict.kind == "combination"].set_index(["against", "metric"])
    # The first k images right: the paired difference is exact, (k_combo - k_part) / n.
    row = combos.loc[("pushpull_demhec+none vs pushpull_base+none", "noise_s5")]
    assert row.demhec_minus == pytest.approx(100 * (300 - 160) / n) and row.outcome == "combination better"
    row = combos.loc[("pushpull_demhec+none vs pushpull_base+none", "clean")]
    assert row.demhec_minus == pytest.approx(100 * (328 - 340) / n) and row.outcome == "combination worse"
    assert combos.loc[("pushpull_demhec+none vs demhec+none", "noise_s5")].demhec_minus == pytest.approx(15.0)
    # 2 images of 400 apart: within the noise.
    assert combos.loc[("demhec+bn vs demhec+none", "clean")].outcome == "within the images' noise"
    assert not any(a.startswith("demhec+tent") for a, _ in combos.index)  # no TENT files: no row
    text = describe_comparison(table, verdict)
    assert "- pushpull_demhec+none, noise S5 mean: beats both its parts (+35.00 ± 2.39 against pushpull_base+none; +15.00 ± " in text
    assert "- pushpull_demhec+none, clean accuracy: does not beat both its parts" in text
    assert "- demhec+bn, noise S5 mean: beats both its parts (+10.00 ± " in text
    # Ahead of one part only is not beating both.
    records[("pushpull_demhec", 0)]["none"]["report"] = _record(n, {"clean": 328, "noise": 230})
    text = describe_comparison(table, comparison_verdict(records, table))
    assert "- pushpull_demhec+none, noise S5 mean: does not beat both its parts (+17.50 ± " in text
    # One part unmeasured: no judgement.
    del records[("demhec", 0)]
    text = describe_comparison(table, comparison_verdict(records, table))
    assert "- pushpull_demhec+none, noise S5 mean: not judged yet, one of its parts is not measured (+17.50 ± " in text
    # The finding on Dem-HEC on the push-pull model reads the same rows, or says what the row lacks.
    from demhec.experiments.comparison import RUNS
    from demhec.experiments.findings import _pushpull_combination

    label = RUNS["pushpull_demhec"].label
    records[("demhec", 0)] = {"none": {"report": _record(n, got[("demhec", "none")])}}
    table.loc[table.run == "pushpull_demhec", "label"] = label
    answer = _pushpull_combination(table, comparison_verdict(records, table)).answer
    assert answer.startswith(f"{label}, combination minus part: clean accuracy: does not beat both its parts")
    assert "noise S5 mean: does not beat both its parts (+17.50 ± " in answer
    del records[("pushpull_demhec", 0)]
    table.loc[table.run == "pushpull_demhec", "missing"] = "training: step 5 of 10"
    answer = _pushpull_combination(table, comparison_verdict(records, table)).answer
    assert answer == f"Not measured yet: {label} (training: step 5 of 10)."
