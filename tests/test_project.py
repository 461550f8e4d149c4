"""Foundation: dependency sync, stripped notebooks, CI entry, README commands."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def pyproject_deps(path: Path = ROOT / "pyproject.toml") -> set[str]:
    project = tomllib.loads(path.read_text())["project"]
    deps = {_name(d) for d in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        deps |= {_name(d) for d in extra}
    return deps


def environment_deps(path: Path = ROOT / "environment.yml") -> set[str]:
    env = yaml.safe_load(path.read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return {_name(d) for d in pip if not d.startswith("-e")}


def test_environment_matches_pyproject():
    assert pyproject_deps() == environment_deps()
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert any(str(d).startswith("python") for d in env["dependencies"])
    assert "-e .[notebooks,dev]" in next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))


@pytest.mark.parametrize("which", ["pyproject", "environment"])
def test_sync_check_catches_a_removed_dependency(tmp_path, which):
    if which == "pyproject":
        text = (ROOT / "pyproject.toml").read_text().replace('    "seaborn>=0.13",\n', "")
        (tmp_path / "p.toml").write_text(text)
        assert pyproject_deps(tmp_path / "p.toml") != environment_deps()
    else:
        text = (ROOT / "environment.yml").read_text().replace("      - seaborn>=0.13\n", "")
        (tmp_path / "e.yml").write_text(text)
        assert pyproject_deps() != environment_deps(tmp_path / "e.yml")


def test_required_dependencies_present():
    deps = pyproject_deps()
    for name in ["torch", "torchvision", "numpy", "imagecorruptions-imaug", "scikit-learn", "timm",
                 "tqdm", "pandas", "matplotlib", "seaborn", "jupyterlab", "papermill", "ipykernel",
                 "nbval", "pytest", "ruff"]:
        assert name in deps, name
    assert "imagecorruptions" not in deps  # the unmaintained 1.1.2 breaks under numpy 2


def _pages(pattern: str) -> list[Path]:
    """The notebooks matching ``pattern`` (under notebooks/) that git tracks: not a scratch copy
    such as the ``out.ipynb`` of the README's papermill command."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--", f":(glob)notebooks/{pattern}"],
                            cwd=ROOT, capture_output=True, text=True, check=True)
    return sorted(p for p in {ROOT / line for line in listed.stdout.splitlines()} if p.exists())


NOTEBOOKS = _pages("*.ipynb")


