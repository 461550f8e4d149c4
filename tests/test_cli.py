"""The demhec command line: each subcommand end to end, and one-line errors."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys

import pytest

from demhec import cli
from demhec.cli import build_parser, main
from demhec.runs import EvalRun, TrainRun
from demhec.training import DemHECConfig, TrainConfig


def test_cli_train_finetune_evaluate_entropy(tmp_path, capsys):
    out = str(tmp_path / "out")
    common = ["--dataset", "digits", "--limit", "64", "--out", out, "--no-progress"]
    assert main(["train", *common, "--epochs", "1", "--batch-size", "32"]) == 0
    assert main(["finetune", *common, "--epochs", "1", "--batch-size", "16", "--max-steps", "2",
                 "--eps", "4/255", "--steps", "2"]) == 0
    rec = json.loads((tmp_path / "out" / "digits_resnet20_demhec.json").read_text())
    assert rec["config"]["config"]["eps"] == pytest.approx(4 / 255)
    assert 0 <= rec["metrics"]["clean_accuracy"] <= 100
    assert main(["evaluate", *common, "--corruptions", "gaussian_noise,jpeg_compression",
                 "--severities", "1,5"]) == 0
    rec = json.loads((tmp_path / "out" / "digits_resnet20_base_cifar-c.json").read_text())
    assert len(rec["metrics"]["table"]) == 5
    assert main(["entropy", *common, "--corruption", "pixelate", "--severity", "5"]) == 0
    assert "net.layer3" in capsys.readouterr().out
    assert not list((tmp_path / "out").glob("*.ckpt"))


@pytest.mark.parametrize("args,message", [
    (["train", "--dataset", "no-such-set"], "unknown dataset 'no-such-set'; valid datasets: cifar10"),
    (["train", "--dataset", "digits", "--backbone", "resnet57"], "unknown backbone 'resnet57'"),
    (["train", "--dataset", "digits", "--lr", "-0.1"], "lr must be > 0.0"),
    (["train", "--dataset", "digits", "--batch-size", "0"], "batch_size must be >= 1"),
    (["finetune", "--dataset", "digits", "--alpha", "1.5"], "alpha must be <= 1.0"),
    (["finetune", "--dataset", "digits", "--eps=-1/255"], "eps must be >= 0.0"),
    (["finetune", "--dataset", "digits", "--steps", "0"], "steps must be >= 1"),
    (["evaluate", "--dataset", "digits", "--suite", "cifar10c"], "unknown suite 'cifar10c'"),
    (["evaluate", "--dataset", "digits", "--corruptions", "fog2"], "unknown corruption 'fog2'"),
    (["evaluate", "--dataset", "digits", "--severities", "0"], "severity"),
    (["evaluate", "--dataset", "digits", "--severities", "6"], "severity"),
    (["evaluate", "--dataset", "digits", "--severities", "3.5"], "severity"),
    (["evaluate", "--dataset", "cifar10", "--data-root", "/no/such/root"], "does not exist"),
    (["evaluate", "--dataset", "digits", "--weights", "missing.pt"], "does not exist"),
])
def test_cli_errors_are_one_line(tmp_path, args, message, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not list((tmp_path / "o").glob("*.json")) if (tmp_path / "o").exists() else True


def test_python_m_demhec_is_the_same_program(tmp_path):
    """One interpreter start for the module entry point; every other error test runs in-process."""
    proc = subprocess.run([sys.executable, "-m", "demhec", "train", "--dataset", "no-such-set"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "unknown dataset 'no-such-set'" in proc.stderr


@pytest.mark.parametrize("command, classes", [
    ("train", (TrainConfig, TrainRun)), ("finetune", (DemHECConfig, TrainRun)), ("evaluate", (EvalRun,)),
])
def test_flags_are_generated_from_every_dataclass_field(command, classes):
    """Every field is a flag with the field's default and its comment as help, and the flags
    give back the dataclass (no field is dropped or renamed on the way)."""
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    flags = {a.dest: a for a in sub._actions}
    for cls in classes:
        for f in dataclasses.fields(cls):
            if f.name in cli._OWN or "Callable" in str(f.type):
                continue
            assert f.name in flags, f"{cls.__name__}.{f.name} has no --{f.name.replace('_', '-')}"
            assert flags[f.name].default == cli._CLI_DEFAULTS.get(f.name, f.default)
            comment = cli._comments(cls).get(f.name)
            assert comment and comment in (flags[f.name].help or ""), f.name
    args = build_parser().parse_args([command, "--dataset", "digits"])
    for cls in classes:
        made = cli._from_args(cls, args, **({"seed": 0} if "seed" in cls.__dataclass_fields__ else {}))
        assert made == cls(**{k: v for k, v in cli._CLI_DEFAULTS.items() if k in cls.__dataclass_fields__})


def test_flag_values_reach_the_config():
    args = build_parser().parse_args(["finetune", "--dataset", "digits", "--alpha", "0.25", "--eps", "4/255",
                                      "--no-random-start", "--bn", "clean", "--freeze", "conv1.,layer1.",
                                      "--max-steps", "7", "--head", "fc", "--compile"])
    cfg = cli._from_args(DemHECConfig, args, seed=3)
    assert cfg == DemHECConfig(alpha=0.25, eps=4 / 255, random_start=False, bn="clean",
                               freeze=("conv1.", "layer1."), max_steps=7, head="fc", seed=3)
    assert cli._from_args(TrainRun, args).compile is True
    args = build_parser().parse_args(["finetune", "--dataset", "digits", "--freeze", "stages:2"])
    assert cli._from_args(DemHECConfig, args).freeze == "stages:2"


def test_a_new_field_becomes_a_flag():
    @dataclasses.dataclass(frozen=True)
    class Extended(DemHECConfig):
        gamma: float = 0.1  # a new knob

    p = argparse.ArgumentParser()
    cli._add_fields(p, Extended)
    args = p.parse_args(["--gamma", "1/4"])
    assert cli._from_args(Extended, args).gamma == 0.25
    assert "a new knob" in p.format_help()
