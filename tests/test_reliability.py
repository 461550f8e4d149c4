"""Reliability: resume after SIGKILL, atomic files, non-finite loss, determinism."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from demhec import DemHECConfig, TrainConfig, finetune, train
from demhec._common import DemHECError
from demhec.results import check_writable
from tests.conftest import TinyNet

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    import sys, time, torch
    sys.path.insert(0, {root!r})
    from tests.conftest import TinyNet
    from demhec import DemHECConfig, finetune, train, TrainConfig
    torch.set_num_threads(1)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(96, 3, 12, 12, generator=g) * 255).to(torch.uint8)
    y = torch.randint(0, 4, (96,), generator=g)
    model = TinyNet()
    def slow(step, parts):  # records each step taken, so a resume that restarts from 0 shows
        with open(sys.argv[1] + ".steps", "a") as f:
            f.write(f"{{step}}\\n")
        time.sleep(float(sys.argv[3]))
    every = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    if sys.argv[2] == "train":
        train(model, (x, y), TrainConfig(epochs=3, batch_size=16, lr=0.05),
              checkpoint=sys.argv[1] + ".ckpt", checkpoint_every=every, on_step=slow)
    else:
        finetune(model, (x, y), DemHECConfig(epochs=2, batch_size=16, steps=2, warmup_epochs=0.5),
                 checkpoint=sys.argv[1] + ".ckpt", checkpoint_every=every, on_step=slow)
    torch.save(model.state_dict(), sys.argv[1] + ".pt")
''')


def _run(tmp_path, name, kind, delay="0", every="2"):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(root=str(ROOT)))
    return subprocess.Popen([sys.executable, str(script), str(tmp_path / name), kind, delay, every],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["train", "finetune"])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, kind):
    ref = _run(tmp_path, "ref", kind)
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()[-2000:]

    victim = _run(tmp_path, "run", kind, delay="0.3")
    ckpt = tmp_path / "run.ckpt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # mid-run, between checkpoints
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert ckpt.exists() and not (tmp_path / "run.pt").exists()
    step = torch.load(ckpt, weights_only=False)["step"]
    total = 18 if kind == "train" else 12
    assert 0 < step < total
    (tmp_path / "run.steps").unlink()

    resumed = _run(tmp_path, "run", kind)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()[-2000:]
    # It took only the steps after the checkpoint (equal weights alone would not show a silent
    # restart from step 0: the run is deterministic).
    taken = [int(s) for s in (tmp_path / "run.steps").read_text().split()]
    assert taken == list(range(step + 1, total + 1))
    a = torch.load(tmp_path / "ref.pt")
    b = torch.load(tmp_path / "run.pt")
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6, rtol=0), k


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["train", "finetune"])
def test_sigterm_stops_at_the_end_of_the_step_with_its_checkpoint(tmp_path, kind):
    """SIGTERM (or Ctrl-C) mid-run: the step under way finishes, its checkpoint is written (none
    of the steps taken is lost, though the run saves only at epoch ends here), the process stops,
    and the resume takes exactly the remaining steps to the uninterrupted run's weights."""
    ref = _run(tmp_path, "ref", kind, every="0")
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()[-2000:]
    victim = _run(tmp_path, "run", kind, delay="0.3", every="0")
    steps = tmp_path / "run.steps"
    deadline = time.time() + 120
    while (not steps.exists() or len(steps.read_text().split()) < 2) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGTERM)
    assert victim.wait(timeout=60) != 0
    assert "stopped at step" in victim.stderr.read().decode()
    taken = [int(s) for s in steps.read_text().split()]
    step = torch.load(tmp_path / "run.ckpt", weights_only=False)["step"]
    total = 18 if kind == "train" else 12
    assert step == taken[-1] and 2 <= step < total
    assert not (tmp_path / "run.pt").exists()
    steps.unlink()
    resumed = _run(tmp_path, "run", kind, every="0")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()[-2000:]
    assert [int(s) for s in steps.read_text().split()] == list(range(step + 1, total + 1))
    a, b = torch.load(tmp_path / "ref.pt"), torch.load(tmp_path / "run.pt")
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6, rtol=0), k


def test_a_second_signal_stops_at_once_and_the_handlers_are_restored():
    from demhec.training import _stop_at_step_end

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with _stop_at_step_end(True) as asked:
        assert not asked()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # Python runs the handler between bytecodes
        assert asked()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert {s: signal.getsignal(s) for s in before} == before
    with _stop_at_step_end(False) as asked:  # off: the handlers stay as they are
        assert {s: signal.getsignal(s) for s in before} == before and not asked()


