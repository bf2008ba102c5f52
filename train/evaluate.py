"""`python -m train hellaswag --ckpt PATH`: HellaSwag accuracy of a model, as build-nanogpt and llm.c measure it.

The measure is train/hellaswag.py's (`acc`: the right ending has the lowest summed loss; `acc_norm`: the lowest
mean loss per token), on the shards of `python -m pipelines hellaswag` (`make hellaswag-shards`), with
`--batch-examples` examples (4 rows each) per forward pass; fp32 on a CPU, bf16 autocast on a GPU with native bf16
(`--dtype`). Under torchrun each rank scores a strided slice of the examples and the counts are summed, so N
processes give what 1 gives. Prints `acc` and `acc_norm` with the number of examples and writes them as JSON
(`--out`; default `hellaswag.json` in the checkpoint's folder). Exit status 0, or 1 with a message.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from gpt.checkpoint import load_model, resolve_checkpoint
from shards import cli
from shards.io import write_json

from .data import verify_data
from .distributed import Dist, process_group, run_process
from .hellaswag import evaluate, find_data
from .loop import RUN_ERRORS, autocast, dtype_name

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
            verify_data(data, model.config.vocab_size, cfg.progress)
    dist.barrier()
    start = time.perf_counter()
    result = evaluate(model, data, dist, cfg.limit, cfg.batch_examples, autocast(cfg, dist.device), cfg.progress)
    seconds = time.perf_counter() - start
    out = Path(cfg.out) if cfg.out else folder / RESULT
    record = {**result, "ckpt": str(folder), "limit": cfg.limit, "of": len(data), "shards_dir": str(data.dir),
              "manifest_sha256": data.manifest_sha256, "dtype": dtype_name(cfg, dist.device),
              "device": str(dist.device), "world_size": dist.world_size, "seconds": round(seconds, 2)}
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
