"""Masked examples, what the SFT and the preference stages share (neither imports the other).

An example is a rendered Alpaca prompt (`gpt.template.render_prompt`), then an answer and one EOT; the
mask is 1 exactly on the answer and its EOT. Prompt and answer are tokenized separately and concatenated,
so the boundary is exact. The split puts an example in validation when a hash of its prompt fields falls
under `val_fraction` (`is_val`), so it is stable across runs and worker counts and no validation prompt is
trained on. The stages work in chunks of source rows, each written to `parts/<index>.<set>.bin` (an SFT
shard, shards/sft.py) and `parts/<index>.json` (its counters, last); `assemble` joins one set's parts.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np


from gpt import template
from pipelines.sources import SourceError, check_unchanged
from pipelines.stage import PARTS, parallel_map
from shards.io import remove_temporaries, write_json
from shards.progress import progress_bar
from shards.sft import open_sft_shard, write_sft_shard
from shards.tokenizer import EOT, get_encoding

SPLITS = ("val", "train")


def is_val(instruction: str, input: str, val_fraction: float) -> bool:
    """The deterministic split: a hash of the prompt fields, compared with val_fraction."""
    digest = hashlib.sha256(json.dumps([instruction, input]).encode()).digest()
    return int.from_bytes(digest[:8], "little") < val_fraction * 2**64


def encode_prompt(instruction: str, input: str = "") -> list[int]:
    """The tokens of the rendered Alpaca prompt (ending in "### Response:\\n")."""
    return get_encoding().encode_ordinary(template.render_prompt(instruction, input))


def with_answer(prompt: list[int], answer: str) -> np.ndarray:
    """Tokens (uint16) of `prompt` + the answer + EOT: the mask is 1 from len(prompt) to the end."""
    encoded = get_encoding().encode_ordinary(answer)
    tokens = np.empty(len(prompt) + len(encoded) + 1, dtype=np.uint16)
    tokens[: len(prompt)] = prompt
    tokens[len(prompt): -1] = encoded
    tokens[-1] = EOT
    return tokens


def encode_example(instruction: str, input: str, output: str) -> tuple[np.ndarray, int]:
    """Tokens (uint16) of prompt + answer + EOT, and the prompt length: mask is 1 from there to the end.

    The prompt tokens decode to the rendered prompt, the supervised tokens to `output` plus one EOT."""
    prompt = encode_prompt(instruction, input)
    return with_answer(prompt, output), len(prompt)


def write_part(path: Path, items: list[tuple[np.ndarray, int]]) -> None:
    """One SFT shard of `items`, (tokens, prompt length) each, in order: mask 0 on each prompt, 1 after it."""
    lengths = np.array([len(t) for t, _ in items], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.uint64)
    tokens = np.concatenate([t for t, _ in items]) if items else np.zeros(0, np.uint16)
    mask = np.ones(len(tokens), dtype=np.uint8)
    for start, (_, prompt_len) in zip(offsets, items):
        mask[int(start): int(start) + prompt_len] = 0
    write_sft_shard(path, tokens, mask, offsets)


def chunks(rows: Iterable, size: int) -> Iterator[tuple[int, list]]:
    """(index, the next `size` rows) until the rows run out."""
    it = iter(rows)
    for index in itertools.count():
        chunk = list(itertools.islice(it, size))
        if not chunk:
            return
        yield index, chunk


def done(parts: Path, index: int) -> bool:
    """Whether chunk `index` is finished: its counters, written last, are there."""
    return (parts / f"{index:05d}.json").exists()


def mark_done(parts: Path, index: int, stats: dict) -> None:
    write_json(parts / f"{index:05d}.json", stats)


def plan(rows: Iterable, files: list[Path], size: int, what: str) -> int:
    """The number of chunks of `size` rows, after reading (so checking) every row before anything is written;
    a SourceError naming the files when there are no rows."""
    count = sum(1 for _ in rows)
    if count == 0:
        raise SourceError(f"{', '.join(map(str, files))}: no {what}")
    return -(-count // size)


def run_chunks(out: Path, rows: Iterable, num_chunks: int, size: int, work, config, workers: int, desc: str) -> Path:
    """`work((parts, index, rows of the chunk, config))` for every unfinished chunk of `size` rows, over
    `workers` processes (each job writes its parts, then `mark_done`); returns `out/parts/`."""
    parts = out / PARTS
    parts.mkdir(exist_ok=True)
    remove_temporaries(out)
    remove_temporaries(parts)  # a killed chunk's
    pending = {i for i in range(num_chunks) if not done(parts, i)}
    jobs = ((parts, i, chunk, config) for i, chunk in chunks(rows, size) if i in pending)
    with progress_bar(desc=desc, unit="chunk", total=num_chunks, initial=num_chunks - len(pending)) as bar:
        for _ in parallel_map(work, jobs, len(pending), workers):
            bar.update()
    return parts


@contextlib.contextmanager
def reading(parts: Path, files: list[Path], seen: list[dict]):
    """Around the work that reads `files`: a SourceError naming the first one changed since `seen`
    (`pipelines.sources.file_stats`, taken before the files were hashed), also in place of the work's own error (a
    file rewritten under its reader reads as invalid JSON at a line that is fine, or as fewer rows than planned).
    The parts, maybe of a mix of its old and new content, are removed: a rerun tokenizes the file again."""
    try:
        yield
    except Exception:
        _check_read(parts, files, seen)
        raise
    _check_read(parts, files, seen)


def _check_read(parts: Path, files: list[Path], seen: list[dict]) -> None:
    try:
        check_unchanged(files, seen)
    except SourceError:
        shutil.rmtree(parts, ignore_errors=True)
        raise


def counters(parts: Path, num_chunks: int, names: Iterable[str]) -> dict:
    """The sum of every chunk's counters."""
    totals = dict.fromkeys(names, 0)
    for i in range(num_chunks):
        for key, value in json.loads((parts / f"{i:05d}.json").read_text()).items():
            totals[key] += value
    return totals


