"""scripts/rename_results.py: the tables and figures named after an issue move to names that say
what they hold, their references follow, nothing is overwritten, and a second run does nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
NUMBER = 16  # the issue the committed files were named after


def _legacy(rest: str) -> str:
    return f"issue{NUMBER}_{rest}"


def _tree(root: Path) -> dict[Path, bytes]:
    files = {}
    for rest in ("cpu_ranked", "cpu_report", "recommended_report"):
        for ext in ("csv", "md", "tex"):
            files[root / "results" / "cpu" / "tables" / f"{_legacy(rest)}.{ext}"] = f"{rest},{ext}\n".encode()
    for ext in ("png", "pdf"):
        files[root / "figures" / "cpu" / f"{_legacy('tradeoff_halves')}.{ext}"] = ext.encode()
    files[root / "results" / "cpu" / "tables" / "ablations.csv"] = b"kept\n"
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "README.md").write_text(f"See `results/cpu/tables/{_legacy('cpu_ranked')}.csv` and "
                                    f"`figures/cpu/{_legacy('tradeoff_halves')}.png`; {_legacy('cpu_')}{{a,b}}.\n")
    return files


def test_legacy_names_move_to_what_the_files_hold_and_references_follow(tmp_path):
    mod = load_script("rename_results")
    files = _tree(tmp_path)
    moves = mod.migrate(tmp_path)
    tables, figures = tmp_path / "results" / "cpu" / "tables", tmp_path / "figures" / "cpu"
    assert len(moves) == 11
    for old, new in moves:
        assert not old.exists() and new.read_bytes() == files[old]
    assert sorted(p.name for p in tables.iterdir()) == sorted(
        ["ablations.csv", *(f"{s}.{e}" for s in ("halves_ranked", "halves_report", "recommended_report")
                            for e in ("csv", "md", "tex"))])
    assert sorted(p.name for p in figures.iterdir()) == ["tradeoff_halves.pdf", "tradeoff_halves.png"]
    readme = (tmp_path / "README.md").read_text()
    assert "tables/halves_ranked.csv" in readme and "figures/cpu/tradeoff_halves.png" in readme
    assert f"{_legacy('cpu_')}{{a,b}}" in readme  # not a file's name: left for a person to word
    assert mod.migrate(tmp_path) == []  # a second run finds nothing to do
    assert mod.main(["--root", str(tmp_path), "--check"]) == 0


def test_a_taken_new_name_stops_the_migration_before_anything_moves(tmp_path):
    mod = load_script("rename_results")
    _tree(tmp_path)
    taken = tmp_path / "results" / "cpu" / "tables" / "halves_report.md"
    taken.write_text("another table\n")
    assert mod.main(["--root", str(tmp_path), "--check"]) == 1
    with pytest.raises(mod.RenameError, match="halves_report.md"):
        mod.migrate(tmp_path)
    assert taken.read_text() == "another table\n"
    assert (tmp_path / "results" / "cpu" / "tables" / f"{_legacy('cpu_ranked')}.csv").exists()  # nothing moved
    # a copy left by an interrupted run (the same bytes) is no clash: the old one goes
    taken.write_bytes((tmp_path / "results" / "cpu" / "tables" / f"{_legacy('cpu_report')}.md").read_bytes())
    mod.migrate(tmp_path)
    assert not (tmp_path / "results" / "cpu" / "tables" / f"{_legacy('cpu_report')}.md").exists()


def test_the_repository_holds_no_legacy_name():
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "rename_results.py"), "--check"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout
