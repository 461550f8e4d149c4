"""The README and docs/ say what the committed results give: the README is short, every generated
block is what scripts/render_readme.py renders now, no result number is typed outside those
blocks, the findings shown are the site's and the library's, and every relative link resolves."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "render_readme.py"
README = ROOT / "README.md"
MAX_README_LINES = 250


def pages() -> list[Path]:
    """README.md and every page of docs/: the pages whose blocks are rendered and checked."""
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def tracked_notebooks() -> list[Path]:
    """The notebooks on disk that git tracks or would track (not an ignored scratch copy)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "--",
                             ":(glob)notebooks/*.ipynb"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return sorted(p for p in (ROOT / name for name in listed) if p.is_file())


def _script():
    return load_script("render_readme")


def test_the_readme_is_read_in_five_minutes():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move detail to docs/"


def test_the_committed_blocks_are_current():
    """Every generated block of README.md and docs/*.md is what the renderer gives now (the
    renderer's --check: render == committed, so a second render changes no byte)."""
    blocks = [m["name"] for page in pages() for m in load_script("render_readme").BLOCK.finditer(page.read_text())]
    assert {"findings", "evidence", "comparison", "open-choices", "gpu", "cpu-controls", "cpu-recommended",
            "cpu-stage-times", "notebooks"} <= set(blocks), blocks
    run = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_readme_lists_the_choices_the_compared_methods_papers_leave_open():
    """One line per method of docs/compared_methods.md whose settings column is not "none", with
    that column's text: the docs table is the one source."""
    block = _script().open_choices(ROOT / "results")
    table = (ROOT / "docs" / "compared_methods.md").read_text()
    for method in ("BA, BA (AA)", "AugMax", "IPMix", "DV+AP+JSD", "push-pull ResNet-20 (Table 4)"):
        line = next(x for x in block.splitlines() if x.startswith(f"- **{method}**"))
        assert line.split(": ", 1)[1] in table
    assert "**TA**" not in block and "**AugMix**" not in block  # their settings are the official ones


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
    for page in pages():
        assert shell_commands_outside_the_venv(page.read_text()) == [], page.name
    block = "```bash\n{}\n```\n"
    assert shell_commands_outside_the_venv(block.format("papermill 03_table1.ipynb out.ipynb")) == [
        "papermill 03_table1.ipynb out.ipynb"]
    assert shell_commands_outside_the_venv(block.format("demhec train \\\n  --dataset digits  # x")) == [
        "demhec train    --dataset digits"]
    assert shell_commands_outside_the_venv(block.format(".venv/bin/python -m pytest")) == []
    assert shell_commands_outside_the_venv(block.format(f"{ACTIVATE}\n# one\ntorchrun -m demhec train")) == []
    assert shell_commands_outside_the_venv(block.format("demhec entropy") + block.format(ACTIVATE)) == ["demhec entropy"]


# --- no result number typed outside the generated blocks --------------------------------------

# What is not prose: generated blocks, HTML comments, fenced and inline code, link targets.
_NOT_PROSE = [re.compile(r"<!-- BEGIN generated:(?P<name>[\w-]+) -->\n.*?<!-- END generated:(?P=name) -->", re.S),
              re.compile(r"<!--.*?-->", re.S), re.compile(r"```.*?```", re.S), re.compile(r"`[^`\n]*`"),
              re.compile(r"\]\([^)\s]*\)")]
# A number about results: a percentage (86.6%, 95 %), a signed change or an error (+17.35, -2.54,
# ± 0.70), or a decimal that reads like an accuracy or a ratio (86.6, 85.34, 6.19). Hyperparameters
# below 1 (lr 0.05, alpha 0.5), one-decimal settings (1.5, 1.2 GB) and section numbers (3.3.1, 8.2)
# do not match.
RESULT_NUMBER = re.compile(r"\d+(?:\.\d+)?\s?%"
                           r"|[+\-\u2212\u00b1]\s?\d+\.\d+"
                           r"|(?<![\w.])\d{2,}\.\d+(?!\.?\d)(?!\w)"
                           r"|(?<![\w.])[1-9]\.\d{2,}(?!\.?\d)(?!\w)")
# Numbers that are not results of this project, each by the words around it.
ALLOWED = [re.compile(p) for p in (
    r"Python >= 3\.\d+",  # a version
    r"95\s?%\s+(?:confidence\s+)?interval",  # a confidence level
    r"zoo model has 92\.6%",  # the published accuracy of the zoo's ResNet-20 (chenyaofo/pytorch-cifar-models)
)]


