"""The README's generated result blocks are what the committed results give (scripts/render_readme.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "render_readme.py"


def _script():
    return load_script("render_readme")


def test_the_committed_readme_blocks_are_current():
    run = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_a_stale_block_is_caught_and_rewritten(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- BEGIN generated:gpu -->\n| a hand-typed 99.9 |\n<!-- END generated:gpu -->\nend\n")
    args = ["--readme", str(readme), "--results", str(tmp_path / "results")]
    assert subprocess.run([sys.executable, str(SCRIPT), "--check", *args], capture_output=True).returncode == 1
    assert subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True).returncode == 0
    text = readme.read_text()
    assert "99.9" not in text and "No GPU results are committed yet" in text
    assert text.startswith("intro\n") and text.endswith("<!-- END generated:gpu -->\nend\n")


def test_the_gpu_block_renders_the_result_files(tmp_path):
    """The numbers in the block follow the JSONs: change one and the block changes."""
    import shutil

    mod = _script()
    results = tmp_path / "results"
    shutil.copytree(ROOT / "results" / "gpu", results / "gpu")
    if not (results / "gpu" / "cpu_base").exists():
        pytest.skip("no GPU results committed: the first test covers the empty block")
    path = results / "gpu" / "cpu_base" / "cifar10_jpeg" / "resnet20" / "after_cifar-c.json"
    import json

    rec = json.loads(path.read_text())
    rec["metrics"]["clean_accuracy"] = 12.34
    path.write_text(json.dumps(rec))
    assert "12.34" in mod.gpu(results) and "12.34" not in mod.gpu(ROOT / "results")


# Programs that `make` installs into .venv/bin, not onto the PATH.
VENV_PROGRAMS = ("papermill", "demhec", "python", "pytest", "torchrun", "jupyter")
ACTIVATE = ". .venv/bin/activate"


def shell_commands_outside_the_venv(readme: str) -> list[str]:
    """The commands of the README's bash blocks that run a program of .venv/bin by its bare name
    without an activation line before them in their block (`command not found` on a fresh clone)."""
    import re

    bad = []
    for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.S):
        active = False
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip()
            if line in (ACTIVATE, "source .venv/bin/activate"):
                active = True
            elif line.split(" ", 1)[0] in VENV_PROGRAMS and not active:
                bad.append(line)
    return bad


def test_the_readme_commands_run_as_typed_on_a_fresh_clone():
    assert shell_commands_outside_the_venv((ROOT / "README.md").read_text()) == []
    block = "```bash\n{}\n```\n"
    assert shell_commands_outside_the_venv(block.format("papermill 03_table1.ipynb out.ipynb")) == [
        "papermill 03_table1.ipynb out.ipynb"]
    assert shell_commands_outside_the_venv(block.format("demhec train \\\n  --dataset digits  # x")) == [
        "demhec train    --dataset digits"]
    assert shell_commands_outside_the_venv(block.format(".venv/bin/python -m pytest")) == []
    assert shell_commands_outside_the_venv(block.format(f"{ACTIVATE}\n# one\ntorchrun -m demhec train")) == []
    assert shell_commands_outside_the_venv(block.format("demhec entropy") + block.format(ACTIVATE)) == ["demhec entropy"]
