"""The trainer as real processes: 2 gloo ranks equal 1 rank, SIGKILL/SIGTERM/SIGINT and resume equal an uninterrupted run.

Every run is `python -m train pretrain` with the same global batch of 8 sequences; a small-vocabulary model keeps
each run to seconds. Runs that are signalled, and those of 2 ranks (torchrun on 127.0.0.1), are real processes;
a finishing 1-rank run is `main(argv)` in this process (one thread, as the processes' OMP_NUM_THREADS=1), which
saves a torch import per run.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train.checkpoint import latest_checkpoint
from train.log import read_log
from train.pretrain import main as pretrain
from train_shards import one_thread, small_model, write_test_shards  # noqa: F401 (an autouse fixture)

ROOT = Path(__file__).resolve().parents[1]
STEPS = 10


def flags(setup, run_dir, micro_batch=2):
    # --eval-tokens 160: 5 validation windows, in micro-batches of 2, 2 and 1 rows on 1 rank, and on 2 ranks of 2 and 1
    # (3 rows) and 2: a mean of micro-batch or rank means would differ between them
    return ["--shards-dir", str(setup["shards"]), "--init", str(setup["init"]), "--run-dir", str(run_dir),
            "--model", "nano", "--seq-len", "32", "--batch-tokens", "256", "--micro-batch", str(micro_batch),
            "--steps", str(STEPS), "--lr", "1e-2", "--warmup", "2", "--eval-every", "5", "--eval-tokens", "160",
            "--save-every", "1", "--keep-checkpoints", "0", "--sample-tokens", "0", "--no-progress"]


def command(nproc):
    if nproc == 1:
        return [sys.executable, "-m", "train", "pretrain"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
            f"--master_port={port}", "-m", "train", "pretrain"]


def env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def train(setup, run_dir, nproc=1, micro_batch=2, extra=()):
    if nproc == 1:
        assert pretrain(flags(setup, run_dir, micro_batch) + list(extra)) == 0
        return losses(run_dir)
    proc = subprocess.run(command(nproc) + flags(setup, run_dir, micro_batch) + list(extra), cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]  # the ranks' progress, then torchrun's
    return losses(run_dir)


def losses(run_dir):
    return {r["step"]: (r.get("loss"), r.get("val_loss")) for r in read_log(run_dir)}


def interrupt(setup, run_dir, sig, nproc=1):
    """Start a run, send `sig` as soon as its first checkpoint exists (to its whole process group, as a terminal
    sends Ctrl-C, under torchrun), and return its exit status and output."""
    # The run's SIGINT is set here, not inherited: a test runner started in the background (`cmd &` in a
    # script, as `nohup`) passes SIGINT ignored, and the trainer keeps an ignored SIGINT ignored, by design
    default = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    proc = subprocess.Popen(command(nproc) + flags(setup, run_dir), cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, preexec_fn=default)
    deadline = time.monotonic() + 240
    while not (run_dir / "ckpt" / "latest").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, sig)
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train-resume")
    setup = {"shards": write_test_shards(tmp / "shards", eot=99), "init": small_model(tmp / "init"), "tmp": tmp}
    setup["reference"] = train(setup, tmp / "reference")  # 1 rank, 4 micro-batches of 2 per step
    return setup


def test_reference_run_learns(setup):
    ref = setup["reference"]
    assert sorted(ref) == list(range(STEPS + 1))
    assert ref[STEPS][1] < ref[0][1] - 1.0


def test_two_gloo_ranks_equal_one_rank_with_twice_the_accumulation(setup):
    ddp = train(setup, setup["tmp"] / "ddp", nproc=2)  # 2 ranks, 2 micro-batches of 2 each
    ref = setup["reference"]
    assert sorted(ddp) == sorted(ref)
    for step, (loss, val) in ref.items():
        if loss is not None:
            assert ddp[step][0] == pytest.approx(loss, abs=1e-5), step
        if val is not None:
            assert ddp[step][1] == pytest.approx(val, abs=1e-5), step
    log = read_log(setup["tmp"] / "ddp")
    assert log[1]["accumulation"] == 2 and read_log(setup["tmp"] / "reference")[1]["accumulation"] == 4


@pytest.mark.parametrize("sig, status", [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_interrupted_and_resumed_run_is_bitwise_identical(setup, sig, status):
    run_dir = setup["tmp"] / f"interrupted-{sig.name}"
    code, out = interrupt(setup, run_dir, sig)
    assert code == status, out[-3000:]
    stopped_at = max(losses(run_dir))
    assert 1 <= stopped_at < STEPS
    if sig != signal.SIGKILL:  # preemption or Ctrl-C: a checkpoint of the step it stopped at
        assert (run_dir / "ckpt" / "latest").read_text().strip() == f"step-{stopped_at:06d}"
        assert f"stopped by {sig.name} after step {stopped_at}; checkpoint saved" in out
        last_eval = 5 * ((stopped_at - 1) // 5)  # --eval-every 5; the stopping step skips its evaluation
        assert f"pretrain: {stopped_at} steps, validation loss " in out and f"(at step {last_eval})" in out
    resumed = train(setup, run_dir, extra=["--resume"])
    assert resumed == setup["reference"]  # every loss, bit for bit
    final = f"ckpt/step-{STEPS:06d}/model.safetensors"
    assert (run_dir / final).read_bytes() == (setup["tmp"] / "reference" / final).read_bytes()


def test_a_run_stopped_at_an_evaluation_step_evaluates_it_when_resumed(setup, monkeypatch):
    """SIGTERM during step 5 (--eval-every 5; in this process, as the step prefetches the next one's batch): step 5
    is saved unevaluated, and the resumed run evaluates it first: its log is the uninterrupted run's."""
    from train import loop

    fetch = loop._fetch

    def fetch_and_stop(data, step, *args):
        if step == 5:
            signal.raise_signal(signal.SIGTERM)
        return fetch(data, step, *args)

    run_dir = setup["tmp"] / "stopped-at-eval"
    monkeypatch.setattr(loop, "_fetch", fetch_and_stop)
    assert pretrain(flags(setup, run_dir)) == 143
    monkeypatch.undo()
    assert max(losses(run_dir)) == 5 and losses(run_dir)[5][1] is None
    assert train(setup, run_dir, extra=["--resume"]) == setup["reference"]  # val_loss at step 5 too, bit for bit
    assert [sorted(r) for r in read_log(run_dir)] == [sorted(r) for r in read_log(setup["tmp"] / "reference")]


def test_a_run_killed_before_its_last_save_prunes_ends_with_the_uninterrupted_runs_checkpoints(setup, monkeypatch):
    """Killed in its last save after `latest` names it, before the older checkpoints are removed (here a crash
    injected there): the rerun, with no step left to run, removes them, so --keep-checkpoints 2 keeps 2, as the
    uninterrupted run does."""
    from train import checkpoint

    class Killed(Exception):
        pass

    prune = checkpoint._prune

    def killed_before_last_prune(root, kept, keep):
        if kept[0].name == f"step-{STEPS:06d}":
            raise Killed
        prune(root, kept, keep)

    run_dir = setup["tmp"] / "killed-before-prune"
    monkeypatch.setattr(checkpoint, "_prune", killed_before_last_prune)
    with pytest.raises(Killed):
        pretrain(flags(setup, run_dir) + ["--keep-checkpoints", "2"])
    monkeypatch.undo()
    assert (run_dir / "ckpt" / "latest").read_text().strip() == f"step-{STEPS:06d}"
    assert train(setup, run_dir, extra=["--resume", "--keep-checkpoints", "2"]) == setup["reference"]
    assert sorted(p.name for p in (run_dir / "ckpt").iterdir()) == ["latest", f"step-{STEPS - 1:06d}",
                                                                    f"step-{STEPS:06d}"]


def test_ctrl_c_under_torchrun_saves_once_and_resumes_to_the_same_losses(setup):
    """The terminal's SIGINT reaches every rank, and torchrun forwards another: each rank stops once, together."""
    run_dir = setup["tmp"] / "ctrl-c-torchrun"
    code, out = interrupt(setup, run_dir, signal.SIGINT, nproc=2)
    assert code != 0  # torchrun's own status after a signal
    stopped_at = max(losses(run_dir))
    assert 1 <= stopped_at < STEPS, out[-3000:]
    assert f"stopped by SIGINT after step {stopped_at}; checkpoint saved" in out, out[-3000:]
    assert (run_dir / "ckpt" / "latest").read_text().strip() == f"step-{stopped_at:06d}"
    resumed = train(setup, run_dir, nproc=2, extra=["--resume"])
    for step, (loss, val) in setup["reference"].items():
        if loss is not None:
            assert resumed[step][0] == pytest.approx(loss, abs=1e-5), step


def test_a_run_started_ignoring_ctrl_c_keeps_ignoring_it(setup, monkeypatch):
    """A run started with SIGINT ignored (nohup, `cmd &`) gets SIGINT during step 5 (in this process, as the step
    prefetches the next one's batch) and trains on to the end: the uninterrupted run's losses."""
    from train import loop

    fetch, raised = loop._fetch, []

    def fetch_and_ctrl_c(data, step, *args):
        if step == 5:
            raised.append(step)
            signal.raise_signal(signal.SIGINT)
        return fetch(data, step, *args)

    run_dir = setup["tmp"] / "nohup"
    monkeypatch.setattr(loop, "_fetch", fetch_and_ctrl_c)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert pretrain(flags(setup, run_dir)) == 0
    finally:
        signal.signal(signal.SIGINT, previous)
    assert raised == [5] and losses(run_dir) == setup["reference"]


def test_resume_with_another_number_of_ranks_keeps_the_data_order(setup):
    run_dir = setup["tmp"] / "regrouped"
    shutil.copytree(setup["tmp"] / "reference", run_dir)
    # `latest` one checkpoint back, as when a run is killed between writing a checkpoint and pointing at it
    later = sorted(p.name for p in (run_dir / "ckpt").glob("step-*") if int(p.name[5:]) > 4)
    assert later
    (run_dir / "ckpt" / "latest").write_text("step-000004\n")
    state = json.loads((run_dir / "ckpt" / "step-000004" / "state.json").read_text())
    assert state["world_size"] == 1 and state["data_position"]["batch"] == 4
    resumed = train(setup, run_dir, nproc=2, micro_batch=1, extra=["--resume"])  # 2 ranks x 4 micro-batches of 1
    assert sorted(resumed) == sorted(setup["reference"])
    for step, (loss, val) in setup["reference"].items():
        if loss is not None:
            assert resumed[step][0] == pytest.approx(loss, abs=1e-5), step
        if val is not None:
            assert resumed[step][1] == pytest.approx(val, abs=1e-5), step
    final = latest_checkpoint(run_dir)  # the resumed run's checkpoints replaced the killed run's later ones
    assert final.name == later[-1] and json.loads((final / "state.json").read_text())["world_size"] == 2


def test_a_failure_on_rank_0_alone_stops_every_rank_with_its_message(setup):
    """Rank 0 cannot lock the run folder (another run holds it): rank 1 must not wait in the next collective
    (gloo's or NCCL's timeout, tens of minutes) but stop at once, and the command reports rank 0's reason."""
    from shards.io import directory_lock

    run_dir = setup["tmp"] / "locked"
    with directory_lock(run_dir):
        proc = subprocess.run(command(2) + flags(setup, run_dir), cwd=ROOT, env=env(), capture_output=True,
                              text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "is in use by another run" in out and "other rank(s) failed" in out, out[-3000:]


def test_a_failed_log_write_on_rank_0_stops_every_rank_with_its_message(setup):
    """Rank 0 cannot write loss.png (a folder of that name stands in for a full disk) after the step-0
    evaluation: rank 1 stops at once too, instead of waiting in the first step's all-reduce."""
    run_dir = setup["tmp"] / "unplottable"
    (run_dir / "loss.png").mkdir(parents=True)
    proc = subprocess.run(command(2) + flags(setup, run_dir), cwd=ROOT, env=env(), capture_output=True, text=True,
                          timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "pretrain: error:" in out and "loss.png" in out and "other rank(s) failed" in out, out[-3000:]
