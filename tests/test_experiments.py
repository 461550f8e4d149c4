"""Results, profiles, notebook parameter validation and the CLI."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from demhec import experiments as ex
from demhec import results
from demhec._common import DemHECError, parse_number
from demhec.data import DEFAULT_JPEG_ARCHIVE, jpeg_source
from demhec.training import DemHECConfig, TrainConfig
from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


def test_write_and_read_result_with_provenance(tmp_path):
    rec = results.write_result(tmp_path / "r.json", kind="k", profile="smoke", config={"a": 1},
                               metrics={"table": pd.DataFrame({"x": [1.0]})}, data={"d": "x"}, seed=3)
    back = results.read_result(tmp_path / "r.json")
    assert back == json.loads(json.dumps(rec))
    assert back["versions"]["torch"] and back["git_commit"]
    assert back["metrics"]["table"] == [{"x": 1.0}]
    assert not list(tmp_path.glob(".*tmp"))


def _counting_compute():
    """A compute function whose result's metric counts the calls made so far."""
    calls = []

    def compute():
        calls.append(1)
        return dict(kind="k", profile="p", config={}, metrics={"v": len(calls)}, data={}, seed=0)

    return compute, calls


def test_get_or_compute_respects_allow_train(tmp_path):
    compute, _ = _counting_compute()
    path = tmp_path / "cell.json"
    fp = results.fingerprint({"a": 1})
    with pytest.raises(DemHECError, match="cell.json.*allow_train"):
        results.get_or_compute(path, compute, fingerprint=fp, allow_train=False)
    assert not path.exists()
    assert results.get_or_compute(path, compute, fingerprint=fp, allow_train=True)["metrics"]["v"] == 1
    assert results.get_or_compute(path, compute, fingerprint=fp, allow_train=False)["metrics"]["v"] == 1
    assert results.get_or_compute(path, compute, fingerprint=fp, allow_train=True, recompute=True)["metrics"]["v"] == 2


def test_get_or_compute_refuses_a_file_made_for_another_request(tmp_path):
    compute, made = _counting_compute()
    path = tmp_path / "cell.json"
    old = results.fingerprint({"model": {"config": {"alpha": 0.5, "eps": 0.03}}, "suite": "cifar-c"})
    results.get_or_compute(path, compute, fingerprint=old, allow_train=True)
    new = results.fingerprint({"model": {"config": {"alpha": 0.25, "eps": 0.03}}, "suite": "cifar-c"})
    with pytest.raises(DemHECError, match=r"model\.config\.alpha \(recorded 0\.5, requested 0\.25\)") as err:
        results.get_or_compute(path, compute, fingerprint=new, allow_train=False)
    assert "eps" not in str(err.value) and made == [1]
    assert results.get_or_compute(path, compute, fingerprint=new, allow_train=True)["metrics"]["v"] == 2
    assert results.read_result(path)["fingerprint"] == new
    # A file from before fingerprints is never taken for any request.
    record = json.loads(path.read_text())
    del record["fingerprint"]
    path.write_text(json.dumps(record))
    with pytest.raises(DemHECError, match="no fingerprint"):
        results.get_or_compute(path, compute, fingerprint=new, allow_train=False)


def test_truncated_result_is_refused(tmp_path):
    path = tmp_path / "r.json"
    results.write_result(path, kind="k", profile="p", config={}, metrics={}, data={}, seed=0)
    path.write_text(path.read_text()[:20])
    with pytest.raises(DemHECError, match="unreadable"):
        results.read_result(path)


def test_save_table_formats(tmp_path):
    df = pd.DataFrame({"corruption": ["a", "b"], "ours": [1.234, float("nan")]})
    paths = results.save_table(df, "t", tmp_path)
    assert [p.suffix for p in paths] == [".csv", ".md", ".tex"]
    assert "| a | 1.23 |" in paths[1].read_text() and "--" in paths[1].read_text()


def test_compare_with_paper_delta():
    ours = pd.DataFrame({"corruption": ["gaussian_noise"], "severity": [5], "phase": ["before"],
                         "accuracy": [30.0]})
    paper = results.paper_table("table1")
    paper = paper[(paper.backbone == "resnet20")]
    out = results.compare_with_paper(ours, paper, on=["corruption", "severity", "phase"])
    assert out.paper.iloc[0] == pytest.approx(21.23)
    assert out.delta.iloc[0] == pytest.approx(30.0 - 21.23)


@pytest.mark.parametrize("text,value", [("8/255", 8 / 255), ("0.5", 0.5), (2, 2.0)])
def test_parse_number(text, value):
    assert parse_number("eps", text) == pytest.approx(value)


@pytest.mark.parametrize("bad", ["eight", "8/0", None, True])
def test_parse_number_rejects(bad):
    with pytest.raises(DemHECError, match="eps"):
        parse_number("eps", bad)


BAD_PARAMS = [
    (dict(profile="fast"), "profile.*smoke"),
    (dict(dataset="cifar11"), "dataset.*cifar10"),
    (dict(backbone="resnet57"), "backbone.*resnet56"),
    (dict(suite="cifar10c"), "suite.*imagecorruptions, cifar10-c, cifar100-c, tinyimagenet-c"),
    (dict(corruptions="gaussian"), "corruption.*gaussian_noise"),
    (dict(severities=[0]), "severity"),
    (dict(severities=[6]), "severity"),
    (dict(severities=["3"]), "severity"),
    (dict(severities=[3.5]), "severity"),
    (dict(seed=-1), "seed"),
    (dict(seed="0"), "seed"),
    (dict(allow_train="yes"), "allow_train"),
    (dict(device="gpu"), "device"),
]


