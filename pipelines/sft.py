"""The SFT data stage: Alpaca-format examples to masked uint16 shards (`python -m pipelines sft`).

Output: `DATA_DIR/sft-<dataset>/<fingerprint>/` with `val.bin` and `train.bin` (each with its `.mask`
and `.idx`, see shards/sft.py) and `manifest.json`, written last. An example is the rendered Alpaca
prompt, then the answer (`output` + EOT); the mask is 1 exactly on the answer and its EOT.
Examples whose output is empty (or only whitespace) are skipped, and so is every copy of an example
(the same instruction, input and output) after its first; examples longer than `block_size`
tokens are dropped, or with `--truncate` cut to `block_size` keeping the closing EOT. An example goes
to validation when a hash of its prompt (instruction and input) falls under `val_fraction`, so the
split is stable across runs and worker counts and no validation prompt is trained on.

Work is done in chunks of `chunk_examples` source rows, each written to `parts/` (its `.json` last),
in parallel over `workers` processes; a killed run redoes only unfinished chunks, and the result is
byte-identical whatever the number of workers.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gpt.tokenizer import EOT, describe, ranks_sha256
from pipelines import alpaca, sft_sources
from pipelines.stage import PARTS, finish, finished, output_dir, parallel_map, run_once
from shards.io import remove_temporaries, sha256_json, write_json
from shards.sft import open_sft_shard, write_sft_shard

SPLITS = ("val", "train")
# The sample's validation split: 2% of it would be 18 examples, too few to measure an EOT rate; 10% is 108
# (102 distinct prompts).
VAL_FRACTION = {"sample": 0.1}
DEFAULT_VAL_FRACTION = 0.02
COUNTERS = ("rows", "empty_output", "duplicates", "dropped_too_long", "truncated")


@dataclass
class SFTConfig:
    dataset: str = "sample"           # sample | alpaca (ignored when source is set)
    source: str | None = None         # a user's Alpaca-format .json/.jsonl/.parquet file
    data_dir: str = "data"
    block_size: int = 1024            # longest example kept, in tokens
    truncate: bool = False            # cut long examples to block_size (keeping EOT) instead of dropping them
    val_fraction: float | None = None  # default: VAL_FRACTION of the dataset, else DEFAULT_VAL_FRACTION
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    chunk_examples: int = 4096        # source rows per unit of work

    def __post_init__(self):
        if self.val_fraction is None:
            self.val_fraction = VAL_FRACTION.get(self.name(), DEFAULT_VAL_FRACTION)

    def name(self) -> str:
        return "custom" if self.source else self.dataset


def is_val(instruction: str, input: str, val_fraction: float) -> bool:
    """The deterministic split: a hash of the prompt fields, compared with val_fraction."""
    digest = hashlib.sha256(json.dumps([instruction, input]).encode()).digest()
    return int.from_bytes(digest[:8], "little") < val_fraction * 2**64


def load_source(cfg: SFTConfig) -> sft_sources.Source:
    if cfg.source:
        return sft_sources.path_source(cfg.source)
    if cfg.dataset == "sample":
        return sft_sources.sample_source()
    if cfg.dataset == "alpaca":
        return sft_sources.alpaca_source(cfg.data_dir)
    raise ValueError(f"unknown SFT dataset {cfg.dataset!r} (expected sample or alpaca, or a --source file)")


def stage_config(cfg: SFTConfig, source: dict) -> dict:
    """Everything the output depends on: it names the output folder and is stored in the manifest."""
    return {"stage": "sft", "dataset": cfg.name(), "source_sha256": sha256_json(source["files"]), "duplicates": "skipped",
            "block_size": cfg.block_size, "truncate": cfg.truncate, "val_fraction": cfg.val_fraction,
            "chunk_examples": cfg.chunk_examples, "template_sha256": alpaca.TEMPLATE_SHA256,
            "tokenizer_sha256": ranks_sha256()}


def _tokenize_chunk(job: tuple) -> None:
    """Tokenize one chunk of examples into `parts/<index>.{val,train}.*`, then `parts/<index>.json`."""
    parts, index, examples, copies, cfg = job
    kept = {split: [] for split in SPLITS}  # (tokens, prompt length) per example
    stats = dict.fromkeys(COUNTERS, 0)
    stats["rows"] = len(examples)
    for (instruction, input, output), copy in zip(examples, copies, strict=True):
        if not output.strip():
            stats["empty_output"] += 1
            continue
        if copy:
            stats["duplicates"] += 1
            continue
        tokens, prompt_len = alpaca.encode_example(instruction, input, output)
        if len(tokens) > cfg.block_size:
            if not cfg.truncate or prompt_len + 2 > cfg.block_size:  # keep at least one answer token + EOT
                stats["dropped_too_long"] += 1
                continue
            tokens = tokens[: cfg.block_size]
            tokens[-1] = EOT
            stats["truncated"] += 1
        kept["val" if is_val(instruction, input, cfg.val_fraction) else "train"].append((tokens, prompt_len))
    for split, items in kept.items():
        lengths = np.array([len(t) for t, _ in items], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.uint64)
        tokens = np.concatenate([t for t, _ in items]) if items else np.zeros(0, np.uint16)
        mask = np.ones(len(tokens), dtype=np.uint8)
        for start, (_, prompt_len) in zip(offsets, items):
            mask[int(start): int(start) + prompt_len] = 0
        write_sft_shard(parts / f"{index:05d}.{split}.bin", tokens, mask, offsets)
    write_json(parts / f"{index:05d}.json", stats)


def _copies(source: sft_sources.Source) -> list[bool]:
    """For every row of `source`, in order: whether an earlier row is the same example (instruction, input, output)."""
    seen: set[bytes] = set()
    copies = []
    for example in source.examples():
        key = hashlib.sha256(json.dumps(example).encode()).digest()[:16]
        copies.append(key in seen)
        seen.add(key)
    return copies


def _chunks(source: sft_sources.Source, size: int):
    it = iter(source.examples())
    for index in itertools.count():
        chunk = list(itertools.islice(it, size))
        if not chunk:
            return
        yield index, chunk


def _counters(parts: Path, num_chunks: int) -> dict:
    totals = dict.fromkeys(COUNTERS, 0)
    for i in range(num_chunks):
        for key, value in json.loads((parts / f"{i:05d}.json").read_text()).items():
            totals[key] += value
    return totals


def _assemble(out: Path, parts: Path, num_chunks: int, totals: dict) -> tuple[list[dict], dict]:
    """Concatenate the parts of each split into one shard; returns the manifest's shard entries and totals."""
    entries = []
    for split in SPLITS:
        shards = [open_sft_shard(parts / f"{i:05d}.{split}.bin") for i in range(num_chunks)]
        tokens = np.concatenate([s.tokens for s in shards])
        mask = np.concatenate([s.mask for s in shards])
        starts = [0, *np.cumsum([len(s.tokens) for s in shards])]
        offsets = np.concatenate([[0]] + [s.offsets[1:].astype(np.int64) + a for s, a in zip(shards, starts)])
        info = write_sft_shard(out / f"{split}.bin", tokens, mask, offsets)
        entries.append({"file": f"{split}.bin", "split": split, "num_tokens": info["num_tokens"],
                        "num_examples": len(offsets) - 1, "bytes": info["bytes"], "sha256": info["sha256"],
                        "mask_file": f"{split}.mask", "mask_bytes": info["mask_bytes"],
                        "mask_sha256": info["mask_sha256"], "idx_file": f"{split}.idx",
                        "idx_bytes": info["idx_bytes"], "idx_sha256": info["idx_sha256"],
                        "supervised_tokens": int(mask.sum(dtype=np.int64))})
    tokens = sum(e["num_tokens"] for e in entries)
    supervised = sum(e["supervised_tokens"] for e in entries)
    totals.update(examples=sum(e["num_examples"] for e in entries),
                  **{f"{e['split']}_examples": e["num_examples"] for e in entries},
                  tokens=tokens, supervised_tokens=supervised, prompt_tokens=tokens - supervised)
    return entries, totals


