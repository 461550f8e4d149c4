"""The selection protocol (two halves of the evaluation split), the run records and the layout of
their files, and the controls' options (random-noise control, Gaussian-noise augmentation, masked
InfoNCE, KD's literal direction)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from demhec import (
    DemHECConfig,
    finetune,
    high_entropy_samples,
    info_nce,
    prediction_entropy,
    results,
    training,
)
from demhec import experiments as ex
from demhec._common import DemHECError
from demhec.evaluation import paired_difference
from demhec.generation import uniform_ball_samples
from demhec.results import fingerprint
from tests.conftest import TinyNet, load_script

ROOT = Path(__file__).resolve().parents[1]

# --- masked InfoNCE -----------------------------------------------------------------------------


def _masked_info_nce_loop(v, w, labels, tau):
    """Eq. 10 written as two loops over anchors, the other images of an anchor's class left out
    of its negatives."""
    vn, wn = F.normalize(v, dim=1), F.normalize(w, dim=1)
    n, total = len(v), 0.0
    for i in range(n):
        keep = [j for j in range(n) if j == i or labels[j] != labels[i]]
        for a, b in ((vn, wn), (wn, vn)):
            num = math.exp(float(a[i] @ b[i]) / tau)
            den = sum(math.exp(float(a[i] @ b[j]) / tau) for j in keep)
            total += math.log(num / den)
    return -total / (2 * n)


def test_masked_info_nce_equals_loop_reference():
    torch.manual_seed(0)
    v, w = torch.randn(8, 5), torch.randn(8, 5)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2])
    for tau in (0.2, 0.5):
        assert info_nce(v, w, tau, labels).item() == pytest.approx(_masked_info_nce_loop(v, w, labels, tau), rel=1e-5)
    # all labels distinct: nothing is removed, eq. 10 itself
    assert info_nce(v, w, 0.2, torch.arange(8)).item() == pytest.approx(info_nce(v, w, 0.2).item(), rel=1e-6)
    # one class only: each anchor keeps its positive alone, the loss is 0
    assert info_nce(v, w, 0.2, torch.zeros(8, dtype=torch.long)).item() == pytest.approx(0.0, abs=1e-6)
    # the masked loss is lower: fewer negatives in every denominator
    assert info_nce(v, w, 0.2, labels) < info_nce(v, w, 0.2)
    with pytest.raises(DemHECError, match="labels"):
        info_nce(v, w, 0.2, labels[:3])


def test_finetune_passes_labels_to_info_nce_only_when_masked(monkeypatch):
    seen = []
    real = training.info_nce

    def spy(v, w, tau, labels=None):
        seen.append(None if labels is None else labels.clone())
        return real(v, w, tau, labels)

    monkeypatch.setattr(training, "info_nce", spy)
    g = torch.Generator().manual_seed(0)
    data = ((torch.rand(8, 3, 8, 8, generator=g) * 255).to(torch.uint8), torch.randint(0, 4, (8,), generator=g))
    for negatives in ("all", "other_classes"):
        cfg = DemHECConfig(epochs=1, batch_size=8, max_steps=1, warmup_epochs=0, augment="none", steps=1,
                           negatives=negatives)
        torch.manual_seed(0)
        finetune(TinyNet(), data, cfg)
    assert seen[0] is None and torch.equal(seen[1].sort().values, data[1].sort().values)  # the batch's labels


# --- the random-noise control -------------------------------------------------------------------


def test_uniform_samples_are_in_the_ball_and_not_ascended(tiny_net):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 3, 8, 8, generator=g)
    x[:4] = 0.0  # images at the edge of [0, 1]: the clip must hold
    x[4:8] = 1.0
    eps = 8 / 255
    u = uniform_ball_samples(x, eps, generator=torch.Generator().manual_seed(3))
    assert (u - x).abs().max() <= eps + 1e-6 and u.min() >= 0 and u.max() <= 1
    # at the edges, the half of the ball outside [0, 1] is clipped onto the edge
    assert 0.45 < (u[:4] == 0).float().mean() < 0.55 and 0.45 < (u[4:8] == 1).float().mean() < 0.55
    # uniform in the ball: away from the edges of [0, 1] the offsets' quantiles are those of U(-eps, eps)
    inner = (x > eps) & (x < 1 - eps)
    d = (u - x)[inner] / eps
    q = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])
    torch.testing.assert_close(d.quantile(q), 2 * q - 1, atol=0.03, rtol=0)
    # not ascended: exactly the start of Alg. 2 from the same draws (an ascent of step 0)
    start = high_entropy_samples(tiny_net, x, eps, 0.0, 1, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(u, start, atol=1e-7, rtol=0)
    # the ascent from the same start raises the entropy; the control leaves it where noise puts it
    he = high_entropy_samples(tiny_net, x, eps, 2 / 255, 5, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        h_u, h_he = prediction_entropy(tiny_net.eval()(u)).mean(), prediction_entropy(tiny_net(he)).mean()
    assert h_he > h_u


def test_finetune_random_noise_control_never_runs_the_ascent(monkeypatch):
    made = []

    def no_ascent(*a, **kw):
        raise AssertionError("the random-noise control ran the entropy ascent")

    real = training.uniform_ball_samples

    def spy(x, eps, **kw):
        out = real(x, eps, **kw)
        made.append((x, out, eps))
        return out

    monkeypatch.setattr(training, "high_entropy_samples", no_ascent)
    monkeypatch.setattr(training, "uniform_ball_samples", spy)
    g = torch.Generator().manual_seed(0)
    data = ((torch.rand(16, 3, 8, 8, generator=g) * 255).to(torch.uint8), torch.randint(0, 4, (16,), generator=g))
    cfg = DemHECConfig(epochs=1, batch_size=8, max_steps=2, warmup_epochs=0, augment="none", samples="uniform")
    torch.manual_seed(0)
    finetune(TinyNet(), data, cfg)
    assert len(made) == 2
    for x, u, eps in made:
        assert eps == cfg.eps and (u - x).abs().max() <= cfg.eps + 1e-6 and not torch.equal(u, x)


# --- Gaussian-noise augmentation ----------------------------------------------------------------


def test_gaussian_augment_draws_sigma_per_image_and_leaves_a_clean_share():
    x = torch.full((2000, 3, 16, 16), 0.5)
    out = training.gaussian_augment(x, 0.1, 0.5, torch.Generator().manual_seed(0))
    std = (out - x).flatten(1).std(1)
    clean = std == 0
    assert 0.45 < clean.float().mean() < 0.55
    noisy = std[~clean]
    assert noisy.max() < 0.1 * 1.1 and noisy.min() < 0.01  # sigmas spread over [0, 0.1]
    assert abs(noisy.mean().item() - 0.05) < 0.005  # uniform in [0, 0.1]: mean 0.05
    assert out.min() >= 0 and out.max() <= 1
    again = training.gaussian_augment(x, 0.1, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert torch.equal(training.gaussian_augment(x, 0.1, 1.0, torch.Generator().manual_seed(0)), x)


def _config(exp, name):
    """The config of the study's run ``name`` in ``exp`` (the profile's, with the run's changes)."""
    return ex.runs.get(name).config(exp.demhec_config)


def _trained_on(cfg, n=16):
    """Fine-tune a TinyNet with ``cfg`` on n random 8x8 images and return, per forward pass of the
    student, the images it was given (the inputs its training losses were computed on), with
    the clean training images as floats in [0, 1]."""
    g = torch.Generator().manual_seed(0)
    images, labels = (torch.rand(n, 3, 8, 8, generator=g) * 255).to(torch.uint8), torch.randint(0, 4, (n,), generator=g)
    torch.manual_seed(0)
    model, seen = TinyNet(), []
    model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().float().clone()))
    finetune(model, (images, labels), cfg, teacher=TinyNet())  # a teacher of its own: no hook on it
    return seen, images.float() / 255