@pytest.mark.parametrize("override,message", BAD_PARAMS)
def test_notebook_setup_rejects_bad_parameters(override, message, tmp_path):
    params = dict(profile="smoke", dataset="cifar10", backbone="resnet20",
                  results_dir=str(tmp_path))
    params.update(override)
    with pytest.raises(DemHECError, match=message):
        ex.notebook.notebook_setup(**params)


def test_notebook_setup_substitutes_and_resolves(tmp_path):
    ctx = ex.notebook.notebook_setup(profile="demo", dataset="tinyimagenet", backbone="vit_large_patch16_384",
                            results_dir="build/x", suite="imagecorruptions")
    assert ctx.exp.effective_dataset == "digits" and ctx.exp.effective_backbone == "vit_test"
    assert Path(ctx.exp.results_dir).is_absolute()
    assert "vit_test" in ctx.note() and "digits" in ctx.note()


def test_missing_result_named_without_allow_train(tmp_path):
    exp = ex.Experiment(profile="smoke", dataset="cifar10", backbone="resnet20",
                        results_dir=str(tmp_path), allow_train=False)
    with pytest.raises(DemHECError, match="before_cifar-c.json"):
        ex.pipeline.robustness_result(exp, "before")


@pytest.mark.slow
def test_smoke_pipeline_end_to_end(tmp_path):
    exp = ex.Experiment(profile="smoke", dataset="cifar10", backbone="resnet20",
                        results_dir=str(tmp_path), allow_train=True)
    before = ex.pipeline.robustness_result(exp, "before", corruptions=["gaussian_noise"], severities=[5])
    after = ex.pipeline.robustness_result(exp, "after", corruptions=["gaussian_noise"], severities=[5])
    assert before["data"]["dataset"] == "digits" and before["profile"] == "smoke"
    assert before["config"]["model"]["epochs"] == 1
    assert after["config"]["model"]["alpha"] == 0.5
    table = ex.tables.before_after_table(before, after, "table1", "cifar10", "resnet20")
    assert set(table.phase) == {"before", "after"} and table.paper.notna().all()
    assert (exp.root / "checkpoints" / "resnet20_demhec.pt").exists()
    # Cached: a second call neither trains nor evaluates.
    exp2 = ex.Experiment(profile="smoke", dataset="cifar10", backbone="resnet20",
                         results_dir=str(tmp_path), allow_train=False)
    assert ex.pipeline.robustness_result(exp2, "after", corruptions=["gaussian_noise"], severities=[5]) == after
    assert not any("/" in v and v.startswith("/") for v in after["data"].values())


def _papermill(tmp_path, *params):
    out = tmp_path / "out.ipynb"
    cmd = [sys.executable, "-m", "papermill", str(ROOT / "notebooks" / "03_table1.ipynb"), str(out),
           "-p", "profile", "smoke", "-p", "allow_train", "True",
           "-p", "results_dir", str(tmp_path / "results"), "-p", "figures_dir", str(tmp_path / "fig"),
           *params]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)


def test_allow_train_auto_computes_in_smoke_and_demo_only(tmp_path):
    common = dict(dataset="cifar10", backbone="resnet56", results_dir=str(tmp_path))
    assert ex.notebook.notebook_setup(profile="smoke", **common).exp.allow_train
    assert ex.notebook.notebook_setup(profile="demo", **common).exp.allow_train
    assert not ex.notebook.notebook_setup(profile="cpu", **common).exp.allow_train
    assert not ex.notebook.notebook_setup(profile="paper", **common).exp.allow_train
    assert not ex.notebook.notebook_setup(profile="demo", allow_train=False, **common).exp.allow_train


def test_setup_says_what_it_will_compute(tmp_path, capsys):
    params = dict(profile="demo", dataset="cifar10", backbone="resnet20", suite="cifar-c", results_dir=str(tmp_path),
                  unrelated="ignored")
    ctx = ex.start_notebook(params, needs=["before", "after"])
    out = capsys.readouterr().out
    assert "will compute: train base resnet20" in out and "Dem-HEC fine-tune" in out
    assert "before_cifar-c.json, after_cifar-c.json" in out and "min on 2 idle CPU cores" in out
    for phase in ("before", "after"):
        path = ex.layout.result_path(ctx.exp, ex.pipeline.as_run(ctx.exp, phase))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    assert ctx.plan(["before", "after"]).startswith("nothing to compute")
    cpu = ex.start_notebook({**params, "profile": "cpu", "backbone": "resnet56"}, needs=["before"])
    assert not cpu.exp.allow_train
    assert "-p allow_train True" in capsys.readouterr().out


def test_figure_cells_must_show_an_image():
    shown = {"cell_type": "code", "source": "fig = plots.entropy_figure(a, b)\nplots.show_figure(fig, 's', d)",
             "outputs": [{"output_type": "display_data", "data": {"image/png": "iVBOR", "text/plain": "<Image>"}}]}
    hidden = {**shown, "outputs": [{"output_type": "stream", "name": "stdout", "text": "wrote s.png"}]}
    table = {"cell_type": "code", "source": "ex.tables.wide_table(long)", "outputs": []}
    heatmap = {**hidden, "source": ["fig = plots.delta_heatmap(gains)\n"]}
    assert ex.notebook.figure_cells_without_image([shown, hidden, table, heatmap]) == [1, 3]


