"""`python -m pipelines pretrain`: the pretraining data pipeline, source stage then tokenize stage.

    DATA_DIR/<name>-source/<fingerprint>/    the converted sample or the downloaded hub files + manifest.json
    DATA_DIR/<name>-pretrain/<fingerprint>/  <name>_val_000000.bin, <name>_train_000001.bin, ... (+ .docs)
                                             and manifest.json, written last

A finished stage is not run again; a killed one resumes; a changed config gets a new folder.
With --num-tasks N each of N machines (sharing DATA_DIR) runs --task-index i, then one runs --assemble.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from shards import cli
from shards.io import directory_lock, remove_temporaries
from shards.manifest import running_tasks, task_folder
from shards.tokenizer import ranks_sha256

from . import PRETRAIN_DATASETS, sources, stage, tokenize_stage

# A shard's header counts its tokens in an int32. The validation shard runs past --val-tokens to the next document
# boundary, so both flags stop at 2**30, which leaves that last document 2**30 - 1 tokens to run over.
MAX_FLAG_TOKENS = 2**30
DEFAULT_VAL_TOKENS = {"sample": 131_072, "fineweb10B": 100_000_000, "fineweb-edu10B": 100_000_000}


@dataclass
class PretrainConfig:
    CHOICES: ClassVar[dict] = {"dataset": PRETRAIN_DATASETS}
    HELP: ClassVar[dict] = {
        "source": "folder or file of parquet/jsonl/jsonl.zst (overrides --dataset)",
        "workers": "tokenizer processes (output does not depend on it)",
        "val_tokens": "default: per dataset; for a SOURCE folder 1%% of the tokens (at most --shard-tokens)",
        "assemble": "write the shards and manifest from every task's parts",
        "download_only": "only download or convert the source"}

    dataset: str = "sample"
    source: str | None = None         # a folder or file of parquet/jsonl(.zst); overrides dataset
    data_dir: str = "data"
    workers: int = os.cpu_count() or 1
    shard_tokens: int = 100_000_000
    val_tokens: int | None = None     # default: per dataset; for a SOURCE folder 1% of the tokens (<= shard_tokens)
    text_column: str = "text"
    task_index: int = 0
    num_tasks: int = 1
    assemble: bool = False            # only assemble the parts that all tasks wrote
    download_only: bool = False       # only run the source stage (download or conversion)


def stage_config(cfg: PretrainConfig, source: sources.TextSource) -> dict:
    """The dict whose fingerprint names the output folder: everything that changes the bytes, nothing else."""
    val = cfg.val_tokens if cfg.val_tokens is not None else DEFAULT_VAL_TOKENS.get(source.name)
    config = {"stage": "pretrain", "format_version": tokenize_stage.FORMAT_VERSION, "dataset": source.name,
              "inputs": source.identity, "text_column": cfg.text_column, "shard_tokens": cfg.shard_tokens,
              "val_tokens": val, "tokenizer": ranks_sha256()}
    if any(p.name.endswith(".jsonl") for p in source.files):  # the parts of a killed run depend on it
        config["jsonl_unit_bytes"] = sources.JSONL_UNIT_BYTES
    return config


def _check(cfg: PretrainConfig) -> None:
    for flag, value in (("--shard-tokens", cfg.shard_tokens), ("--val-tokens", cfg.val_tokens)):
        if value is not None and not 0 < value <= MAX_FLAG_TOKENS:
            raise ValueError(f"{flag} must be in [1, {MAX_FLAG_TOKENS:,}] (a shard header counts tokens in an "
                             f"int32), got {value:,}")
    if not 0 <= cfg.task_index < cfg.num_tasks:
        raise ValueError(f"--task-index {cfg.task_index} is not in [0, --num-tasks {cfg.num_tasks})")


def run(cfg: PretrainConfig) -> Path | None:
    """Run the pipeline; returns the shard folder (None after --download-only)."""
    _check(cfg)
    source = sources.prepare(cfg.dataset, cfg.source, cfg.data_dir)
    if cfg.download_only:
        print(f"source {source.name}: {len(source.files)} files ready")
        return None
    config = stage_config(cfg, source)
    out = stage.output_dir(cfg.data_dir, stage.shards_folder(source.name, "pretrain"), config)
    if stage.finished(out, config):
        print(f"{out}: already finished, nothing to do")
        return out
    sources.check_verified(source.files, source.identity, source.stage_dir)
    parts = out / stage.PARTS
    units = tokenize_stage.plan_units(source.files)
    if not units:  # parquet files without a row group: nothing to tokenize, nothing to name the files after
        raise sources.SourceError(f"no documents: the source holds no rows ({len(source.files)} file(s): "
                                  f"{sources.first_names([str(p) for p in source.files])})")
    if cfg.num_tasks > 1 and not cfg.assemble:
        with directory_lock(task_folder(parts, cfg.task_index, cfg.num_tasks)):
            stats = tokenize_stage.tokenize(source.files, units, parts, cfg.text_column, cfg.workers,
                                            cfg.task_index, cfg.num_tasks,
                                            desc=f"tokenize {source.name} task {cfg.task_index}/{cfg.num_tasks}")
        _report(stats)
        print(f"{out}: task {cfg.task_index} of {cfg.num_tasks} done; "
              "when every task has finished, run once more with --assemble")
        return out

    def build() -> dict:
        _refuse_running_tasks(parts)
        remove_temporaries(out)
        if not cfg.assemble:
            _report(tokenize_stage.tokenize(source.files, units, parts, cfg.text_column, cfg.workers,
                                            desc=f"tokenize {source.name}"))
        shards, totals = tokenize_stage.assemble(units, parts, out, source.name, cfg.shard_tokens, config["val_tokens"])
        described = source.describe()
        manifest = tokenize_stage.build_manifest(source.name, config, out.name, described, shards, totals)
        stage.finish(out, manifest)
        return manifest

    totals = stage.run_once(out, config, build)["totals"]
    print(f"{out}: {totals['shards']} shards, {totals['tokens']:,} tokens, {totals['documents']:,} documents "
          f"({totals['empty_documents']:,} empty skipped)")
    return out


def _refuse_running_tasks(parts: Path) -> None:
    """A RuntimeError naming the lock of a `--num-tasks` task that is writing into `parts` now."""
    if busy := running_tasks(parts):
        raise RuntimeError(f"{parts} is in use by task run {busy[0].name} (lock {busy[0] / '.lock'}); "
                           "wait for every task to finish, then run with --assemble")


def _report(stats: dict) -> None:
    print(f"tokenized {stats['units']} parts ({stats['skipped']} already done), {stats['tokens']:,} tokens, "
          f"peak RSS per worker {stats['peak_rss_per_worker'] / 2**20:,.0f} MiB")


def parse_args(argv: list[str] | None) -> PretrainConfig:
    return cli.parse(PretrainConfig, argv, "python -m pipelines pretrain", __doc__)


def main(argv: list[str] | None = None) -> int:
    return stage.command(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
