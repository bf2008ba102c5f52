"""The HellaSwag evaluation stage: the validation split to masked shards (`python -m pipelines hellaswag`).

Source: `Rowan/hellaswag` at the commit pinned in `pipelines.hub` (its parquet validation file, 10,042 rows),
downloaded and verified by the same download stage as the other hub datasets (`DATA_DIR/hellaswag-source/`).

Output: `DATA_DIR/hellaswag-eval/<fingerprint>/` with `val.bin` (with its `.mask` and `.idx`: an SFT shard,
shards/sft.py), `val.labels` (one uint8 per example, the index of the right ending, 0..3) and `manifest.json`,
written last (each file under a temporary name, then renamed). An example is 4 rows in the shard, one per ending,
in order: the context's tokens, then the ending's, the mask 1 exactly on the ending. The rendering is
build-nanogpt's and llm.c's: context tokens = encode(ctx), ending tokens = encode(" " + ending). A row that is not
an example (no context, not 4 endings, a label other than 0..3) stops the stage naming the file and row. A rerun
of a finished stage does nothing.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines import HELLASWAG, HELLASWAG_ENDINGS
from pipelines.examples import write_shard_entry
from pipelines.sft_sources import read_records
from pipelines.sources import SourceError, check_verified, download_hub
from pipelines.stage import command, finish, finished, output_dir, run_once, shards_folder
from shards import cli
from shards.io import remove_temporaries, sha256_json, write_bytes
from shards.tokenizer import describe, get_encoding, ranks_sha256

DATASET = HELLASWAG
KIND = "eval"  # the shards folder: DATA_DIR/hellaswag-eval/<fingerprint>/
ENDINGS = HELLASWAG_ENDINGS  # rows per example
FIELDS = ("ctx", "endings", "label")
RENDERING = {"context": "encode(ctx)", "ending": "encode(' ' + ending)", "rows_per_example": ENDINGS,
             "mask": "1 on the ending's tokens"}
LABELS_SUFFIX = ".labels"


@dataclass
class HellaSwagConfig:
    data_dir: str = "data"


def check_example(path: Path, where: str, record: dict) -> tuple[str, list[str], int]:
    """(ctx, the 4 endings, the label as an int) of a row; a SourceError naming the file and row otherwise."""
    ctx, endings, label = (record[f] for f in FIELDS)
    if not isinstance(ctx, str) or not ctx:
        raise SourceError(f"{path}, {where}: ctx is {ctx!r}, expected a non-empty string")
    if not isinstance(endings, list) or len(endings) != ENDINGS or not all(isinstance(e, str) for e in endings):
        raise SourceError(f"{path}, {where}: endings is {endings!r}, expected a list of {ENDINGS} strings")
    if isinstance(label, str) and label in ("0", "1", "2", "3"):
        label = int(label)
    if type(label) is not int or not 0 <= label < ENDINGS:
        raise SourceError(f"{path}, {where}: label is {label!r}, expected \"0\" to \"3\" (the right ending's index)")
    return ctx, endings, label


def read_examples(files: list[Path]):
    """(ctx, endings, label) of every row of the parquet `files`, in order, each checked (`check_example`)."""
    for path in files:
        for where, record in read_records(path, FIELDS):
            yield check_example(path, where, record)


def encode_example(ctx: str, endings: list[str]) -> list[tuple[np.ndarray, int]]:
    """The 4 rows of an example: (tokens (uint16) of the context then the ending, the context's length)."""
    enc = get_encoding()
    context = enc.encode_ordinary(ctx)
    rows = []
    for ending in endings:
        tokens = np.array(context + enc.encode_ordinary(" " + ending), dtype=np.uint16)
        rows.append((tokens, len(context)))
    return rows


def write_rows(path: Path, rows: list[tuple[np.ndarray, int]]) -> dict:
    """The rows as one SFT shard at `path` (mask 1 on each ending); its manifest entry, split "val"."""
    lengths = np.array([len(tokens) for tokens, _ in rows], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.uint64)
    tokens = np.concatenate([tokens for tokens, _ in rows])
    mask = np.ones(len(tokens), dtype=np.uint8)
    for start, (_, context) in zip(offsets.tolist(), rows):
        mask[start: start + context] = 0
    return write_shard_entry(path, "val", tokens, mask, offsets)


def stage_config(source: dict) -> dict:
    """Everything the output depends on: it names the output folder and is stored in the manifest."""
    return {"stage": "hellaswag", "dataset": DATASET, "source_sha256": sha256_json(source["files"]),
            "rendering": RENDERING, "tokenizer_sha256": ranks_sha256()}


def run(cfg: HellaSwagConfig) -> Path:
    """Run the stage (a no-op when its output is complete) and return the output folder."""
    downloaded = download_hub(DATASET, cfg.data_dir)
    source_info = downloaded.description
    config = stage_config(source_info)
    out = output_dir(cfg.data_dir, shards_folder(DATASET, KIND), config)
    if finished(out, config):
        print(f"hellaswag: {out} is complete, nothing to do")
        return out
    check_verified(downloaded.files, source_info["files"], downloaded.stage_dir)

    def build() -> dict:
        remove_temporaries(out)  # a killed run's
        rows, labels = [], []
        for ctx, endings, label in read_examples(downloaded.files):
            rows += encode_example(ctx, endings)
            labels.append(label)
        if not labels:
            raise SourceError(f"{', '.join(map(str, downloaded.files))}: no examples")
        entry = write_rows(out / "val.bin", rows)
        info = write_bytes(out / f"val{LABELS_SUFFIX}", np.array(labels, dtype=np.uint8).tobytes())
        entry.update(labels_file=f"val{LABELS_SUFFIX}", labels_bytes=info["bytes"], labels_sha256=info["sha256"])
        totals = {"examples": len(labels), "rows": len(rows), "tokens": entry["num_tokens"],
                  "ending_tokens": entry["supervised_tokens"]}
        manifest = {"kind": "hellaswag", "name": out.parent.name, "config": config, "source": source_info,
                    "tokenizer": describe(), "rendering": RENDERING, "totals": totals, "shards": [entry]}
        finish(out, manifest)
        return manifest

    totals = run_once(out, config, build)["totals"]
    print(f"hellaswag: {totals['examples']:,} examples ({totals['rows']:,} rows), {totals['tokens']:,} tokens "
          f"({totals['ending_tokens']:,} in endings) -> {out}")
    return out


def parse_args(argv=None) -> HellaSwagConfig:
    return cli.parse(HellaSwagConfig, argv, "python -m pipelines hellaswag", __doc__.split("\n")[0])


def main(argv=None) -> int:
    return command(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
