"""The SFT data stage: Alpaca-format examples to masked uint16 shards (`python -m pipelines sft`).

Output: `DATA_DIR/<dataset>-sft/<fingerprint>/` with `val.bin` and `train.bin` (each with its `.mask`
and `.idx`, see shards/sft.py) and `manifest.json`, written last. An example is the rendered Alpaca
prompt, then the answer (`output` + EOT); the mask is 1 exactly on the answer and its EOT.
Examples whose output is empty (or only whitespace) are skipped, and so is every copy of an example
(the same instruction, input and output) after its first; examples longer than `block_size`
tokens are dropped, or with `--truncate` cut to `block_size` keeping the closing EOT. An example goes
to validation when a hash of its prompt (instruction and input) falls under `val_fraction`, so the
split is stable across runs and worker counts and no validation prompt is trained on; gsm8k keeps its own
split (its test file is the validation split).

Work is done in chunks of `chunk_examples` source rows, each written to `parts/` (its `.json` last), in
parallel over `workers` processes (pipelines/examples.py, shared with the preference stage); a killed run
redoes only unfinished chunks, and the result is byte-identical whatever the number of workers.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from gpt import template
from pipelines import CUSTOM, SFT_DATASETS, examples, sft_sources
from pipelines.examples import SPLITS, encode_example, is_val  # noqa: F401 (the stage's API: is_val, encode_example)
from pipelines.sources import check_verified, file_stats
from pipelines.stage import PARTS, command, finish, finished, output_dir, run_once, shards_folder
from shards import cli
from shards.io import sha256_json
from shards.tokenizer import EOT, describe, ranks_sha256

# The sample's validation split: 2% of it would be 18 examples, too few to measure an EOT rate; 10% is 108
# (102 distinct prompts).
VAL_FRACTION = {"sample": 0.1}
DEFAULT_VAL_FRACTION = 0.02
COUNTERS = ("rows", "empty_output", "duplicates", "dropped_too_long", "truncated")


@dataclass
class SFTConfig:
    CHOICES: ClassVar[dict] = {"dataset": SFT_DATASETS}
    HELP: ClassVar[dict] = {
        "source": "an Alpaca-format .json, .jsonl, .jsonl.zst or .parquet file (overrides --dataset)",
        "block_size": "longest example kept, in tokens",
        "truncate": "truncate long examples (keeping EOT) instead of dropping",
        "chunk_examples": "source rows per unit of work",
        "val_fraction": "share of the prompts held out, gsm8k having its own split (default: " + ", ".join(
            f"{k} {v}" for k, v in VAL_FRACTION.items()) + f", other datasets {DEFAULT_VAL_FRACTION})"}

    dataset: str = "sample"           # sample | alpaca | gsm8k (ignored when source is set)
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
        return CUSTOM if self.source else self.dataset


def load_source(cfg: SFTConfig) -> sft_sources.ExampleSource:
    if cfg.source:
        return sft_sources.path_source(cfg.source)
    if cfg.dataset == "sample":
        return sft_sources.sample_source()
    if cfg.dataset == "alpaca":
        return sft_sources.alpaca_source(cfg.data_dir)
    if cfg.dataset == "gsm8k":
        return sft_sources.gsm8k_source(cfg.data_dir)
    raise ValueError(f"unknown SFT dataset {cfg.dataset!r} (expected {', '.join(SFT_DATASETS)}, or a --source "
                     "file)")


def stage_config(cfg: SFTConfig, source: dict) -> dict:
    """Everything the output depends on: it names the output folder and is stored in the manifest (not
    val_fraction for gsm8k, which keeps its own split: the flag changes nothing there)."""
    config = {"stage": "sft", "dataset": cfg.name(), "source_sha256": sha256_json(source["files"]),
              "duplicates": "skipped", "block_size": cfg.block_size, "truncate": cfg.truncate,
              "val_fraction": cfg.val_fraction, "chunk_examples": cfg.chunk_examples,
              "template_sha256": template.TEMPLATE_SHA256, "tokenizer_sha256": ranks_sha256()}
    if cfg.name() == "gsm8k":
        del config["val_fraction"]
    return config


def _tokenize_chunk(job: tuple) -> None:
    """Tokenize one chunk of examples into `parts/<index>.{val,train}.*`, then `parts/<index>.json`."""
    parts, index, rows, cfg = job
    kept = {split: [] for split in SPLITS}  # (tokens, prompt length) per example
    stats = dict.fromkeys(COUNTERS, 0)
    stats["rows"] = len(rows)
    for instruction, input, output, split, copy in rows:
        if not output.strip():
            stats["empty_output"] += 1
            continue
        if copy:
            stats["duplicates"] += 1
            continue
        tokens, prompt_len = encode_example(instruction, input, output)
        if len(tokens) > cfg.block_size:
            if not cfg.truncate or prompt_len + 2 > cfg.block_size:  # keep at least one answer token + EOT
                stats["dropped_too_long"] += 1
                continue
            tokens = tokens[: cfg.block_size]
            tokens[-1] = EOT
            stats["truncated"] += 1
        split = split or ("val" if is_val(instruction, input, cfg.val_fraction) else "train")
        kept[split].append((tokens, prompt_len))
    for split, items in kept.items():
        examples.write_part(parts / f"{index:05d}.{split}.bin", items)
    examples.mark_done(parts, index, stats)


def _marked(rows):
    """Each row (instruction, input, output, split) with a fifth field: whether an earlier row is the same example."""
    seen: set[bytes] = set()
    for row in rows:
        key = hashlib.sha256(json.dumps(row).encode()).digest()[:16]
        yield (*row, key in seen)
        seen.add(key)


def _assemble(out: Path, parts: Path, num_chunks: int, totals: dict) -> tuple[list[dict], dict]:
    """Concatenate the parts of each split into one shard; returns the manifest's shard entries and totals."""
    entries = [examples.assemble(out, parts, num_chunks, split, split) for split in SPLITS]
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
    seen = file_stats(source.files)  # a file rewritten from here on is named before the manifest is written
    source_info = source.describe()
    config = stage_config(cfg, source_info)
    out = output_dir(cfg.data_dir, shards_folder(cfg.name(), "sft"), config)
    if finished(out, config):
        print(f"sft: {out} is complete, nothing to do")
        return out
    check_verified(source.files, source.verified, source.stage_dir)
    with examples.reading(out / PARTS, source.files, seen):
        num_chunks = examples.plan(source.examples(), source.files, cfg.chunk_examples, "examples")

    def build() -> dict:
        with examples.reading(out / PARTS, source.files, seen):
            parts = examples.run_chunks(out, _marked(source.examples()), num_chunks, cfg.chunk_examples,
                                        _tokenize_chunk, cfg, cfg.workers, f"sft {cfg.name()}")
            totals = examples.counters(parts, num_chunks, COUNTERS)
            if totals["rows"] == totals["empty_output"] + totals["duplicates"] + totals["dropped_too_long"]:
                raise sft_sources.SourceError(f"{', '.join(map(str, source.files))}: every example was skipped "
                                              f"(empty output or longer than block_size {cfg.block_size})")
            entries, totals = _assemble(out, parts, num_chunks, totals)
        manifest = {"kind": "sft", "name": out.parent.name, "config": config, "source": source_info,
                    "tokenizer": describe(), "template": examples.template_record(),
                    "split": ({"method": "the dataset's own: train is train, test is val"} if source.kind == "gsm8k"
                              else {"method": "sha256 of [instruction, input] < val_fraction",
                                    "val_fraction": cfg.val_fraction}),
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
    return cli.parse(SFTConfig, argv, "python -m pipelines sft", __doc__.split("\n")[0])


def main(argv=None) -> int:
    return command(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