def run(cfg: SFTConfig) -> Path:
    """Run the stage (a no-op when its output is complete) and return the output folder."""
    if cfg.block_size < 2:
        raise ValueError(f"--block-size must be at least 2, got {cfg.block_size}")
    if not 0 <= cfg.val_fraction < 1:
        raise ValueError(f"--val-fraction must be in [0, 1), got {cfg.val_fraction}")
    if cfg.chunk_examples < 1:
        raise ValueError(f"--chunk-examples must be positive, got {cfg.chunk_examples}")
    source = load_source(cfg)
    source_info = source.describe()
    config = stage_config(cfg, source_info)
    out = output_dir(cfg.data_dir, f"sft-{cfg.name()}", config)
    if finished(out, config):
        print(f"sft: {out} is complete, nothing to do")
        return out
    copies = _copies(source)  # reads (and checks) every row before anything is written
    rows = len(copies)
    if rows == 0:
        raise sft_sources.SourceError(f"{', '.join(map(str, source.files))}: no examples")
    num_chunks = -(-rows // cfg.chunk_examples)

    def build() -> dict:
        remove_temporaries(out)
        parts = out / PARTS
        parts.mkdir(exist_ok=True)
        pending = {i for i in range(num_chunks) if not (parts / f"{i:05d}.json").exists()}
        size = cfg.chunk_examples
        jobs = ((parts, i, chunk, copies[i * size:(i + 1) * size], cfg)
                for i, chunk in _chunks(source, size) if i in pending)
        with tqdm(desc=f"sft {cfg.name()}", unit="chunk", total=num_chunks, initial=num_chunks - len(pending),
                  disable=None) as bar:
            for _ in parallel_map(_tokenize_chunk, jobs, len(pending), cfg.workers):
                bar.update()
        totals = _counters(parts, num_chunks)
        if totals["rows"] == totals["empty_output"] + totals["duplicates"] + totals["dropped_too_long"]:
            raise sft_sources.SourceError(f"{', '.join(map(str, source.files))}: every example was skipped "
                                          f"(empty output or longer than block_size {cfg.block_size})")
        entries, totals = _assemble(out, parts, num_chunks, totals)
        manifest = {"kind": "sft", "name": f"sft-{cfg.name()}", "config": config, "source": source_info,
                    "tokenizer": describe(),
                    "template": {"name": "alpaca", "sha256": alpaca.TEMPLATE_SHA256,
                                 "prompt_input": alpaca.PROMPT_INPUT, "prompt_no_input": alpaca.PROMPT_NO_INPUT},
                    "split": {"method": "sha256 of [instruction, input] < val_fraction", "val_fraction": cfg.val_fraction},
                    "totals": totals, "shards": entries}
        finish(out, manifest)
        return manifest

    totals = run_once(out, config, build)["totals"]
    print(f"sft: {totals['examples']} examples ({totals['val_examples']} val), {totals['tokens']} tokens "
          f"({totals['supervised_tokens']} supervised); skipped {totals['empty_output']} empty and "
          f"{totals['duplicates']} duplicates, dropped {totals['dropped_too_long']} too long, truncated "
          f"{totals['truncated']} -> {out}")
    return out


def parse_args(argv=None) -> SFTConfig:
    d = SFTConfig()
    p = argparse.ArgumentParser(prog="python -m pipelines sft", description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=["sample", "alpaca"], default=d.dataset)
    p.add_argument("--source", default=None,
                   help="an Alpaca-format .json, .jsonl, .jsonl.zst or .parquet file (overrides --dataset)")
    p.add_argument("--data-dir", default=d.data_dir)
    p.add_argument("--block-size", type=int, default=d.block_size, help="longest example kept, in tokens")
    p.add_argument("--truncate", action="store_true", help="truncate long examples (keeping EOT) instead of dropping")
    p.add_argument("--val-fraction", type=float, default=None,
                   help=f"share of the prompts held out (default: {DEFAULT_VAL_FRACTION}; "
                        + ", ".join(f"{k} {v}" for k, v in VAL_FRACTION.items()) + ")")
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--chunk-examples", type=int, default=d.chunk_examples, help="source rows per unit of work")
    return SFTConfig(**vars(p.parse_args(argv)))


def main(argv=None) -> int:
    cfg = parse_args(argv)
    try:
        run(cfg)
    except (ValueError, RuntimeError, OSError) as e:  # bad input, a busy folder, a failed download, a full disk
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
