"""The preference data stage: (prompt, chosen, rejected) pairs to two sets of SFT shards (`python -m pipelines prefs`).

Output: `DATA_DIR/<dataset>-prefs/<fingerprint>/` with, for each split (`val`, `train`), two SFT shards
(shards/sft.py) `<split>.chosen.bin` and `<split>.rejected.bin` (each with its `.mask` and `.idx`), whose
example i is pair i: the same rendered Alpaca prompt (identical tokens, mask 0), then the chosen or the
rejected answer and one EOT (mask 1); and `manifest.json` (kind "prefs"), written last.
Dropped and counted, never cut: pairs with an empty (or only whitespace) prompt, chosen or rejected; pairs
whose chosen and rejected are the same text; pairs whose prompt + longer answer + EOT exceed `max_tokens`.
A pair goes to validation when a hash of its prompt falls under `val_fraction` (the hash the SFT stage
uses, so the sample's validation prompts are those of the SFT sample); UltraFeedback keeps its own split.

Work is done in chunks of `chunk_pairs` source rows, each written to `parts/` (its `.json` last), in
parallel over `workers` processes (pipelines/examples.py, shared with the SFT stage); a killed run redoes
only unfinished chunks, and the result is byte-identical whatever the number of workers.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from gpt import template
from pipelines import CUSTOM, PREF_DATASETS, examples, pref_sources
from pipelines.examples import SPLITS
from pipelines.sources import SourceError, check_verified, file_stats
from pipelines.stage import PARTS, command, finish, finished, output_dir, run_once, shards_folder
from shards import cli
from shards.io import sha256_json
from shards.tokenizer import describe, ranks_sha256

SIDES = ("chosen", "rejected")
# The validation share by prompt hash: 10% of the sample's prompts (~230 pairs, enough to measure DPO's reward
# accuracy; no more than the SFT sample's held-out share, so DPO's validation prompts are unseen by SFT too)
SAMPLE_VAL_FRACTION, VAL_FRACTION = 0.1, 0.02
COUNTERS = ("rows", "empty", "identical", "dropped_too_long")


@dataclass
class PrefsConfig:
    CHOICES: ClassVar[dict] = {"dataset": PREF_DATASETS}
    HELP: ClassVar[dict] = {
        "source": "a .jsonl, .jsonl.zst, .json or .parquet file with string fields prompt, chosen, rejected "
                  "(overrides --dataset)",
        "max_tokens": "longest pair kept: prompt + the longer answer + EOT, in tokens (longer pairs are dropped)",
        "val_fraction": "validation share by prompt hash (sample and --source; ultrafeedback has its own split); "
                        f"default: {SAMPLE_VAL_FRACTION} on the sample, {VAL_FRACTION} on --source",
        "seed": "the sample's draw of rejected answers",
        "chunk_pairs": "source rows per unit of work"}

    dataset: str = "sample"           # sample | ultrafeedback (ignored when source is set)
    source: str | None = None         # a user's .jsonl/.jsonl.zst/.json/.parquet file of prompt, chosen, rejected
    data_dir: str = "data"
    max_tokens: int = 1024            # longest sequence kept: prompt + the longer answer + EOT, in tokens
    val_fraction: float | None = None  # by prompt hash (sample and --source; ultrafeedback has its own split)
    seed: int = 0                     # the sample's draw of rejected answers
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    chunk_pairs: int = 4096           # source rows per unit of work

    def name(self) -> str:
        return CUSTOM if self.source else self.dataset


def load_source(cfg: PrefsConfig) -> pref_sources.PairSource:
    if cfg.source:
        return pref_sources.path_source(cfg.source)
    if cfg.dataset == "sample":
        return pref_sources.sample_source(cfg.seed, cfg.val_fraction)
    if cfg.dataset == "ultrafeedback":
        return pref_sources.ultrafeedback_source(cfg.data_dir)
    raise ValueError(f"unknown preference dataset {cfg.dataset!r} (expected {' or '.join(PREF_DATASETS)}, "
                     "or a --source file)")


def stage_config(cfg: PrefsConfig, source: pref_sources.PairSource, info: dict) -> dict:
    """Everything the output depends on: it names the output folder and is stored in the manifest."""
    config = {"stage": "prefs", "dataset": cfg.name(), "source_sha256": sha256_json(info["files"]),
              "max_tokens": cfg.max_tokens, "chunk_pairs": cfg.chunk_pairs,
              "template_sha256": template.TEMPLATE_SHA256, "tokenizer_sha256": ranks_sha256()}
    if source.kind != "ultrafeedback":
        config["val_fraction"] = cfg.val_fraction
    if source.kind == "sample":
        config.update(seed=cfg.seed, pairing=pref_sources.SAMPLE_PAIRING)
    return config


def _tokenize_chunk(job: tuple) -> None:
    """Tokenize one chunk of pairs into `parts/<index>.<split>.<side>.*`, then `parts/<index>.json`."""
    parts, index, rows, cfg = job
    kept = {(split, side): [] for split in SPLITS for side in SIDES}  # (tokens, prompt length) per pair
    stats = dict.fromkeys(COUNTERS, 0)
    stats["rows"] = len(rows)
    for prompt, chosen, rejected, split in rows:
        if not (prompt.strip() and chosen.strip() and rejected.strip()):
            stats["empty"] += 1
            continue
        if chosen == rejected:
            stats["identical"] += 1
            continue
        prompt_tokens = examples.encode_prompt(prompt)
        pair = [examples.with_answer(prompt_tokens, answer) for answer in (chosen, rejected)]
        if max(len(tokens) for tokens in pair) > cfg.max_tokens:
            stats["dropped_too_long"] += 1
            continue
        split = split or ("val" if examples.is_val(prompt, "", cfg.val_fraction) else "train")
        for side, tokens in zip(SIDES, pair):
            kept[split, side].append((tokens, len(prompt_tokens)))
    for (split, side), items in kept.items():
        examples.write_part(parts / f"{index:05d}.{split}.{side}.bin", items)
    examples.mark_done(parts, index, stats)


def _assemble(out: Path, parts: Path, num_chunks: int, totals: dict) -> tuple[list[dict], list[dict], dict]:
    """Join the parts into the four shards; returns their manifest entries, the pairs per split, and totals."""
    entries, pairs = [], []
    for split in SPLITS:
        sides = [{**examples.assemble(out, parts, num_chunks, f"{split}.{side}", split), "side": side}
                 for side in SIDES]
        entries += sides
        pairs.append({"split": split, "pairs": sides[0]["num_examples"],
                      **{side: entry["file"] for side, entry in zip(SIDES, sides)}})
    tokens = sum(e["num_tokens"] for e in entries)
    supervised = sum(e["supervised_tokens"] for e in entries)
    totals.update(pairs=sum(p["pairs"] for p in pairs), **{f"{p['split']}_pairs": p["pairs"] for p in pairs},
                  tokens=tokens, supervised_tokens=supervised, prompt_tokens=tokens - supervised)
    return entries, pairs, totals


def run(cfg: PrefsConfig) -> Path:
    """Run the stage (a no-op when its output is complete) and return the output folder."""
    if cfg.val_fraction is None:
        cfg = replace(cfg, val_fraction=SAMPLE_VAL_FRACTION if cfg.name() == "sample" else VAL_FRACTION)
    if cfg.max_tokens < 2:
        raise ValueError(f"--max-tokens must be at least 2, got {cfg.max_tokens}")
    if not 0 <= cfg.val_fraction < 1:
        raise ValueError(f"--val-fraction must be in [0, 1), got {cfg.val_fraction}")
    if cfg.chunk_pairs < 1:
        raise ValueError(f"--chunk-pairs must be positive, got {cfg.chunk_pairs}")
    source = load_source(cfg)
    seen = file_stats(source.files)  # a file rewritten from here on is named before the manifest is written
    source_info = source.describe()
    config = stage_config(cfg, source, source_info)
    out = output_dir(cfg.data_dir, shards_folder(cfg.name(), "prefs"), config)
    if finished(out, config):
        print(f"prefs: {out} is complete, nothing to do")
        return out
    check_verified(source.files, source.verified, source.stage_dir)
    with examples.reading(out / PARTS, source.files, seen):
        num_chunks = examples.plan(source.pairs(), source.files, cfg.chunk_pairs, "pairs")

    def build() -> dict:
        with examples.reading(out / PARTS, source.files, seen):
            parts = examples.run_chunks(out, source.pairs(), num_chunks, cfg.chunk_pairs, _tokenize_chunk, cfg,
                                        cfg.workers, f"prefs {cfg.name()}")
            totals = examples.counters(parts, num_chunks, COUNTERS)
            if totals["rows"] == sum(totals[k] for k in COUNTERS[1:]):
                raise SourceError(f"{', '.join(map(str, source.files))}: every pair was dropped (empty, identical "
                                  f"answers, or longer than max_tokens {cfg.max_tokens})")
            entries, pairs, totals = _assemble(out, parts, num_chunks, totals)
        split = ({"method": "the dataset's own: train_prefs is train, test_prefs is val"}
                 if source.kind == "ultrafeedback" else
                 {"method": "sha256 of [prompt, \"\"] < val_fraction", "val_fraction": cfg.val_fraction})
        manifest = {"kind": "prefs", "name": out.parent.name, "config": config, "source": source_info,
                    "tokenizer": describe(), "template": examples.template_record(), "split": split,
                    "pairs": pairs, "totals": totals, "shards": entries}
        finish(out, manifest)
        return manifest

    totals = run_once(out, config, build)["totals"]
    print(f"prefs: {totals['pairs']} pairs ({totals['val_pairs']} val), {totals['tokens']} tokens "
          f"({totals['supervised_tokens']} supervised); dropped {totals['empty']} empty, {totals['identical']} "
          f"with identical answers, {totals['dropped_too_long']} too long -> {out}")
    return out


def parse_args(argv=None) -> PrefsConfig:
    return cli.parse(PrefsConfig, argv, "python -m pipelines prefs", __doc__.split("\n")[0])


def main(argv=None) -> int:
    return command(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
