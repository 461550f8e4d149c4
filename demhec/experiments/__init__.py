"""The experiment pipeline behind the notebooks, the scripts and the paper's tables.

* :mod:`.pipeline`: profiles, :class:`Experiment`, the data, model and result producers (cached,
  fingerprinted);
* :mod:`.ablations`: the registry of controls and ablations of the CPU reproduction;
* :mod:`.tables`: the paper's tables and figure inputs shaped from result records;
* :mod:`.notebook`: validation of a notebook's ``parameters`` cell.

Notebooks and scripts import this package (``from demhec import experiments as ex``); every name
they use is listed in ``__all__``.
"""

from __future__ import annotations

from .ablations import (
    ABLATION_LABELS,
    ABLATIONS,
    LATE_RUNS,
    NOISE,
    ablation_result,
    paired_gain_result,
)
from .notebook import NotebookContext, check_baselines, notebook_setup
from .pipeline import (
    CORRUPTION_SEED,
    DATASETS_BY_PROFILE,
    PROFILES,
    Experiment,
    Profile,
    base_model,
    baseline_model,
    config_tag,
    corruption_examples,
    demhec_config,
    demhec_model,
    entropy_result,
    eval_data,
    get_profile,
    load_named,
    robustness_result,
    subset,
    train_data,
)
from .tables import (
    ablation_summary,
    before_after_table,
    check_families,
    check_shown,
    check_summary,
    clean_accuracy_with_paper,
    collect_clean_accuracy,
    entropy_summary,
    family_table,
    gain_table,
    paired_summary,
    result_table,
    seed_gain,
    severity_gains,
    severity_means,
    suite_agreement,
    summary_vs_paper,
    wide_table,
    with_paper_source,
)

__all__ = [
    "ABLATIONS",
    "ABLATION_LABELS",
    "CORRUPTION_SEED",
    "DATASETS_BY_PROFILE",
    "Experiment",
    "LATE_RUNS",
    "NOISE",
    "NotebookContext",
    "PROFILES",
    "Profile",
    "ablation_result",
    "ablation_summary",
    "base_model",
    "baseline_model",
    "before_after_table",
    "check_baselines",
    "check_families",
    "check_shown",
    "check_summary",
    "clean_accuracy_with_paper",
    "collect_clean_accuracy",
    "config_tag",
    "corruption_examples",
    "demhec_config",
    "demhec_model",
    "entropy_result",
    "entropy_summary",
    "eval_data",
    "family_table",
    "gain_table",
    "get_profile",
    "load_named",
    "notebook_setup",
    "paired_gain_result",
    "paired_summary",
    "result_table",
    "robustness_result",
    "seed_gain",
    "severity_gains",
    "severity_means",
    "suite_agreement",
    "summary_vs_paper",
    "train_data",
    "subset",
    "wide_table",
    "with_paper_source",
]
