"""A notebook page is the product: its cells call the library and show what it returns.

Every committed notebook keeps to a few code lines, compares nothing against a number typed in a
cell (a threshold belongs in the library, e.g. ``demhec.experiments.selection.CHOICE_RULE``) and
branches nowhere (no ``if``, ``for``, ``while``, ``try`` or ``with`` statement: a loop over results,
a check or a fallback is a library function's). Comprehensions and conditional expressions that
only shape the parameters stay allowed. The rules are read from each cell's syntax tree, so a
comment or a string that mentions ``>= 10`` is not a comparison.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from tests.test_project import NOTEBOOKS

MAX_CODE_LINES = 60
STATEMENTS = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.Try, ast.With, ast.AsyncWith,
              ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def code_cells(source: dict) -> list[str]:
    """The code cells of a notebook (an nbformat dict) as text."""
    return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in source["cells"] if c["cell_type"] == "code"]


def _python(cell: str) -> str:
    """A cell's text without IPython's magics and shell lines (``%matplotlib inline``, ``!ls``)."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in cell.splitlines())


def _number(node: ast.AST) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        node = node.operand
    return isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool)


def thin_problems(source: dict) -> list[str]:
    """What makes a notebook more than a page: more than :data:`MAX_CODE_LINES` code lines, a
    comparison against a numeric literal, a branching or defining statement; [] for a thin one."""
    cells = code_cells(source)
    problems = []
    lines = sum(len(cell.splitlines()) for cell in cells)
    if lines > MAX_CODE_LINES:
        problems.append(f"{lines} code lines (at most {MAX_CODE_LINES})")
    for i, cell in enumerate(cells):
        tree = ast.parse(_python(cell))
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and any(_number(x) for x in (node.left, *node.comparators)):
                problems.append(f"code cell {i}, line {node.lineno}: compares against a number typed in the cell "
                                f"({ast.unparse(node)})")
            elif isinstance(node, STATEMENTS):
                problems.append(f"code cell {i}, line {node.lineno}: {type(node).__name__} statement")
    return problems


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_a_thin_page(nb: Path):
    assert not thin_problems(json.loads(nb.read_text())), nb.name


def _notebook(*cells: str) -> dict:
    return {"cells": [{"cell_type": "markdown", "source": "# if x >= 10: a heading, not code"},
                      *({"cell_type": "code", "source": c} for c in cells)]}


def test_the_thin_rule_catches_what_it_forbids():
    page = ("%matplotlib inline\nfrom demhec import experiments as ex\n\nctx = ex.cpu_pages.start_cpu_notebook(globals())",
            "page = ex.cpu_pages.suites_page(ctx)  # thresholds (>= 10) live in the library\npage.show(ctx.figures_dir)",
            'names = [b.strip() for b in backbones.split(",") if b.strip()]\nkey = "t1" if dataset == "cifar10" else "t5"')
    assert thin_problems(_notebook(*page)) == []
    # a typed threshold, in any comparison and on either side
    for cell in ('print("met" if d.d_noise_s5.mean() >= 10 else "not met")', "ok = -4 <= gain.clean",
                 "within = rep.d_clean >= -4 and rep.d_noise_s5 > 9.5", "x = [r for r in rows if r.seed == 0]"):
        problems = thin_problems(_notebook(*page, cell))
        assert problems and all("compares against a number typed in the cell" in p for p in problems), cell
    # branching and defining statements
    for cell, kind in (("if ready:\n    print(1)", "If"), ("for s in seeds:\n    page.show(s)", "For"),
                       ("while True:\n    break", "While"), ("try:\n    f()\nexcept Exception:\n    pass", "Try"),
                       ("def f():\n    return 1", "FunctionDef")):
        assert any(f": {kind} statement" in p for p in thin_problems(_notebook(*page, cell))), kind
    # too many lines
    long = "\n".join(f"x{i} = ex.tables.result_table(rec)" for i in range(61))
    assert thin_problems(_notebook(long)) == ["61 code lines (at most 60)"]
    assert thin_problems(_notebook("\n".join(long.splitlines()[:60]))) == []