def _nearest(x, clean):
    """For each image of ``x``, the clean training image it is closest to, and the difference."""
    d = (x[:, None] - clean[None]).flatten(2).norm(dim=2)
    src = clean[d.argmin(1)]
    return src, x - src


def test_the_gaussian_augmentation_control_trains_on_noisy_images():
    """Rusak et al.'s augmentation as the control uses it: the images the model is trained on are
    the training images with per-image Gaussian noise of sigma in [0, noise_sigma], about a
    clean share of them left as they are; with noise_sigma 0, the training images themselves."""
    cfg = _config(ex.Experiment(profile="smoke"), "gaussian_aug")
    assert (cfg.alpha, cfg.lambda_c, cfg.lambda_kd, cfg.noise_sigma) == (0, 0, 0, pytest.approx(0.10))
    cfg = dataclasses.replace(cfg, augment="none", batch_size=8, epochs=4, max_steps=4, noise_clean_share=0.5)
    seen, clean = _trained_on(cfg)
    assert len(seen) == 4 and all(x.shape == (8, 3, 8, 8) for x in seen)  # one pass per step
    x = torch.cat(seen)
    src, noise = _nearest(x, clean)
    std = noise.flatten(1).std(1)
    untouched = (noise == 0).flatten(1).all(1)
    assert 0.2 < untouched.float().mean() < 0.8  # the clean share (half, of 32 draws)
    assert (std[~untouched] > 0.005).all() and std.max() < 0.1 * 1.1  # noise of sigma <= 0.1 on the others
    assert x.min() >= 0 and x.max() <= 1
    off = dataclasses.replace(cfg, noise_sigma=0.0)
    seen, clean = _trained_on(off)
    assert all((_nearest(x, clean)[1] == 0).all() for x in seen)  # off at 0: the training images


def test_the_random_noise_control_trains_on_uniform_samples_around_its_images():
    """The random-noise control's x': the model's second pass of every step sees each image of the
    first moved uniformly within the eps-ball (clipped to [0, 1]), never the image itself."""
    cfg = _config(ex.Experiment(profile="smoke"), "random_noise")
    assert cfg.samples == "uniform" and cfg.alpha > 0 and cfg.lambda_c > 0
    cfg = dataclasses.replace(cfg, augment="none", batch_size=8, epochs=1, max_steps=2)
    seen, clean = _trained_on(cfg)
    assert len(seen) == 4  # the clean pass and the x' pass of each of the two steps
    for x, x_he in zip(seen[::2], seen[1::2]):
        assert (_nearest(x, clean)[1] == 0).all()  # the first pass: the training images
        d = x_he - x
        assert d.abs().max() <= cfg.eps + 1e-6 and x_he.min() >= 0 and x_he.max() <= 1
        assert (d.flatten(1).abs().mean(1) > cfg.eps / 4).all()  # every image moved, spread over the ball


# --- config fields and the run registry ---------------------------------------------------------


def test_new_fields_keep_the_paper_defaults_and_the_old_fingerprints():
    cfg = DemHECConfig()
    assert (cfg.samples, cfg.negatives, cfg.noise_sigma, cfg.kd_direction) == ("ascent", "all", 0.0, "teacher_student")
    keys = fingerprint({"c": cfg})
    assert not any(k in keys for k in ("c.samples", "c.negatives", "c.noise_sigma", "c.noise_clean_share"))
    assert fingerprint({"c": dataclasses.replace(cfg, samples="uniform")})["c.samples"] == "uniform"
    with pytest.raises(DemHECError, match="sample generation"):
        DemHECConfig(samples="gauss")
    with pytest.raises(DemHECError, match="negatives"):
        DemHECConfig(negatives="same")
    with pytest.raises(DemHECError, match="noise_sigma"):
        DemHECConfig(noise_sigma=-0.1)


@pytest.mark.parametrize("run, changed", [
    ("random_noise", {"samples": "uniform"}),
    ("infonce_masked", {"negatives": "other_classes"}),
    ("kd_literal", {"kd_direction": "student_teacher"}),
    ("bn_frozen", {"bn": "frozen"}),
    ("steps1", {"steps": 1}),
    ("eps2", {"eps": 2 / 255, "step_size": 0.5 / 255}),
    ("gaussian_aug", {"alpha": 0.0, "lambda_c": 0.0, "lambda_kd": 0.0, "noise_sigma": 0.1}),
])
def test_each_control_is_one_change_from_the_profile_config(run, changed):
    exp = ex.Experiment(profile="cpu")
    cfg, tag = _config(exp, run), ex.runs.get(run).stem
    base = exp.demhec_config
    diff = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(base, f.name)}
    assert diff == pytest.approx(changed) if all(isinstance(v, float) for v in changed.values()) else diff == changed
    assert tag == f"after_{run}" and run in ex.runs.CONTROLS and run not in ex.runs.ABLATIONS
    assert {"random_noise", "gaussian_aug"} <= set(ex.gpu.GPU_A_RUNS)


def test_controls_of_another_config_share_its_changes():
    exp = ex.Experiment(profile="cpu")
    config = _config(exp, "late_frozen_tuned")
    assert ex.runs.control_of("plain", "demhec") == "plain"  # the paper config's controls keep their names
    name = ex.runs.control_of("random_noise", "late_frozen_tuned")
    assert name == "random_noise@late_frozen_tuned"
    cfg, tag = _config(exp, name), ex.runs.get(name).stem
    assert tag == "after_random_noise_at_late_frozen_tuned"
    # the config's freezing, learning rate and radius, the control's sampling
    assert cfg == dataclasses.replace(config, samples="uniform")
    gauss = _config(exp, ex.runs.control_of("gaussian_aug", "late_frozen_tuned"))
    assert (gauss.freeze, gauss.lr, gauss.alpha, gauss.lambda_c, gauss.lambda_kd) == (config.freeze, config.lr, 0, 0, 0)
    assert gauss.noise_sigma > 0
    assert all(ex.runs.is_control(r) for r in ("plain", "gaussian_aug", name, "plain_late_frozen_tuned"))
    assert not any(ex.runs.is_control(r) for r in ("demhec", "late_frozen_tuned", "eps2"))
    assert "late_frozen_tuned" in ex.runs.get(name).label and ex.runs.get("eps2").label == "eps = 2/255"
    assert ex.runs.get(name).family == "controls of late_frozen_tuned"
    with pytest.raises(DemHECError, match="valid configurations"):
        ex.runs.control_of("plain", "random_noise")  # a control has no controls
    with pytest.raises(DemHECError, match="valid controls"):
        _config(exp, "eps2@late_frozen_tuned")
    with pytest.raises(DemHECError, match="valid runs"):
        _config(exp, "no_such_run")


# --- run records and where their files live ----------------------------------------------------


def test_one_run_record_serves_the_study_and_the_comparison():
    from demhec.experiments import comparison

    assert comparison.Run is ex.runs.Run and all(isinstance(r, ex.runs.Run) for r in comparison.COMPARISON)
    exp = ex.Experiment(profile="cpu")
    # the study's runs carry the names their committed files have: results by phase, models by method
    assert (ex.runs.DEMHEC.stem, ex.runs.DEMHEC.model_name) == ("after", "demhec")
    assert (ex.runs.get("eps2").stem, ex.runs.get("eps2").model_name) == ("after_eps2", "demhec_eps2")
    both = ex.runs.get("plain@late_frozen_tuned")
    assert (both.stem, both.model_name) == ("after_plain_at_late_frozen_tuned", "demhec_plain_at_late_frozen_tuned")
    assert (ex.runs.BASE.stem, ex.runs.BASE.model_name, ex.runs.BASE.phase) == ("before", "base", "before")
    assert ex.runs.BASE.config(exp.demhec_config) is None
    augmix = ex.runs.baseline("augmix")
    assert (augmix.stem, augmix.model_name, augmix.phase) == ("baseline_augmix", "baseline_augmix", "baseline:augmix")
    # a comparison run is named after itself, its base model "before" of its backbone's folder
    plain = comparison.comparison_run("plain")
    assert (plain.stem, plain.model_name, plain.phase) == ("plain", "plain", "after")
    assert comparison.comparison_run("base").stem == comparison.run_tag(comparison.comparison_run("base")) == "before"
    # the same changes give the same config, whichever record holds them
    assert comparison.run_config(exp, comparison.comparison_run("random_noise")) == _config(exp, "random_noise")
    assert ex.runs.get("plain@late_frozen_tuned") == both  # records made alike are equal