def typed_result_numbers(text: str) -> list[str]:
    """The result numbers typed into ``text`` (Markdown) outside its generated blocks and code."""
    for pattern in [*_NOT_PROSE, *ALLOWED]:
        text = pattern.sub(" ", text)
    return [m.group(0) for m in RESULT_NUMBER.finditer(text)]


def notebook_markdown(path: Path) -> str:
    return "\n\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"]
                         if c["cell_type"] == "markdown")


def test_no_result_number_is_typed_outside_the_generated_blocks():
    typed = {page.relative_to(ROOT).as_posix(): typed_result_numbers(page.read_text()) for page in pages()}
    typed |= {nb.relative_to(ROOT).as_posix(): typed_result_numbers(notebook_markdown(nb)) for nb in tracked_notebooks()}
    assert {k: v for k, v in typed.items() if v} == {}


def test_the_typed_number_scan_catches_a_typed_result():
    block = "<!-- BEGIN generated:findings -->\nclean -3.28 ± 0.70, 86.60\n<!-- END generated:findings -->\n"
    made_up = "Dem-HEC reaches 86.6 clean and gains +17.35 noise points (clean -2.54 ± 0.41), 92.6%, ratio 6.19."
    assert typed_result_numbers(made_up) == ["86.6", "+17.35", "-2.54", "± 0.41", "92.6%", "6.19"]
    assert typed_result_numbers(block + made_up) == typed_result_numbers(made_up)
    allowed = (block + "Python >= 3.10, torch 2.11.0, eq. 8-9, section 3.3.1, A.3, 45,000/5,000 images, lr 0.05, "
               "alpha 0.5, scales (1.5, 2, 3), 1.2 GB, 1e-3, 8/255, its 95% interval, `clean 86.60`, "
               "[a table](../results/cpu/tables/x.md), ```\nacc = 85.34\n```, 2026-11-30.")
    assert typed_result_numbers(allowed) == []


# --- one verdict: the README's findings are the library's and the site's ------------------------


def _block(text: str, name: str) -> str:
    m = re.search(rf"<!-- BEGIN generated:{name} -->\n(.*?)<!-- END generated:{name} -->", text, re.S)
    assert m, f"no generated:{name} block"
    return m[1]


def test_the_readme_findings_are_the_sites_and_the_librarys():
    from demhec.experiments.findings import findings

    found = findings(ROOT / "results")
    shown = re.findall(r"^- \*\*(.+?)\*\* (.+?) \*Rests on: (.+?)\.\*", _block(README.read_text(), "findings"), re.M)
    assert found and shown == [(f.question, f.answer, f.evidence) for f in found]
    evidence = _block((ROOT / "docs/cpu_reproduction.md").read_text(), "evidence")
    assert all(f.answer in evidence and all(a.rstrip(".") in evidence for a in f.also) for f in found), \
        "the README leaves lower-ranked evidence to docs/cpu_reproduction.md, which must hold all of it"
    front = load_script("build_site").front_page({}, ROOT / "results")
    where = [front.find(html.escape(f.answer, quote=False)) for f in found]
    assert all(i >= 0 for i in where) and where == sorted(where), "the site's findings differ from the README's"


def test_the_compared_methods_finding_accounts_for_every_measured_method():
    from demhec.experiments.findings import findings

    found = {f.key: f for f in findings(ROOT / "results")}
    m = re.match(r"Better than (\d+) \(.*\), worse than (\d+) \(.*\), tied with (\d+) \(.*\), of (\d+) measured",
                 found["compared methods"].answer)
    assert m, found["compared methods"].answer
    better, worse, tied, measured = map(int, m.groups())
    assert better + worse + tied == measured


def test_one_verdict_on_the_readme_the_site_and_the_table3_page():
    from demhec.experiments.findings import headline

    verdict = headline(ROOT / "results")
    assert verdict and f"**Verdict.** {verdict}" in _block(README.read_text(), "findings")
    assert html.escape(verdict, quote=False) in load_script("build_site").front_page({}, ROOT / "results")
    page = json.loads((ROOT / "notebooks/executed/cpu/06_table3_baselines.ipynb").read_text())
    printed = "".join("".join(o.get("text", "")) for c in page["cells"] for o in c.get("outputs", []))
    assert verdict.split(" (Rests on:")[0] in printed, "the executed Table 3 page prints another verdict"