@pytest.mark.slow
def test_design_card_command_in_demo_from_the_notebooks_folder(tmp_path):
    """`papermill 03_table1.ipynb out.ipynb -p backbone resnet56` typed in notebooks/ with the
    defaults (demo profile): the demo's committed results serve it (ResNet-56 runs as its ResNet-20
    stand-in there), and its figures are shown in the notebook. In cpu, a missing result stops
    the run naming the file and the flag."""
    import shutil

    shutil.copytree(ROOT / "results" / "demo" / "digits", tmp_path / "results" / "demo" / "digits")
    where = ["-p", "results_dir", str(tmp_path / "results"), "-p", "figures_dir", str(tmp_path / "fig")]
    out = tmp_path / "out.ipynb"
    cmd = [sys.executable, "-m", "papermill", "03_table1.ipynb", str(out), "-p", "backbone", "resnet56", *where]
    ok = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT / "notebooks")
    assert ok.returncode == 0, ok.stderr[-2000:]
    cells = json.loads(out.read_text())["cells"]
    text = json.dumps(cells)
    assert "resnet56 -> resnet20" in text and "nothing to compute" in text
    assert not ex.notebook.figure_cells_without_image(cells)
    assert sum("image/png" in o.get("data", {}) for c in cells for o in c.get("outputs", [])) == 2
    bad = subprocess.run([*cmd, "-p", "profile", "cpu"], capture_output=True, text=True, cwd=ROOT / "notebooks")
    assert bad.returncode != 0
    assert "before_cifar-c.json" in bad.stderr and "allow_train True" in bad.stderr


@pytest.mark.slow
def test_papermill_table1_resnet56_and_typo(tmp_path):
    ok = _papermill(tmp_path, "-p", "backbone", "resnet56")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert list((tmp_path / "results" / "smoke" / "tables").glob("table1_digits_resnet56_*.md"))
    bad = _papermill(tmp_path, "-p", "backbone", "resnet57")
    assert bad.returncode != 0
    assert "unknown backbone 'resnet57'" in bad.stderr and "resnet56" in bad.stderr


@pytest.mark.expensive
def test_cpu_reproduction_script_runs_every_stage_and_resumes(tmp_path, capsys):
    """scripts/cpu_reproduction.py in the smoke profile: every stage writes its result; a
    second call recomputes nothing (every stage is a cache hit). About 30 fine-tunes and their
    evaluations: minutes on 2 cores, so `make unit-all` runs it, not `make test`; the pipeline
    calls it makes are covered one by one by the cheaper tests here."""
    script = load_script("cpu_reproduction")
    args = ["--profile", "smoke", "--seeds", "0,1", "--results-dir", str(tmp_path), "--no-progress"]
    script.main(args)
    first = capsys.readouterr().out
    cell = tmp_path / "smoke" / "digits" / "resnet20"
    names = sorted(p.name for p in cell.glob("*.json"))
    expected = {"before_cifar-c.json", "before_imagecorruptions.json", "after_cifar-c.json",
                "after_cifar-c_seed1.json", "after_plain_cifar-c.json", "after_plain_cifar-c_seed1.json",
                "after_imagecorruptions.json", "after_plain_imagecorruptions.json",
                *(f"after_{run}_cifar-c.json" for run in ex.runs.ABLATIONS if run not in ("demhec", "plain")),
                *(f"after_{run}_cifar-c_seed1.json" for run in ex.runs.LATE_RUNS),
                *(f"after_{run}_imagecorruptions.json" for run in ex.runs.LATE_RUNS),
                *(f"paired_{tag}_cifar-c_s5{sfx}.json" for tag in ("after", "after_late_frozen_tuned")
                  for sfx in ("", "_seed1")),
                *(f"{phase}_{adapt}_cifar-c.json" for phase in ("before", "after") for adapt in ("bn", "tent"))}
    assert set(names) == expected
    assert first.count("[stage]") == 1 + 2 + 4 + 2 + len(ex.runs.ABLATIONS) - 2 + 2 * len(ex.runs.LATE_RUNS) + 4 + 4
    rec = json.loads((cell / "after_eps16_cifar-c.json").read_text())
    assert rec["config"]["model"]["eps"] == pytest.approx(16 / 255)
    smoke = ex.profiles.PROFILES["smoke"].demhec
    rec = json.loads((cell / "after_budget_x4_cifar-c.json").read_text())
    assert rec["config"]["model"]["max_steps"] == 4 * smoke.max_steps and rec["config"]["model"]["epochs"] == 4
    rec = json.loads((cell / "after_low_lr_cifar-c.json").read_text())
    assert rec["config"]["model"]["lr"] == pytest.approx(smoke.lr / 5)
    assert sorted(set(r["severity"] for r in rec["metrics"]["table"])) == [0, 5]
    assert json.loads((cell / "after_bn_clean_cifar-c.json").read_text())["config"]["model"]["bn"] == "clean"
    assert json.loads((cell / "after_freeze_more_cifar-c.json").read_text())["config"]["model"]["freeze"] == "stages:2"
    rec = json.loads((cell / "after_plain_late_frozen_tuned_cifar-c_seed1.json").read_text())
    assert rec["seed"] == 1 and rec["config"]["model"]["freeze"] == "after:2"
    assert rec["config"]["model"]["lr"] == pytest.approx(smoke.lr / 5) and rec["config"]["model"]["alpha"] == 0
    # The late-freezing pair is evaluated at every severity, like the main comparison.
    assert sorted(set(r["severity"] for r in rec["metrics"]["table"])) == [0, 1, 3, 5]
    rec = json.loads((cell / "paired_after_late_frozen_tuned_cifar-c_s5_seed1.json").read_text())
    assert rec["seed"] == 1 and rec["config"]["run"] == "late_frozen_tuned"
    assert set(rec["metrics"]) == {"clean", "corrupted"} and rec["metrics"]["clean"]["se"] >= 0
    # The paired differences are the before/after results' own differences.
    after = json.loads((cell / "after_late_frozen_tuned_cifar-c_seed1.json").read_text())["metrics"]
    before = json.loads((cell / "before_cifar-c.json").read_text())["metrics"]
    assert rec["metrics"]["clean"]["diff"] == pytest.approx(after["clean_accuracy"] - before["clean_accuracy"])
    noise_s5 = [pd.DataFrame(m["table"]).set_index(["corruption", "severity"]).accuracy
                .loc[[(c, 5) for c in ex.runs.NOISE]].mean() for m in (after, before)]
    assert rec["metrics"]["corrupted"]["diff"] == pytest.approx(noise_s5[0] - noise_s5[1])
    mtimes = {p: p.stat().st_mtime_ns for p in cell.glob("*.json")}
    script.main(args)
    assert {p: p.stat().st_mtime_ns for p in cell.glob("*.json")} == mtimes


