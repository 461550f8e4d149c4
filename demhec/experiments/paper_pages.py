"""The pages of the paper's figures and tables that loop over suites, phases or backbones
(notebooks 01, 02 and 04), one function per page: Figure 2 (:func:`fig2_page`), Figures 3-4
(:func:`fig34_page`) and Table 2 (:func:`table2_page`, with :func:`backbone_contexts`). Like
:mod:`.pages`, each checks what it shows against the result files, saves its tables and returns a
:class:`.pages.Page`; a notebook cell calls it and shows it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from .._common import DemHECError
from ..results import save_table
from .checks import check_entropy_shown, check_number, check_recounted, check_shown, recount_gap
from .inputs import corruption_examples, data_unavailable
from .notebook import NotebookContext
from .pages import Page
from .pipeline import entropy_result, robustness_result
from .prose import describe_entropy, describe_gains
from .tables import before_after_table, entropy_scale, entropy_summary, wide_table

__all__ = ["backbone_contexts", "fig2_page", "fig34_page", "table2_page"]

SUITE_CONSTANTS = {"cifar-c": "CIFAR-10-C's constants, set for 32 px images",
                   "imagecorruptions": "ImageNet-C's constants, set for 224 px images, so on 32 px images several "
                                       "corruptions are harsher"}


def fig2_page(ctx: NotebookContext, suites: Sequence[str], n_images: int) -> Page:
    """The paper's Figure 2: ``n_images`` evaluation images (one per class where possible), clean
    and under each of ``ctx``'s corruptions at its severities, one grid per suite of ``suites``
    (``ctx`` is set up on the first); a page that says why, where the profile's images are not
    on this machine."""
    from .. import plots

    if not isinstance(n_images, int) or isinstance(n_images, bool) or n_images < 1:
        raise DemHECError(f"n_images must be a positive integer, got {n_images!r}")
    contexts = [ctx, *(ctx.with_suite(s) for s in suites[1:])]
    missing = data_unavailable(ctx.exp)
    if missing:
        return Page(missing)
    items = []
    for c in contexts:
        clean, corrupted = corruption_examples(c.exp, c.suite, c.corruptions, c.severities, n_images)
        fig = plots.corruption_grid_figure(clean, corrupted, c.corruptions, c.severities,
                                           title=f"Figure 2, {c.suite} suite: "
                                                 f"{plots.pretty_name(c.exp.effective_dataset)} evaluation images")
        items.append((f"fig2_corruptions_{c.suite}", fig,
                      f"The `{c.suite}` suite ({SUITE_CONSTANTS.get(c.suite, 'its own constants')}): each column follows "
                      "one evaluation image down the rows, clean first, then each corruption at each severity."))
    text = (f"Figure 2 on {plots.pretty_name(ctx.exp.effective_dataset)} evaluation images: {len(clean)} images, clean "
            f"and under {len(ctx.corruptions)} corruptions at S{'/S'.join(map(str, ctx.severities))}, in "
            f"{len(contexts)} suite(s). The same corruption at the same severity differs between suites because their "
            "constants differ; the paper's Figure 2 shows CIFAR images (in `smoke` and `demo` these are the embedded "
            "digits).")
    return Page(text, items)


def fig34_page(ctx: NotebookContext, pooled: bool = False, normalised: bool = False) -> Page:
    """The paper's Figures 3 and 4: eq. 4 at the model's stages for clean and corrupted images
    (``ctx``'s first corruption and severity) before Dem-HEC (Figure 3) and after (Figure 4), each
    layer's means and gap checked against the files and every gap recounted image by image.
    ``pooled`` averages conv maps spatially first; ``normalised`` divides by log width."""
    from .. import plots

    for flag, value in (("pooled", pooled), ("normalised", normalised)):
        if not isinstance(value, bool):
            raise DemHECError(f"{flag} must be True or False, got {value!r}")
    e, corruption, severity = ctx.exp, ctx.corruptions[0], ctx.severities[0]
    where = (f"{plots.pretty_name(e.effective_backbone)} on {plots.pretty_name(e.effective_dataset)}, "
             f"{ctx.suite} suite, {plots.pretty_name(corruption)} S{severity}")
    records, items, frames = {}, [], []
    for phase, number in (("before", 3), ("after", 4)):
        rec = records[phase] = entropy_result(e, phase, corruption, severity, ctx.suite, pooled=pooled)
        fig = plots.entropy_figure(rec["metrics"]["clean"], rec["metrics"]["corrupted"],
                                   title=f"Figure {number}: {where}, {phase} Dem-HEC",
                                   normalise_by=entropy_scale(rec) if normalised else None)
        items.append((f"fig{number}_entropy_{phase}_{e.effective_dataset}_{e.effective_backbone}", fig,
                      f"Figure {number}, {phase} Dem-HEC: each violin is the distribution over evaluation images of one "
                      "layer's entropy (eq. 4), clean in blue (left half) and corrupted in red (right half), shallow "
                      "layers on the left; the dashed lines are the quartiles."))
        frames.append(entropy_summary(rec, normalised=normalised).assign(phase=phase))
    summary = pd.concat(frames, ignore_index=True)
    check_entropy_shown(summary, records, normalised=normalised)  # what is shown is what the results hold
    for row in summary.itertuples():  # each gap shown, recounted image by image from the per-image entropies
        check_number(row.gap, recount_gap(records[row.phase], row.layer, normalised), f"the {row.phase} gap at {row.layer!r}")
    save_table(summary, f"fig3_fig4_entropy_{e.effective_dataset}_{e.effective_backbone}", ctx.tables_dir)
    items.append(("summary", summary,
                  "Each layer's mean entropy for clean and corrupted images and their `gap` (corrupted minus clean, in "
                  "nats, or divided by log width with `normalised=True`). The paper's claim is that the gap grows with "
                  "depth before Dem-HEC (Figure 3) and shrinks after it (Figure 4); the sentence above says what these "
                  "results show."))
    return Page(describe_entropy(summary, normalised=normalised), items, checked=["every gap shown"])


def backbone_contexts(ctx: NotebookContext, backbones: Sequence[str], needs: Sequence[str] = ()
                      ) -> dict[str, NotebookContext]:
    """``ctx`` (set up for the first of ``backbones``) and the same run for each other backbone,
    each printing what runs for it (:meth:`.notebook.NotebookContext.for_backbone`)."""
    return {b: ctx if i == 0 else ctx.for_backbone(b, needs=needs) for i, b in enumerate(backbones)}


def table2_page(contexts: Mapping[str, NotebookContext], dataset: str) -> Page:
    """The paper's Table 2: before/after Dem-HEC per paper backbone (``contexts``, from
    :func:`backbone_contexts`) beside the paper's numbers for ``dataset``; a backbone whose CPU
    stand-in another one already ran is not repeated. Every number is checked against its file
    and recounted from the files' correct-image counts."""
    from .. import plots

    tables, lines, items, done = [], [], [], set()
    for b, c in contexts.items():
        if c.exp.effective_backbone in done:  # two paper backbones share one CPU stand-in
            continue
        done.add(c.exp.effective_backbone)
        before = robustness_result(c.exp, "before", c.suite, c.corruptions, c.severities)
        after = robustness_result(c.exp, "after", c.suite, c.corruptions, c.severities)
        t = before_after_table(before, after, paper="table2", paper_dataset=dataset, paper_backbone=b)
        check_shown(t, {"before": before, "after": after})  # numbers, the files' cells; after == before is an error outside smoke
        check_recounted({"before": before, "after": after}, t)  # each number recounted from the files' correct-image counts
        tables.append(t.assign(backbone=b, model=c.exp.effective_backbone))
        lines.append(f"{b} (run as {plots.pretty_name(c.exp.effective_backbone)}): {describe_gains(before, after)}")
        items.append((f"table2_{b}", wide_table(t, values=["ours", "paper"]),
                      f"{b}: rows are corruptions, `S<s> before ours` / `S<s> after ours` this run's accuracy (%) at "
                      "severity s, `... paper` the paper's Table 2."))
    first = next(iter(contexts.values()))
    save_table(pd.concat(tables, ignore_index=True), f"table2_{first.exp.effective_dataset}_{first.suite}",
               first.tables_dir)
    return Page("\n".join(lines), items, checked=["every number shown"])
