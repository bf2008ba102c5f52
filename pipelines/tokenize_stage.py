"""The tokenize stage: source documents to llm.c shards (validation first, then train), in parallel.

Work is cut into units (a parquet row group, 64 MiB of a jsonl file, or a whole jsonl.zst file). Each
unit is tokenized by one of WORKERS processes into a part under `parts/` (raw uint16 tokens `.tok`,
document starts `.docs`, and `.json` written last as the unit's completion marker), so a killed run
redoes at most one unit per worker. Every document is preceded by EOT (50256); empty documents are
skipped and counted. `assemble` then streams the parts, in unit order, into the shards: the validation shard holds whole
documents up to the first document boundary at or after `val_tokens`, then train shards of exactly
`shard_tokens` tokens (the last may be shorter). The bytes depend only on the input and the config,
never on WORKERS or on how the units were split over tasks (`--task-index/--num-tasks`).
Memory per worker is bounded: a unit is read a batch of rows at a time into a preallocated uint16
buffer, and a very long document is encoded in pieces cut where the GPT-2 pre-tokenizer always cuts.
Workers receive the parent's encoding (pickled), so they do not build it again, and never import torch.
"""

from __future__ import annotations

import array
import json
import re
import resource
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shards.format import DOCS_DTYPE, HEADER_INTS, MAGIC, TOKEN_DTYPE, VERSION, read_docs, write_shard
from shards.io import atomic_write, remove_temporaries, write_bytes, write_json
from shards.progress import progress_bar

from . import sources
from .stage import parallel_map

FORMAT_VERSION = 1
PIECE_CHARS = 1 << 20        # documents longer than this are encoded piece by piece (same tokens)
BUFFER_TOKENS = 1 << 22      # per-worker uint16 buffer (8 MiB)
COPY_TOKENS = 1 << 24        # assemble copies at most this many tokens at a time
# A cut before " " or "\n" that follows a printable ASCII non-space character: GPT-2's pre-tokenizer
# (r50k pattern) always ends a piece there, so encoding the two sides apart gives the same tokens.
_SAFE_CUT = re.compile(r"[!-~][ \n]")


_encoding = None  # the tiktoken gpt2 Encoding: given to workers by _init_worker, else shards.tokenizer's


def _init_worker(encoding) -> None:
    global _encoding
    _encoding = encoding


def get_encoding():
    """The GPT-2 encoding: the one the parent gave this worker, else shards.tokenizer's (built once)."""
    global _encoding
    if _encoding is None:
        from shards.tokenizer import get_encoding as build
        _encoding = build()
    return _encoding


class StageError(RuntimeError):
    """A tokenize run that cannot go on (missing parts, too little data); the message says what to do."""


@dataclass(frozen=True)
class Unit:
    file_index: int
    part: int  # row group (parquet), byte range (jsonl: sources.byte_range) or 0 (jsonl.zst)

    @property
    def stem(self) -> str:
        return f"{self.file_index:05d}-{self.part:05d}"


def plan_units(files: list[Path]) -> list[Unit]:
    """Every unit of work of the source, in document order."""
    return [Unit(i, part) for i, path in enumerate(files) for part in range(sources.num_units(path))]


def split_pieces(text: str, limit: int = PIECE_CHARS) -> Iterator[str]:
    """`text` in pieces of about `limit` characters or more, cut only where encoding apart is exact."""
    start = 0
    while len(text) - start > limit:
        m = _SAFE_CUT.search(text, start + limit)
        if m is None:
            break
        yield text[start:m.start() + 1]
        start = m.start() + 1
    yield text[start:]


def encode(text: str) -> np.ndarray:
    """tiktoken's `encode_ordinary(text)` as a numpy array (no list of Python ints)."""
    enc = get_encoding()
    try:
        return enc.encode_to_numpy(text, disallowed_special=())
    except UnicodeEncodeError:  # lone surrogates: the same fix-up as tiktoken's encode_ordinary
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return enc.encode_to_numpy(text, disallowed_special=())


