"""`make bench-shards`: tokens/s of our tokenize stage against raw tiktoken, on the same documents and cores.

Input: the built-in sample's 7,168 conversations repeated `--repeat` times (default 7: ~22.4M tokens),
written as parquet files of 512-row row groups into a temporary folder. Baseline: tiktoken's
`encode_ordinary_batch` on the same documents held in memory, with as many threads as the stage has
workers. Ours: the whole stage (`pipelines.pretrain.run` on that folder: parquet reading, tokenizing in
WORKERS processes, assembling the shards, sha256, manifest), from a cold start. Both count document tokens
(not the EOTs). Rounds alternate baseline and stage; reported: the best round of each, their ratio, the
median of the per-round ratios (the machine may be shared), and the peak RSS of a tokenize worker.
The parent has imported everything before the clock starts; the workers start from scratch (spawn)
inside the timed run.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import ClassVar
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bench import cpu_name, require_positive
from pipelines import sources, tokenize_stage
from shards import cli
from shards.manifest import load_manifest


@dataclass
class BenchConfig:
    HELP: ClassVar[dict] = {"repeat": "copies of the sample (7 = ~22.4M tokens)"}

    repeat: int = 7
    workers: int = os.cpu_count() or 1
    rounds: int = 3


def make_input(folder: Path, repeat: int) -> list[str]:
    texts = pq.read_table(sources.build_sample(folder / "sample").files[0], columns=["text"]).column(0).to_pylist()
    (folder / "in").mkdir()
    for r in range(repeat):
        pq.write_table(pa.table({"text": texts}), folder / "in" / f"{r:03d}.parquet",
                       row_group_size=sources.SAMPLE_ROWS_PER_GROUP)
    return texts * repeat


def baseline(texts: list[str], threads: int) -> tuple[int, float]:
    enc = tokenize_stage.get_encoding()
    t0 = time.perf_counter()
    n = sum(len(ids) for ids in enc.encode_ordinary_batch(texts, num_threads=threads))
    return n, time.perf_counter() - t0


def ours(folder: Path, workers: int, round_: int) -> tuple[int, float, int]:
    from pipelines import pretrain  # kept out of the workers' import of this module
    seen = []
    original = tokenize_stage.tokenize

    def spy(*args, **kwargs):
        seen.append(original(*args, **kwargs))
        return seen[-1]

    tokenize_stage.tokenize = spy
    try:
        cfg = pretrain.PretrainConfig(source=str(folder / "in"), data_dir=str(folder / f"data{round_}"),
                                      workers=workers)
        t0 = time.perf_counter()
        out = pretrain.run(cfg)
        seconds = time.perf_counter() - t0
    finally:
        tokenize_stage.tokenize = original
    totals = load_manifest(out)["totals"]
    return totals["tokens"] - totals["documents"], seconds, seen[0]["peak_rss_per_worker"]


def main(argv: list[str] | None = None) -> int:
    cfg = cli.parse(BenchConfig, argv, "python -m bench.shards", __doc__)
    require_positive(cfg, "bench.shards", "repeat", "workers", "rounds")
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp:
        folder = Path(tmp)
        texts = make_input(folder, cfg.repeat)
        mb = sum(len(t.encode()) for t in texts) / 1e6
        best_base, best_ours, rss, ratios = float("inf"), float("inf"), 0, []
        for r in range(cfg.rounds):
            n_base, s_base = baseline(texts, cfg.workers)
            n_ours, s_ours, peak = ours(folder, cfg.workers, r)
            if n_base != n_ours:
                raise SystemExit(f"token counts differ: tiktoken {n_base:,}, stage {n_ours:,}")
            best_base, best_ours, rss = min(best_base, s_base), min(best_ours, s_ours), max(rss, peak)
            ratios.append(s_base / s_ours)
            print(f"round {r}: tiktoken {n_base / s_base:,.0f} tokens/s, stage {n_ours / s_ours:,.0f} tokens/s, "
                  f"ratio {ratios[-1]:.2f}")
    print(f"\nmachine: {cpu_name()}, {os.cpu_count()} cores; workers/threads: {cfg.workers}")
    print(f"input: {len(texts):,} documents, {mb:,.1f} MB of text, {n_base:,} tokens")
    print(f"tiktoken encode_ordinary_batch: {n_base / best_base:,.0f} tokens/s ({best_base:.1f} s)")
    print(f"our tokenize stage:             {n_ours / best_ours:,.0f} tokens/s ({best_ours:.1f} s)")
    print(f"ratio stage / tiktoken:         {best_base / best_ours:.2f} best against best, "
          f"{statistics.median(ratios):.2f} median of the rounds  (goal >= 0.9)")
    print(f"peak RSS per worker:            {rss / 2**20:,.0f} MiB  (goal <= 1024)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
