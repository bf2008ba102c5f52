"""Dist's collectives with two gloo processes: the checks that keep ranks from going on with different state;
the device each rank picks; the process group's timeout; a rank's end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from train.distributed import Dist, pick_device
from train.pretrain import main as pretrain

ROOT = Path(__file__).resolve().parents[1]


def _rank(rank: int, store: str, out: str) -> None:
    torch_dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    dist = Dist(rank=rank, world_size=2)
    answers = [dist.same_on_every_rank(torch.tensor(values, dtype=torch.float64))
               for values in ([7.0, 2.0**47 + 1], [7.0, 2.0**47 + 1 + rank], [7.0 + rank, 5.0])]
    with open(f"{out}.{rank}", "w") as f:
        json.dump(answers, f)
    dist.close()


def test_same_on_every_rank_sees_any_difference_and_every_rank_agrees(tmp_path):
    out = tmp_path / "answers"
    mp.spawn(_rank, args=(str(tmp_path / "store"), str(out)), nprocs=2)
    for rank in (0, 1):  # 2**47 + 1 vs 2**47 + 2: a manifest hash's 48 bits are exact in float64
        assert json.loads((tmp_path / f"answers.{rank}").read_text()) == [True, False, False]


@pytest.fixture()
def four_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)


def test_each_local_rank_picks_its_gpu_and_one_past_the_node_s_gpus_is_a_clear_error(four_gpus):
    assert pick_device("cuda", 3) == pick_device("auto", 3) == torch.device("cuda", 3)
    for name in ("cuda", "auto"):
        with pytest.raises(ValueError, match=r"^local rank 4 needs GPU 4 but this node has 4: lower NGPU"):
            pick_device(name, 4)


def test_a_rank_without_a_gpu_stops_the_trainer_with_its_message(four_gpus, monkeypatch, tmp_path, capsys):
    for name, value in {"RANK": "5", "LOCAL_RANK": "5", "WORLD_SIZE": "8"}.items():
        monkeypatch.setenv(name, value)
    assert pretrain(["--run-dir", str(tmp_path / "run")]) == 1
    assert "pretrain: error: local rank 5 needs GPU 5 but this node has 4: lower NGPU" in capsys.readouterr().err


def test_the_process_group_waits_dist_timeout_minutes(monkeypatch, tmp_path):
    """--dist-timeout is the process group's timeout in minutes, 30 by default: the other ranks wait in a collective
    while rank 0 checks the shards the first time or writes a checkpoint, which NCCL's default of 10 minutes cut
    short on a slow disk."""
    import contextlib
    import datetime

    class Joined(Exception):
        pass

    joined = []

    def init_process_group(**kwargs):
        joined.append(kwargs)
        raise Joined

    monkeypatch.setattr(torch_dist, "init_process_group", init_process_group)
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    for flags in ([], ["--dist-timeout", "90"]):
        with contextlib.suppress(Joined):
            pretrain(["--run-dir", str(tmp_path / "run"), "--device", "cpu", *flags])
    assert [(j["backend"], j["timeout"]) for j in joined] == [("gloo", datetime.timedelta(minutes=30)),
                                                              ("gloo", datetime.timedelta(minutes=90))]


ENDING_RANK = """
import sys, time, torch, torch.distributed as torch_dist
from train.distributed import run_process
rank, store = int(sys.argv[1]), sys.argv[2]
torch_dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
if rank == 1:  # leaves a second after joining: rank 0's all-reduce then fails, on its gloo worker thread
    time.sleep(1)
    run_process(lambda: 0)
x = torch.ones(4, requires_grad=True)
x.register_hook(lambda grad: (torch_dist.all_reduce(torch.ones(4), async_op=True), grad)[1])
x.sum().backward()  # the all-reduce launched in the backward pass, as DDP's are
sys.setswitchinterval(100)  # the main thread keeps the GIL while the worker drops the failed all-reduce
sys.excepthook = lambda *exc: None  # nor does an exception that escapes give it up by printing its traceback
started = time.monotonic()
while time.monotonic() < started + 2:  # no output either: a write would let the worker have the GIL
    pass
run_process(ENDING)
"""


@pytest.mark.parametrize("ending, status", [("lambda: 3", 3), ("lambda: 1 / 0", 1)], ids=["returns", "raises"])
def test_a_rank_ends_with_its_status_while_a_gloo_worker_still_drops_a_backward_collective(tmp_path, ending, status):
    """A rank's end under torchrun (train.distributed.run_process) must not run the interpreter's shutdown: a gloo
    worker that frees a backward pass's collective then aborts the process (pytorch/pytorch#190489; CI saw a 2-rank
    run that had finished end in SIGABRT). Here rank 0's worker is made to wait for the GIL into that shutdown; the
    same program ending with sys.exit aborts every time. A trainer's `main` that raises (a bug, an out-of-memory
    error) ends the same way, with its traceback and status 1."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2"}
    program = ENDING_RANK.replace("ENDING", ending)
    ranks = [subprocess.Popen([sys.executable, "-c", program, str(rank), str(tmp_path / "store")],
                              env={**env, "RANK": str(rank)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for rank in (1, 0)]
    outputs = [rank.communicate(timeout=120)[0] for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, status], outputs
    assert ("ZeroDivisionError: division by zero" in outputs[1]) == (status == 1), outputs