def tokenize_unit(job: tuple[str, int, int, str, str, tuple[int, int] | None]) -> dict:
    """Tokenize one unit into its part files; the `.json` is written last. Runs in a worker process."""
    path, file_index, part, column, parts_dir, span = job
    path, parts_dir, unit = Path(path), Path(parts_dir), Unit(file_index, part)
    eot = get_encoding().eot_token
    buf = np.empty(BUFFER_TOKENS, dtype=TOKEN_DTYPE)
    starts = array.array("Q")
    n = written = docs = empty = 0
    with atomic_write(parts_dir / f"{unit.stem}.tok") as f:
        for texts in sources.iter_texts(path, part, column, span):
            for text in texts:
                if not text:
                    empty += 1
                    continue
                if n == len(buf):
                    f.write(buf[:n].tobytes())
                    written, n = written + n, 0
                starts.append(written + n)
                buf[n] = eot
                n += 1
                for piece in split_pieces(text):
                    ids = encode(piece)
                    if n + len(ids) > len(buf):
                        f.write(buf[:n].tobytes())
                        written, n = written + n, 0
                    if len(ids) > len(buf):
                        f.write(ids.astype(TOKEN_DTYPE).tobytes())
                        written += len(ids)
                    else:
                        buf[n:n + len(ids)] = ids
                        n += len(ids)
                docs += 1
        f.write(buf[:n].tobytes())
        written += n
    with atomic_write(parts_dir / f"{unit.stem}.docs") as f:
        f.write(np.frombuffer(starts, dtype=np.uint64).astype(DOCS_DTYPE).tobytes())
    info = {"file": path.name, "file_index": file_index, "part": part, "num_tokens": written,
            "num_docs": docs, "empty_docs": empty}
    write_json(parts_dir / f"{unit.stem}.json", info)
    return {**info, "peak_rss": peak_rss()}