def test_relative_overrides_resolve_exactly_as_the_committed_configs():
    base = ex.Experiment(profile="cpu").demhec_config
    low = _config(ex.Experiment(profile="cpu"), "low_lr")
    assert low.lr == base.lr / 5  # bit for bit: the fingerprints of the committed results
    budget = _config(ex.Experiment(profile="cpu"), "budget_x4")
    assert (budget.epochs, budget.warmup_epochs, budget.max_steps) == (4 * base.epochs, 4 * base.warmup_epochs,
                                                                       4 * base.max_steps)
    assert isinstance(budget.epochs, int) and ex.runs.Scaled(2).of(None) is None
    with pytest.raises(DemHECError, match="unknown Dem-HEC setting"):
        ex.runs.Run("x", "x", "", {"no_such_field": 1}).config(base)


def test_a_custom_config_is_a_run_named_after_its_changes():
    exp = ex.Experiment(profile="smoke")
    assert ex.runs.of_config(exp.demhec_config, None) is ex.runs.DEMHEC
    assert ex.runs.of_config(exp.demhec_config, dataclasses.replace(exp.demhec_config, seed=3)) is ex.runs.DEMHEC
    run = ex.runs.of_config(exp.demhec_config, dataclasses.replace(exp.demhec_config, eps=4 / 255, freeze="after:2"))
    assert run.stem == f"after_eps-{4 / 255!r}_freeze-after-2" and run.model_name.startswith("demhec_eps-")
    assert run.config(exp.demhec_config) == dataclasses.replace(exp.demhec_config, eps=4 / 255, freeze="after:2")
    assert ex.pipeline.as_run(exp, "after", dataclasses.replace(exp.demhec_config, eps=4 / 255)).label == \
        f"Dem-HEC with eps = {4 / 255}"
    # a caller that names the files itself (the comparison) gets those names for results and model alike
    tagged = ex.pipeline.as_run(exp, "after", exp.demhec_config, tag="plain")
    assert (tagged.stem, tagged.model_name, tagged.overrides) == ("plain", "plain", {})
    with pytest.raises(DemHECError, match="unknown phase"):
        ex.pipeline.as_run(exp, "during")


def test_result_path_is_the_layout_of_the_committed_files():
    exp = ex.Experiment(profile="cpu", dataset="cifar10", backbone="resnet20")
    cell = Path("results") / "cpu" / "cifar10_jpeg" / "resnet20"
    R, path = ex.layout.Request, ex.layout.result_path
    from demhec.corruptions import CORRUPTIONS

    assert path(exp, ex.runs.BASE) == cell / "before_cifar-c.json"
    assert path(exp, ex.runs.DEMHEC, R(suite="imagecorruptions")) == cell / "after_imagecorruptions.json"
    assert path(exp, ex.runs.DEMHEC, R(adapt="tent")) == cell / "after_tent_cifar-c.json"
    seed2 = dataclasses.replace(exp, seed=2)
    assert path(seed2, ex.runs.get("eps1"), R(half="report")) == cell / "halves" / "after_eps1_cifar-c_seed2_report.json"
    assert path(exp, "plain", R(corruptions=CORRUPTIONS, half="selection")) == cell / "halves" / "plain_cifar-c_all_selection.json"
    assert path(exp, ex.runs.get("eps2"), R("entropy", corruption="pixelate", severity=5, half="report")) == \
        cell / "entropy_after_eps2_pixelate_s5_cifar-c_report.json"
    assert path(seed2, ex.runs.get("late_frozen_tuned"), R("paired", severity=5)) == \
        cell / "paired_after_late_frozen_tuned_cifar-c_s5_seed2.json"
    assert path(exp, ex.runs.get("bn_frozen"), R("diverged")) == cell / "halves" / "after_bn_frozen_cifar-c_diverged.json"
    assert ex.layout.selection_record(exp, "choice") == cell / "halves" / "choice_cifar-c.json"
    ckpt = Path("results") / "cpu" / "checkpoints"
    assert ex.layout.model_path(seed2, ex.runs.get("eps1")) == ckpt / "resnet20_demhec_eps1_seed2.pt"
    assert ex.layout.model_path(seed2, ex.runs.BASE) == ckpt / "resnet20_base.pt"  # one base for every seed
    for committed in (cell / "before_cifar-c.json", cell / "halves" / "after_eps1_cifar-c_seed2_report.json",
                      cell / "entropy_after_eps2_pixelate_s5_cifar-c_report.json", ckpt / "resnet20_demhec.pt"):
        assert (ROOT / committed).exists(), committed
    with pytest.raises(DemHECError, match="kind of result"):
        R("everything")


def _chosen_by_hand(base, runs, max_clean_cost=ex.selection.CHOICE_RULE["max_clean_cost"]):
    """The selection rule written out from the selection-half files' per-image outcomes: each
    run's change from the base in clean accuracy and in the noise S5 mean; among the runs within
    the clean-cost limit the largest noise gain, else the largest noise gain minus clean cost;
    a tie to the run listed first."""
    def accuracy(rec, cells):
        return 100 * np.mean([ex.halves.outcomes(rec, c, s) for c, s in cells])

    noise = [(c, 5) for c in ex.runs.NOISE]
    d = {r: (accuracy(rec, [("clean", 0)]) - accuracy(base, [("clean", 0)]), accuracy(rec, noise) - accuracy(base, noise))
         for r, rec in runs.items()}
    within = [r for r in d if d[r][0] >= -max_clean_cost]
    if within:
        return max(within, key=lambda r: (d[r][1], -list(d).index(r)))
    return max(d, key=lambda r: (d[r][1] + d[r][0], -list(d).index(r)))


def _selection_rows(rows):
    """A selection-half summary as select_run reads it: (run, seed, d_clean, d_noise_s5) rows."""
    df = pd.DataFrame([("base", 0, 0.0, 0.0), *rows], columns=["run", "seed", "d_clean", "d_noise_s5"])
    return df.assign(split="selection", label=df.run)


def test_select_run_takes_the_largest_noise_gain_within_the_clean_cost_limit():
    rows = [("eps2", 0, -1.0, 12.0), ("eps2", 1, -1.5, 13.0),  # mean -1.25, 12.5
            ("steps1", 0, -3.9, 15.0),  # the winner: the largest noise gain within 4 points
            ("eps1", 0, -6.0, 30.0),  # a larger gain, over the clean-cost limit
            ("steps2", 0, -2.0, 14.0),
            ("plain", 0, 0.0, 40.0), ("random_noise", 0, -1.0, 50.0)]  # controls: never candidates
    choice = ex.selection.select_run(_selection_rows(rows), max_clean_cost=4.0, min_noise_gain=10.0)
    assert choice["run"] == "steps1" and choice["candidates"] == ["eps2", "steps1", "eps1", "steps2"]
    assert choice["d_clean"] == pytest.approx(-3.9) and choice["d_noise_s5"] == pytest.approx(15.0)
    assert choice["meets_targets"] and "clean cost <= 4" in choice["rule"]
    assert not ex.selection.select_run(_selection_rows(rows), max_clean_cost=4.0, min_noise_gain=16.0)["meets_targets"]
    assert ex.selection.select_run(_selection_rows([r for r in rows if r[0] != "steps1"]))["run"] == "steps2"
    # seed means decide: eps2 (12.0 and 13.0, mean 12.5) over steps2 (12.4), which beats eps2's seed 0 alone
    assert ex.selection.select_run(_selection_rows([*rows[:2], ("steps2", 0, -2.0, 12.4)]))["run"] == "eps2"
    assert ex.selection.select_run(_selection_rows([rows[0], ("steps2", 0, -2.0, 12.4)]))["run"] == "steps2"
    # a cost of exactly the limit is within it
    at_limit = [("eps2", 0, -4.0, 20.0), ("steps1", 0, -1.0, 11.0)]
    assert ex.selection.select_run(_selection_rows(at_limit), max_clean_cost=4.0)["run"] == "eps2"
    assert ex.selection.select_run(_selection_rows(at_limit), max_clean_cost=3.99)["run"] == "steps1"


