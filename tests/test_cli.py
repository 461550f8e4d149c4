"""The demhec command line: each subcommand end to end, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from demhec.cli import main


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
def test_cli_errors_are_one_line(tmp_path, args, message):
    proc = subprocess.run([sys.executable, "-m", "demhec", *args, "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not list((tmp_path / "o").glob("*.json")) if (tmp_path / "o").exists() else True
