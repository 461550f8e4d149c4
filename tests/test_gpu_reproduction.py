"""scripts/gpu_reproduction.py in its smoke mode: the whole plan on a CPU."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest

from demhec import experiments as ex

from .conftest import jpeg_archive

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_reproduction.py"
# The smoke profiles hold out 5 images a class for evaluation (the real split: 500).
PER_CLASS = 30


@pytest.fixture
def script(monkeypatch):
    """scripts/gpu_reproduction.py imported as a module."""
    spec = importlib.util.spec_from_file_location("gpu_reproduction", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, script)
    spec.loader.exec_module(script)
    return script


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu")
    archive = jpeg_archive(tmp / "cifar10-jpeg-train.tar.gz", PER_CLASS)
    out, results = tmp / "out", tmp / "results"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--data-root", str(archive),
                           "--results-dir", str(results), "--out", str(out)],
                          cwd=tmp, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp, out, results, proc.stdout


def test_smoke_runs_every_job_and_writes_the_results(smoke_run):
    tmp, out, results, stdout = smoke_run
    run = json.loads((results / "gpu_smoke" / "run.json").read_text())
    jobs = run["metrics"]["jobs"]
    # Phase C, the comparison, in the smoke plan: two cheap runs at seed 0.
    expected = {"bench", "data", "cache", "a_before", *(f"a_{r}" for r in ex.gpu.GPU_A_RUNS), "b_base", "b_demhec",
                "b_plain", "c_plain_s0", "c_ba_s0", "s_cache", "s_base", "s_plain_s0"}
    assert {"demhec", "plain", "no_infonce", "late_frozen_tuned", "random_noise", "gaussian_aug"} <= set(ex.gpu.GPU_A_RUNS)
    assert set(jobs) == expected
    assert {n: j["state"] for n, j in jobs.items()} == dict.fromkeys(expected, "done"), stdout
    assert all(j["wall_s"] > 0 for j in jobs.values())
    assert run["versions"]["torch"] and run["git_commit"] and run["data"]["source"] == "cifar10-jpeg-train.tar.gz"
    # The benchmark's own printed ratios were parsed.
    assert jobs["bench"]["ratio_the1"] > 0 and jobs["bench"]["demhec_epoch_s"] > 0
    # Every model was trained in this call, and the step counts are the recipes'.
    for name in {n for n in expected - {"bench", "data", "cache", "a_before"} if not n.startswith("s_")}:
        assert jobs[name]["trained"] == "here" and jobs[name]["steps_run"] == jobs[name]["steps"] > 0, name
    assert jobs["a_plain"]["steps"] == ex.profiles.PROFILES["gpu_smoke"].demhec.max_steps
    a = results / "gpu_smoke" / "cpu_base" / "cifar10_jpeg" / "resnet20"
    b = results / "gpu_smoke" / "strong_base" / "cifar10_jpeg" / "resnet20"
    names = {"before_cifar-c.json", *(f"after_{r}_cifar-c.json".replace("after_demhec_", "after_")
                                      for r in ex.gpu.GPU_A_RUNS)}
    assert {p.name for p in a.glob("*.json")} == names
    assert {p.name for p in b.glob("*.json")} == {"before_cifar-c.json", "after_cifar-c.json",
                                                  "after_plain_cifar-c.json"}
    before_b = json.loads((b / "before_cifar-c.json").read_text())
    assert before_b["config"]["model"]["epochs"] == ex.profiles.PROFILES["gpu_strong_smoke"].base.epochs
    # Phase A starts from the committed CPU base, named with its hash.
    before_a = json.loads((a / "before_cifar-c.json").read_text())
    assert before_a["config"]["experiment"]["base_weights"]["path"] == "results/cpu/checkpoints/resnet20_base.pt"
    late = json.loads((a / "after_late_frozen_tuned_cifar-c.json").read_text())
    assert late["config"]["model"]["freeze"] == "after:2"
    assert late["config"]["model"]["lr"] == pytest.approx(ex.profiles.PROFILES["gpu_smoke"].demhec.lr / 5)
    table = pd.DataFrame(late["metrics"]["table"])
    assert set(table.severity) == {0, 1, 3, 5} and len(table) == 1 + 7 * 3
    assert jobs["a_late_frozen_tuned"]["clean_accuracy"] == late["metrics"]["clean_accuracy"]
    assert "done b_plain" in stdout
    c = results / "gpu_smoke" / "a3" / "checkpoints"
    assert {p.name for p in c.glob("*.pt")} == {"resnet20_plain.pt", "resnet20_ba.pt"}
    # Phase S scored each model as scripts/comparison.py does, after its training, on sets whose digests it recorded.
    from demhec.experiments.comparison import (
        comparison_experiment,
        comparison_run,
        is_scored,
        score_run,
    )

    for job, run_name in (("s_base", "base"), ("s_plain_s0", "plain")):
        run = comparison_run(run_name)
        exp = comparison_experiment(run, profile="gpu_a3_smoke", results_dir=str(results), allow_train=False)
        assert all(is_scored(run, exp, adapt) for adapt in (None, "bn", "tent")), job
        halves = score_run(run, exp)  # read back, nothing computed
        assert jobs[job]["clean_accuracy"] == {h: r["metrics"]["clean_accuracy"] for h, r in halves.items()}
        assert len(pd.DataFrame(halves["report"]["metrics"]["table"])) == 1 + 15 * 5
        if run.fine_tuned:
            c_job = jobs[f"c_{run_name}_s0"]
            assert jobs[job]["started_s"] >= c_job["started_s"] + c_job["wall_s"] - 0.2  # both rounded to 0.1 s
    sets = json.loads((results / "gpu_smoke" / "a3" / "cifar10_jpeg" / "corrupted_sets_cifar-c.json").read_text())
    assert jobs["s_cache"]["cells"] == sets["metrics"]["cells"] == 15 * 5
    assert sets["data"]["made_with"]["numpy"]


def test_smoke_archives_hold_what_was_written_and_unpack(smoke_run, tmp_path):
    _, out, results, _ = smoke_run
    assert sorted(p.name for p in out.iterdir()) == ["gpu_results.tar.gz", "gpu_weights.tar"]
    with tarfile.open(out / "gpu_results.tar.gz") as tar:
        names = set(tar.getnames())
    written = {str(p.relative_to(results)) for p in (results / "gpu_smoke").glob("**/*.json")
               if "status" not in p.parts}
    assert written <= names and "gpu_smoke/run.json" in names
    assert any(n.startswith("gpu_smoke/logs/") for n in names)
    with tarfile.open(out / "gpu_results.tar.gz") as tar:  # logs name no folder of this checkout
        logs = [tar.extractfile(n).read().decode() for n in names if n.endswith(".log")]
    assert any("results/cpu/checkpoints/resnet20_base.pt" in text for text in logs)
    assert not any(str(ROOT) in text for text in logs)
    with tarfile.open(out / "gpu_weights.tar") as tar:
        weights = set(tar.getnames())
    assert {"gpu_smoke/cpu_base/checkpoints/resnet20_demhec.pt",
            "gpu_smoke/strong_base/checkpoints/resnet20_base.pt"} <= weights
    subprocess.run([sys.executable, str(SCRIPT), "--unpack", str(out), "--results-dir", str(tmp_path)],
                   check=True, capture_output=True)
    back = tmp_path / "gpu_smoke" / "cpu_base" / "cifar10_jpeg" / "resnet20" / "after_cifar-c.json"
    assert back.read_bytes() == (results / "gpu_smoke" / "cpu_base" / "cifar10_jpeg" / "resnet20"
                                 / "after_cifar-c.json").read_bytes()
    # A state dict that came back loads into the registry model.
    from demhec.models import get_model

    get_model("resnet20", num_classes=10,
              pretrained=str(tmp_path / "gpu_smoke" / "strong_base" / "checkpoints" / "resnet20_base.pt"))


@pytest.mark.expensive  # a second smoke run (a minute on 2 cores): `make unit-all`
def test_a_second_call_loads_what_the_first_trained(smoke_run):
    """The plan spans device calls: a finished model is loaded from its state dict, not retrained."""
    tmp, out, results, _ = smoke_run
    weights = {p: p.read_bytes() for p in (results / "gpu_smoke").glob("*/checkpoints/*.pt")}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--data-root", str(tmp / "cifar10-jpeg-train.tar.gz"),
                           "--results-dir", str(results), "--no-compile"],
                          cwd=tmp, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = json.loads((results / "gpu_smoke" / "run.json").read_text())["metrics"]["jobs"]
    for name in ("a_demhec", "a_plain", "b_base", "b_demhec"):
        assert jobs[name]["trained"] == "earlier call (state dict loaded)" and "step_ms" not in jobs[name], name
    assert (jobs["s_plain_s0"]["state"], jobs["s_plain_s0"]["scored"]) == ("done", "earlier call")
    assert {p: p.read_bytes() for p in weights} == weights


def test_a_resumed_run_counts_only_the_steps_it_ran(tmp_path, monkeypatch):
    import torch

    spec = importlib.util.spec_from_file_location("gpu_reproduction", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, script)
    spec.loader.exec_module(script)
    path = tmp_path / "resnet20_demhec.pt"
    torch.save({"step": 6669}, path.with_suffix(".ckpt"))
    info = script.trained(path, lambda: path.write_bytes(b"weights"), 7020)
    assert info["trained"] == "here, resumed at step 6669" and info["steps_run"] == 351
    assert info["step_ms"] == pytest.approx(1e3 * info["train_s"] / 351, abs=0.01)
    assert script.trained(path, lambda: None, 7020) == {"steps": 7020, "trained": "earlier call (state dict loaded)"}


def test_unpack_files_each_call_and_drops_finished_runs_checkpoints(tmp_path):
    def archive(folder: Path, files: dict[str, bytes]) -> Path:
        folder.mkdir()
        for name, group in (("gpu_results.tar.gz", ".json"), ("gpu_resume_a.tar", ".ckpt")):
            with tarfile.open(folder / name, "w:gz" if name.endswith("gz") else "w") as tar:
                for arc, data in files.items():
                    if arc.endswith(group) or (group == ".json" and arc.endswith(".log")):
                        info = tarfile.TarInfo(arc)
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
        return folder

    import torch

    # Unpack verifies every file before use, so the archives hold real ones: JSON that parses and
    # a resume checkpoint the safe loader reads.
    results = tmp_path / "results"
    ckpt = "gpu/cpu_base/checkpoints/resnet20_demhec.ckpt"
    buf = io.BytesIO()
    torch.save({"fingerprint": {}, "step": 3}, buf)
    first = archive(tmp_path / "1", {"gpu/run.json": b'{"call": 1}', "gpu/logs/a.log": b"one",
                                     ckpt: buf.getvalue()})
    second = archive(tmp_path / "2", {"gpu/run.json": b'{"call": 2}', "gpu/logs/a.log": b"two",
                                      "gpu/cpu_base/x.json": b"{}"})
    for folder in (first, second):
        subprocess.run([sys.executable, str(SCRIPT), "--unpack", str(folder), "--results-dir", str(results)],
                       check=True, capture_output=True)
        if folder is first:
            assert (results / ckpt).read_bytes() == buf.getvalue()
    calls = results / "gpu" / "calls"
    assert (calls / "1" / "run.json").read_bytes() == b'{"call": 1}'
    assert (calls / "2" / "logs" / "a.log").read_bytes() == b"two"
    assert not (results / "gpu" / "run.json").exists() and not (results / ckpt).exists()


def test_without_numba_a_stand_in_refuses_instead_of_running(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_reproduction", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, script)
    spec.loader.exec_module(script)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "numba" else real(name, *a))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "")
    info = script.prepare_imports(None, tmp_path)
    assert info["numba"].startswith("absent") and info["imagecorruptions"] == "installed"
    code = ("import numba\n@numba.njit()\ndef f(x):\n    return x\n"
            "try:\n    f(1)\nexcept RuntimeError as e:\n    print('refused:', e)\n")
    run = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(tmp_path / "shim")},
                         capture_output=True, text=True)
    assert run.stdout.startswith("refused: this corruption needs numba")


def test_a_missing_archive_fails_with_one_line(tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--data-root", str(tmp_path / "none.tar.gz"),
                          "--results-dir", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode != 0 and "none.tar.gz is missing" in run.stderr
    assert "Traceback" not in run.stderr


def test_gpu_summary_shows_the_runs_beside_the_paper(smoke_run, tmp_path):
    _, _, results, _ = smoke_run
    records = ex.gpu.gpu_records(results, smoke=True)
    assert set(records) == {"gpu", "gpu_strong"}
    summary = ex.gpu.gpu_summary(records)
    a = summary[summary.source.str.contains("CPU base")]
    assert list(a.run) == ["base", *ex.gpu.GPU_A_RUNS]
    cell = results / "gpu_smoke" / "cpu_base" / "cifar10_jpeg" / "resnet20"
    after = json.loads((cell / "after_late_frozen_tuned_cifar-c.json").read_text())
    before = json.loads((cell / "before_cifar-c.json").read_text())
    row = a[a.run == "late_frozen_tuned"].iloc[0]
    assert row.clean == after["metrics"]["clean_accuracy"]
    assert row.d_clean == pytest.approx(after["metrics"]["clean_accuracy"] - before["metrics"]["clean_accuracy"])
    b = summary[summary.source.str.contains("GPU-trained base")]
    assert b.source.iloc[0].endswith(f"({ex.profiles.PROFILES['gpu_strong_smoke'].base.epochs} epoch)")
    assert list(b.run) == ["base", *ex.gpu.GPU_B_RUNS]
    # The paper's rows are Table 1's ResNet-20 means at S5, computed here from the CSV.
    paper = pd.read_csv(ROOT / "results" / "paper" / "table1.csv")
    paper = paper[(paper.backbone == "resnet20") & (paper.dataset == "cifar10") & (paper.severity == 5)]
    noise = paper[paper.corruption.isin(["gaussian_noise", "shot_noise", "impulse_noise"])]
    p_rows = summary[summary.source.str.startswith("paper")].set_index("run")
    assert p_rows.loc["demhec", "noise_s5"] == pytest.approx(noise[noise.phase == "after"].accuracy.mean())
    assert p_rows.loc["demhec", "d_all_s5"] == pytest.approx(paper[paper.phase == "after"].accuracy.mean()
                                                             - paper[paper.phase == "before"].accuracy.mean())
    assert ex.gpu.gpu_records(tmp_path, smoke=True) == {}


def test_phases_keep_only_their_jobs_and_what_they_need(script):
    full = {j.name for j in script.plan()}
    only_c = {j.name: j for j in script.plan(phases=("c",))}
    assert "data" in only_c and not {"bench", "cache", "a_before", "b_base"} & set(only_c)
    assert {n for n in full if n.startswith("c_")} == {n for n in only_c if n.startswith("c_")}
    assert any(n.endswith("_s2") for n in only_c)
    for job in only_c.values():  # every job it waits for is in the plan, so none waits forever
        assert set(job.needs) | set(job.after) <= set(only_c), job.name
    assert {j.name for j in script.plan(phases=script.PHASES)} == full
    assert "cache" in {j.name for j in script.plan(phases=("a",))}
    only_s = {j.name: j for j in script.plan(phases=("s",))}
    assert {"data", "s_cache", "s_base", "s_pushpull_base", "s_demhec_s2"} <= set(only_s)
    assert not any(n.startswith("c_") for n in only_s) and all(not j.after for n, j in only_s.items() if n != "s_cache")
    both = {j.name: j for j in script.plan(phases=("c", "s"))}
    assert both["s_ba_s1"].after == ("c_ba_s1",) and both["s_base"].after == ()
    with pytest.raises(ValueError, match="valid: bench, a, b, c, s"):
        script.plan(phases=("c", "d"))


def test_archives_are_split_under_the_size_a_device_call_returns(tmp_path, script):
    files = []
    for i, size in enumerate([3000, 3000, 3000, 9000, 500]):
        files.append(tmp_path / f"r{i}.ckpt")
        files[-1].write_bytes(b"x" * size)
    groups = script.volumes("gpu_resume", files, limit=9000)
    assert list(groups) == ["gpu_resume.tar", "gpu_resume.1.tar", "gpu_resume.2.tar", "gpu_resume.3.tar"]
    assert [len(g) for g in groups.values()] == [2, 1, 1, 1]  # the 9,000-byte file alone
    assert sorted(p for g in groups.values() for p in g) == sorted(files)
    assert script.volumes("gpu_weights", []) == {}
    with pytest.raises(ValueError, match="matches"):
        script.plan(phases=("c",), only=("c_nothing_*",))
    assert {j.name for j in script.plan(phases=("c",), only=("c_plain_s2", "c_ba_s*"))} == {
        "data", "c_plain_s2", "c_ba_s0", "c_ba_s1", "c_ba_s2"}
    assert {j.name for j in script.plan(phases=("s",), only=("s_plain_s2",))} == {"data", "s_cache", "s_plain_s2"}


def test_the_travel_check_counts_what_a_device_call_sends(tmp_path, script):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("ignored/\n.carry/\n")
    for rel, size in {"results/gpu/a.pt": 5000, "code.py": 100, "ignored/big.bin": 10**6, ".carry/data.tar.gz": 3000}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x" * size)
    total, by_folder = script.travel_bytes(tmp_path, Path(".carry"))
    assert total == 5000 + 100 + 3000 + len("ignored/\n.carry/\n")  # the ignored file stays home
    assert list(by_folder)[:2] == ["results/gpu", ".carry"]
    assert script.check_travel(tmp_path, None, limit=10**4) == total - 3000
    with pytest.raises(SystemExit, match="results/gpu"):
        script.check_travel(tmp_path, Path(".carry"), limit=6000)


def test_set_aside_sends_only_what_the_device_reads_and_put_back_restores_it(tmp_path, script):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text(f"/{script.ASIDE_DIR}/\n")
    files = {"demhec/code.py": b"c" * 100, "results/gpu/a.pt": b"g" * 500,
             "results/cpu/checkpoints/resnet20_base.pt": b"b" * 700,
             "results/cpu/checkpoints/a3/resnet20_ba.pt": b"a" * 9000, "results/cpu/x.json": b"{}",
             "notebooks/executed/01.ipynb": b"n" * 4000, "figures/cpu/f.png": b"f" * 3000,
             "results/demo/t.json": b"d" * 2000}
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    before, _ = script.travel_bytes(tmp_path, None)

    assert set(script.set_aside(tmp_path)) == {"notebooks/executed", "figures", "results/demo", "results/cpu"}
    after, by_folder = script.travel_bytes(tmp_path, None)
    assert after == 100 + 500 + 700 + len(f"/{script.ASIDE_DIR}/\n")  # tracked files set aside do not count
    assert (tmp_path / "results/cpu/checkpoints/resnet20_base.pt").read_bytes() == files[
        "results/cpu/checkpoints/resnet20_base.pt"]  # phase A fine-tunes it
    with pytest.raises(SystemExit, match="put-back"):
        script.set_aside(tmp_path)  # a second one would bury the first

    (tmp_path / "results/cpu/new.json").write_text("{}")
    with pytest.raises(SystemExit, match="new.json"):
        script.put_back(tmp_path)  # written while set aside: not silently lost
    (tmp_path / "results/cpu/new.json").unlink()
    script.put_back(tmp_path)
    assert script.travel_bytes(tmp_path, None)[0] == before
    assert {rel: (tmp_path / rel).read_bytes() for rel in files} == files
    assert not (tmp_path / script.ASIDE_DIR).exists()


def _score_files(results: Path, run_name: str, seed: int, profile: str = "gpu_a3") -> None:
    """Empty files where the GPU comparison's scoring of ``run_name`` at ``seed`` would be."""
    from demhec.experiments.comparison import (
        ADAPTATIONS,
        comparison_experiment,
        comparison_run,
        run_tag,
        score_grid,
    )
    from demhec.experiments.pipeline import halves_path

    run = comparison_run(run_name)
    exp = comparison_experiment(run, profile=profile, seed=seed, results_dir=str(results))
    for adapt in (None, *ADAPTATIONS):
        for half in ("selection", "report"):
            path = halves_path(exp, run_tag(run), "cifar-c", half, corruptions=score_grid(adapt)["corruptions"],
                               adapt=adapt)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}")


