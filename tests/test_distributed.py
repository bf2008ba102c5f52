"""Dist's collectives with two gloo processes: the checks that keep ranks from going on with different state."""

import json

import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from train.distributed import Dist


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
