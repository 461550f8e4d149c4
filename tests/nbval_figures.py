"""A pytest plugin for the notebooks' smoke run (``make notebooks-smoke``, nbval): a cell that
builds a figure (:data:`demhec.experiments.notebook.FIGURE_CALL`) fails unless it shows it, as
an ``image/png`` output. Loaded with ``-p tests.nbval_figures``."""

from __future__ import annotations

import pytest

from demhec.experiments.notebook import figure_cells_without_image


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield
    outputs = getattr(item, "test_outputs", None)
    cell = getattr(item, "cell", None)
    if cell is not None and outputs is not None:
        executed = {"cell_type": cell.get("cell_type"), "source": cell.get("source", ""), "outputs": outputs}
        if figure_cells_without_image([executed]):
            raise AssertionError(f"{item.name}: this cell builds a figure but shows no image/png output "
                                 "(save and show it with demhec.plots.show_figure)")
    return result