CPU_RESULTS = ROOT / "results" / "cpu"


# A minute on 2 cores: tests/test_cpu_pages.py checks the pages' tables against the committed ones
# in CI; this one (every page, every figure byte for byte) runs with `make unit-all`.
@pytest.mark.expensive
def test_committed_cpu_reproduction_renders_from_its_jsons(tmp_path):
    """The CPU reproduction's pages (notebooks 09-13) in the cpu profile re-create the committed
    tables and figures from the committed JSONs alone (no data, no training), and the committed
    checkpoints load into the zoo ResNet-20."""
    import shutil

    import demhec

    if not (CPU_RESULTS / "cifar10_jpeg").is_dir():
        pytest.skip("no committed CPU reproduction results")
    for part in ("cpu/cifar10_jpeg", "cpu/bench", "gpu"):
        if (ROOT / "results" / part).is_dir():
            shutil.copytree(ROOT / "results" / part, tmp_path / "results" / part)
    runner = load_script("run_notebooks")
    assert runner.main(["--profile", "cpu", "--only", *(name[:2] for name in runner.CPU_STUDY),
                        "--out", str(tmp_path / "pages"), "--results-dir", str(tmp_path / "results"),
                        "--figures-dir", str(tmp_path / "fig")]) == 0
    assert sorted(p.name for p in (tmp_path / "pages").glob("*.ipynb")) == sorted(runner.CPU_STUDY)
    made = tmp_path / "results" / "cpu" / "tables"
    # Every table the pages make is committed, byte for byte (the other cpu notebooks, 01-07,
    # commit theirs beside them).
    made_csvs = sorted(made.glob("*.csv"))
    assert len(made_csvs) >= 15
    for table in made_csvs:
        assert table.read_text() == (CPU_RESULTS / "tables" / table.name).read_text(), table.name
    # six figures (with the test-time adaptation one), and page 12's Figures 3-4 and its trade-off
    # on both halves once their results are committed; each the committed figure, byte for byte
    fig34 = any((CPU_RESULTS / "cifar10_jpeg").rglob("entropy_*_report.json"))
    halves = any((CPU_RESULTS / "cifar10_jpeg").rglob("halves/after_cifar-c_selection.json"))
    made_figures = sorted((tmp_path / "fig" / "cpu").glob("*.png"))
    assert len(made_figures) == 6 + fig34 + halves
    for figure in made_figures:
        assert figure.read_bytes() == (ROOT / "figures" / "cpu" / figure.name).read_bytes(), figure.name
    # the exported state dicts (the recommended config and its controls) once committed
    exported = [f"resnet20_{n}.pt" for n in ex.runs.EXPORTED] if (CPU_RESULTS / "checkpoints" / "resnet20_recommended.json").exists() else []
    for name in ("resnet20_base.pt", "resnet20_demhec.pt", *exported):
        model = demhec.get_model("resnet20", num_classes=10, pretrained=str(CPU_RESULTS / "checkpoints" / name))
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def _robustness_record(seed: int, clean: float, cells: dict[tuple[str, int], float]) -> dict:
    table = [{"corruption": "clean", "severity": 0, "accuracy": clean}]
    table += [{"corruption": c, "severity": s, "accuracy": a} for (c, s), a in cells.items()]
    return {"seed": seed, "metrics": {"clean_accuracy": clean, "table": table}}


def test_severity_gains_average_seeds_per_severity():
    cells = {(c, s): 50.0 for c in (*ex.runs.NOISE, "snow") for s in (1, 5)}
    base = _robustness_record(0, 80.0, cells)
    runs = {}
    for seed, shift in ((0, 2.0), (1, 4.0)):
        moved = {(c, s): a + (shift if s == 5 and c in ex.runs.NOISE else -1.0) for (c, s), a in cells.items()}
        runs[("demhec", seed)] = _robustness_record(seed, 80.0 - shift, moved)
    sev = ex.tables.severity_gains(base, runs).set_index("severity")
    assert list(sev.index) == [1, 5] and (sev.seeds == 2).all()
    assert sev.loc[1, "d_noise"] == pytest.approx(-1.0) and sev.loc[1, "d_all"] == pytest.approx(-1.0)
    assert sev.loc[5, "d_noise"] == pytest.approx(3.0)
    assert sev.loc[5, "d_all"] == pytest.approx((3 * 3.0 - 1.0) / 4)
    assert sev.loc[5, "d_clean"] == pytest.approx(-3.0)
    only_s5 = {k: v for k, v in cells.items() if k[1] == 5}
    with pytest.raises(DemHECError, match="severity 1"):
        ex.tables.severity_gains(base, {("plain", 0): _robustness_record(0, 80.0, only_s5)})