def assemble(out: Path, parts: Path, num_chunks: int, name: str, split: str) -> dict:
    """Join `parts/<index>.<name>.bin` of every chunk, in order, into `out/<name>.bin`; its manifest entry."""
    shards = [open_sft_shard(parts / f"{i:05d}.{name}.bin") for i in range(num_chunks)]
    tokens = np.concatenate([s.tokens for s in shards])
    mask = np.concatenate([s.mask for s in shards])
    starts = [0, *np.cumsum([len(s.tokens) for s in shards])]
    offsets = np.concatenate([[0]] + [s.offsets[1:].astype(np.int64) + a for s, a in zip(shards, starts)])
    return write_shard_entry(out / f"{name}.bin", split, tokens, mask, offsets)


def write_shard_entry(path: Path, split: str, tokens: np.ndarray, mask: np.ndarray, offsets: np.ndarray) -> dict:
    """Write the SFT shard `path` (shards/sft.py) of `split`; its manifest entry."""
    info = write_sft_shard(path, tokens, mask, offsets)
    name = path.stem
    return {"file": path.name, "split": split, "num_tokens": info["num_tokens"],
            "num_examples": len(offsets) - 1, "bytes": info["bytes"], "sha256": info["sha256"],
            "mask_file": f"{name}.mask", "mask_bytes": info["mask_bytes"], "mask_sha256": info["mask_sha256"],
            "idx_file": f"{name}.idx", "idx_bytes": info["idx_bytes"], "idx_sha256": info["idx_sha256"],
            "supervised_tokens": int(mask.sum(dtype=np.int64))}


def template_record() -> dict:
    """The manifest's "template": the Alpaca prompt the examples are rendered with."""
    return {"name": "alpaca", "sha256": template.TEMPLATE_SHA256, "prompt_input": template.PROMPT_INPUT,
            "prompt_no_input": template.PROMPT_NO_INPUT}
