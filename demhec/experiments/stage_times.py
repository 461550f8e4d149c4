"""Wall times of a script's stages, one JSON per stage beside the experiment's results: what
notebook 12 and the README show as measured (a property of the machine, not of the method)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from ..results import read_result, write_result
from .profiles import Experiment, experiment_config

# A stage served from its caches takes well under a second; recording it would replace the time
# of the run that did the work.
MIN_RECORDED_S = 1.0


def stage_time_path(exp: Experiment, stage: str) -> Path:
    """``<cell_dir>/stage_times/<stage>.json``: one file per stage, so that scripts running side
    by side never rewrite each other's times."""
    slug = "".join(c if c.isalnum() or c in "@._-" else "_" for c in stage).strip("_")
    return exp.cell_dir / "stage_times" / f"{slug}.json"


def record_stage_time(exp: Experiment, stage: str, seconds: float) -> dict[str, Any] | None:
    """Record the wall time of one stage of a script (``scripts/cpu_reproduction.py``), with what
    shapes it: the torch thread count, the machine's cores and its load average when the stage
    ended (other jobs on the cores stretch wall time). Stages faster than
    :data:`MIN_RECORDED_S` did no work and are not recorded. Wall time is a property of the
    machine, not of the method: notebook 12 and the README show these as measured, beside the
    step-cost ratios of ``benchmarks/step_cost.py`` that do compare methods."""
    if seconds < MIN_RECORDED_S:
        return None
    return write_result(
        stage_time_path(exp, stage), kind="stage_time", profile=exp.profile,
        config={"stage": stage, "experiment": experiment_config(exp),
                "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()},
        metrics={"wall_s": float(seconds), "load_average_1min": float(os.getloadavg()[0]),
                 "date": time.strftime("%Y-%m-%d")},
        data={"what": "wall time of a script stage"}, seed=exp.seed)


def stage_times(exp: Experiment, contains: str = "") -> list[dict[str, Any]]:
    """The recorded stage times of this setting whose stage name contains ``contains``, by date, then by name."""
    records = [read_result(p) for p in sorted((exp.cell_dir / "stage_times").glob("*.json"))]
    rows = [{"stage": r["config"]["stage"], **r["metrics"], "torch_threads": r["config"]["torch_threads"],
             "cpu_count": r["config"]["cpu_count"]} for r in records if contains in r["config"]["stage"]]
    return sorted(rows, key=lambda r: (r["date"], r["stage"]))