@pytest.mark.parametrize("max_steps", [None, 2])
def test_budget_runs_take_factor_times_the_steps_with_the_same_warmup_share(monkeypatch, caplog, max_steps):
    from dataclasses import replace

    from demhec import training
    from demhec.training import DemHECConfig, finetune
    from tests.conftest import TinyNet

    schedules = []
    real = training._lr_lambda
    monkeypatch.setattr(training, "_lr_lambda", lambda total, warmup: schedules.append((total, warmup)) or real(total, warmup))
    data = ((torch.rand(32, 3, 8, 8) * 255).to(torch.uint8), torch.randint(0, 4, (32,)))  # 4 batches of 8
    cfg = DemHECConfig(epochs=1, batch_size=8, max_steps=max_steps, warmup_epochs=0.5, augment="none",
                       alpha=0.0, lambda_c=0.0, lambda_kd=0.0)
    taken = []
    for factor in (1, 4):
        taken.append(0)
        finetune(TinyNet(), data, ex.runs.Run("budget", "budget", "", ex.runs.budget(factor)).config(cfg),
                 on_step=lambda step, _: taken.__setitem__(-1, step))
    (total, warmup), (total4, warmup4) = schedules
    assert taken == [total, total4] and total4 == 4 * total  # a cap at the epochs' end fails here
    assert warmup4 / total4 == pytest.approx(warmup / total) and warmup > 0
    assert "exceeds" not in caplog.text
    with caplog.at_level("WARNING", logger="demhec.training"):
        finetune(TinyNet(), data, replace(cfg, max_steps=10))
    assert "max_steps 10 exceeds 1 epoch(s) x 4 steps per epoch" in caplog.text


# --- every cache checks what it holds ------------------------------------------------------

# A second valid value for every text or optional field of the configs; a new field of either
# kind fails the parametrised tests below until it is given one here.
OTHER_VALUE = {"kd_direction": "student_teacher", "objective": "features", "direction": "low",
               "freeze": "none", "bn": "clean", "augment": "none", "optimizer": "adamw", "head": "fc",
               "max_steps": 3, "samples": "uniform", "negatives": "other_classes",
               "method": "augmix"}


def _other(cfg, name):
    value = getattr(cfg, name)
    if name in OTHER_VALUE:
        return OTHER_VALUE[name]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    return value / 2 if value else 0.5


@pytest.fixture(scope="module")
def smoke_cell(tmp_path_factory):
    """One smoke experiment with its base, Dem-HEC model and both results computed once."""
    root = tmp_path_factory.mktemp("fingerprints")
    exp = ex.Experiment(profile="smoke", dataset="cifar10", backbone="resnet20", results_dir=str(root),
                        allow_train=True)
    for phase in ("before", "after"):
        ex.pipeline.robustness_result(exp, phase, "cifar-c", ["gaussian_noise"], [5])
    return dataclasses.replace(exp, allow_train=False)


def _fields(cls):
    return [f.name for f in dataclasses.fields(cls) if f.name != "seed"]  # the seed names the file


@pytest.mark.parametrize("name", _fields(DemHECConfig))
def test_changed_demhec_field_is_not_served_from_the_cache(smoke_cell, monkeypatch, name):
    prof = ex.profiles.PROFILES["smoke"]
    monkeypatch.setitem(ex.profiles.PROFILES, "smoke", dataclasses.replace(
        prof, demhec=dataclasses.replace(prof.demhec, **{name: _other(prof.demhec, name)})))
    with pytest.raises(DemHECError, match=rf"after_cifar-c\.json.*model\.config\.{name} \(recorded"):
        ex.pipeline.robustness_result(smoke_cell, "after", "cifar-c", ["gaussian_noise"], [5])
    with pytest.raises(DemHECError, match=rf"resnet20_demhec\.pt.*config\.{name} \(recorded"):
        ex.model_cache.demhec_model(smoke_cell, num_classes=10)
    assert ex.pipeline.robustness_result(smoke_cell, "before", "cifar-c", ["gaussian_noise"], [5])  # untouched


@pytest.mark.parametrize("name", _fields(TrainConfig))
def test_changed_base_field_is_not_served_from_the_cache(smoke_cell, monkeypatch, name):
    prof = ex.profiles.PROFILES["smoke"]
    monkeypatch.setitem(ex.profiles.PROFILES, "smoke", dataclasses.replace(
        prof, base=dataclasses.replace(prof.base, **{name: _other(prof.base, name)})))
    for phase in ("before", "after"):  # a fine-tune records the base it starts from
        with pytest.raises(DemHECError, match=rf"{phase}_cifar-c\.json.*model\.(config|base)\.{name} \(recorded"):
            ex.pipeline.robustness_result(smoke_cell, phase, "cifar-c", ["gaussian_noise"], [5])
    with pytest.raises(DemHECError, match=rf"resnet20_base\.pt.*config\.{name} \(recorded"):
        ex.model_cache.base_model(smoke_cell, num_classes=10)


@pytest.mark.parametrize("change, field", [
    (dict(corruptions=["gaussian_noise", "pixelate"]), "corruptions"),  # other corruptions than the file holds
    (dict(severities=[3]), "severities"),
])
def test_changed_evaluation_is_not_served_from_the_cache(smoke_cell, change, field):
    args = {"corruptions": ["gaussian_noise"], "severities": [5], **change}
    with pytest.raises(DemHECError, match=rf"{field} \(recorded"):
        ex.pipeline.robustness_result(smoke_cell, "after", "cifar-c", **args)