def test_select_run_breaks_a_tie_by_the_order_of_the_runs_and_falls_back_past_the_limit():
    tie = [("eps2", 0, -1.0, 12.0), ("steps1", 0, -2.0, 12.0), ("steps2", 0, -0.5, 11.0)]
    assert ex.selection.select_run(_selection_rows(tie))["run"] == "eps2"
    assert ex.selection.select_run(_selection_rows([tie[1], tie[0], tie[2]]))["run"] == "steps1"
    # nobody within the limit: the largest noise gain minus clean cost (24 against 21 and 13)
    over = [("freeze_none", 0, -10.0, 31.0), ("eps1", 0, -6.0, 30.0), ("eps16", 0, -9.0, 22.0)]
    choice = ex.selection.select_run(_selection_rows(over), max_clean_cost=4.0)
    assert choice["run"] == "eps1" and "minus clean cost" in choice["rule"] and not choice["meets_targets"]


def test_the_recorded_choice_names_its_half_and_inputs_and_is_kept(tmp_path):
    exp = ex.Experiment(profile="smoke", results_dir=str(tmp_path))
    ex.pipeline.halves_result(exp, "before")
    for run in ("demhec", "eps2"):
        ex.study.ablation_halves(exp, run)
    rec = ex.selection.record_choice(exp, ["demhec", "eps2", "plain"])  # plain has no halves here: left out
    m = rec["metrics"]
    assert rec["split"] == "selection" and rec["config"]["split"] == "selection" and rec["kind"] == "choice"
    assert m["candidates"] == ["demhec", "eps2"]
    base, got = ex.study.existing_halves(exp, ["demhec", "eps2"])
    assert m["run"] == _chosen_by_hand(base["selection"], {r: got[(r, 0)]["selection"] for r in ("demhec", "eps2")})
    assert m["inputs"] == {"base": base["selection"]["fingerprint"],
                           **{r: got[(r, 0)]["selection"]["fingerprint"] for r in ("demhec", "eps2")}}
    assert ex.selection.choice_path(exp).exists()
    ex.study.ablation_halves(exp, "steps1")  # scored later: extends chosen_run's candidates, not the record
    again = ex.selection.record_choice(exp, ["demhec", "eps2", "plain", "steps1"])
    assert again["metrics"]["candidates"] == ["demhec", "eps2"]
    assert "steps1" in ex.selection.chosen_run(exp, ["demhec", "eps2", "steps1"])["candidates"]
    fresh = ex.selection.record_choice(dataclasses.replace(exp, recompute=True), ["demhec", "eps2", "steps1"])
    assert fresh["metrics"]["candidates"] == ["demhec", "eps2", "steps1"]


def test_export_checkpoints_writes_loadable_state_dicts_and_a_manifest(tmp_path):
    import hashlib
    import json

    from demhec import get_model

    exp = ex.Experiment(profile="smoke", results_dir=str(tmp_path))
    assert not ex.study.ablation_checkpoint(exp, "plain@eps2").exists()
    paths = ex.study.export_checkpoints(exp, "eps2")
    assert sorted(paths) == sorted(ex.runs.EXPORTED)
    record = json.loads(exp.checkpoint("recommended").with_suffix(".json").read_text())
    assert record["profile"] == "smoke" and record["git_commit"] and record["versions"]["torch"]
    manifest = record["files"]
    assert {k: v["run"] for k, v in manifest.items()} == {
        "recommended": "eps2", "plain": "plain@eps2", "random_noise": "random_noise@eps2",
        "gaussian_aug": "gaussian_aug@eps2"}
    for name, path in paths.items():
        assert path.name == f"{exp.model_key}_{name}.pt" and path.with_suffix(".fingerprint.json").exists()
        assert manifest[name]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        kept = ex.study.ablation_checkpoint(exp, manifest[name]["run"])  # the fine-tune's own cache
        assert kept != path and kept.read_bytes() == path.read_bytes()
        trained = ex.study.ablation_model(dataclasses.replace(exp, allow_train=False), manifest[name]["run"])
        loaded = get_model(exp.effective_backbone, num_classes=len(ex.inputs.train_data(exp).classes), pretrained=str(path))
        for (k, a), b in zip(trained.state_dict().items(), loaded.state_dict().values()):
            assert torch.equal(a, b), k
    assert manifest["recommended"]["config"]["eps"] == pytest.approx(2 / 255)


# --- the two halves -----------------------------------------------------------------------------


def test_eval_halves_split_each_class_in_two_fixed_halves():
    labels = np.repeat(np.arange(10), 500)[np.random.default_rng(5).permutation(5000)]
    h = ex.halves.eval_halves(labels)
    sel, rep = h["selection"], h["report"]
    assert len(np.intersect1d(sel, rep)) == 0 and len(sel) + len(rep) == 5000
    for c in range(10):
        assert (labels[sel] == c).sum() == 250 and (labels[rep] == c).sum() == 250
    assert all(np.array_equal(h[k], ex.halves.eval_halves(labels)[k]) for k in h)  # fixed by its seed
    assert not np.array_equal(sel, ex.halves.eval_halves(labels, seed=1)["selection"])
    odd = ex.halves.eval_halves(np.array([0, 0, 0, 1]))
    assert sorted(np.concatenate([odd["selection"], odd["report"]])) == [0, 1, 2, 3]


def test_outcomes_round_trip():
    bits = np.random.default_rng(0).random(2503) < 0.7
    assert np.array_equal(ex.halves.unpack_outcomes(ex.halves.pack_outcomes(bits), len(bits)), bits)


def test_halves_add_up_to_the_whole_split(tmp_path):
    """Both halves come from one scoring of the whole split: their correct counts add up to
    the whole split's result, cell by cell; each file names its half."""
    exp = ex.Experiment(profile="smoke", results_dir=str(tmp_path))
    kw = dict(corruptions=["gaussian_noise"], severities=[5])
    halves = ex.pipeline.halves_result(exp, "before", **kw)
    whole = ex.tables.result_table(ex.pipeline.robustness_result(exp, "before", **kw)).set_index(["corruption", "severity"])
    parts = [ex.tables.result_table(halves[h]).set_index(["corruption", "severity"]) for h in ex.halves.EVAL_HALVES]
    assert (parts[0].correct + parts[1].correct).equals(whole.correct)
    assert (parts[0].n + parts[1].n).equals(whole.n)
    for h in ex.halves.EVAL_HALVES:
        rec = halves[h]
        assert rec["split"] == h and rec["config"]["split"] == h and rec["fingerprint"]["split"] == h
        assert (tmp_path / "smoke" / "digits" / "resnet20" / "halves" / f"before_cifar-c_{h}.json").exists()
        out = ex.halves.outcomes(rec, "gaussian_noise", 5)
        assert out.sum() == int(parts[ex.halves.EVAL_HALVES.index(h)].loc[("gaussian_noise", 5), "correct"])
    # a second call reads the files
    assert ex.pipeline.halves_result(dataclasses.replace(exp, allow_train=False), "before", **kw)["report"] == halves["report"]