def test_three_gpu_seeds_of_the_comparison_outrank_one_cpu_seed(tmp_path):
    """The GPU's comparison at three seeds answers before the CPU's at one (more seeds over
    fewer, same schedule and half); the CPU's answer is kept beside it."""
    import shutil

    from demhec.experiments.findings import findings

    src = ROOT / "results/cpu/a3/cifar10_jpeg/resnet20/halves"
    cpu, gpu = (tmp_path / home / "cifar10_jpeg/resnet20/halves" for home in ("cpu/a3", "gpu/a3"))
    for folder in (cpu, gpu):
        folder.mkdir(parents=True)
    for tag in ("before", "demhec", "plain"):
        shutil.copy(src / f"{tag}_cifar-c_all_report.json", cpu)
        for seed in (0, 1, 2) if tag != "before" else (0,):
            shutil.copy(src / f"{tag}_cifar-c_all_report.json",
                        gpu / f"{tag}_cifar-c_all{'' if seed == 0 else f'_seed{seed}'}_report.json")
    by_key = {f.key: f for f in findings(tmp_path)}
    plain = by_key["demhec vs plain"]
    assert plain.evidence == "GPU, A.3 (7,020 steps, bf16), the comparison; 3 seeds, report"
    assert "over 3 seeds" in plain.answer and any(a.startswith("CPU, A.3 (7,020 steps), the comparison; 1 seed") for a in plain.also)
    assert all(f"{tmp_path}/gpu/a3/" in f for f in plain.files)


def test_the_findings_and_comparison_blocks_say_when_nothing_is_measured(tmp_path):
    mod = load_script("render_readme")
    assert mod.findings_block(tmp_path) == "No findings yet: no result files are committed.\n"
    text = mod.comparison(tmp_path)
    assert "No row of the comparison is scored yet" in text and "No verdict yet" in text
    assert "Not trained yet, or still training" in text and "Dem-HEC (eq. 12)" in text
    gpu = mod.gpu_comparison(tmp_path)
    assert "| Dem-HEC (eq. 12) | 0 of 3 | 0 of 3 |" in gpu and "| AugMax | 0 of 3 | 0 of 3 |" in gpu
    assert "No model of `gpu_a3` is scored yet" in gpu
    assert "not measured yet" in mod.guard_cost(tmp_path)
    cpu = mod.cpu_seeds(tmp_path)
    assert "| Dem-HEC (eq. 12) | 0 of 2 | 0 of 2 |" in cpu and "| ResNet-20 base (no fine-tune) | 1 of 1 | 0 of 1 |" in cpu  # the committed base
    assert "No model is scored at a second seed yet" in cpu


def test_the_cpu_seeds_block_shows_only_models_scored_at_both_seeds(tmp_path, monkeypatch):
    mod = load_script("render_readme")
    summary = pd.DataFrame({"label": ["Dem-HEC (eq. 12)", "TA"], "kind": ["fine-tuned"] * 2,
                            "noise_s5": [70.0, 52.0], "seeds": [2, 1]})
    monkeypatch.setattr(mod, "seed_table", lambda profile, seeds, results: summary)
    text = mod.cpu_seeds(tmp_path)
    table = text.split("scored too).", 1)[1]
    assert "| Dem-HEC (eq. 12) | fine-tuned | 70.00 | 2 |" in table and "| TA |" not in table


def test_a_page_block_links_relative_to_its_page():
    mod = load_script("render_readme")
    from_docs = mod.notebooks(ROOT / "results", ROOT / "docs" / "notebooks.md")
    from_root = mod.notebooks(ROOT / "results", README)
    assert "](../notebooks/executed/" in from_docs and "](notebooks/executed/" in from_root


# --- links -----------------------------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    heads = re.findall(r"^#+\s+(.+?)\s*$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.replace("`", "").lower()).replace(" ", "-") for h in heads}


def broken_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    bad = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists() or (anchor and path.suffix == ".md" and anchor not in _anchors(path)):
            bad.append(target)
    return bad


def test_every_relative_link_resolves():
    assert {p.name: b for p in pages() if (b := broken_links(p))} == {}


def test_a_broken_link_is_caught(tmp_path):
    (tmp_path / "a.md").write_text("# Title here\n\n## Some `code` section\n")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md) [ok](a.md#some-code-section) [web](https://example.org/x) [gone](c.md) "
                    "[no anchor](a.md#nothing)\n")
    assert broken_links(page) == ["c.md", "a.md#nothing"]