def test_a_scored_gpu_model_stays_home_and_is_not_retrained(tmp_path, script):
    """A fine-tune of the GPU comparison that is scored every way need not travel: --aside keeps its
    state dict home (a base or an unscored model travels), and its training job does not redo it."""
    ckpts = tmp_path / "results" / "gpu" / "a3" / "checkpoints"
    ckpts.mkdir(parents=True)
    for name in ("resnet20_ba_seed1.pt", "resnet20_plain.pt", "resnet20_pushpull_base.pt"):
        (ckpts / name).write_bytes(b"w" * 100)
    _score_files(tmp_path / "results", "ba", 1)
    _score_files(tmp_path / "results", "plain", 0)
    halves = tmp_path / "results" / "gpu" / "a3" / "cifar10_jpeg" / "resnet20" / "halves"
    (halves / "plain_tent_cifar-c_report.json").unlink()  # scored, but not with TENT: it travels
    assert script.scored_state_dicts(tmp_path) == ["results/gpu/a3/checkpoints/resnet20_ba_seed1.pt"]
    moved = script.set_aside(tmp_path)
    assert "results/gpu/a3/checkpoints/resnet20_ba_seed1.pt" in moved and not (ckpts / "resnet20_ba_seed1.pt").exists()
    assert {p.name for p in ckpts.iterdir()} == {"resnet20_plain.pt", "resnet20_pushpull_base.pt"}
    (ckpts / "resnet20_ba_seed1.pt").write_bytes(b"x")
    with pytest.raises(SystemExit, match="resnet20_ba_seed1.pt was written"):
        script.put_back(tmp_path)  # not silently replaced
    (ckpts / "resnet20_ba_seed1.pt").unlink()
    assert script.put_back(tmp_path) == ["results/gpu/a3/checkpoints/resnet20_ba_seed1.pt"]
    assert (ckpts / "resnet20_ba_seed1.pt").read_bytes() == b"w" * 100

    # On the device (here its smoke twin): the training job says so instead of training it again.
    _score_files(tmp_path / "results", "ba", 1, profile="gpu_a3_smoke")
    archive = jpeg_archive(tmp_path / "cifar10-jpeg-train.tar.gz", PER_CLASS)
    args = script.argparse.Namespace(results_dir=tmp_path / "results", data_root=archive, device="cpu", smoke=True)
    info = script.comparison_job(args, "ba_s1")
    assert info["trained"] == "earlier call (scored; its state dict stayed home)"
    assert not list((tmp_path / "results" / "gpu_smoke").glob("a3/checkpoints/*"))