def test_results_record_the_sets_they_scored_and_refuse_other_sets(tmp_path):
    """A result records the digest of the corrupted sets it scored, computed afresh here from
    the images; a machine whose sets differ from the profile's record stops before scoring, and
    its --build-cache does not overwrite the record."""
    import hashlib
    import json

    from demhec.corruptions import corrupt_split

    exp = ex.Experiment(profile="smoke", results_dir=str(tmp_path))
    kw = dict(corruptions=["gaussian_noise", "fog"], severities=[5])
    images = ex.inputs.eval_data(exp).images
    fresh = {f"{c}/5": hashlib.sha256(corrupt_split(images, c, 5, suite="cifar-c", seed=ex.profiles.CORRUPTION_SEED)
                                      .tobytes()).hexdigest() for c in kw["corruptions"]}
    # Without a record a result is scored and says what it scored.
    halves = ex.pipeline.halves_result(exp, "before", **kw)
    whole = ex.pipeline.robustness_result(exp, "before", **kw)
    for rec in (*halves.values(), whole):
        assert rec["data"]["corrupted_sets_sha256"] == ex.inputs.sets_digest(fresh)
    assert ex.inputs.sets_digest(fresh) != ex.inputs.sets_digest({**fresh, "fog/5": "0" * 64})
    record = ex.inputs.record_corrupted_sets(exp, "cifar-c", **kw)
    assert record["metrics"]["sha256"] == fresh
    path = ex.layout.corrupted_sets_path(exp)
    before = path.read_text()
    assert ex.inputs.record_corrupted_sets(exp, "cifar-c", **kw)["metrics"]["sha256"] == fresh
    assert path.read_text() == before  # the same sets: the record stays as it was
    # A record of other images: scoring stops and names the set; the record is not replaced.
    other = json.loads(before)
    other["metrics"]["sha256"]["fog/5"] = "0" * 64
    path.write_text(json.dumps(other))
    again = dataclasses.replace(exp, recompute=True)
    with pytest.raises(DemHECError, match=r"differ from those recorded .* at 1 of 2 sets \(fog/5\)"):
        ex.pipeline.halves_result(again, "before", **kw)
    with pytest.raises(DemHECError, match=r"fog/5"):
        ex.pipeline.robustness_result(again, "before", **kw)
    with pytest.raises(DemHECError, match=r"fog/5"):
        ex.inputs.record_corrupted_sets(exp, "cifar-c", **kw)
    assert json.loads(path.read_text()) == other
    # A set the record does not hold is not a disagreement.
    ex.pipeline.halves_result(again, "before", corruptions=["gaussian_noise", "snow"], severities=[5])


def test_uncached_sets_are_those_a_build_would_generate(tmp_path):
    """A set counts as cached only as the current code makes it: a missing array, an unreadable
    sidecar or one from an older cache format is listed, and building makes the list empty."""
    import json

    from demhec.corruptions.engine import cache_paths

    exp = ex.Experiment(profile="smoke", results_dir=str(tmp_path))
    grid = ("cifar-c", ["fog", "snow"], [1, 5])
    assert ex.inputs.uncached_sets(exp, *grid) == ["fog/1", "fog/5", "snow/1", "snow/5"]
    ex.inputs.build_eval_cache(exp, *grid)
    assert ex.inputs.uncached_sets(exp, *grid) == []
    kw = ex.inputs.corrupted_eval_kw(exp)
    paths = {cell: cache_paths(kw["cache_dir"], "cifar-c", kw["key"], *cell) for cell in [("fog", 1), ("fog", 5), ("snow", 1)]}
    paths["fog", 1][0].unlink()
    meta = json.loads(paths["fog", 5][1].read_text())
    paths["fog", 5][1].write_text(json.dumps({**meta, "format": meta["format"] - 1}))
    paths["snow", 1][1].write_text("{not json")
    assert ex.inputs.uncached_sets(exp, *grid) == ["fog/1", "fog/5", "snow/1"]
    ex.inputs.build_eval_cache(exp, *grid)
    assert ex.inputs.uncached_sets(exp, *grid) == []
    assert json.loads(paths["fog", 5][1].read_text())["format"] == meta["format"]


def test_each_halfs_file_holds_the_outcomes_of_its_own_images(tmp_path):
    """The halves are disjoint and cover the split, and each half's file holds, image by image,
    the outcomes of scoring that half's images directly: the base model's predictions on the
    clean and corrupted images at the half's indices against those images' labels."""
    from demhec import predict
    from demhec.corruptions import corrupt_split

    exp = ex.Experiment(profile="smoke", results_dir=str(tmp_path))
    halves = ex.pipeline.halves_result(exp, "before", corruptions=["gaussian_noise"], severities=[5])
    data = ex.inputs.eval_data(exp)
    idx = ex.halves.eval_halves(data.labels)
    assert len(np.intersect1d(idx["selection"], idx["report"])) == 0
    assert np.array_equal(np.sort(np.concatenate(list(idx.values()))), np.arange(len(data.labels)))
    model = ex.model_cache.base_model(dataclasses.replace(exp, allow_train=False), len(data.classes))
    sets = {("clean", 0): data.images,
            ("gaussian_noise", 5): corrupt_split(data.images, "gaussian_noise", 5, suite="cifar-c", seed=ex.profiles.CORRUPTION_SEED)}
    for half, rec in halves.items():
        assert rec["metrics"]["n"] == len(idx[half]) and rec["data"]["count"] == str(len(idx[half]))
        for (c, s), images in sets.items():
            direct = predict(model, images[idx[half]]).argmax(1).numpy() == data.labels[idx[half]]
            assert np.array_equal(ex.halves.outcomes(rec, c, s), direct), (half, c)
            row = ex.tables.result_table(rec).set_index(["corruption", "severity"]).loc[(c, s)]
            assert row.correct == direct.sum() and row.n == len(direct)
    # the two halves' outcomes are told apart (else the comparison above would prove little)
    assert len(idx["selection"]) != len(idx["report"]) or not np.array_equal(
        ex.halves.outcomes(halves["selection"], "clean", 0), ex.halves.outcomes(halves["report"], "clean", 0))


def _half_record(split, clean, noise, seed=0):
    cells = {("clean", 0): clean, **{(c, 5): noise for c in ex.runs.NOISE}}
    table = [{"corruption": c, "severity": s, "accuracy": 100 * float(np.mean(o))} for (c, s), o in cells.items()]
    return {"seed": seed, "split": split,
            "metrics": {"clean_accuracy": 100 * float(np.mean(clean)), "table": table, "n": len(clean),
                        "correct": {f"{c}/{s}": ex.halves.pack_outcomes(o) for (c, s), o in cells.items()}}}


def test_halves_summary_paired_errors_and_the_selection_rule():
    rng = np.random.default_rng(0)
    n = 400
    base_clean, base_noise = rng.random(n) < 0.85, rng.random(n) < 0.5
    flip = rng.random(n) < 0.1
    runs = {("demhec", 0): _half_record("selection", base_clean & ~flip, base_noise | flip),
            ("plain", 0): _half_record("selection", base_clean, base_noise)}
    base = _half_record("selection", base_clean, base_noise)
    s = ex.selection.halves_summary(base, runs, reference=("demhec", 0)).set_index("run")
    ref = paired_difference(torch.tensor(base_clean), torch.tensor(base_clean & ~flip))
    assert s.loc["demhec", "d_clean"] == pytest.approx(ref["diff"]) and s.loc["demhec", "se_clean"] == pytest.approx(ref["se"])
    assert s.loc["plain", "r_clean"] == pytest.approx(-ref["diff"])
    assert s.loc["plain", "se_clean"] == 0 and set(s.split) == {"selection"}
    choice = ex.selection.select_run(s.reset_index(), max_clean_cost=100)
    assert choice["run"] == "demhec" and choice["candidates"] == ["demhec"]  # a control is never chosen
    renamed = s.reset_index().replace({"run": {"plain": "late_frozen_tuned", "demhec": "plain@late_frozen_tuned"}})
    assert ex.selection.select_run(renamed, max_clean_cost=100)["candidates"] == ["late_frozen_tuned"]  # nor its controls
    with pytest.raises(DemHECError, match="no candidate"):
        ex.selection.select_run(s.drop("demhec").reset_index())
    report = {k: dict(v, split="report") for k, v in runs.items()}
    with pytest.raises(DemHECError, match="one half"):
        ex.selection.halves_summary(base, report)
    with pytest.raises(DemHECError, match="selection half only"):
        ex.selection.select_run(ex.selection.halves_summary(dict(base, split="report"), report))
    assert isinstance(s, pd.DataFrame)


