"""What a newcomer meets on a fresh clone following the README: the files its commands write,
checkpoints scored on another dataset, downloads without a network, the help text, and the
executed pages that `make demo` must not change."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import torch

from demhec._common import DemHECError, cli_words
from demhec.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, input=stdin, capture_output=True, text=True)


def _neither_ignored_nor_tracked(paths: list[str]) -> list[str]:
    """The paths (relative to the repository root) that a `git add -A` would pick up as new."""
    ignored = set(_git("check-ignore", "--stdin", stdin="\n".join(paths) + "\n").stdout.splitlines())
    tracked = set(_git("ls-files", "--", *paths).stdout.splitlines())
    return [p for p in paths if p not in ignored and p not in tracked]


# --- the README's papermill command -------------------------------------------------------


@pytest.mark.parametrize("profile", ["smoke", "demo"])
def test_the_design_card_command_writes_only_ignored_or_committed_files(profile):
    """`papermill 03_table1.ipynb out.ipynb -p backbone resnet56` (from notebooks/ or, writing
    out.ipynb there, from the root) leaves nothing a `git add -A` would commit: its notebook,
    and in the smoke profile every result, model and cache, in the demo profile the tables and
    figures named after the requested backbone (its results are the committed ResNet-20's)."""
    from demhec.experiments.notebook import notebook_setup

    ctx = notebook_setup(profile=profile, dataset="cifar10", backbone="resnet56", suite="auto", allow_train=False)
    stem = f"table1_{ctx.exp.effective_dataset}_resnet56_{ctx.suite}"  # as notebook 03 names them
    written = [ctx.tables_dir / f"{stem}.{ext}" for ext in ("csv", "md", "tex")]
    written += [ctx.figures_dir / f"{stem}_{kind}.{ext}" for kind in ("gain", "curves") for ext in ("png", "pdf")]
    if profile == "smoke":  # the demo profile reads its models' results from the committed files
        for name in ("base", "demhec"):
            written += [ctx.exp.checkpoint(name), ctx.exp.checkpoint(name).with_suffix(".fingerprint.json")]
        written += [ctx.exp.cell_dir / f"{phase}_{ctx.suite}.json" for phase in ("before", "after")]
        written += [Path(ctx.exp.results_dir) / "cache" / "corruptions" / ctx.suite / "snow_s5.npy"]
    paths = ["notebooks/out.ipynb", "out.ipynb"] + [str(p.relative_to(ROOT)) for p in written]
    assert _neither_ignored_nor_tracked(paths) == []


@pytest.mark.expensive
def test_the_design_card_command_run_in_the_smoke_profile(tmp_path):
    """The command itself (minutes on 2 shared cores), its outputs sent to a scratch folder and
    each mapped to where it lands in the tree by default."""
    cmd = [str(Path(sys.executable).parent / "papermill"), "03_table1.ipynb", str(tmp_path / "out.ipynb"),
           "-p", "backbone", "resnet56", "-p", "profile", "smoke", "-p", "results_dir", str(tmp_path / "results"),
           "-p", "figures_dir", str(tmp_path / "figures")]
    run = subprocess.run(cmd, cwd=ROOT / "notebooks", capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert "out.ipynb" in written and any(p.startswith("figures/smoke/") for p in written), written
    paths = [f"notebooks/{p}" if p == "out.ipynb" else p for p in written]
    assert _neither_ignored_nor_tracked(paths) == []


def test_the_project_tests_read_only_committed_notebooks():
    """A scratch notebook in notebooks/ (ignored, as the README's out.ipynb, or merely untracked)
    is not one of the pages tests/test_project.py checks."""
    from tests import test_project

    names = [f"notebooks/out_{uuid.uuid4().hex}.ipynb", f"notebooks/scratch_{uuid.uuid4().hex}.ipynb"]
    try:
        for name in names:
            (ROOT / name).write_text(json.dumps({"cells": [{"cell_type": "code", "outputs": [{"x": 1}]}]}))
        assert _git("check-ignore", "-q", names[0]).returncode == 0
        pages = {str(p.relative_to(ROOT)) for p in test_project._pages("*.ipynb")}
        assert pages and not pages & set(names)
        assert pages == set(_git("ls-files", "--", ":(glob)notebooks/*.ipynb").stdout.split())
        assert {str(p.relative_to(ROOT)) for p in test_project.EXECUTED} <= set(_git("ls-files").stdout.split())
    finally:
        for name in names:
            (ROOT / name).unlink(missing_ok=True)


def test_no_committed_result_or_figure_is_ignored():
    """The .gitignore lists the committed demo tables, figures and base model by name: each
    committed one must be on that list, or regenerating it would leave it out of a commit."""
    assert _git("ls-files", "-ci", "--exclude-standard", "--", "results", "figures", "notebooks").stdout == ""


# --- --weights made for another dataset ---------------------------------------------------


def _weights(tmp_path: Path, sidecar: dict | None, kind: str = "fingerprint") -> Path:
    """A ResNet-20 state dict for 10 classes, with the file beside it that the pipeline
    (``<file>.fingerprint.json``) or ``demhec train`` (``<stem>.json``) writes."""
    from demhec.models import get_model

    path = tmp_path / "w.pt"
    torch.save(get_model("resnet20", num_classes=10).state_dict(), path)
    if sidecar is not None:
        side = path.with_suffix(".fingerprint.json" if kind == "fingerprint" else ".json")
        side.write_text(json.dumps(sidecar))
    return path


CLI_RESULT = {"kind": "cli/train", "config": {"args": {"dataset": "cifar10"}},
              "data": {"classes": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                   "ship", "truck"]}}
EVAL = ["--limit", "16", "--corruptions", "gaussian_noise", "--severities", "1", "--no-progress"]


@pytest.mark.parametrize("command", ["evaluate", "entropy"])
@pytest.mark.parametrize("sidecar,kind,trained_on", [({"data.dataset": "cifar10_jpeg"}, "fingerprint", "cifar10_jpeg"),
                                                     (CLI_RESULT, "json", "cifar10")])
def test_weights_of_another_dataset_are_refused(tmp_path, capsys, command, sidecar, kind, trained_on):
    weights = _weights(tmp_path, sidecar, kind)
    assert main([command, "--dataset", "digits", "--weights", str(weights), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"demhec {command}: error: {weights} was trained on {trained_on}")
    assert "--dataset digits" in err and "--allow-other-dataset" in err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.json"))


def test_other_classes_are_refused_and_the_flag_overrides(tmp_path, capsys):
    digits_other_order = {**CLI_RESULT, "config": {"args": {"dataset": "digits"}},
                          "data": {"classes": [str(9 - i) for i in range(10)]}}
    weights = _weights(tmp_path, digits_other_order, "json")
    args = ["evaluate", "--dataset", "digits", "--weights", str(weights), "--out", str(tmp_path / "o"), *EVAL]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "with other classes" in err and "\n" not in err
    assert main([*args, "--allow-other-dataset"]) == 0
    assert capsys.readouterr().err == ""
    assert (tmp_path / "o" / "w_cifar-c.json").exists()


def test_weights_without_a_record_are_scored_with_a_warning(tmp_path, capsys):
    weights = _weights(tmp_path, None)
    assert main(["evaluate", "--dataset", "digits", "--weights", str(weights), "--out", str(tmp_path / "o"), *EVAL]) == 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("demhec evaluate: warning:") and "\n" not in err
    assert "w.json or w.fingerprint.json" in err and "--dataset digits" in err


def test_the_committed_cpu_checkpoints_are_known_as_cifar10():
    """The committed checkpoints carry a fingerprint naming their data; the CIFAR-10 JPEG mirror
    has CIFAR-10's classes, so scoring them with --dataset cifar10 is allowed."""
    from demhec.cli import _made_for

    dataset, classes, side = _made_for(ROOT / "results" / "cpu" / "checkpoints" / "resnet20_base.pt")
    assert (dataset, classes, side.name) == ("cifar10_jpeg", None, "resnet20_base.fingerprint.json")


# --- --download without a network, missing data -------------------------------------------


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_download_without_a_network_is_one_line_in_the_cli(tmp_path, capsys, offline):
    code = main(["train", "--dataset", "cifar10", "--download", "--data-root", str(tmp_path / "data"),
                 "--out", str(tmp_path / "o"), "--epochs", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err
    assert err.startswith("demhec train: error: could not download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")
    assert "Temporary failure in name resolution" in err and "check the network" in err
    assert f"place cifar-10-python.tar.gz under --data-root ({tmp_path / 'data'})" in err


@pytest.mark.parametrize("name,url", [("cifar100", "cifar-100-python.tar.gz"), ("imagenette", "imagenette2.tgz")])
def test_download_without_a_network_in_the_api(tmp_path, offline, name, url):
    from demhec.data import load_arrays

    with pytest.raises(DemHECError, match=f"could not download https://.*/{url} ") as info:
        load_arrays(name, "test", tmp_path, download=True)
    assert "check the network" in str(info.value) and f"under root ({tmp_path})" in str(info.value)
    assert "--" not in str(info.value) and "\n" not in str(info.value)


def test_missing_data_names_the_flags_in_the_cli_and_the_keywords_in_the_api(tmp_path, capsys):
    from demhec.data import cifar10_jpeg_split, load_arrays

    (tmp_path / "data").mkdir()
    with pytest.raises(DemHECError, match="pass download=True to fetch it, or point root at a local copy"):
        load_arrays("cifar10", "test", tmp_path / "data")
    assert main(["evaluate", "--dataset", "cifar10", "--data-root", str(tmp_path / "data"),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "pass --download to fetch it, or point --data-root at a local copy" in err and "download=True" not in err

    with pytest.raises(DemHECError, match=r"; pass the \.tar\.gz") as api:
        cifar10_jpeg_split(tmp_path / "none.tar.gz", tmp_path / "cache")
    assert "--" not in str(api.value)
    with cli_words(), pytest.raises(DemHECError, match=r"; give --data-root the \.tar\.gz or a folder"):
        cifar10_jpeg_split(tmp_path / "none.tar.gz", tmp_path / "cache")


def test_missing_released_files_name_the_flags_in_the_cli(tmp_path, capsys):
    weights = _weights(tmp_path, {"data.dataset": "digits"})
    (tmp_path / "data").mkdir()
    assert main(["evaluate", "--dataset", "digits", "--suite", "cifar10-c", "--data-root", str(tmp_path / "data"),
                 "--weights", str(weights), "--out", str(tmp_path / "o"), *EVAL]) == 2
    err = capsys.readouterr().err.strip()
    assert "pass --download to fetch it, or point --data-root at a local copy" in err and "\n" not in err
    from demhec.corruptions import load_cifar_c

    with pytest.raises(DemHECError, match=r"download it with demhec\.corruptions\.download_cifar_c\(root\)"):
        load_cifar_c(tmp_path / "data", "gaussian_noise", 1)


# --- the help text ------------------------------------------------------------------------


def test_help_shows_no_rest_markup():
    import argparse

    parser = build_parser()
    helps = {"demhec": parser.format_help()}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps.update({name: sub.format_help() for name, sub in action.choices.items()})
    assert {"train", "finetune", "evaluate", "entropy"} <= set(helps)
    for name, text in helps.items():
        for markup in ("``", ":func:", ":class:", ":meth:", ":data:"):
            assert markup not in text, (name, markup)
    assert helps["demhec"].split("\n\n")[1].startswith("demhec command line: train, finetune")


def test_plain_strips_rest_roles():
    from demhec.cli import _plain

    assert _plain("``x`` and :func:`_from_args` and :class:`~demhec.training.TrainConfig`") == (
        "x and _from_args and TrainConfig")


# --- make demo on a fresh clone -----------------------------------------------------------


def test_the_runner_merges_a_cells_consecutive_prints(tmp_path):
    """The kernel sends two prints of a cell as one stream message or two, depending on timing;
    the executed page is the same either way."""
    from tests.conftest import load_script

    runner = load_script("run_notebooks")
    figure = {"output_type": "display_data", "data": {"text/plain": ["<Figure>"]}, "metadata": {}}

    def page(outputs):
        return {"cells": [{"cell_type": "code", "execution_count": 3, "id": "a", "metadata": {}, "source": [],
                           "outputs": outputs}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}

    def stream(text, name="stdout"):
        return {"output_type": "stream", "name": name, "text": text}

    split = page([stream(["no BN rows\n"]), stream(["Highest family mean: blur\n", "done\n"]), figure,
                  stream("after\n"), stream("warn\n", "stderr")])
    whole = page([stream(["no BN rows\n", "Highest family mean: blur\n", "done\n"]), figure,
                  stream(["after\n"]), stream(["warn\n"], "stderr")])
    texts = []
    for i, nb in enumerate((split, whole)):
        path = tmp_path / f"{i}.ipynb"
        path.write_text(json.dumps(nb))
        runner.scrub(path)
        texts.append(path.read_text())
    assert texts[0] == texts[1]
    outputs = json.loads(texts[0])["cells"][0]["outputs"]
    assert [o.get("name", o["output_type"]) for o in outputs] == ["stdout", "display_data", "stdout", "stderr"]


def test_the_demo_base_model_is_committed_for_the_quickstart():
    """The quickstart computes on the demo base model itself (its entropy line). Trained afresh
    it differs on every run, so the model is kept beside the results: `make demo` loads it
    when its fingerprint is the recipe the committed demo results record."""
    from demhec.models import get_model

    path = ROOT / "results" / "demo" / "checkpoints" / "resnet20_base.pt"
    side = json.loads(path.with_suffix(".fingerprint.json").read_text())
    assert _git("check-ignore", "-q", str(path.relative_to(ROOT))).returncode == 1  # to be committed
    for result in ("before_cifar-c", "before_imagecorruptions", "entropy_before_pixelate_s5_cifar-c"):
        recorded = json.loads((ROOT / "results" / "demo" / "digits" / "resnet20" / f"{result}.json").read_text())
        model = {k.removeprefix("model."): v for k, v in recorded["fingerprint"].items() if k.startswith("model.")}
        assert model == side, result
    get_model("resnet20", num_classes=10, pretrained=str(path))


def test_the_committed_demo_results_were_computed_from_the_committed_demo_base():
    """A fingerprint records the base's recipe, not its weights, so a result made from another
    base of the same recipe would look current: the committed base must score on the digits
    test split the clean accuracy its committed results record (one image of float slack)."""
    from demhec.data import load_arrays
    from demhec.models import get_model

    model = get_model("resnet20", num_classes=10,
                      pretrained=str(ROOT / "results" / "demo" / "checkpoints" / "resnet20_base.pt")).eval()
    test = load_arrays("digits", "test")
    x = torch.from_numpy(test.images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        accuracy = 100 * (model(x).argmax(1) == torch.from_numpy(test.labels)).double().mean().item()
    recorded = json.loads((ROOT / "results" / "demo" / "digits" / "resnet20" / "before_cifar-c.json").read_text())
    assert abs(accuracy - recorded["metrics"]["clean_accuracy"]) <= 100 / len(test.labels) + 1e-9

def test_the_notebooks_seed_the_random_start_of_their_high_entropy_samples():
    """torch seeds its global generator afresh in every process, so an unseeded random start
    gives the quickstart another high-entropy line on every run, even on the committed model."""
    import ast

    calls = []
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            if cell["cell_type"] == "code":
                code = "".join(ln for ln in "".join(cell["source"]).splitlines(True) if not ln.startswith("%"))
                calls += [(nb.name, {k.arg for k in node.keywords}) for node in ast.walk(ast.parse(code))
                          if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", ""))
                          == "high_entropy_samples"]
    assert calls and all({"generator", "noise"} & keywords for _, keywords in calls), calls


def test_a_model_trained_afresh_starts_from_the_same_weights_on_every_run():
    from demhec.experiments import model_cache
    from demhec.experiments.profiles import Experiment

    exp = Experiment("smoke")
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = model_cache._new_model(exp, 10, pretrained=False)
    after = torch.rand(1)
    b = model_cache._new_model(exp, 10, pretrained=False)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    assert torch.equal(before, after)  # the caller's random stream is untouched
