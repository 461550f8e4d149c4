"""Data-parallel runs: sharded batches, 2 gloo processes under torchrun against one
process, resume under torchrun, rank-0-only outputs and evaluation equal to one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from demhec import distributed
from demhec._common import DemHECError
from demhec.batches import TensorBatches
from demhec.cli import main
from demhec.training import finetune, train
from tests import ddp_worker

ROOT = Path(__file__).resolve().parents[1]
# Two processes reduce gradients in another order than one: float32 rounding, nothing more.
ATOL = 1e-5


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
           "--nproc_per_node=2", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("augment", ["none", "crop_flip"])
def test_rank_shards_make_up_the_single_process_batch(augment):
    images, labels = ddp_worker.make_data(64)
    one = TensorBatches(images, labels, 16, augment=augment, seed=3, drop_last=True)
    ranks = [TensorBatches(images, labels, 8, augment=augment, seed=3, drop_last=True,
                           rank=r, world_size=2) for r in range(2)]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == 4
    for epoch in (0, 1):
        for (x, y), (x0, y0), (x1, y1) in zip(one.epoch(epoch), ranks[0].epoch(epoch), ranks[1].epoch(epoch)):
            assert torch.equal(x, torch.cat([x0, x1])) and torch.equal(y, torch.cat([y0, y1]))


def test_sharded_batches_validate():
    images, labels = ddp_worker.make_data(64)
    with pytest.raises(DemHECError, match="drop_last=True"):
        TensorBatches(images, labels, 8, rank=0, world_size=2)
    with pytest.raises(DemHECError, match="rank must be <= 1"):
        TensorBatches(images, labels, 8, drop_last=True, rank=2, world_size=2)
    with pytest.raises(DemHECError, match="one global batch"):
        TensorBatches(images, labels, 40, drop_last=True, rank=0, world_size=2)


def test_single_process_helpers_are_identities():
    x = torch.randn(5, 3)
    assert distributed.rank_and_world() == (0, 1) and distributed.is_main()
    assert distributed.gather(x) is x and distributed.gather_with_grad(x) is x
    assert distributed.mean_over_ranks({"a": 1.5}) == {"a": 1.5}
    assert [distributed.shard(10, r, 3) for r in range(3)] == [slice(0, 4), slice(4, 7), slice(7, 10)]
    assert distributed.setup("cpu") == "cpu"  # no torchrun environment: nothing to join


def test_two_ranks_match_one_process(tmp_path):
    """2 processes x batch 64 (gloo) against 1 process x batch 128, same seed: Dem-HEC
    fine-tuning (every loss term, random start) and base training give the same weights;
    a run interrupted after its step-2 checkpoint and resumed under torchrun takes the remaining
    steps only and gives the uninterrupted result. SIGTERM reaching one rank stops both at the
    same step with its checkpoint (the rank that was not signalled does not wait on the other)."""
    _torchrun([str(ROOT / "tests" / "ddp_worker.py"), str(tmp_path)], cwd=tmp_path)
    states = torch.load(tmp_path / "states.pt")
    assert states.pop("resumed_steps") == [3, 4]  # resumed at the checkpoint, not from step 0
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"signalled_rank{rank}.json").read_text())
        assert seen == {"stopped": True, "steps": [1, 2]}, (rank, seen)
    assert states.pop("signalled_checkpoint_step") == 2
    assert states.pop("signalled_resumed_steps") == [3, 4]
    data = ddp_worker.make_data()
    single_ft = finetune(ddp_worker.make_model(), data, replace(ddp_worker.FT, batch_size=128)).state_dict()
    single_tr = train(ddp_worker.make_model(), data, replace(ddp_worker.TR, batch_size=128)).state_dict()
    before = ddp_worker.make_model().state_dict()
    for name in single_ft:
        assert not torch.equal(single_ft[name], before[name])  # training moved every tensor
        torch.testing.assert_close(states["finetune"][name], single_ft[name], atol=ATOL, rtol=0)
        torch.testing.assert_close(states["train"][name], single_tr[name], atol=ATOL, rtol=0)
        torch.testing.assert_close(states["resumed"][name], states["finetune"][name], atol=ATOL, rtol=0)
        torch.testing.assert_close(states["signalled_resumed"][name], states["finetune"][name], atol=ATOL, rtol=0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/task")
def test_leaving_the_group_stops_gloo_threads(tmp_path):
    """A regression: rank 1 of `demhec evaluate` aborted at exit ("terminate called without an active
    exception"): torch.distributed.nn, imported after the group was joined, held the group in its
    functions' default arguments, so gloo's threads outlived teardown. They end at teardown now."""
    _torchrun([str(ROOT / "tests" / "teardown_worker.py"), str(tmp_path)], cwd=tmp_path)
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"threads_{rank}.json").read_text())
        assert any("gloo" in t for t in seen["during"]), seen  # the check sees gloo's threads
        assert not any("gloo" in t for t in seen["after"]), seen


def test_cli_under_torchrun_writes_once_and_evaluates_like_one_process(tmp_path):
    common = ["--dataset", "digits", "--limit", "48", "--no-progress"]
    ddp, one = tmp_path / "ddp", tmp_path / "one"
    assert main(["train", *common, "--out", str(ddp), "--epochs", "1", "--batch-size", "32"]) == 0
    proc = _torchrun(["-m", "demhec", "finetune", *common, "--out", str(ddp), "--epochs", "1",
                      "--batch-size", "16", "--max-steps", "2", "--steps", "1"], cwd=ROOT)
    assert proc.stdout.count("wrote ") == 1  # rank 0 alone saves and reports
    files = sorted(p.name for p in ddp.iterdir() if p.is_file() and not p.name.startswith("."))  # not the lock
    assert files == ["digits_resnet20_base.json", "digits_resnet20_base.pt",
                     "digits_resnet20_demhec.json", "digits_resnet20_demhec.pt"]
    rec = json.loads((ddp / "digits_resnet20_demhec.json").read_text())
    assert rec["config"]["args"]["world_size"] == 2
    ev = ["evaluate", *common, "--weights", str(ddp / "digits_resnet20_demhec.pt"),
          "--corruptions", "gaussian_noise,pixelate", "--severities", "1,5"]
    proc = _torchrun(["-m", "demhec", *ev, "--out", str(ddp)], cwd=ROOT)
    assert proc.stdout.count("wrote ") == 1
    assert main([*ev, "--out", str(one)]) == 0
    tables = [json.loads((d / "digits_resnet20_demhec_cifar-c.json").read_text())["metrics"]["table"]
              for d in (ddp, one)]
    assert tables[0] == tables[1]