def test_ranked_runs_spread_over_seeds_and_the_strongest_on_the_selection_half():
    rng = np.random.default_rng(2)
    n = 1000
    clean, noise = rng.random(n) < 0.85, rng.random(n) < 0.5
    drop = [rng.random(n) < p for p in (0.12, 0.02, 0.04, 0.06, 0.08)]

    def runs(split):
        return {("demhec", 0): _half_record(split, clean & ~drop[0], noise),
                ("eps2", 0): _half_record(split, clean & ~drop[1], noise),
                ("eps2", 1): _half_record(split, clean & ~drop[2], noise, seed=1),
                ("steps1", 0): _half_record(split, clean & ~drop[3], noise),
                ("plain", 0): _half_record(split, clean & ~drop[4], noise)}

    s = ex.selection.halves_summary(_half_record("report", clean, noise), runs("report"), reference=("demhec", 0))
    ranked = ex.selection.ranked_runs(s).set_index("run")
    per_seed = s[s.run == "eps2"].set_index("seed")
    assert list(ranked.index) == ["eps2", "steps1", "plain", "demhec"]  # most clean cost given back first
    assert ranked.loc["eps2", "seeds"] == 2 and ranked.loc["steps1", "seeds"] == 1
    assert ranked.loc["eps2", "d_clean"] == pytest.approx(per_seed.d_clean.mean())
    assert ranked.loc["eps2", "sd_clean"] == pytest.approx(np.std(per_seed.d_clean, ddof=1))
    assert ranked.loc["eps2", "se_clean"] == pytest.approx(per_seed.se_clean.mean())
    assert ranked.loc["eps2", "r_clean"] == pytest.approx(per_seed.r_clean.mean()) and np.isnan(ranked.loc["steps1", "sd_clean"])
    assert set(ranked.split) == {"report"} and "base" not in ranked.index
    with pytest.raises(DemHECError, match="reference"):
        ex.selection.ranked_runs(ex.selection.halves_summary(_half_record("report", clean, noise), runs("report")))
    moved, within, missing = ex.prose.describe_ranking(ranked.reset_index(), ["eps2", "plain", "eps1"], z=1.96)
    assert "`eps2`" in moved and "sd " in moved and "2 seeds" in moved and "`plain`" in moved  # 10 and 6 points
    assert within.endswith("none.") and "`eps1`" in missing
    _, within_wide, _ = ex.prose.describe_ranking(ranked.reset_index(), ["eps2", "plain", "eps1"], z=100)
    assert "`eps2`" in within_wide
    sel = ex.selection.halves_summary(_half_record("selection", clean, noise), runs("selection"), reference=("demhec", 0))
    # candidates only (the control plain is not one), at seed 0 only
    assert ex.selection.strongest_runs(sel, ["eps2", "steps1", "demhec"], k=2) == ["eps2", "steps1"]
    assert ex.selection.strongest_runs(sel, ["steps1", "no_infonce"], k=3) == ["steps1"]
    with pytest.raises(DemHECError, match="selection half only"):
        ex.selection.strongest_runs(s, ["eps2"])


def test_the_strongest_runs_are_recorded_once_among_every_candidate(tmp_path):
    from demhec._common import TrainingDiverged

    exp = ex.Experiment(profile="smoke", results_dir=str(tmp_path))
    ex.pipeline.halves_result(exp, "before")
    for run in ("demhec", "eps2"):
        ex.study.ablation_halves(exp, run)
    with pytest.raises(DemHECError, match="no seed-0 result yet for: steps1, bn_frozen"):
        ex.selection.record_strongest(exp, ["eps2", "steps1", "bn_frozen"], k=1)
    assert not ex.selection.strongest_path(exp).exists()
    ex.study.ablation_halves(exp, "steps1")
    ex.study.record_divergence(exp, "bn_frozen", TrainingDiverged("diverged", step=3, what="non-finite loss", parts={}))
    rec = ex.selection.record_strongest(exp, ["eps2", "steps1", "bn_frozen"], k=1)
    m = rec["metrics"]
    assert rec["split"] == "selection" and rec["kind"] == "choice/strongest" and m["diverged"] == ["bn_frozen"]
    base, got = ex.study.existing_halves(exp, ["demhec", "eps2", "steps1"])
    sel = ex.selection.half_summary(base, got, "selection")
    assert m["runs"] == ex.selection.strongest_runs(sel, ["eps2", "steps1"], k=1)
    assert set(m["inputs"]) == {"base", "demhec", "eps2", "steps1"}
    assert m["inputs"]["eps2"] == got[("eps2", 0)]["selection"]["fingerprint"]
    mtime = ex.selection.strongest_path(exp).stat().st_mtime_ns
    assert ex.selection.record_strongest(exp, ["eps2", "steps1", "bn_frozen"], k=1)["metrics"]["runs"] == m["runs"]
    assert ex.selection.strongest_path(exp).stat().st_mtime_ns == mtime  # kept, not recomputed


def test_stage_times_are_recorded_per_stage_and_skip_cache_hits(tmp_path):
    exp = ex.Experiment(profile="smoke", results_dir=str(tmp_path))
    assert ex.stage_times.record_stage_time(exp, "eps1 seed 0 on both halves", 0.3) is None  # served from caches
    assert ex.stage_times.stage_times(exp) == []
    ex.stage_times.record_stage_time(exp, "eps1 seed 0 on both halves", 61.5)
    ex.stage_times.record_stage_time(exp, "plain@late_frozen_tuned seed 1 on both halves, imagecorruptions", 12.0)
    ex.stage_times.record_stage_time(exp, "eps1 seed 0 on both halves", 70.0)  # a rerun replaces the time
    rows = ex.stage_times.stage_times(exp)
    assert [r["stage"] for r in rows] == ["eps1 seed 0 on both halves",
                                         "plain@late_frozen_tuned seed 1 on both halves, imagecorruptions"]
    assert rows[0]["wall_s"] == 70.0 and rows[0]["torch_threads"] == torch.get_num_threads() and rows[0]["cpu_count"] >= 1
    assert ex.stage_times.stage_times(exp, "imagecorruptions")[0]["wall_s"] == 12.0
    path = ex.stage_times.stage_time_path(exp, "plain@late_frozen_tuned seed 1 on both halves, imagecorruptions")
    assert path.parent.name == "stage_times" and " " not in path.name and "," not in path.name
    rec = results.read_result(path)
    assert rec["kind"] == "stage_time" and rec["git_commit"] and rec["versions"]


def test_controls_verdict_reads_the_paired_errors():
    rng = np.random.default_rng(1)
    n = 2000
    clean, noise = rng.random(n) < 0.85, rng.random(n) < 0.4
    gain = rng.random(n) < 0.3  # Dem-HEC fixes 30% of the noise images, the control 3%
    small = rng.random(n) < 0.03
    base = _half_record("report", clean, noise)
    runs = {("demhec", 0): _half_record("report", clean, noise | gain),
            ("random_noise", 0): _half_record("report", clean, noise | small)}
    s = ex.selection.halves_summary(base, runs, reference=("demhec", 0))
    lines = ex.verdict.controls_verdict(s, controls=("random_noise", "gaussian_aug"))
    assert "report half" in lines[0] and lines[0].endswith(": met).")  # +17 noise, no clean cost
    assert "ahead by at least 3 points" in lines[1] and "random-noise" in lines[1]
    assert "not run" in lines[2]
    with pytest.raises(DemHECError, match="reference"):
        ex.verdict.controls_verdict(ex.selection.halves_summary(base, runs))