def test_there_are_notebooks():
    names = {p.stem[:2] for p in NOTEBOOKS}
    assert {f"{i:02d}" for i in range(9)} <= names


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_committed_without_outputs(nb):
    data = json.loads(nb.read_text())
    code = [c for c in data["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    assert data["metadata"]["kernelspec"]["name"] == "python3"
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1
    # The parameters cell holds literals only, so papermill can override every value.
    for line in "".join(params[0]["source"]).splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, value = (s.strip() for s in line.split("=", 1))
            compile(value, nb.name, "eval")
            assert re.fullmatch(r"[\"'\[\]\d\w,./ :-]*", value), line
    src = "".join("".join(c["source"]) for c in code)
    assert "def " not in src and "class " not in src  # no method logic in notebooks


# Notebooks that show no number (Figure 2 shows corrupted images only).
NO_NUMBERS = ("01_fig2_corruptions.ipynb",)


@pytest.mark.parametrize("nb", [p for p in NOTEBOOKS if p.name not in NO_NUMBERS], ids=lambda p: p.stem)
def test_notebook_recounts_a_key_number_from_its_raw_outcomes(nb):
    """Besides checking its tables against the result files' tables (check_*_shown), every
    notebook that shows numbers recomputes at least one key number from a result file's raw
    outcomes (correct-image counts, per-image outcomes or entropies: demhec.experiments.checks's
    recount, recount_gap), so that the page fails when a number does not follow from them."""
    code = "".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")
    # A page section (ex.pages.*_page, ex.cpu_pages.*_page, ...) recounts inside the library and lists
    # what in Page.checked (tests/test_comparison.py and tests/test_cpu_pages.py check that it does).
    assert re.search(r"\bex\.(checks\.(check_recounted|recount|recount_gap)|\w*pages\.\w+_page)\(", code), nb.name


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    commands = [ln.strip() for ln in ci.splitlines() if ln.strip() and not ln.startswith("#")]
    assert commands[-1] == "make test"
    assert "make test" in readme and "make demo" in readme
    assert readme.index("make demo") < readme.index("make test") < readme.index("## ")


def test_a_skipped_test_fails_the_run_in_ci(tmp_path):
    """.ci/run sets DEMHEC_FAIL_ON_SKIP and every pytest run of make test loads the plugin that reads
    it: there a skipped test (no Chromium for the browser tests, say) fails the run, naming the
    test and the reason; elsewhere it stays a skip."""
    import os

    (tmp_path / "test_it.py").write_text("import pytest\n\n\ndef test_ok():\n    pass\n\n\n"
                                         "def test_opens_a_browser():\n    pytest.skip('no Chromium found')\n")

    def run(flag):
        env = {**os.environ, "DEMHEC_FAIL_ON_SKIP": flag}
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
                               "tests.skips_fail_in_ci", str(tmp_path / "test_it.py")],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    here = run("")
    assert here.returncode == 0 and "1 passed, 1 skipped" in here.stdout, here.stdout
    ci = run("1")
    assert ci.returncode == 1, ci.stdout
    assert "1 skipped test(s) fail this run" in ci.stdout and "test_opens_a_browser: no Chromium found" in ci.stdout
    make = (ROOT / "Makefile").read_text()
    runs = [ln for ln in make.splitlines() if " -m pytest " in ln]
    assert runs and all("-p tests.skips_fail_in_ci" in ln for ln in runs), runs
    assert "export DEMHEC_FAIL_ON_SKIP=1" in (ROOT / ".ci" / "run").read_text()


def test_every_named_mutation_still_applies():
    """make mutants (scripts/mutants.py) changes exact pieces of the code: each must still occur
    exactly once in its file, and the tests named for it must exist, or its report says nothing
    about the code as it is (when code moves, move the mutation with it)."""
    from tests.conftest import load_script

    mutants = load_script("mutants")
    assert len({m.name for m in mutants.MUTATIONS}) == len(mutants.MUTATIONS) >= 4
    for m in mutants.MUTATIONS:
        assert (ROOT / m.path).read_text().count(m.original) == 1, f"{m.name}: its text is not once in {m.path}"
        assert m.original != m.replacement and m.tests, m.name
        for test in m.tests:
            path, _, name = test.partition("::")
            assert re.search(rf"^def {re.escape(name)}\(", (ROOT / path).read_text(), re.M), f"{m.name}: no {test}"
    assert "scripts/mutants.py" in (ROOT / "Makefile").read_text() and (ROOT / "docs" / "mutants.md").exists()


def test_cli_help_runs():
    out = subprocess.run([sys.executable, "-m", "demhec", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("train", "finetune", "evaluate", "entropy"):
        assert cmd in out.stdout


def _readme_blocks(lang: str, pages: tuple[str, ...] | None = None) -> list[str]:
    """The ``lang`` code blocks of README.md and docs/*.md (or of ``pages``)."""
    paths = [ROOT / p for p in pages] if pages else [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [b for path in paths for b in re.findall(rf"```{lang}\n(.*?)```", path.read_text(), flags=re.S)]


@pytest.mark.slow
def test_readme_library_example_runs(tmp_path):
    """The Python example of the library's page (docs/library.md) runs as printed."""
    (code,) = _readme_blocks("python", ("docs/library.md",))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "gaussian_noise" in proc.stdout and "accuracy" in proc.stdout


def test_readme_commands_are_known():
    """Every shell command the README and docs/ show is one that a test or CI runs."""
    known = (". .venv/bin/activate", "make demo", "make test", "papermill notebooks/03_table1.ipynb",
             ".venv/bin/papermill notebooks/03_table1.ipynb", "demhec train", "demhec finetune", "demhec evaluate",
             "demhec entropy", ".venv/bin/python scripts/cpu_reproduction.py",
             ".venv/bin/python scripts/comparison.py",  # tests/test_comparison.py
             ".venv/bin/python scripts/run_notebooks.py --profile cpu",
             "torchrun ")  # torchrun: tests/test_distributed.py
    for block in _readme_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip()
            if line:
                assert line.startswith(known), line
                if line.startswith("torchrun"):
                    assert re.search(r" -m demhec (train|finetune|evaluate) ", line), line


EXECUTED = _pages("executed/*/*.ipynb")


def test_executed_notebooks_are_committed_for_demo_and_cpu():
    """Every notebook has its executed page in each profile of demo and cpu that runs it
    (scripts/run_notebooks.py: the CPU reproduction's pages in cpu only), and no executed page is
    left of a notebook that is gone."""
    from tests.conftest import load_script

    runner = load_script("run_notebooks")
    names = {(p.parent.name, p.name) for p in EXECUTED}
    for nb in NOTEBOOKS:
        for profile in ("demo", "cpu"):
            runs = profile in runner.NOTEBOOK_PROFILES.get(nb.name, (profile,))
            if profile == "cpu":
                runs = runs and nb.name.startswith(runner.PROFILE_NOTEBOOKS["cpu"])
            assert ((profile, nb.name) in names) == runs, (profile, nb.name)
    assert {name for _, name in names} <= {nb.name for nb in NOTEBOOKS}
    assert ("cpu", "12_cpu_controls_selection.ipynb") in names and ("cpu", "03_table1.ipynb") in names


@pytest.mark.parametrize("nb", EXECUTED, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_executed_notebook_shows_its_figures_without_paths_or_timings(nb):
    from demhec.experiments.notebook import figure_cells_without_image

    text = nb.read_text()
    data = json.loads(text)
    assert str(ROOT) not in text and str(Path.home()) not in text and str(ROOT.parent) + "/" not in text
    assert set(data["metadata"].get("papermill", {})) <= {"parameters"}
    code = [c for c in data["cells"] if c["cell_type"] == "code"]
    assert all("papermill" not in c["metadata"] and "execution" not in c["metadata"] for c in code)
    assert all(c["execution_count"] is None and all(o.get("execution_count") is None for o in c["outputs"])
               for c in code)
    assert all(o.get("output_type") != "error" for c in code for o in c.get("outputs", []))
    if not (nb.name.startswith("01_") and "are not on this machine" in text):
        assert not figure_cells_without_image(data["cells"]), nb.name


def test_nbval_plugin_fails_a_figure_cell_that_shows_no_image():
    """make notebooks-smoke loads tests/nbval_figures.py: a cell building a figure must show it."""
    from types import SimpleNamespace

    from tests import nbval_figures

    def run(outputs):
        item = SimpleNamespace(name="nb::Cell 5", test_outputs=outputs,
                               cell={"cell_type": "code", "source": "fig = plots.delta_heatmap(gains)"})
        gen = nbval_figures.pytest_runtest_call(item)
        next(gen)
        with pytest.raises(StopIteration):
            gen.send(None)

    run([{"output_type": "display_data", "data": {"image/png": "iVBOR"}}])
    with pytest.raises(AssertionError, match="shows no image/png"):
        run([{"output_type": "stream", "name": "stdout", "text": "saved"}])
    assert "-p tests.nbval_figures" in (ROOT / "Makefile").read_text()


# The product speaks of itself: an issue number in a tracked file (code, tests, docs, ignore rules,
# result and figure names) tells a reader about how it was built, not what it is.
ISSUE_NUMBER = re.compile(r"\bissues?[ _#-]{0,2}\d+(?!\d)", re.IGNORECASE)


BINARY_SUFFIXES = {".pt", ".ckpt", ".png", ".pdf", ".npy", ".gz"}


def test_no_tracked_file_names_an_issue_number():
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split("\0")
    found = []
    for name in filter(None, names):
        path = ROOT / name
        found += [f"{name} (path)"] if ISSUE_NUMBER.search(name) else []
        if path.suffix not in BINARY_SUFFIXES and path.is_file():
            found += [f"{name}: {m.group(0)!r}" for m in ISSUE_NUMBER.finditer(path.read_text(errors="replace"))]
    assert not found, found


# The examples are split in two so that this file does not match its own scan.
@pytest.mark.parametrize("text, hit", [("issue" " 16's config", True), ("issue" "16_table", True), ("Issue" " #3", True),
                                       ("an issue the files were named after", False), ("tissue" " 3", False)])
def test_the_issue_number_scan_can_fail(text, hit):
    assert bool(ISSUE_NUMBER.search(text)) == hit
