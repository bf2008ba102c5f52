"""HellaSwag's measure, as build-nanogpt and llm.c take it: the shards of `python -m pipelines hellaswag` and a model's
`acc` and `acc_norm` on them (`evaluate`), what `python -m train hellaswag` (train/evaluate.py) and pretraining's
`--hellaswag` report.

Each example is 4 rows of the shards, its context then one of its endings. Every row goes through the model; an
ending's loss is the cross-entropy of its tokens given what precedes them. `acc` counts the examples whose right
ending has the lowest summed loss, `acc_norm` those whose right ending has the lowest mean loss per token (llm.c's
"acc_norm"; a tie goes to the first ending). Rows go `batch_examples` examples (4 rows each) at a time, padded on
the right; a row whose inputs (all its tokens but the last) exceed the model's context is cut from the left (the
ending kept whole when it fits). The caller's autocast (`amp`) sets the precision: fp32 on a CPU, bf16 on a GPU.
Each rank scores a strided slice of the examples (rank r: r, r + N, ...) and the counts are summed over ranks, so N
processes count what 1 counts.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from gpt.model import GPT
from pipelines import HELLASWAG, HELLASWAG_ENDINGS as ENDINGS
from pipelines.stage import find_shards_dir
from shards.format import ShardError
from shards.manifest import ManifestError, load_manifest, manifest_sha256
from shards.progress import progress_bar
from shards.sft import open_sft_shard

from .distributed import Dist


class HellaSwagData:
    """The HellaSwag shards: `len(data)` examples, `rows(i)` the 4 (tokens, ending start) of example i, `labels`."""

    def __init__(self, shards_dir: str | Path):
        self.dir = Path(shards_dir)
        manifest = load_manifest(self.dir)
        if manifest.get("kind") != "hellaswag":
            raise ManifestError(f"{self.dir / 'manifest.json'}: shards of kind {manifest.get('kind')!r}, not "
                                "HellaSwag's (make hellaswag-shards writes them)")
        self.manifest_sha256 = manifest_sha256(self.dir)
        self.shard_entries = manifest["shards"]
        entry = self.shard_entries[0]
        self.shard = open_sft_shard(self.dir / entry["file"])
        labels = self.dir / entry["labels_file"]
        if not labels.is_file():  # as open_sft_shard names a missing shard file
            raise ShardError(f"{labels}: missing; remove {self.dir} and run `make hellaswag-shards` again")
        self.labels = np.fromfile(labels, dtype=np.uint8)
        if len(self.shard) != ENDINGS * len(self.labels):
            raise ShardError(f"{self.dir / entry['labels_file']}: {len(self.labels)} labels for {len(self.shard)} "
                             f"rows ({ENDINGS} a label)")

    def __len__(self) -> int:
        return len(self.labels)

    def rows(self, i: int) -> list[tuple[np.ndarray, int]]:
        """The 4 rows of example i: (tokens, where the ending starts)."""
        rows = []
        for j in range(ENDINGS):
            tokens, mask = self.shard.example(ENDINGS * i + j)
            rows.append((tokens, int(np.argmax(mask))))
        return rows


def find_data(data_dir: str, shards_dir: str | None, flag: str = "--shards-dir") -> HellaSwagData:
    """The shards of `shards_dir`, else the one folder under `data_dir`; `flag`, the command's for the folder."""
    return HellaSwagData(shards_dir or find_shards_dir(data_dir, "eval", HELLASWAG, flag))


def batch_rows(rows: list[tuple[np.ndarray, int]], context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs [R, W] and targets [R, W] (-100 but on the endings' tokens) of rows (tokens, ending start), padded on
    the right with 0; a row of more than `context` + 1 tokens (inputs longer than the model's `context` positions)
    keeps its last `context` + 1 (its ending, when it fits)."""
    keep = context + 1
    rows = [(tokens[-keep:], max(1, start - max(0, len(tokens) - keep))) for tokens, start in rows]
    width = max(len(tokens) for tokens, _ in rows) - 1
    inputs = torch.zeros(len(rows), width, dtype=torch.long)
    targets = torch.full((len(rows), width), -100, dtype=torch.long)
    for r, (tokens, start) in enumerate(rows):
        row = torch.from_numpy(tokens.astype(np.int64))
        inputs[r, :len(row) - 1] = row[:-1]
        targets[r, start - 1:len(row) - 1] = row[start:]
    return inputs, targets


@torch.no_grad()
def ending_losses(model: GPT, rows: list[tuple[np.ndarray, int]], device: torch.device,
                  amp=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The summed loss (float64) and the number of scored tokens of each row's ending, in one forward pass."""
    inputs, targets = batch_rows(rows, model.config.block_size)
    inputs, targets = inputs.to(device), targets.to(device)
    with amp or contextlib.nullcontext():
        _, loss = model(inputs, targets, reduction="none", supervised_only=True)
    return loss.double().sum(dim=1), (targets != -100).sum(dim=1)


@torch.no_grad()
def evaluate(model: GPT, data: HellaSwagData, dist: Dist, limit: int | None = None, batch_examples: int = 8,
             amp=None, progress: bool = True) -> dict:
    """{"examples", "acc", "acc_norm", "correct", "correct_norm"} of the first `limit` examples (all: None), this
    rank scoring examples rank, rank + world_size, ... and the counts summed over ranks. The model is left in the
    mode it came in."""
    n = len(data) if limit is None else min(limit, len(data))
    mine = list(range(dist.rank, n, dist.world_size))
    counts = torch.zeros(3, dtype=torch.float64)  # examples, right by the sum, right by the mean
    was_training = model.training
    model.eval()
    try:
        with progress_bar(total=len(mine), desc="hellaswag", unit="example", enabled=progress and dist.is_main,
                          leave=False) as bar:
            for b in range(0, len(mine), batch_examples):
                batch = mine[b:b + batch_examples]
                sums, tokens = ending_losses(model, [row for i in batch for row in data.rows(i)], dist.device, amp)
                sums, tokens = sums.cpu().view(-1, ENDINGS), tokens.cpu().view(-1, ENDINGS)
                labels = torch.from_numpy(data.labels[batch].astype(np.int64))
                counts += torch.tensor([len(batch), (sums.argmin(1) == labels).sum().item(),
                                        ((sums / tokens).argmin(1) == labels).sum().item()], dtype=torch.float64)
                bar.update(len(batch))
    finally:
        model.train(was_training)
    examples, correct, correct_norm = (int(v) for v in dist.all_reduce_sum(counts.to(dist.device)).tolist())
    return {"examples": examples, "acc": correct / max(examples, 1), "acc_norm": correct_norm / max(examples, 1),
            "correct": correct, "correct_norm": correct_norm}
