"""Named mutations of the code the project's conclusions rest on, and whether the tests catch them.

Each mutation changes one exact piece of text of one file (the selection protocol, test-time
adaptation, the controls, the losses, the checks of the pages) the way a plausible mistake would,
and names the tests that should notice. The repository is copied to a temporary folder (without
``.venv``, ``.git``, ``build``, ``results/cache`` and caches), the tests are run there once as they
are (they must pass, or nothing below means anything), then, one mutation at a time, the text is
replaced, the named tests run with this environment's Python (``-m "not expensive"``: the tests of
``make test``), and the text is put back. A mutation is *caught* when those tests fail, *survived*
when they pass; *not applicable* when its original text is no longer in the file exactly once (the
code moved on: update the mutation). The working tree itself is never touched.

``make mutants`` runs them all (minutes, not part of ``make test`` or CI) and writes the report to
``docs/mutants.md``::

    .venv/bin/python scripts/mutants.py                  # all, report to docs/mutants.md
    .venv/bin/python scripts/mutants.py --only halves_swapped tent_reuses_its_copy
    .venv/bin/python scripts/mutants.py --list
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
SKIPPED = (".venv", ".git", "build", "__pycache__", ".pytest_cache", ".ruff_cache", "*.egg-info")
TIMEOUT_S = 900  # one mutation's tests; a hang counts as caught only if the tests say so


class Mutation(NamedTuple):
    name: str
    area: str
    what: str  # the mistake, in words
    path: str
    original: str
    replacement: str
    tests: tuple[str, ...]  # pytest node ids (file::test runs every parameter)


SP = "tests/test_selection_protocol.py"
AD = "tests/test_adaptation.py"
EX = "tests/test_experiments.py"

MUTATIONS = [
    # --- the selection protocol ---------------------------------------------------------------
    Mutation("halves_swapped", "selection protocol",
             "each half's file scored on the other half's images (the index halves swapped)",
             "demhec/experiments/pipeline.py",
             "        idx = eval_halves(labels)[half]\n",
             '        idx = eval_halves(labels)["report" if half == "selection" else "selection"]\n',
             (f"{SP}::test_each_halfs_file_holds_the_outcomes_of_its_own_images",)),
    Mutation("halves_overlap", "selection protocol",
             "the report half starts one image early: the halves share an image of every even class",
             "demhec/experiments/halves.py",
             '        out["report"].append(idx[len(idx) // 2:])\n',
             '        out["report"].append(idx[(len(idx) - 1) // 2:])\n',
             (f"{SP}::test_eval_halves_split_each_class_in_two_fixed_halves",
              f"{SP}::test_each_halfs_file_holds_the_outcomes_of_its_own_images")),
    Mutation("halves_outcomes_unordered", "selection protocol",
             "a half's per-image outcomes stored in another order than its images",
             "demhec/experiments/pipeline.py",
             "pack_outcomes(z.argmax(1).numpy()[idx] == y)",
             "pack_outcomes(np.sort(z.argmax(1).numpy()[idx] == y))",
             (f"{SP}::test_each_halfs_file_holds_the_outcomes_of_its_own_images",)),
    Mutation("select_smallest_gain", "selection protocol",
             "select_run takes the smallest noise gain within the clean-cost limit (idxmin)",
             "demhec/experiments/selection.py",
             "run, rule = within.d_noise_s5.idxmax(), ",
             "run, rule = within.d_noise_s5.idxmin(), ",
             (f"{SP}::test_select_run_takes_the_largest_noise_gain_within_the_clean_cost_limit",)),
    Mutation("select_fallback_smallest", "selection protocol",
             "with no run within the limit, select_run takes the smallest gain minus cost",
             "demhec/experiments/selection.py",
             "(means.d_noise_s5 + means.d_clean).idxmax()",
             "(means.d_noise_s5 + means.d_clean).idxmin()",
             (f"{SP}::test_select_run_breaks_a_tie_by_the_order_of_the_runs_and_falls_back_past_the_limit",)),
    Mutation("select_limit_exclusive", "selection protocol",
             "a clean cost of exactly the limit counts as over it",
             "demhec/experiments/selection.py",
             "within = means[means.d_clean >= -max_clean_cost]",
             "within = means[means.d_clean > -max_clean_cost]",
             (f"{SP}::test_select_run_takes_the_largest_noise_gain_within_the_clean_cost_limit",)),
    Mutation("select_ignores_the_limit", "selection protocol",
             "the clean-cost limit is not applied",
             "demhec/experiments/selection.py",
             "within = means[means.d_clean >= -max_clean_cost]",
             "within = means",
             (f"{SP}::test_select_run_takes_the_largest_noise_gain_within_the_clean_cost_limit",)),
    Mutation("select_controls_are_candidates", "selection protocol",
             "the controls (plain fine-tune, random noise, Gaussian augmentation) can be chosen",
             "demhec/experiments/selection.py",
             'keep = ~(summary.run.eq("base") | summary.run.map(is_control))',
             'keep = ~summary.run.eq("base")',
             (f"{SP}::test_select_run_takes_the_largest_noise_gain_within_the_clean_cost_limit",
              f"{SP}::test_halves_summary_paired_errors_and_the_selection_rule")),
    Mutation("select_first_seed_only", "selection protocol",
             "a run's first seed stands for it instead of the mean over its seeds",
             "demhec/experiments/selection.py",
             'means = summary[keep].groupby("run", sort=False)[["d_clean", "d_noise_s5"]].mean()',
             'means = summary[keep].groupby("run", sort=False)[["d_clean", "d_noise_s5"]].first()',
             (f"{SP}::test_select_run_takes_the_largest_noise_gain_within_the_clean_cost_limit",)),
    # --- test-time adaptation -----------------------------------------------------------------
    Mutation("tent_reuses_its_copy", "test-time adaptation",
             "TENT keeps its adapted copy and optimiser for the next call with the same model and "
             "config: each cell starts from the previous cell's adaptation",
             "demhec/adaptation.py",
             "    net, opt = adapted_model(model, config)\n",
             '    cache = adaptive_predict.__dict__.setdefault("adapted", {})\n'
             '    if (id(model), config) not in cache or config.method != "tent":\n'
             "        cache[(id(model), config)] = adapted_model(model, config)\n"
             "    net, opt = cache[(id(model), config)]\n",
             (f"{AD}::test_every_call_adapts_afresh_from_the_model",
              f"{AD}::test_every_cell_and_every_half_adapts_afresh")),
    Mutation("adapts_the_callers_model", "test-time adaptation",
             "the adaptation works on the caller's model instead of a copy",
             "demhec/adaptation.py",
             "    copy_ = copy.deepcopy(model).eval()\n",
             "    copy_ = model.eval()\n",
             (f"{AD}::test_every_call_adapts_afresh_from_the_model",
              f"{AD}::test_evaluate_with_adaptation_leaves_the_callers_model_unchanged")),
    Mutation("tent_predicts_after_its_step", "test-time adaptation",
             "TENT's predictions of a batch come after the update that batch made",
             "demhec/adaptation.py",
             "            opt.step()\n",
             "            opt.step()\n            logits = net(x)\n",
             (f"{AD}::test_tent_updates_only_the_affine_parameters_one_adam_step_per_batch",)),
    Mutation("bn_prior_ignored", "test-time adaptation",
             "BN adaptation ignores the prior N (always the batch's statistics alone)",
             "demhec/adaptation.py",
             "    w = prior / (prior + x.shape[0])\n",
             "    w = 0.0\n",
             (f"{AD}::test_bn_adaptation_follows_eq2_of_schneider",)),
    Mutation("stream_in_stored_order", "test-time adaptation",
             "the test stream is the set in its stored (class by class) order, not a seeded shuffle",
             "demhec/adaptation.py",
             "    order = np.random.default_rng(config.order_seed).permutation(n)\n",
             "    order = np.arange(n)\n",
             (f"{AD}::test_bn_adaptation_uses_each_batch_of_the_seeded_stream",)),
    # --- the controls -------------------------------------------------------------------------
    Mutation("gaussian_result_discarded", "controls",
             "the Gaussian-augmentation control trains on clean images (gaussian_augment's result "
             "discarded)",
             "demhec/training.py",
             "            x = gaussian_augment(x, cfg.noise_sigma, cfg.noise_clean_share, gen)\n",
             "            gaussian_augment(x, cfg.noise_sigma, cfg.noise_clean_share, gen)\n",
             (f"{SP}::test_the_gaussian_augmentation_control_trains_on_noisy_images",)),
    Mutation("gaussian_no_clean_share", "controls",
             "Gaussian augmentation leaves no image clean",
             "demhec/baselines/noise.py",
             "    s = torch.where(torch.rand(n * world, generator=gen, device=x.device) < clean_share, "
             "torch.zeros_like(s), s)\n",
             "",
             (f"{SP}::test_gaussian_augment_draws_sigma_per_image_and_leaves_a_clean_share",
              f"{SP}::test_the_gaussian_augmentation_control_trains_on_noisy_images")),
    Mutation("gaussian_one_sigma", "controls",
             "Gaussian augmentation draws every image's noise at sigma itself, not sigma ~ U(0, sigma)",
             "demhec/baselines/noise.py",
             "    s = torch.rand(n * world, generator=gen, device=x.device) * sigma\n",
             "    s = torch.rand(n * world, generator=gen, device=x.device) * 0 + sigma\n",
             (f"{SP}::test_gaussian_augment_draws_sigma_per_image_and_leaves_a_clean_share",)),
    Mutation("random_noise_result_discarded", "controls",
             "the random-noise control's x' is the clean image (the uniform draw discarded)",
             "demhec/training.py",
             "                x_he = uniform_ball_samples(x, cfg.eps, generator=gen, noise=_start_noise(x, gen))\n",
             "                x_he = x + 0 * uniform_ball_samples(x, cfg.eps, generator=gen, noise=_start_noise(x, gen))\n",
             (f"{SP}::test_the_random_noise_control_trains_on_uniform_samples_around_its_images",)),
    Mutation("random_noise_ascended", "controls",
             "the random-noise control runs the entropy ascent (it is Dem-HEC again)",
             "demhec/training.py",
             '            if cfg.samples == "uniform":\n',
             "            if False:\n",
             (f"{SP}::test_finetune_random_noise_control_never_runs_the_ascent",)),
    Mutation("uniform_ball_too_narrow", "controls",
             "the random-noise control's draws fill half the eps-ball",
             "demhec/generation.py",
             "    return (x + (2 * noise.to(x.dtype) - 1) * eps).clamp(0, 1)\n",
             "    return (x + (noise.to(x.dtype) - 0.5) * eps).clamp(0, 1)\n",
             (f"{SP}::test_uniform_samples_are_in_the_ball_and_not_ascended",)),
    # --- the losses ---------------------------------------------------------------------------
    Mutation("eq12_alpha_swapped", "losses",
             "eq. 12 weights the clean CE by alpha and the high-entropy CE by 1 - alpha",
             "demhec/training.py",
             '        weights = {"ce_clean": 1 - cfg.alpha, "ce_he": cfg.alpha,',
             '        weights = {"ce_clean": cfg.alpha, "ce_he": 1 - cfg.alpha,',
             ("tests/test_reference.py::test_one_demhec_step_equals_eq12_by_hand",)),
    Mutation("info_nce_one_direction", "losses",
             "InfoNCE (eq. 10) only from x to x', not symmetric",
             "demhec/losses.py",
             "    return 0.5 * (F.cross_entropy(sim, target) + F.cross_entropy(sim.t(), target))\n",
             "    return F.cross_entropy(sim, target)\n",
             ("tests/test_core.py::test_info_nce_equals_loop",
              f"{SP}::test_masked_info_nce_equals_loop_reference")),
    Mutation("info_nce_unnormalised", "losses",
             "InfoNCE on raw features instead of l2-normalised ones",
             "demhec/losses.py",
             "    v = F.normalize(v.float(), dim=1)\n",
             "    v = v.float()\n",
             ("tests/test_core.py::test_info_nce_equals_loop",)),
    Mutation("info_nce_mask_drops_the_positive", "losses",
             "masked InfoNCE removes each anchor's own positive with its class",
             "demhec/losses.py",
             "        same.fill_diagonal_(False)  # the positive stays\n",
             "",
             (f"{SP}::test_masked_info_nce_equals_loop_reference",)),
    Mutation("kd_without_t_squared", "losses",
             "the distillation loss (eq. 11) without its T^2 factor",
             "demhec/losses.py",
             "    return T * T * kl.mean()\n",
             "    return kl.mean()\n",
             ("tests/test_core.py::test_kd_loss", "tests/test_reference.py::test_one_demhec_step_equals_eq12_by_hand")),
    Mutation("kd_direction_swapped", "losses",
             "the default distillation direction is the literal eq. 11's (student || teacher)",
             "demhec/losses.py",
             "        kl = (log_t.exp() * (log_t - log_s)).sum(1)\n",
             "        kl = (log_s.exp() * (log_s - log_t)).sum(1)\n",
             ("tests/test_core.py::test_kd_loss", "tests/test_reference.py::test_one_demhec_step_equals_eq12_by_hand")),
    Mutation("jsd_not_averaged", "losses",
             "the Jensen-Shannon consistency loss sums its views' divergences instead of averaging",
             "demhec/losses.py",
             '    return sum(F.kl_div(log_mixture, p, reduction="batchmean") for p in probs) / len(probs)\n',
             '    return sum(F.kl_div(log_mixture, p, reduction="batchmean") for p in probs)\n',
             ("tests/test_baselines.py::test_js_divergence_loss",)),
    # --- the pages ----------------------------------------------------------------------------
    Mutation("after_equals_before_warns", "pages",
             "a result that is its base model's all over again only warns, outside smoke too",
             "demhec/experiments/checks.py",
             '    if str(after.get("profile")).split("_")[-1] == "smoke":\n',
             "    if True:\n",
             (f"{EX}::test_check_shown_catches_a_table_that_is_not_its_results",
              f"{EX}::test_ablation_check_catches_a_wrong_row")),
    Mutation("recount_reads_the_table", "pages",
             "the recount reads the accuracy the table states instead of the correct-image counts",
             "demhec/experiments/checks.py",
             '        return float(np.mean([100.0 * r["correct"] / r["n"] for r in rows]))\n',
             '        return float(np.mean([r["accuracy"] for r in rows]))\n',
             (f"{EX}::test_recount_reads_the_raw_outcomes_not_the_table",)),
    Mutation("entropy_normalisation_not_drawn", "pages",
             "the entropy figures ignore normalise_by (raw entropies on a 'normalised' axis)",
             "demhec/plots.py",
             "            values = _as_numpy(source[name], name) / scale.get(name, 1.0)\n",
             "            values = _as_numpy(source[name], name)\n",
             (f"{SP}::test_entropy_grid_figure_draws_each_panel",
              "tests/test_plots.py::test_entropy_figure_single_layer_and_normalisation")),
]


def copy_repository(dest: Path) -> Path:
    """The working tree (uncommitted changes included) without the environment and caches."""
    def ignore(folder: str, names: list[str]) -> set[str]:
        out = set(shutil.ignore_patterns(*SKIPPED)(folder, names))
        if Path(folder).resolve() == ROOT / "results":
            out.add("cache")  # the corrupted-set caches: gigabytes the tests rebuild as they need
        return out

    shutil.copytree(ROOT, dest, ignore=ignore, symlinks=True)
    return dest


def run_tests(repo: Path, tests: tuple[str, ...], log: Path) -> tuple[int, float]:
    """pytest over ``tests`` in ``repo`` with this Python: (exit code, seconds)."""
    env = {**os.environ, "PYTHONPATH": str(repo), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("DEMHEC_FAIL_ON_SKIP", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not expensive", *tests]
    t0 = time.perf_counter()
    with log.open("w") as f:
        try:
            rc = subprocess.run(cmd, cwd=repo, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=TIMEOUT_S).returncode
        except subprocess.TimeoutExpired:
            rc = -1
    return rc, time.perf_counter() - t0


def check_imports_the_copy(repo: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(repo)}
    out = subprocess.run([sys.executable, "-c", "import demhec; print(demhec.__file__)"], cwd=repo, env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    if not Path(out).resolve().is_relative_to(repo.resolve()):
        raise SystemExit(f"the copy's tests would import demhec from {out}, not from the copy {repo}")


def last_lines(log: Path, n: int = 3) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return " / ".join(lines[-n:])


def report(results: list[dict], baseline: dict, path: Path) -> None:
    caught = [r for r in results if r["result"] == "caught"]
    survived = [r for r in results if r["result"] == "survived"]
    other = [r for r in results if r["result"] not in ("caught", "survived")]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    lines = [
        "# Mutation report",
        "",
        "What `make mutants` (`scripts/mutants.py`) found: each named mutation below changes one exact piece",
        "of the code the project's conclusions rest on the way a plausible mistake would; *caught* means the",
        "tests named for it (all of them in `make test`) fail with the mutation applied, *survived* that",
        "they pass. The mutations are applied to a temporary copy of the working tree, one at a time. Run",
        "on demand, not in CI; this file is its last report.",
        "",
        f"Last run: {time.strftime('%Y-%m-%d')}, on commit {commit or 'unknown'} plus the working tree's changes. "
        f"The named tests without a mutation: {baseline['result']} ({baseline['seconds']:.0f} s).",
        "",
        f"**{len(caught)} caught, {len(survived)} survived"
        + (f", {len(other)} not run ({', '.join(sorted({r['result'] for r in other}))})" if other else "") + "**"
        + f" of {len(results)}.",
        "",
        "| mutation | area | the mistake | file | result | tests | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        m = r["mutation"]
        tests = "<br>".join(f"`{t.split('::')[-1] if '::' in t else t}`" for t in m.tests)
        lines.append(f"| `{m.name}` | {m.area} | {m.what} | `{m.path}` | **{r['result']}** | {tests} | {r['seconds']:.0f} |")
    if survived:
        lines += ["", "Survived (the tests named do not see these mistakes):", ""]
        lines += [f"- `{r['mutation'].name}`: {r['detail']}" for r in survived]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", metavar="NAME", help="run these mutations only")
    p.add_argument("--list", action="store_true", help="list the mutations and exit")
    p.add_argument("--report", default=None,
                   help="where to write the report (default: docs/mutants.md when every mutation runs)")
    args = p.parse_args(argv)

    names = [m.name for m in MUTATIONS]
    if len(set(names)) != len(names):
        raise SystemExit("two mutations share a name")
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name:36} {m.area:22} {m.what}")
        return 0
    chosen = MUTATIONS
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            raise SystemExit(f"unknown mutation(s) {', '.join(unknown)}; valid: {', '.join(names)}")
        chosen = [m for m in MUTATIONS if m.name in args.only]

    with tempfile.TemporaryDirectory(prefix="demhec-mutants-") as tmp:
        repo = copy_repository(Path(tmp) / "repo")
        check_imports_the_copy(repo)
        logs = Path(tmp) / "logs"
        logs.mkdir()
        every_test = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        print(f"the named tests without a mutation ({len(every_test)}) ...", flush=True)
        rc, seconds = run_tests(repo, every_test, logs / "baseline.log")
        baseline = {"result": "pass" if rc == 0 else "FAIL", "seconds": seconds}
        if rc != 0:
            print((logs / "baseline.log").read_text()[-3000:])
            raise SystemExit("the named tests fail without any mutation: fix them first (nothing else is reported)")
        results = []
        for m in chosen:
            target = repo / m.path
            text = target.read_text()
            if text.count(m.original) != 1:
                results.append({"mutation": m, "result": "not applicable", "seconds": 0.0,
                                "detail": f"its original text occurs {text.count(m.original)} times in {m.path}"})
                print(f"{m.name}: not applicable ({results[-1]['detail']})", flush=True)
                continue
            target.write_text(text.replace(m.original, m.replacement))
            try:
                rc, seconds = run_tests(repo, m.tests, logs / f"{m.name}.log")
            finally:
                target.write_text(text)
            # 1: tests failed; 2: they could not even be collected (the mutation broke an import)
            result = {0: "survived", 1: "caught", 2: "caught"}.get(rc, "timed out" if rc == -1 else f"error (pytest exit {rc})")
            results.append({"mutation": m, "result": result, "seconds": seconds,
                            "detail": last_lines(logs / f"{m.name}.log")})
            print(f"{m.name}: {result} ({seconds:.0f} s)", flush=True)
        path = args.report or (None if args.only else str(ROOT / "docs" / "mutants.md"))
        if path:
            report(results, baseline, Path(path))
            print(f"report: {path}")
    return 1 if any(r["result"] != "caught" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
