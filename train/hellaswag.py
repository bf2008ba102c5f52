"""`python -m train hellaswag --ckpt PATH`: HellaSwag accuracy of a model, as build-nanogpt and llm.c measure it.

Reads the shards of `python -m pipelines hellaswag` (`make hellaswag-shards`): each example is 4 rows, its context
then one of its endings. Every row goes through the model; an ending's loss is the cross-entropy of its tokens
given what precedes them. `acc` counts the examples whose right ending has the lowest summed loss, `acc_norm`
those whose right ending has the lowest mean loss per token (llm.c's "acc_norm"; a tie goes to the first ending).
Rows are batched `--batch-examples` examples (4 rows each) at a time, padded on the right; a row longer than the
model's context is cut from the left (the ending is kept whole when it fits). fp32 on a CPU, bf16 autocast on a GPU
with native bf16 (`--dtype`); the same counts at every batch size up to float rounding of near ties.
Under torchrun each rank scores a strided slice of the examples (rank r: r, r + N, ...) and the counts are summed,
so N processes give what 1 gives. Prints `acc` and `acc_norm` with the number of examples and writes them as JSON
(`--out`; default `hellaswag.json` in the checkpoint's folder).

`evaluate(model, data, dist, ...)` is the same measure for a trainer: pretraining's `--hellaswag-every`.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from gpt.checkpoint import load_model, resolve_checkpoint
from gpt.model import GPT
from pipelines import HELLASWAG, HELLASWAG_ENDINGS as ENDINGS
from pipelines.stage import find_shards_dir
from shards import cli
from shards.format import ShardError
from shards.io import write_json
from shards.manifest import ManifestError, load_manifest, manifest_sha256
from shards.progress import progress_bar
from shards.sft import open_sft_shard
from shards.verify import verify_files

from .distributed import Dist, process_group, run_process
from .loop import RUN_ERRORS, autocast, _dtype

RESULT = "hellaswag.json"  # written in the checkpoint's folder unless --out says otherwise


@dataclass
class HellaSwagEvalConfig:
    CHOICES: ClassVar[dict] = {"device": ("auto", "cpu", "cuda"), "dtype": ("auto", "float32", "bfloat16")}
    HELP: ClassVar[dict] = {
        "ckpt": "a checkpoint folder (ours or Hugging Face's) or a run folder (its best checkpoint, else its latest)",
        "limit": "score the first N examples only (default: all)",
        "batch_examples": "examples (4 rows each) per forward pass and process",
        "out": f"the JSON file of the result (default: {RESULT} in the checkpoint's folder)",
        "shards_dir": "the HellaSwag shards folder (default: the one under --data-dir)",
        "dtype": "auto: bfloat16 autocast on a GPU with native bf16, else float32",
        "dist_timeout": "minutes a rank waits in a collective for the others"}

    ckpt: str | None = None
    data_dir: str = "data"
    shards_dir: str | None = None
    limit: int | None = None
    batch_examples: int = 8
    device: str = "auto"
    dtype: str = "auto"
    out: str | None = None
    verify_data: bool = True
    progress: bool = True
    dist_timeout: float = 30


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
        self.labels = np.fromfile(self.dir / entry["labels_file"], dtype=np.uint8)
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


def find_data(data_dir: str, shards_dir: str | None) -> HellaSwagData:
    return HellaSwagData(shards_dir or find_shards_dir(data_dir, "eval", HELLASWAG))


def batch_rows(rows: list[tuple[np.ndarray, int]], context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs [R, W] and targets [R, W] (-100 but on the endings' tokens) of rows (tokens, ending start), padded on
    the right with 0; a row longer than `context` tokens keeps its last `context` (its ending, when it fits)."""
    rows = [(tokens[-context:], max(1, start - max(0, len(tokens) - context))) for tokens, start in rows]
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


def run(cfg: HellaSwagEvalConfig, dist: Dist) -> dict:
    """Score `cfg.ckpt`; rank 0 prints the result and writes it as JSON."""
    if not cfg.ckpt:
        raise ValueError("--ckpt is required (a checkpoint folder, ours or Hugging Face's, or a run folder)")
    if cfg.batch_examples < 1:
        raise ValueError(f"--batch-examples must be positive, got {cfg.batch_examples}")
    if cfg.limit is not None and cfg.limit < 1:
        raise ValueError(f"--limit must be positive, got {cfg.limit}")
    with dist.unanimous():  # a node that cannot read the shards or the checkpoint stops every rank
        folder = resolve_checkpoint(cfg.ckpt)
        data = find_data(cfg.data_dir, cfg.shards_dir)
        model = load_model(folder, device=dist.device)
        if cfg.verify_data and dist.local_rank == 0:
            verify_files(data.dir, data.shard_entries, model.config.vocab_size, cfg.progress)
    dist.barrier()
    start = time.perf_counter()
    result = evaluate(model, data, dist, cfg.limit, cfg.batch_examples, autocast(cfg, dist.device), cfg.progress)
    seconds = time.perf_counter() - start
    out = Path(cfg.out) if cfg.out else folder / RESULT
    record = {**result, "ckpt": str(folder), "limit": cfg.limit, "of": len(data), "shards_dir": str(data.dir),
              "manifest_sha256": data.manifest_sha256, "dtype": _dtype(cfg, dist.device), "device": str(dist.device),
              "world_size": dist.world_size, "seconds": round(seconds, 2)}
    with dist.unanimous():  # rank 0's write (a read-only checkpoint folder) stops every rank with its message
        if dist.is_main:
            write_json(out, record)
    if dist.is_main:
        print(f"hellaswag: {result['examples']:,} examples of {len(data):,}: acc {result['acc']:.4f} "
              f"({result['correct']:,}), acc_norm {result['acc_norm']:.4f} ({result['correct_norm']:,}) "
              f"in {seconds:.1f} s -> {out}")
    return record


def parse_args(argv=None) -> HellaSwagEvalConfig:
    return cli.parse(HellaSwagEvalConfig, argv, "python -m train hellaswag", __doc__.split("\n")[0])


def main(argv=None) -> int:
    cfg = parse_args(argv)
    try:
        with process_group(cfg.device, cfg.dist_timeout) as dist:
            run(cfg, dist)
    except RUN_ERRORS as e:
        print(f"hellaswag: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_process(main)