def test_changed_data_or_corruption_seed_is_not_served_from_the_cache(smoke_cell, monkeypatch):
    prof = ex.profiles.PROFILES["smoke"]
    monkeypatch.setitem(ex.profiles.PROFILES, "smoke", dataclasses.replace(prof, eval_limit=prof.eval_limit + 1))
    with pytest.raises(DemHECError, match=r"data\.limit \(recorded"):
        ex.pipeline.robustness_result(smoke_cell, "before", "cifar-c", ["gaussian_noise"], [5])
    monkeypatch.setitem(ex.profiles.PROFILES, "smoke", prof)
    monkeypatch.setattr(ex.inputs, "CORRUPTION_SEED", 1)
    with pytest.raises(DemHECError, match=r"corruption_seed \(recorded 0, requested 1\)"):
        ex.pipeline.robustness_result(smoke_cell, "before", "cifar-c", ["gaussian_noise"], [5])


def test_a_mismatch_recomputes_when_training_is_allowed(smoke_cell, monkeypatch):
    prof = ex.profiles.PROFILES["smoke"]
    monkeypatch.setitem(ex.profiles.PROFILES, "smoke", dataclasses.replace(
        prof, demhec=dataclasses.replace(prof.demhec, alpha=0.25)))
    exp = dataclasses.replace(smoke_cell, results_dir=str(Path(smoke_cell.results_dir).parent / "copy"))
    import shutil

    shutil.copytree(smoke_cell.root, exp.root)
    before = results.read_result(exp.cell_dir / "after_cifar-c.json")
    rec = ex.pipeline.robustness_result(dataclasses.replace(exp, allow_train=True), "after", "cifar-c", ["gaussian_noise"], [5])
    assert rec["config"]["model"]["alpha"] == 0.25 and before["config"]["model"]["alpha"] == prof.demhec.alpha
    assert rec["fingerprint"]["model.config.alpha"] == 0.25
    side = json.loads(exp.checkpoint("demhec").with_suffix(".fingerprint.json").read_text())
    assert side["config.alpha"] == 0.25


def test_released_suite_result_records_the_files_it_read(smoke_cell, tmp_path):
    """The pipeline scores a released suite from data_root, and its fingerprint names the archive."""
    import numpy as np

    folder = tmp_path / "CIFAR-10-C"
    folder.mkdir()
    np.save(folder / "gaussian_noise.npy", np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8))
    np.save(folder / "labels.npy", np.arange(20) % 10)
    exp = dataclasses.replace(smoke_cell, data_root=str(tmp_path))
    rec = ex.pipeline.robustness_result(dataclasses.replace(exp, allow_train=True), "before", "cifar10-c",
                               ["gaussian_noise"], [5])
    assert [(r["corruption"], r["n"]) for r in rec["metrics"]["table"]] == [("clean", 24), ("gaussian_noise", 4)]
    assert rec["fingerprint"]["released_files.md5"] == "56bf5dcef84df0e2308c6dcbcbbd8499"
    assert rec["fingerprint"]["suite"] == "cifar10-c"
    assert ex.pipeline.robustness_result(exp, "before", "cifar10-c", ["gaussian_noise"], [5]) == rec


def test_check_shown_catches_a_table_that_is_not_its_results(caplog):
    cells = {(c, s): 50.0 + s for c in ex.runs.NOISE for s in (1, 5)}
    before, after = _robustness_record(0, 80.0, cells), _robustness_record(0, 81.0, {k: v + 1 for k, v in cells.items()})
    long = ex.tables.before_after_table(before, after).rename(columns={"accuracy": "ours"})
    ex.checks.check_shown(long, {"before": before, "after": after})
    same = ex.tables.before_after_table(before, before).rename(columns={"accuracy": "ours"})
    # the base model scored twice: an error, except in the smoke profile (a saturated 2-step base
    # can score the same after a fine-tune that moved its weights), where it is a warning
    for profile in ("demo", "cpu", "paper", None):
        again = dict(before, **({"profile": profile} if profile else {}))
        with pytest.raises(DemHECError, match="after equals before in every cell"):
            ex.checks.check_shown(same, {"before": before, "after": again})
    for profile in ("smoke", "gpu_smoke"):  # the smoke profile and its twins
        caplog.clear()
        with caplog.at_level("WARNING", logger="demhec.experiments.checks"):
            ex.checks.check_shown(same, {"before": before, "after": dict(before, profile=profile)})
        assert "after equals before in every cell" in caplog.text
    # a calibration error that moved is a change, even with every accuracy as it was
    ece = {"before": before, "after": dict(before, profile="cpu", metrics=dict(
        before["metrics"], table=[dict(r, ece=5.0 + (r["corruption"] == "clean")) for r in before["metrics"]["table"]]))}
    ece["before"] = dict(before, metrics=dict(before["metrics"], table=[dict(r, ece=5.0) for r in before["metrics"]["table"]]))
    ex.checks.check_shown(same, ece)
    shifted = long.assign(ours=long.ours + (long.phase == "after"))
    with pytest.raises(DemHECError, match="after rows shown differ"):
        ex.checks.check_shown(shifted, {"before": before, "after": after})
    with pytest.raises(DemHECError, match="no number"):
        ex.checks.check_shown(long.assign(ours=long.ours.where(long.severity != 5)), {"before": before, "after": after})


def test_check_summary_and_families_catch_rows_that_are_not_their_results():
    cells = {(c, s): 50.0 + s for c in (*ex.runs.NOISE, "snow") for s in (1, 5)}
    rec = _robustness_record(0, 80.0, cells)
    for r in rec["metrics"]["table"]:
        r["family"] = "clean" if r["corruption"] == "clean" else ("noise" if r["corruption"] in ex.runs.NOISE else "weather")
    table = ex.tables.summary_vs_paper({"ours": rec}, "table4")
    ex.checks.check_summary(table, {"ours": rec})
    with pytest.raises(DemHECError, match="row 'ours' shown differs"):
        ex.checks.check_summary(table.assign(snow=table.snow + 1), {"ours": rec})
    families = ex.tables.family_table({"dem_hec": rec}, paper_backbone="resnet18")
    ex.checks.check_families(families, {"dem_hec": rec})
    with pytest.raises(DemHECError, match="family means shown for 'dem_hec' differ"):
        ex.checks.check_families(families.assign(ours=families.ours * 2), {"dem_hec": rec})