def test_existing_halves_reads_only_what_is_there(tmp_path):
    exp = ex.Experiment(profile="smoke", results_dir=str(tmp_path))
    assert ex.study.existing_halves(exp, ["demhec"]) == (None, {})
    made = ex.study.ablation_halves(exp, "random_noise")
    base, runs = ex.study.existing_halves(exp, ["demhec", "random_noise"])
    assert base is None and list(runs) == [("random_noise", 0)]
    assert runs[("random_noise", 0)]["report"]["metrics"] == made["report"]["metrics"]


def test_same_base_halves_takes_another_profiles_base_only_for_the_same_state_dict(tmp_path):
    import hashlib

    exp = ex.Experiment(profile="smoke", dataset="cifar10", backbone="resnet20", results_dir=str(tmp_path))
    path = exp.checkpoint("base")
    other = {h: {"config": {"experiment": {"base_weights": {"sha256": hashlib.sha256(b"weights").hexdigest()}}}}
             for h in ex.halves.EVAL_HALVES}
    assert ex.study.same_base_halves(exp, other) is None  # no checkpoint of its own
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"weights")
    assert ex.study.same_base_halves(exp, other) is other
    assert ex.study.same_base_halves(exp, None) is None
    path.write_bytes(b"other weights")
    assert ex.study.same_base_halves(exp, other) is None


# --- Figures 3-4 on a half, normalised by layer width -------------------------------------------


def test_layer_widths_are_the_sizes_eq4_runs_over():
    from demhec import get_model
    from demhec.entropy import layer_entropy, layer_widths, normalised

    model = get_model("resnet20", num_classes=10)
    x = torch.rand(2, 3, 32, 32)
    widths = layer_widths(model, x)
    # stem 16x32x32, stages 16/32/64 channels at 32/16/8 pixels, pooled 64, logits 10
    assert widths == {"net.relu": 16 * 32 * 32, "net.layer1": 16 * 32 * 32, "net.layer2": 32 * 16 * 16,
                      "net.layer3": 64 * 8 * 8, "net.avgpool": 64, "net.fc": 10}
    assert layer_widths(model, x, ["net.layer3"], pooled=True) == {"net.layer3": 64}
    ent = layer_entropy(model, x)
    norm = normalised(ent, model, x)
    for n, e in ent.items():
        assert torch.allclose(norm[n], e / math.log(widths[n]))
        assert (norm[n] <= 1 + 1e-6).all()
    with pytest.raises(DemHECError, match="unknown layer"):
        layer_widths(model, x, ["nope"])


def test_entropy_result_on_a_half_for_a_named_run(tmp_path):
    exp = ex.Experiment(profile="smoke", results_dir=str(tmp_path))
    data = ex.inputs.eval_data(exp)
    report = set(ex.halves.eval_halves(data.labels)["report"].tolist())
    rec = ex.study.ablation_entropy(exp, "before", "gaussian_noise", 5, half="report")
    assert rec["split"] == "report" and rec["config"]["split"] == "report"
    assert "report half" in rec["data"]["half"]
    m = rec["metrics"]
    assert set(m["log_width"]) == set(m["clean"]) == set(m["corrupted"])
    n = len(next(iter(m["clean"].values())))
    assert n == min(exp.prof.entropy_images, len(report))
    # the normalised summary divides each layer's means by its recorded log width
    raw, norm = ex.tables.entropy_summary(rec), ex.tables.entropy_summary(rec, normalised=True)
    scale = pd.Series(m["log_width"])
    np.testing.assert_allclose(norm.set_index("layer")["clean"], raw.set_index("layer")["clean"] / scale[raw.layer].values)
    ex.checks.check_entropy_shown(norm.assign(model="base"), {"base": rec}, normalised=True, key="model")
    with pytest.raises(DemHECError, match="differ"):
        ex.checks.check_entropy_shown(raw.assign(model="base"), {"base": rec}, normalised=True, key="model")
    # another half or another run is another request: its own file, never this one reused
    other = ex.study.ablation_entropy(exp, "before", "gaussian_noise", 5, half="selection")
    assert other["metrics"]["clean"] != m["clean"]
    run = ex.study.ablation_entropy(exp, "random_noise", "gaussian_noise", 5, half="report")
    assert run["kind"] == "entropy/after" and run["config"]["model"]["samples"] == "uniform"
    files = sorted(p.name for p in (tmp_path / "smoke").rglob("entropy_*.json"))
    assert len(files) == 3 and all(f.endswith(("_report.json", "_selection.json")) for f in files)
    with pytest.raises(DemHECError, match="half"):
        ex.study.ablation_entropy(exp, "before", "gaussian_noise", 5, half="test")
    with pytest.raises(DemHECError, match="no layer widths"):
        ex.tables.entropy_summary({"metrics": {"clean": m["clean"], "corrupted": m["corrupted"]}}, normalised=True)


def test_describe_entropy_claim_reads_the_gaps():
    def rows(model, corruption, gaps):
        return pd.DataFrame({"model": model, "corruption": corruption, "layer": ["a", "b", "c", "d"],
                             "clean": 0.5, "corrupted": [0.5 + g for g in gaps], "gap": gaps})

    holds = pd.concat([rows("base", "pixelate", [0.0, 0.1, 0.2, 0.3]), rows("Dem-HEC", "pixelate", [0.0, 0.0, 0.1, 0.1])])
    text = ex.prose.describe_entropy_claim(holds)
    assert "raises the base model's middle-layer entropy" in text and "grows" in text
    assert "Dem-HEC narrows it" in text
    fails = pd.concat([rows("base", "pixelate", [0.2, -0.1, 0.0, 0.1]), rows("Dem-HEC", "pixelate", [0.3, 0.3, 0.3, 0.3])])
    text = ex.prose.describe_entropy_claim(fails)
    assert "does not raise" in text and "does not grow" in text and "Dem-HEC does not narrow it" in text


def test_entropy_grid_figure_draws_each_panel():
    from demhec import plots

    rng = np.random.default_rng(0)
    layers = ["a", ""]
    panel = ({n: rng.normal(1, 0.1, 16) for n in layers}, {n: rng.normal(2, 0.1, 16) for n in layers})
    fig = plots.entropy_grid_figure({("base", "pixelate"): panel, ("base", "noise"): panel,
                                     ("Dem-HEC", "pixelate"): panel}, title="t", normalise_by={"a": 2.0})
    titles = [ax.get_title() for ax in fig.axes if ax.axison]
    assert titles == ["base: pixelate", "base: noise", "Dem-HEC: pixelate"]
    assert sum(not ax.axison for ax in fig.axes) == 1  # the missing (Dem-HEC, noise) panel
    # the values drawn: each half-violin spans its layer's entropies (cut=0) divided by the
    # layer's normalise_by ("a" by 2, "" as it is), in every panel, on a normalised axis
    from matplotlib.colors import to_rgba

    scale = {"a": 2.0, "": 1.0}
    for ax in (ax for ax in fig.axes if ax.axison):
        for kind, values in zip(("clean", "corrupted"), panel):
            halves = [c for c in ax.collections if np.allclose(c.get_facecolor()[0], to_rgba(plots.PALETTE[kind]))]
            assert len(halves) == len(layers)
            for layer, half in zip(layers, sorted(halves, key=lambda c: c.get_paths()[0].vertices[:, 0].mean())):
                y = half.get_paths()[0].vertices[:, 1]
                want = values[layer] / scale[layer]
                assert (y.min(), y.max()) == pytest.approx((want.min(), want.max())), (ax.get_title(), kind, layer)
    assert fig.axes[0].get_ylabel().startswith("normalised")
    with pytest.raises(DemHECError, match="at least one panel"):
        plots.entropy_grid_figure({})


