"""Rename the tables and figures whose names said which issue made them to names that say what
they hold, and rewrite the references that name them.

A file under ``results/<profile>/tables/`` or ``figures/<profile>/`` named ``issue<N>_<rest>.<ext>``
becomes ``<new>.<ext>``, ``<new>`` being :data:`NEW_NAMES`'s name for ``<rest>`` or ``<rest>``
itself; every extension of a name moves together (``.csv``/``.md``/``.tex``, ``.png``/``.pdf``).
A file is moved only where its new name is free or already holds the same bytes (then the old
copy is removed), so nothing is overwritten and a second run does nothing. Text files that name an
old file (``README.md``) get the new name, where that file exists. The code writes the new names (notebooks 09-13), so the
notebooks and the README's blocks regenerate them as they are::

    .venv/bin/python scripts/rename_results.py            # results/, figures/ and README.md here
    .venv/bin/python scripts/rename_results.py --check    # exit 1 while an old name is left
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What a legacy name looks like: the number first, then what the file holds.
LEGACY = re.compile(r"^issue\d+_(?P<rest>\w+)$")
# The legacy names whose remainder alone does not say what the file holds.
NEW_NAMES = {
    "cpu_ranked": "halves_ranked",  # every run on the report half, ranked by the clean cost it gives back
    "cpu_report": "halves_report",  # every run and seed on the report half
    "cpu_selection": "halves_selection",  # every run and seed on the selection half
    "entropy_report_half": "fig3_fig4_entropy_report_half",  # Figures 3-4's layer entropies, report half
}
FOLDERS = ("results/*/tables", "figures/*")
TEXTS = ("README.md",)


class RenameError(RuntimeError):
    """A file cannot be renamed without losing another."""


def new_stem(stem: str) -> str | None:
    """The new name of a legacy file stem, None for a stem that is not legacy."""
    m = LEGACY.match(stem)
    return None if m is None else NEW_NAMES.get(m["rest"], m["rest"])


def planned(root: Path, folders: Iterable[str] = FOLDERS) -> list[tuple[Path, Path]]:
    """(old path, new path) for every legacy file under ``root``'s ``folders`` (glob patterns)."""
    moves = []
    for pattern in folders:
        for folder in sorted(p for p in root.glob(pattern) if p.is_dir()):
            for path in sorted(folder.iterdir()):
                stem = new_stem(path.name.split(".", 1)[0]) if path.is_file() else None
                if stem is not None:
                    moves.append((path, folder / (stem + path.name[len(path.name.split(".", 1)[0]):])))
    return moves


def rewrite_references(text: str, stems: dict[str, str]) -> str:
    """``text`` with every whole-word occurrence of an old stem replaced by its new one."""
    if not stems:
        return text
    words = re.compile(r"\b(" + "|".join(map(re.escape, sorted(stems, key=len, reverse=True))) + r")\b")
    return words.sub(lambda m: stems[m[1]], text)


def migrate(root: Path = ROOT, folders: Iterable[str] = FOLDERS, texts: Iterable[str] = TEXTS) -> list[tuple[Path, Path]]:
    """Move every legacy file under ``root`` to its new name and rewrite ``texts`` (paths under
    ``root``) to name the new files; returns the moves made. Refuses, moving nothing, when a new
    name is taken by other bytes."""
    moves = planned(root, folders)
    clash = [(old, new) for old, new in moves if new.exists() and new.read_bytes() != old.read_bytes()]
    if clash:
        raise RenameError("new names already hold other files: " + ", ".join(str(n) for _, n in clash))
    for old, new in moves:
        if new.exists():  # the same bytes: an earlier, interrupted run copied it
            old.unlink()
        else:
            shutil.move(old, new)
    stems = {w: new_stem(w) for w in _legacy_words(root, texts) if new_stem(w) in _stems(root, folders)}
    for name in texts:
        path = root / name
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            changed = rewrite_references(text, stems)
            if changed != text:
                path.write_text(changed, encoding="utf-8")
    return moves


def _stems(root: Path, folders: Iterable[str]) -> set[str]:
    """The stems of the files under ``root``'s ``folders``: a reference is rewritten only to a
    file that exists."""
    return {p.name.split(".", 1)[0] for pattern in folders for p in root.glob(f"{pattern}/*") if p.is_file()}


def _legacy_words(root: Path, texts: Iterable[str]) -> set[str]:
    """The legacy file stems named in ``texts``."""
    found = set()
    for name in texts:
        path = root / name
        if path.is_file():
            found |= {w for w in re.findall(r"\bissue\d+_\w+", path.read_text(encoding="utf-8")) if new_stem(w)}
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=ROOT)
    p.add_argument("--check", action="store_true", help="exit 1 while a legacy name is left; move nothing")
    args = p.parse_args(argv)
    if args.check:
        named = [w for w in sorted(_legacy_words(args.root, TEXTS)) if new_stem(w) in _stems(args.root, FOLDERS)]
        left = [old for old, _ in planned(args.root)] + named
        for item in left:
            print(f"legacy name left: {item}")
        return 1 if left else 0
    try:
        moves = migrate(args.root)
    except RenameError as e:
        print(f"rename_results: error: {e}", file=sys.stderr)
        return 2
    for old, new in moves:
        print(f"{old.relative_to(args.root)} -> {new.relative_to(args.root)}")
    print(f"renamed {len(moves)} files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
