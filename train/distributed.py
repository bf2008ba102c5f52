"""The process group: torchrun's environment (NCCL on GPU, gloo on CPU), or a plain single process."""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as torch_dist


class RankFailed(RuntimeError):
    """Another rank failed in a block that every rank runs (`Dist.unanimous`)."""


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over ranks in place (a no-op in a single process); returns it."""
        if self.enabled:
            torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        return tensor

    def all_reduce_max(self, tensor: torch.Tensor) -> torch.Tensor:
        """The elementwise maximum of `tensor` over ranks, in place (a no-op in a single process); returns it."""
        if self.enabled:
            torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.MAX)
        return tensor

    def same_on_every_rank(self, values: torch.Tensor) -> bool:
        """Whether the float64 `values` are equal on every rank; every rank gets the same answer."""
        if not self.enabled:
            return True
        extremes = torch.cat([values, -values])
        torch_dist.all_reduce(extremes, op=torch_dist.ReduceOp.MIN)  # the minimum and minus the maximum
        return torch.equal(extremes[:len(values)], -extremes[len(values):])

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    @contextlib.contextmanager
    def unanimous(self):
        """For a block that may fail on some ranks only (rank 0's file lock and checkpoint writes, reads of
        a node's files): when it raises on any rank, every rank raises, the failed ones their own error, the
        others RankFailed, instead of the others waiting in the next collective until NCCL's timeout. Every
        rank must enter the block; it must hold no collective itself."""
        error = None
        try:
            yield
        except Exception as e:  # re-raised below, after the other ranks have heard of it
            error = e
        failed = self.all_reduce_sum(torch.tensor([float(error is not None)], device=self.device)).item()
        if error is not None:
            raise error
        if failed:
            raise RankFailed(f"rank {self.rank}: {int(failed)} other rank(s) failed (see their message); stopping")

    def close(self, ok: bool = True) -> None:
        """Leave the process group; after a normal end, wait for every rank first (a rank that tears gloo
        down while another is still in a collective can abort the other)."""
        if torch_dist.is_initialized():
            if ok:
                self.barrier()
            torch_dist.destroy_process_group()


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """The device of --device `name` for the process of `local_rank` on its node (GPU `local_rank` on CUDA);
    ValueError for a name, or a GPU, this node lacks."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available")
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ValueError(f"local rank {local_rank} needs GPU {local_rank} but this node has {count}: lower NGPU "
                             f"(torchrun's --nproc_per_node) to {count} or less")
        return torch.device("cuda", local_rank)
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"--device {name!r}: choose auto, cpu or cuda")


def under_torchrun() -> bool:
    """Whether torchrun started this process as one of several ranks (RANK set, WORLD_SIZE above 1)."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def run_process(main: Callable[[], int | None]) -> NoReturn:
    """Run a trainer's `main()` and end the process with its status (None: 0; an exception that escapes it: its
    traceback, then 1, or 130 for a Ctrl-C); a rank of torchrun's at once, its output flushed, without the
    interpreter's shutdown. A collective launched in a backward pass (DDP's all-reduces) holds a Python object of
    the thread's state, which the process group's worker thread frees when it drops the collective; once the
    interpreter has begun to shut down, that thread's wait for the GIL ends it inside a C++ destructor, and the
    whole process aborts ('terminate called without an active exception', pytorch/pytorch#190489). Neither
    destroy_process_group nor a barrier rules that out: DDP keeps the group's threads alive past the first, and a
    worker may drop its last collective after the second has returned. Every file of the run is closed by then
    (`main`'s `finally` blocks have run)."""
    try:
        status = main() or 0
    except SystemExit as e:  # argparse's, its usage error printed
        status = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    except BaseException as e:  # a bug, an out-of-memory error, a Ctrl-C outside the loop
        traceback.print_exc()
        status = 130 if isinstance(e, KeyboardInterrupt) else 1
    if under_torchrun():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def setup(device: str, timeout_min: float) -> Dist:
    """Join torchrun's process group if launched by torchrun (RANK/WORLD_SIZE set), else a single process. A rank
    waits up to `timeout_min` minutes in a collective for the others."""
    if not under_torchrun():
        return Dist(device=pick_device(device))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    torch_dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world_size,
                                  device_id=dev if dev.type == "cuda" else None,
                                  timeout=datetime.timedelta(minutes=timeout_min))
    return Dist(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


@contextlib.contextmanager
def process_group(device: str, timeout_min: float):
    """`setup(device, timeout_min)` (a trainer's --device and --dist-timeout) for the block, then leave the group:
    after a barrier when the block ended normally, at once when it raised (another rank may never reach the
    barrier)."""
    dist = setup(device, timeout_min)
    ok = False
    try:
        yield dist
        ok = True
    finally:
        dist.close(ok)