def _data(n=32):
    g = torch.Generator().manual_seed(0)
    return (torch.rand(n, 3, 8, 8, generator=g) * 255).to(torch.uint8), torch.randint(0, 4, (n,), generator=g)


def test_same_seed_same_weights_twice():
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        m = TinyNet()
        finetune(m, _data(), DemHECConfig(epochs=1, batch_size=8, steps=2, warmup_epochs=0))
        outs.append(m.state_dict())
    for k in outs[0]:
        assert torch.equal(outs[0][k], outs[1][k]), k


class _Poisonable(TinyNet):
    """TinyNet whose outputs turn NaN once ``poisoned`` is set: a flag, not a weight, so the
    checkpoints written before it hold the good weights."""

    poisoned = False

    def forward(self, x):
        out = super().forward(x)
        return out * float("nan") if self.poisoned else out


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path):
    x, y = _data()  # 4 steps of 8 per epoch
    ckpt = tmp_path / "c.ckpt"
    torch.manual_seed(0)
    model = _Poisonable()
    after_two = {}

    def poison_after_step_two(step, parts):
        assert torch.isfinite(torch.tensor(parts["loss"]))
        if step == 2:
            after_two.update({k: v.clone() for k, v in model.state_dict().items()})
            model.poisoned = True

    with pytest.raises(DemHECError, match=r"train diverged at step 2: non-finite loss \(nan\).*"
                                          r"the last good checkpoint is c\.ckpt \(step 2\)"):
        train(model, (x, y), TrainConfig(epochs=1, batch_size=8), checkpoint=ckpt, checkpoint_every=1,
              on_step=poison_after_step_two)
    kept = torch.load(ckpt, weights_only=False)
    assert kept["step"] == 2
    for k, v in after_two.items():  # the good step-2 weights, not the failing step's
        assert torch.equal(kept["model"][k], v), k
    # The kept checkpoint resumes: the fixed run takes only the remaining steps.
    model.poisoned = False
    steps = []
    train(model, (x, y), TrainConfig(epochs=1, batch_size=8), checkpoint=ckpt, checkpoint_every=1,
          on_step=lambda step, _: steps.append(step))
    assert steps == [3, 4]


def test_checkpoint_of_other_config_is_refused(tmp_path):
    x, y = _data()
    ckpt = tmp_path / "c.ckpt"
    train(TinyNet(), (x, y), TrainConfig(epochs=1, batch_size=8), checkpoint=ckpt)
    with pytest.raises(DemHECError, match="different config.*lr"):
        train(TinyNet(), (x, y), TrainConfig(epochs=1, batch_size=8, lr=0.2), checkpoint=ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(DemHECError, match="unreadable"):
        train(TinyNet(), (x, y), TrainConfig(epochs=1, batch_size=8), checkpoint=ckpt)


@pytest.mark.parametrize("bad,match", [
    (torch.full((8, 3, 8, 8), float("nan")), "NaN"),
    (torch.rand(8, 3, 8, 8) * 2, r"\[0,1\]"),
    (torch.rand(8, 8, 8), "N x 3 x H x W"),
    (torch.randint(0, 5, (8, 3, 8, 8), dtype=torch.int32), "dtype"),
])
def test_bad_images_are_refused(bad, match):
    with pytest.raises(DemHECError, match=match):
        train(TinyNet(), (bad, torch.zeros(len(bad), dtype=torch.long)), TrainConfig(epochs=1, batch_size=4))


def test_labels_out_of_range_are_refused():
    x, _ = _data(8)
    with pytest.raises(DemHECError, match=r"labels must lie in \[0, 3\]"):
        train(TinyNet(), (x, torch.full((8,), 7)), TrainConfig(epochs=1, batch_size=4))


def test_unwritable_results_dir_fails_early(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        # root ignores permission bits: for root, a folder of the kernel's (proc) file system,
        # where no file can be created
        target = Path("/proc/self") if os.access(ro, os.W_OK) else ro / "results"
        with pytest.raises(DemHECError, match="cannot write results"):
            check_writable(target)
    finally:
        ro.chmod(0o700)


def test_results_dir_that_is_a_file_fails_early(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(DemHECError, match="cannot write results"):
        check_writable(tmp_path / "f" / "results")


def test_the_launchers_commit_wins_over_a_stale_dot_git(monkeypatch):
    """A GPU machine's copy of the work tree may hold a .git of an older commit: the launcher's
    DEMHEC_GIT_COMMIT (the carried COMMIT) is what the result records."""
    from demhec.results import git_commit

    monkeypatch.delenv("DEMHEC_GIT_COMMIT", raising=False)
    here = git_commit()
    monkeypatch.setenv("DEMHEC_GIT_COMMIT", "0123abc")
    assert git_commit() == "0123abc" != here
