"""The experiment pipeline behind the notebooks, the scripts and the paper's tables, one module
per concept; a notebook reads them as sub-namespaces (``from demhec import experiments as ex``,
then ``ex.pipeline.robustness_result(...)``, ``ex.tables.wide_table(...)``):

* :mod:`.profiles`: the profiles (the scale of every experiment) and :class:`Experiment`;
* :mod:`.runs`: :class:`Run`, one record per model a study trains or scores, and the CPU
  reproduction's controls and ablations;
* :mod:`.layout`: where every file lives (:func:`.layout.result_path`, whose docstring is the layout);
* :mod:`.inputs`: an experiment's images and corrupted sets; :mod:`.model_cache`: its models;
* :mod:`.pipeline`: the result producers (scored on the suites, on the halves, entropies);
* :mod:`.halves`: the evaluation split's two halves and per-image outcomes;
* :mod:`.study`: the controls and ablations run by name, what exists of them, their divergences;
* :mod:`.tables`: table shapers and figure inputs; :mod:`.checks`: what a notebook checks of what
  it shows; :mod:`.prose`: findings in words;
* :mod:`.selection`: the selection protocol and its records; :mod:`.verdict`: its verdicts;
* :mod:`.gpu`: the GPU run's records; :mod:`.stage_times`: scripts' wall times;
* :mod:`.notebook`: a notebook's first cell; :mod:`.pages`: page sections a notebook shows, and
  those of the CPU reproduction's pages: :mod:`.cpu_pages` (the short budget, the paper's schedule,
  test-time adaptation, the closing findings), :mod:`.ablation_pages`, :mod:`.selection_pages`;
  :mod:`.paper_pages`: the pages of Figure 2, Figures 3-4 and Table 2;
* :mod:`.comparison`, :mod:`.comparison_tables`: the comparison with the methods of Tables 3-4 at
  A.3 (its runs and queue; its tables and verdict);
* :mod:`.findings`: the project's conclusions from all committed evidence.
"""

from __future__ import annotations

from . import (
    ablation_pages,
    checks,
    comparison,
    comparison_tables,
    cpu_pages,
    findings,
    gpu,
    halves,
    inputs,
    layout,
    model_cache,
    notebook,
    pages,
    paper_pages,
    pipeline,
    profiles,
    prose,
    runs,
    selection,
    selection_pages,
    stage_times,
    study,
    tables,
    verdict,
)
from .notebook import start_notebook
from .profiles import Experiment
from .runs import Run

__all__ = [
    "Experiment",
    "Run",
    "ablation_pages",
    "checks",
    "comparison",
    "comparison_tables",
    "cpu_pages",
    "findings",
    "gpu",
    "halves",
    "inputs",
    "layout",
    "model_cache",
    "notebook",
    "pages",
    "paper_pages",
    "pipeline",
    "profiles",
    "prose",
    "runs",
    "selection",
    "selection_pages",
    "stage_times",
    "start_notebook",
    "study",
    "tables",
    "verdict",
]