def test_fingerprint_script_rebuilds_the_committed_fingerprints(tmp_path):
    """scripts/fingerprint_results.py on the committed results with their fingerprints removed
    gives them back exactly (the committed ones are what the pipeline asks for: the CPU pages'
    test above loads them without training)."""
    import shutil

    script = load_script("fingerprint_results")
    shutil.copytree(ROOT / "results" / "demo", tmp_path / "demo")
    shutil.copytree(ROOT / "results" / "cpu" / "cifar10_jpeg", tmp_path / "cpu")
    committed = {}
    for path in sorted(tmp_path.rglob("*.json")):
        if "tables" in path.parts:
            continue
        record = json.loads(path.read_text())
        if not record["kind"].startswith(script.PIPELINE_KINDS):
            continue  # a benchmark's record (the adaptation cost), not a pipeline cache
        committed[path] = record.pop("fingerprint")
        path.write_text(json.dumps(record))
    assert len(committed) > 40
    assert script.main([str(tmp_path)]) == 0
    for path, fp in committed.items():
        assert json.loads(path.read_text())["fingerprint"] == fp, path.name
    assert script.main([str(tmp_path)]) == 0  # a second run leaves them as they are
    record = json.loads(path.read_text())
    del record["fingerprint"]
    record["config"]["model"]["no_such_field"] = 1
    path.write_text(json.dumps(record))
    assert script.main([str(path)]) == 2


def test_entropy_and_clean_accuracy_checks_catch_a_wrong_row():
    rec = {"metrics": {"clean": {"l1": [1.0, 2.0], "l2": [0.5]}, "corrupted": {"l1": [3.0], "l2": [1.5, 2.5]}}}
    summary = ex.tables.entropy_summary(rec).assign(phase="after")
    ex.checks.check_entropy_shown(summary, {"after": rec})
    wrong = summary.copy()
    wrong.loc[wrong.layer == "l2", "corrupted"] = 2.5  # l2's corrupted mean is 2.0
    with pytest.raises(DemHECError, match="after corrupted entropies shown differ"):
        ex.checks.check_entropy_shown(wrong, {"after": rec})
    records = {p: {"config": {"experiment": {"dataset": "digits", "backbone": "resnet20"}},
                   "metrics": {"clean_accuracy": acc}} for p, acc in (("before", 90.0), ("after", 91.5))}
    table = pd.DataFrame({"dataset": ["digits"] * 2, "backbone": ["resnet20"] * 2,
                          "phase": ["before", "after"], "accuracy": [90.0, 91.5]})
    ex.checks.check_clean_shown(table, records)
    with pytest.raises(DemHECError, match="after clean accuracy shown for resnet20 differs"):
        ex.checks.check_clean_shown(table.assign(accuracy=[90.0, 90.0]), records)
    with pytest.raises(DemHECError, match="without a number"):
        ex.checks.check_clean_shown(table.assign(accuracy=[90.0, float("nan")]), records)


def test_ablation_check_catches_a_wrong_row():
    def rec(clean, noise):
        cells = [{"corruption": "clean", "severity": 0, "accuracy": clean}]
        cells += [{"corruption": c, "severity": 5, "accuracy": noise} for c in ex.runs.NOISE]
        return {"seed": 0, "metrics": {"clean_accuracy": clean, "table": cells}}

    base, runs = rec(85.0, 50.0), {("demhec", 0): rec(80.0, 60.0), ("plain", 0): rec(84.0, 49.0)}
    summary = ex.tables.ablation_summary(base, runs)
    ex.checks.check_ablation_shown(summary, base, runs)
    swapped = {("demhec", 0): runs[("plain", 0)], ("plain", 0): runs[("demhec", 0)]}
    with pytest.raises(DemHECError, match="row of 'demhec' seed 0 shown differs"):
        ex.checks.check_ablation_shown(summary, base, swapped)
    unchanged = {**runs, ("plain", 0): dict(base, profile="cpu")}  # the base model scored as a run
    with pytest.raises(DemHECError, match="'plain' seed 0 equals before in every cell"):
        ex.checks.check_ablation_shown(ex.tables.ablation_summary(base, unchanged), base, unchanged)


def _counted(clean, cells, n=200):
    """A robustness result whose table keeps the counts (correct, n) beside each accuracy."""
    rows = [{"corruption": c, "severity": s, "correct": k, "n": n, "accuracy": 100 * k / n}
            for (c, s), k in {("clean", 0): clean, **cells}.items()]
    return {"profile": "cpu", "metrics": {"clean_accuracy": 100 * clean / n, "table": rows}}