def peak_rss() -> int:
    """This process's peak resident set size in bytes: VmHWM (ru_maxrss would count the forking parent's)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def tokenize(files: list[Path], units: list[Unit], parts_dir: Path, column: str, workers: int,
             task_index: int = 0, num_tasks: int = 1, desc: str = "tokenize") -> dict:
    """Tokenize the units of task `task_index` of `num_tasks` that have no finished part yet.

    Returns {"units": done now, "skipped": already done, "tokens", "peak_rss_per_worker"}.
    """
    parts_dir.mkdir(parents=True, exist_ok=True)
    mine = [u for k, u in enumerate(units) if k % num_tasks == task_index]
    remove_temporaries(parts_dir, [u.stem for u in mine])
    todo = [u for u in mine if not (parts_dir / f"{u.stem}.json").exists()]
    jobs = [(str(files[u.file_index]), u.file_index, u.part, column, str(parts_dir),
             sources.byte_range(files[u.file_index], u.part)) for u in todo]
    stats = {"units": len(todo), "skipped": len(mine) - len(todo), "tokens": 0, "peak_rss_per_worker": 0}
    with progress_bar(total=len(jobs), desc=desc, unit="part") as bar:
        for r in parallel_map(tokenize_unit, jobs, len(jobs), workers, _init_worker, (get_encoding(),)):
            stats["tokens"] += r["num_tokens"]
            stats["peak_rss_per_worker"] = max(stats["peak_rss_per_worker"], r["peak_rss"])
            bar.set_postfix(tokens=f"{stats['tokens']:,}", refresh=False)  # before the update that shows it
            bar.update(1)
    return stats


def _load_parts(units: list[Unit], parts_dir: Path) -> list[dict]:
    missing = [u.stem for u in units if not (parts_dir / f"{u.stem}.json").exists()]
    if missing:
        raise StageError(f"{parts_dir}: {len(missing)} of {len(units)} parts are not finished "
                         f"(first: {missing[0]}); run the remaining tasks before --assemble")
    infos = []
    for u in units:
        info = json.loads((parts_dir / f"{u.stem}.json").read_text())
        tok = parts_dir / f"{u.stem}.tok"
        size = tok.stat().st_size if tok.exists() else None
        if size != 2 * info["num_tokens"]:  # a part copied in part from another machine: a rerun keeps it
            raise StageError(f"{tok}: {'missing' if size is None else f'{size:,} bytes'}, its {u.stem}.json says "
                             f"{2 * info['num_tokens']:,}; delete that .json and run again (without --assemble, or "
                             "the task of that unit) to tokenize the unit anew")
        infos.append(info)
    return infos


def _tokens(path: Path, num_tokens: int) -> np.ndarray:
    if num_tokens == 0:
        return np.zeros(0, dtype=TOKEN_DTYPE)
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r", shape=(num_tokens,))


def shard_bounds(total: int, doc_starts: np.ndarray, val_tokens: int, shard_tokens: int) -> list[tuple[str, int, int]]:
    """(split, start, end) of every shard: validation up to a document boundary, then train shards."""
    i = int(np.searchsorted(doc_starts, val_tokens, side="left"))
    val_end = int(doc_starts[i]) if i < len(doc_starts) else total
    if val_end >= total and len(doc_starts) < 2:
        raise StageError(f"only {len(doc_starts)} document ({total:,} tokens): the validation split and the train "
                         "split need one each at least")
    if val_end >= total:
        raise StageError(f"only {total:,} tokens: not enough for a validation split of {val_tokens:,} tokens "
                         "and a train split; lower VAL_TOKENS")
    bounds = [("val", 0, val_end)]
    bounds += [("train", a, min(a + shard_tokens, total)) for a in range(val_end, total, shard_tokens)]
    return bounds


def assemble(units: list[Unit], parts_dir: Path, out_dir: Path, name: str, shard_tokens: int,
             val_tokens: int | None) -> tuple[list[dict], dict]:
    """Write the shards (and their `.docs` sidecars) from the finished parts; returns (shards, totals)."""
    infos = _load_parts(units, parts_dir)
    sizes = np.array([i["num_tokens"] for i in infos], dtype=np.int64)
    part_starts = np.concatenate([[0], np.cumsum(sizes)])
    total = int(part_starts[-1])
    if total == 0:
        files = sorted({i["file"] for i in infos})
        raise StageError(f"no documents: every text in the source is empty ({len(files)} file(s): "
                         f"{sources.first_names(files)})")
    doc_starts = np.concatenate([read_docs(parts_dir / f"{u.stem}.docs") + off
                                 for u, off in zip(units, part_starts[:-1])] or [np.zeros(0, np.int64)])
    if val_tokens is None:
        val_tokens = max(1, min(shard_tokens, total // 100))
    tokens = [_tokens(parts_dir / f"{u.stem}.tok", i["num_tokens"]) for u, i in zip(units, infos)]
    shards = []
    bounds = shard_bounds(total, doc_starts, val_tokens, shard_tokens)
    for k, (split, a, b) in enumerate(progress_bar(bounds, desc="assemble", unit="shard")):
        lo, hi = np.searchsorted(doc_starts, [a, b], side="left")
        docs = (doc_starts[lo:hi] - a).astype(DOCS_DTYPE)
        path = out_dir / f"{name}_{split}_{k:06d}.bin"
        info = write_shard(path, _chunks(tokens, part_starts, a, b), num_docs=len(docs))
        docs_path = path.with_suffix(".docs")
        docs_info = write_bytes(docs_path, docs.tobytes())
        shards.append({"file": path.name, "split": split, "num_tokens": info["num_tokens"], "num_docs": len(docs),
                       "bytes": info["bytes"], "sha256": info["sha256"], "docs_file": docs_path.name,
                       "docs_bytes": docs_info["bytes"], "docs_sha256": docs_info["sha256"]})
    totals = {"documents": sum(i["num_docs"] for i in infos), "empty_documents": sum(i["empty_docs"] for i in infos),
              "tokens": total, "val_tokens": bounds[0][2], "train_tokens": total - bounds[0][2],
              "shards": len(shards), "units": len(units)}
    return shards, totals


def _chunks(tokens: list[np.ndarray], part_starts: np.ndarray, a: int, b: int) -> Iterator[np.ndarray]:
    """Tokens [a, b) of the concatenated parts, as views of at most COPY_TOKENS tokens."""
    p = int(np.searchsorted(part_starts, a, side="right")) - 1
    while a < b:
        end = min(b, int(part_starts[p + 1]))
        view = tokens[p][a - int(part_starts[p]): end - int(part_starts[p])]
        for s in range(0, len(view), COPY_TOKENS):
            yield view[s:s + COPY_TOKENS]
        a, p = end, p + 1


def build_manifest(name: str, config: dict, fingerprint: str, source: dict, shards: list[dict], totals: dict) -> dict:
    from shards.tokenizer import describe
    return {"kind": "pretrain", "name": name, "fingerprint": fingerprint, "config": config,
            "format": {"header": f"llm.c: {HEADER_INTS} little-endian int32, [0]={MAGIC} [1]={VERSION} [2]=tokens "
                                 "[3]=documents",
                       "tokens": "little-endian uint16", "docs": "little-endian uint64 offset of the EOT "
                       "before every document that starts in the shard"},
            "source": source, "tokenizer": describe(), "totals": totals, "shards": shards}