def test_step_cost_of_each_run_reads_the_benchmark_json(tmp_path):
    from demhec.results import write_result

    assert ex.selection.step_cost_ratios(tmp_path) == {}
    write_result(tmp_path / ex.selection.STEP_COST_PATH, kind="cost/dem-hec-step", profile="cpu", config={},
                 metrics={"ratio": {"1": 2.5, "5": 5.5}}, data={"source": "test"}, seed=0)
    ratios = ex.selection.step_cost_ratios(tmp_path)
    assert ratios == {1: 2.5, 5: 5.5}
    exp = ex.Experiment(profile="cpu")
    assert ex.selection.run_step_cost(exp, "plain", ratios) == 1.0 == ex.selection.run_step_cost(exp, "gaussian_aug", ratios)
    assert ex.selection.run_step_cost(exp, "demhec", ratios) == 5.5 and ex.selection.run_step_cost(exp, "steps1", ratios) == 2.5
    assert math.isnan(ex.selection.run_step_cost(exp, "steps2", ratios))  # not measured
    assert math.isnan(ex.selection.run_step_cost(exp, "random_noise", ratios))  # its T_he = 0 step not measured
    assert ex.selection.run_step_cost(exp, "random_noise", {**ratios, 0: 2.2}) == 2.2


def test_recommendation_verdict_and_its_sentences():
    rng = np.random.default_rng(2)
    n = 2000
    clean, noise = rng.random(n) < 0.85, rng.random(n) < 0.4
    base = {h: _half_record(h, clean, noise) for h in ex.halves.EVAL_HALVES}
    run, controls = "late_frozen_tuned", [ex.runs.control_of(c, "late_frozen_tuned") for c in ex.runs.CONTROL_RUNS]
    runs = {}
    for seed in (0, 1):
        g = np.random.default_rng(10 + seed)
        big, small, cost = g.random(n) < 0.3, g.random(n) < 0.05, g.random(n) < 0.02
        for name, fixed, lost in ((run, big, cost), (controls[0], small, cost), (controls[2], big, cost)):
            runs[(name, seed)] = {h: _half_record(h, clean & ~lost, noise | fixed, seed) for h in ex.halves.EVAL_HALVES}
    s = ex.verdict.recommended_summary(base, runs, run)
    assert set(s.split) == {"report"} and (s.run == "base").sum() == 1
    # each control is paired with the recommended run of its own seed
    for seed in (0, 1):
        row = s[(s.run == controls[0]) & (s.seed == seed)].iloc[0]
        own = s[(s.run == run) & (s.seed == seed)].iloc[0]
        assert row.r_noise_s5 == pytest.approx(row.d_noise_s5 - own.d_noise_s5)
    v = ex.verdict.recommendation_verdict(s, run, controls)
    assert v["seeds"] == [0, 1] and v["noise_met"] and v["clean_met"]
    assert v["controls"][controls[0]]["met"] and not v["controls"][controls[2]]["met"]  # the same gain
    assert v["controls"][controls[1]] is None and not v["controls_met"] and not v["all_met"]
    lines = ex.prose.describe_recommendation(ex.Experiment(profile="cpu"), v, 4.91)
    assert "eps = 4/255 (paper config: 8/255)" in lines[0]
    assert "freezing: the later stages frozen, the stem and the first two stages train (paper config: the stem and the first stage frozen)" in lines[0]
    assert "mean of 2 seeds" in lines[1] and "sd " in lines[1] and "4.91 plain steps" in lines[1]
    assert "not run yet" in lines[3] and "less than 3 points" in lines[4]
    assert "plain fine-tune control" in lines[2] and "not met" in lines[-1] and "selection rule picks" in lines[-1]
    with pytest.raises(DemHECError, match="no halves results"):
        ex.verdict.recommended_summary(base, runs, "eps2")
    assert v["base_noise_s5"] == pytest.approx(100 * noise.mean())
    # the same runs in another suite, where the noises are stronger and the gain is gone
    weak = {k: {h: _half_record(h, clean & ~lost, noise, k[1]) for h in ex.halves.EVAL_HALVES}
            for k in runs for lost in [rng.random(n) < 0.02]}
    hard = {h: _half_record(h, clean, noise) for h in ex.halves.EVAL_HALVES}
    other = ex.verdict.recommendation_verdict(ex.verdict.recommended_summary(hard, weak, run), run, controls)
    assert ex.prose.describe_suites({"cifar-c": v}) == []
    (line,) = ex.prose.describe_suites({"cifar-c": v, "imagecorruptions": other})
    assert "`imagecorruptions` suite" in line and f"against {v['d_noise_s5']:+.2f} in `cifar-c`" in line
    assert f"by {other['d_noise_s5']:+.2f} points" in line and "noise not met" in line
    assert "plain fine-tune" in line and "Gaussian-augmentation" in line and "random-noise" not in line


def test_a_diverged_fine_tune_is_recorded_as_its_outcome(tmp_path):
    from demhec._common import TrainingDiverged

    # what the engine raises (tests/test_hardening.py makes it raise for real)
    err = training._diverged("finetune", 9, "non-finite gradients", {"loss": 9.6e23, "kd": 9.7e23},
                             DemHECConfig(), "no checkpoint was written")
    assert isinstance(err, TrainingDiverged) and isinstance(err, DemHECError)
    assert err.step == 9 and err.parts["kd"] == 9.7e23 and "diverged at step 9" in str(err)
    exp = ex.Experiment(profile="smoke", results_dir=str(tmp_path))
    rec = ex.study.record_divergence(exp, "bn_frozen", err)
    assert rec["kind"] == "diverged" and rec["metrics"]["step"] == err.step and rec["config"]["run"] == "bn_frozen"
    assert rec["config"]["model"]["bn"] == "frozen" and rec["git_commit"] and rec["data"]
    assert ex.study.divergence_path(exp, "bn_frozen").name == "after_bn_frozen_cifar-c_diverged.json"
    assert ex.study.existing_divergences(exp, ["bn_frozen", "eps2"]) == {"bn_frozen": rec}
    # a record is the outcome of one config and seed only
    assert ex.study.existing_divergences(dataclasses.replace(exp, seed=1), ["bn_frozen"]) == {}
    ex.study.divergence_path(exp, "bn_frozen").rename(ex.study.divergence_path(exp, "eps2"))
    assert ex.study.existing_divergences(exp, ["bn_frozen", "eps2"]) == {}


def test_describe_divergences_names_step_and_learning_rate():
    rec = {"metrics": {"step": 9, "what": "non-finite gradients"}, "config": {"model": {"lr": 0.05}}}
    (line,) = ex.prose.describe_divergences({"bn_frozen": rec})
    assert "bn_frozen" in line and "step 9" in line and "lr 0.05" in line and "no accuracy" in line
    assert ex.prose.describe_divergences({}) == []


def test_halves_stage_names_a_rescoring_of_a_kept_checkpoint(tmp_path, capsys):
    """scripts/cpu_reproduction.py --halves: a stage that fine-tunes is named plainly; one that
    only re-scores a kept checkpoint says so, so that its wall time is never read as a fine-tune's."""
    script = load_script("cpu_reproduction")
    args = ["--profile", "smoke", "--halves", "eps2", "--seeds", "0", "--results-dir", str(tmp_path), "--no-progress"]
    script.main(args)
    first = capsys.readouterr().out
    assert "[stage] eps2 seed 0 on both halves: " in first and "scoring only" not in first
    exp = ex.Experiment(profile="smoke", results_dir=str(tmp_path))
    assert ex.study.ablation_checkpoint(exp, "eps2").exists()
    for path in (exp.cell_dir / "halves").glob("after_eps2_*"):
        path.unlink()
    script.main(args)
    assert "[stage] eps2 seed 0 on both halves (kept checkpoint, scoring only): " in capsys.readouterr().out