def test_recount_reads_the_raw_outcomes_not_the_table():
    """recount recomputes an accuracy from a result's raw outcomes: a halves result's per-image
    bits, else each cell's correct count over its image count; so a table whose accuracy does
    not follow from those is caught, in a notebook, by check_number and check_recounted."""
    rec = _counted(170, {("gaussian_noise", 5): 90, ("shot_noise", 5): 110})
    assert ex.checks.recount(rec) == pytest.approx(85.0)
    assert ex.checks.recount(rec, [("gaussian_noise", 5), ("shot_noise", 5)]) == pytest.approx(50.0)
    base = _counted(180, {("gaussian_noise", 5): 60, ("shot_noise", 5): 70})
    assert ex.checks.recount(rec, [("gaussian_noise", 5), ("shot_noise", 5)], base=base) == pytest.approx(17.5)
    ex.checks.check_number(85.0, ex.checks.recount(rec), "clean accuracy")
    with pytest.raises(DemHECError, match="clean accuracy: shown 85.5, but the result file's raw outcomes give 85"):
        ex.checks.check_number(85.5, ex.checks.recount(rec), "clean accuracy")
    long = ex.tables.before_after_table(base, rec).rename(columns={"accuracy": "ours"})
    ex.checks.check_recounted({"before": base, "after": rec}, long)
    rec["metrics"]["table"][1]["accuracy"] = 46.0  # the table says 46, its counts 90 of 200
    long = ex.tables.before_after_table(base, rec).rename(columns={"accuracy": "ours"})
    ex.checks.check_shown(long, {"before": base, "after": rec})  # the table against the file's table: agrees
    with pytest.raises(DemHECError, match="after accuracy shown for gaussian_noise S5"):
        ex.checks.check_recounted({"before": base, "after": rec}, long)
    rec["metrics"]["clean_accuracy"] = 86.0
    with pytest.raises(DemHECError, match="the after clean accuracy: shown 86"):
        ex.checks.check_recounted({"after": rec})
    with pytest.raises(DemHECError, match="no cell impulse_noise/5"):
        ex.checks.recount(rec, [("impulse_noise", 5)])
    # a halves result: the per-image outcomes, paired over the images with the base's
    rng = np.random.default_rng(0)
    clean, noise, fixed = rng.random(400) < 0.8, rng.random(400) < 0.4, rng.random(400) < 0.2
    def half(noise_outcomes):
        cells = {("clean", 0): clean, **{(c, 5): noise_outcomes for c in ex.runs.NOISE}}
        return {"split": "report", "metrics": {
            "n": 400, "correct": {f"{c}/{s}": ex.halves.pack_outcomes(o) for (c, s), o in cells.items()},
            "table": [{"corruption": c, "severity": s, "accuracy": 100 * o.mean()} for (c, s), o in cells.items()]}}

    h_base, h_run = half(noise), half(noise | fixed)
    h_run["metrics"]["table"] = [dict(r, accuracy=0.0) for r in h_run["metrics"]["table"]]  # not read
    cells = [(c, 5) for c in ex.runs.NOISE]
    assert ex.checks.recount(h_run, cells) == pytest.approx(100 * (noise | fixed).mean())
    assert ex.checks.recount(h_run, cells, base=h_base) == pytest.approx(100 * (fixed & ~noise).mean())


def test_recount_gap_is_the_mean_per_image_gap():
    rec = {"metrics": {"clean": {"l1": [1.0, 2.0, 3.0]}, "corrupted": {"l1": [2.0, 2.5, 4.5]},
                       "log_width": {"l1": 2.0}}}
    assert ex.checks.recount_gap(rec, "l1") == pytest.approx(1.0)
    assert ex.checks.recount_gap(rec, "l1", normalised=True) == pytest.approx(0.5)
    row = ex.tables.entropy_summary(rec, normalised=True).set_index("layer").loc["l1"]
    ex.checks.check_number(row.gap, ex.checks.recount_gap(rec, "l1", normalised=True), "gap")
    with pytest.raises(DemHECError, match="not of the same images"):
        ex.checks.recount_gap({"metrics": {"clean": {"l1": [1.0]}, "corrupted": {"l1": [1.0, 2.0]}}}, "l1")


def test_cpu_images_missing_is_said_not_raised(tmp_path):
    ctx = ex.notebook.notebook_setup(profile="cpu", dataset="cifar10", backbone="resnet20", results_dir=str(tmp_path),
                            data_root=str(tmp_path / "nowhere.tar.gz"))
    assert "nowhere.tar.gz was not found" in ex.inputs.data_unavailable(ctx.exp)
    assert ex.inputs.data_unavailable(ex.notebook.notebook_setup(profile="demo", dataset="cifar10", backbone="resnet20").exp) == ""
    # The default data_root, as the notebooks resolve it, means the archive beside the checkout.
    assert jpeg_source(ex.notebook.resolve_path("data")) == DEFAULT_JPEG_ARCHIVE


def test_the_package_exposes_few_names_and_every_page_names_one_it_has():
    """``demhec.experiments`` is read through a few sub-namespaces (``ex.tables.wide_table``), not
    ~130 flat names; every ``ex.<name>[.<name>]`` a notebook, script or test uses exists."""
    import re

    assert len(ex.__all__) <= 40 and set(ex.__all__) <= set(dir(ex))
    sources = {p: "".join("".join(c["source"]) for c in json.loads(p.read_text())["cells"])
               for p in sorted((ROOT / "notebooks").glob("*.ipynb"))}
    sources.update({p: p.read_text() for folder in ("scripts", "tests", "benchmarks")
                    for p in sorted((ROOT / folder).glob("*.py"))})
    missing = []
    for path, text in sources.items():
        for first, second in set(re.findall(r"(?<![\w.])ex\.(\w+)(?:\.(\w+))?", text)):
            target = getattr(ex, first, None)
            if target is None or (second and isinstance(target, type(ex)) and not hasattr(target, second)):
                missing.append(f"{path.name}: ex.{first}{'.' + second if second else ''}")
    assert not missing, missing


def test_clean_accuracy_reads_only_results_beside_other_json(tmp_path):
    from demhec.experiments.tables import collect_clean_accuracy

    (tmp_path / "checkpoints" / "a3").mkdir(parents=True)
    (tmp_path / "checkpoints" / "a3" / "manifest.json").write_text('{"models": {}}')
    assert collect_clean_accuracy(tmp_path).empty
    rows = collect_clean_accuracy("results/cpu")  # the committed profile, beside its manifest
    assert set(rows.phase) == {"before", "after"}
