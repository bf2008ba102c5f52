"""The pretraining sources: what to tokenize, where it comes from, and how its text is read.

    sample          the 7,168 conversations of the PyPI package chitchat-dataset==0.9.0 (MIT), converted
                    by a stage of its own into one parquet file with FineWeb's `text` column: one
                    conversation per document, one message per line (the messages of every turn, in order,
                    joined with "\\n"; sender ids, ratings and timestamps are dropped)
    fineweb10B      HuggingFaceFW/fineweb, sample/10BT (15 parquet files, ~30.6 GB), downloaded by pipelines.hub
    fineweb-edu10B  HuggingFaceFW/fineweb-edu, sample/10BT (14 parquet files, ~28.5 GB), likewise
                    (repositories, revisions and file lists are pinned in pipelines.hub.SOURCES)
    SOURCE=path     a folder (or one file) of parquet, jsonl or jsonl.zst files with a text column

A source is read in units of work: a parquet row group, 64 MiB of a jsonl file (the lines that start in
them), or a whole jsonl.zst file.
Every reading error names the file (and the line for jsonl). `read_jsonl`, `hash_files` and `check_unchanged` serve
the SFT and preference stages too.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from shards.io import atomic_write, remove_temporaries, sha256_file
from shards.progress import bytes_bar

from . import CUSTOM, HUB_DATASETS, PRETRAIN_DATASETS, stage

SAMPLE_PACKAGE = "chitchat-dataset==0.9.0"
SAMPLE_SHA256 = "d2a5d0bf6acf354fef51f3af39cbece2220d3b8f6086b658c3d335105798312a"
SAMPLE_ROWS_PER_GROUP = 512
SAMPLE_FILE = "chitchat.parquet"

SUFFIXES = (".parquet", ".jsonl", ".jsonl.zst")
BATCH_ROWS = 1024
# A plain .jsonl file is cut into units of work of this many bytes (a unit reads the lines that start in
# its range), so one large file is tokenized by every worker; a .jsonl.zst stream cannot be cut.
JSONL_UNIT_BYTES = 1 << 26
BOM = "\ufeff".encode()  # the UTF-8 byte-order mark that may open a user's file (read past, there only)


class SourceError(ValueError):
    """Input that cannot be read as documents; the message names the file (and line)."""


@dataclass
class TextSource:
    """Documents in a text column: a pretraining source (a `pipelines.stage.Source`), or a hub download."""
    name: str            # prefix of the stage folders and shard files
    files: list[Path]    # the input files, in document order
    identity: list[dict]  # what the tokenize config fingerprints: one {"file", "bytes", ...} per input
    description: dict    # the manifest's "source": dataset id, revision, files with bytes and sha256 (None: not yet)
    stage_dir: Path | None = None  # the download or conversion stage that verified the files (None: SOURCE=)

    def describe(self) -> dict:
        """The manifest's "source"; the files of a local folder (SOURCE=), not hashed before, are hashed now."""
        return self.description if self.description.get("files") is not None else describe_local(self)


def sample_json_path() -> Path:
    return Path(str(importlib.resources.files("chitchat_dataset") / "dataset.json"))


def conversation_text(conversation: dict) -> str:
    """One chitchat conversation as one document: every message on its own line, in order."""
    return "\n".join(message["text"] for turn in conversation["messages"] for message in turn)


def build_sample(data_dir: str | Path, json_path: Path | None = None) -> TextSource:
    """The `sample` source stage: check the packaged dataset.json's sha256, convert it to parquet once."""
    config = {"stage": "source", "package": SAMPLE_PACKAGE, "sha256": SAMPLE_SHA256,
              "document": "one conversation, one message per line", "rows_per_group": SAMPLE_ROWS_PER_GROUP}
    out = stage.output_dir(data_dir, "sample-source", config)
    manifest = stage.run_once(out, config, lambda: _convert_sample(out, config, json_path or sample_json_path()))
    return TextSource("sample", [out / SAMPLE_FILE], manifest["source"]["files"], manifest["source"], out)


def _convert_sample(out: Path, config: dict, json_path: Path) -> dict:
    remove_temporaries(out)
    raw = json_path.read_bytes()
    actual = hashlib.sha256(raw).hexdigest()
    if actual != SAMPLE_SHA256:
        raise SourceError(f"{json_path}: sha256 {actual} != expected {SAMPLE_SHA256}; "
                          f"reinstall {SAMPLE_PACKAGE}")
    texts = [conversation_text(c) for c in json.loads(raw).values()]
    table = pa.table({"id": pa.array(range(len(texts)), pa.int64()), "text": pa.array(texts, pa.string())})
    with atomic_write(out / SAMPLE_FILE) as f:
        pq.write_table(table, f, row_group_size=SAMPLE_ROWS_PER_GROUP)
    files = hash_files([out / SAMPLE_FILE], [SAMPLE_FILE])
    manifest = {"kind": "source", "name": "sample", "config": config,
                "source": {"dataset": SAMPLE_PACKAGE, "revision": SAMPLE_PACKAGE, "origin_file": "chitchat_dataset/dataset.json",
                           "origin_sha256": SAMPLE_SHA256, "documents": len(texts), "files": files}}
    stage.finish(out, manifest)
    return manifest


def download_hub(dataset: str, data_dir: str | Path) -> TextSource:
    """The download stage of a hub dataset: every file verified by pipelines.hub, then a manifest."""
    from . import hub
    pinned = hub.SOURCES[dataset]
    repo_id, filenames, revision = pinned.repo_id, list(pinned.files), pinned.revision
    config = {"stage": "source", "repo_id": repo_id, "revision": revision, "files": filenames}
    out = stage.output_dir(data_dir, f"{dataset}-source", config)

    def fetch() -> dict:
        records = hub.download(repo_id, filenames, revision, out, repo_type=pinned.repo_type)
        manifest = {"kind": "source", "name": dataset, "config": config,
                    "source": {"dataset": repo_id, "revision": revision, "files": records}}
        stage.finish(out, manifest)
        return manifest

    manifest = stage.run_once(out, config, fetch)
    return TextSource(dataset, [out / f for f in filenames], manifest["source"]["files"], manifest["source"], out)


def local_source(path: str | Path) -> TextSource:
    """A user's folder (or file) of parquet / jsonl / jsonl.zst; fingerprinted by name, size and mtime.

    Other files in the folder are named on stderr and left out; hidden ones (names starting with ".") silently."""
    root = Path(path).resolve()
    if root.is_file():
        files = [root]
    elif root.is_dir():
        found = sorted(p for p in root.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(root).parts))
        files = [p for p in found if p.name.endswith(SUFFIXES)]
        if skipped := [str(p.relative_to(root)) for p in found if not p.name.endswith(SUFFIXES)]:
            print(f"{root}: skipping {len(skipped)} file(s) that are not {', '.join(SUFFIXES)}: "
                  f"{first_names(skipped)}", file=sys.stderr)
    else:
        raise SourceError(f"{root}: no such file or folder")
    if not files:
        raise SourceError(f"{root}: no {', '.join(SUFFIXES)} files in it")
    base = root.parent if root.is_file() else root
    identity = [{"file": str(p.relative_to(base)), **stats} for p, stats in zip(files, file_stats(files))]
    return TextSource(CUSTOM, files, identity, {"dataset": str(root), "revision": None, "files": None})


def first_names(names: list[str], most: int = 5) -> str:
    """The first `most` of `names`, comma-separated, for a message ("a, b, c, ..." when there are more)."""
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")


def hash_files(paths: list[Path], names: list[str]) -> list[dict]:
    """{"file": name, "bytes", "sha256"} of each file, as a manifest records its inputs (progress bar)."""
    sizes = [p.stat().st_size for p in paths]
    with bytes_bar(sum(sizes), "hash the source files") as bar:
        return [{"file": name, "bytes": size, "sha256": sha256_file(path, progress=bar.update)}
                for path, name, size in zip(paths, names, sizes)]


def describe_local(source: TextSource) -> dict:
    """The manifest's "source" of a local folder: every input with its size and sha256 (hashed now, after
    tokenizing); a SourceError if a file changed since the run read its identity (the hash would not be of
    the bytes tokenized)."""
    check_unchanged(source.files, source.identity)
    files = hash_files(source.files, [ident["file"] for ident in source.identity])
    check_unchanged(source.files, source.identity)
    return {**source.description, "files": files}


def check_verified(files: list[Path], records: list[dict] | None, stage_dir: Path | None) -> None:
    """A SourceError naming the first of `files` whose size is no longer the one its download or conversion stage
    (`stage_dir`, which verified them as `records`) recorded: a file cut, or replaced, after the stage finished,
    which a rerun of it skips; tokenized, it would pass for the verified file in the manifest. Nothing to check
    without a stage (SOURCE=: pretraining checks a local folder after tokenizing)."""
    if stage_dir is None:
        return
    for path, ident in zip(files, records):
        size = path.stat().st_size if path.exists() else None
        if size != ident["bytes"]:
            raise SourceError(f"{path}: {'missing' if size is None else f'{size:,} bytes'}, but its source stage "
                              f"verified {ident['bytes']:,}; remove {stage_dir / stage.MANIFEST} and run "
                              "again to download (or convert) it anew")


def file_stats(paths: list[Path]) -> list[dict]:
    """{"bytes", "mtime_ns"} of each file now: what `check_unchanged` compares with at the end of a run."""
    return [{"bytes": st.st_size, "mtime_ns": st.st_mtime_ns} for st in (p.stat() for p in paths)]


def check_unchanged(files: list[Path], identity: list[dict]) -> None:
    """A SourceError naming the first of `files` whose size or mtime is no longer the one in `identity` (a local
    source's, or `file_stats` taken when a stage started): a file rewritten while the stage read it."""
    for path, ident in zip(files, identity):
        if not path.exists():
            raise SourceError(f"{path}: removed during this run; nothing is finished")
        st = path.stat()
        if (st.st_size, st.st_mtime_ns) != (ident["bytes"], ident["mtime_ns"]):
            raise SourceError(f"{path}: changed during this run (size or mtime differs from when it was read: "
                              f"{ident['bytes']:,} bytes then, {st.st_size:,} now); nothing is finished, "
                              "rerun to tokenize it again")


def prepare(dataset: str, source_path: str | None, data_dir: str | Path) -> TextSource:
    """The source a pretraining run tokenizes, its download or conversion stage run first if needed."""
    if source_path:
        return local_source(source_path)
    if dataset == "sample":
        return build_sample(data_dir)
    if dataset in HUB_DATASETS:
        return download_hub(dataset, data_dir)
    raise SourceError(f"unknown dataset {dataset!r} (choose from {', '.join(PRETRAIN_DATASETS)}, or give SOURCE=path)")


# ---- reading documents -------------------------------------------------------------------------

def num_units(path: Path) -> int:
    """How many units of work a file holds: its row groups (parquet), its JSONL_UNIT_BYTES ranges (jsonl),
    or 1 (jsonl.zst)."""
    if path.name.endswith(".parquet"):
        try:
            return pq.ParquetFile(path).num_row_groups
        except (pa.ArrowException, OSError) as e:
            raise SourceError(f"{path}: not a readable parquet file ({e})") from None
    if path.name.endswith(".jsonl"):
        return max(1, -(-path.stat().st_size // JSONL_UNIT_BYTES))
    if path.name.endswith(".jsonl.zst"):
        return 1
    raise SourceError(f"{path}: unsupported file type (expected {', '.join(SUFFIXES)})")


def byte_range(path: Path, unit: int) -> tuple[int, int] | None:
    """The bytes of unit `unit` of a plain .jsonl file (None for other files: a unit is a row group or
    the whole stream). Decided where the work is planned and passed to the worker with the unit."""
    return (unit * JSONL_UNIT_BYTES, (unit + 1) * JSONL_UNIT_BYTES) if path.name.endswith(".jsonl") else None


def iter_texts(path: Path, unit: int, column: str, span: tuple[int, int] | None = None
               ) -> Iterator[list[str | None]]:
    """The documents of one unit of work (`span`: its byte_range), in batches; None or "" marks an empty one."""
    if path.name.endswith(".parquet"):
        yield from _parquet_texts(path, unit, column)
    else:
        yield from _jsonl_texts(path, column, span)


def _is_text(kind: pa.DataType) -> bool:
    """Whether a parquet column's arrow type reads as Python strings: string, large_string, string_view (what
    polars 1.38 and DataFusion write), or a dictionary of those (a pandas category)."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def _parquet_texts(path: Path, row_group: int, column: str) -> Iterator[list[str | None]]:
    try:
        pf = pq.ParquetFile(path)
        field = pf.schema_arrow.field(column) if column in pf.schema_arrow.names else None
        if field is None:
            raise SourceError(f"{path}: no column {column!r} (columns: {', '.join(pf.schema_arrow.names)})")
        if not _is_text(field.type):
            raise SourceError(f"{path}: column {column!r} has type {field.type}, expected a string")
        table = pf.read_row_group(row_group, columns=[column])
    except (pa.ArrowException, OSError) as e:
        raise SourceError(f"{path}: row group {row_group} is unreadable ({e})") from None
    offset = 0  # of the chunk in the row group
    for batch in table.column(0).chunks:
        for start in range(0, len(batch), BATCH_ROWS):
            try:
                yield batch.slice(start, BATCH_ROWS).to_pylist()
            except UnicodeDecodeError as e:
                raise SourceError(f"{path}: row group {row_group}, rows from {offset + start}: invalid UTF-8 "
                                  f"({e})") from None
        offset += len(batch)


def _zstd_chunks(raw, path: Path) -> Iterator[bytes]:
    """The decompressed bytes of every frame of a zstd stream (pzstd and `zstd -T` write several); a stream
    that ends inside a frame is an error, never a silently shorter file."""
    dctx = zstandard.ZstdDecompressor()
    frame, inside, empty = dctx.decompressobj(), False, True
    while chunk := raw.read(1 << 20):
        empty = False
        while chunk:
            inside = True
            if out := frame.decompress(chunk):
                yield out
            if not frame.eof:
                break
            chunk, frame, inside = frame.unused_data, dctx.decompressobj(), False
    if inside:
        raise SourceError(f"{path}: the zstd stream ends inside a frame (a truncated file?)")
    if empty:
        raise SourceError(f"{path}: an empty file, not a zstd stream")


@dataclass(frozen=True)
class Line:
    """Where a jsonl line is, for messages: its number, counted while reading from the file's start, or
    (a unit that starts later) found from its byte offset when a message needs it."""
    path: Path
    number: int | None
    offset: int | None = None

    def __str__(self) -> str:
        if self.number is not None:
            return f"line {self.number}"
        newlines, left = 0, self.offset  # the newlines before the line: read on an error only
        with open(self.path, "rb") as f:
            while left > 0 and (block := f.read(min(1 << 24, left))):
                newlines, left = newlines + block.count(b"\n"), left - len(block)
        return f"line {newlines + 1}"


def _lines(path: Path, span: tuple[int, int] | None = None) -> Iterator[tuple[int | None, bytes]]:
    """(byte offset, line) of a .jsonl file, or of its lines that start inside `span`; (None, line) of a
    .jsonl.zst stream. A UTF-8 byte-order mark at the start of the file (or stream), as Windows tools write,
    is left out; anywhere else it stays, and its line is not valid JSON."""
    with open(path, "rb") as raw:
        if path.name.endswith(".zst"):
            rest, first = b"", True
            for chunk in _zstd_chunks(raw, path):
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                if first and lines:
                    lines[0], first = lines[0].removeprefix(BOM), False
                yield from ((None, line + b"\n") for line in lines)
            if rest:
                yield None, rest.removeprefix(BOM) if first else rest
            return
        start, end = span or (0, None)
        if start > 0:
            raw.seek(start - 1)
            if raw.read(1) != b"\n":
                raw.readline()  # the rest of a line that starts before `start`: the previous unit's
        offset = raw.tell()
        while end is None or offset < end:
            line = raw.readline()
            if not line:
                return
            yield offset, line.removeprefix(BOM) if offset == 0 else line
            offset += len(line)


def read_jsonl(path: Path, span: tuple[int, int] | None = None) -> Iterator[tuple[Line, object]]:
    """(where, parsed JSON value) of every non-blank line of a .jsonl or .jsonl.zst file (of a plain
    file's `span` only, if given); an unreadable line stops it with a SourceError naming file and line."""
    lines, counted = _lines(path, span), 0 if span is None or span[0] == 0 else None
    while True:
        try:
            offset, line = next(lines, (None, None))
        except zstandard.ZstdError as e:
            raise SourceError(f"{path}: corrupt zstd stream after line {counted} ({e})") from None
        if line is None:
            return
        counted = None if counted is None else counted + 1
        where = Line(path, counted, offset)
        if not line.strip():
            continue
        try:
            value = json.loads(line.decode("utf-8").rstrip("\r\n"))  # an error's position: within this line
        except UnicodeDecodeError as e:
            raise SourceError(f"{path}, {where}: invalid UTF-8 ({e})") from None
        except (json.JSONDecodeError, RecursionError) as e:  # RecursionError: nested too deeply to parse
            raise SourceError(f"{path}, {where}: not valid JSON ({e})") from None
        yield where, value


def _jsonl_texts(path: Path, column: str, span: tuple[int, int] | None) -> Iterator[list[str | None]]:
    batch: list[str | None] = []
    for where, row in read_jsonl(path, span):
        if not isinstance(row, dict):
            raise SourceError(f"{path}, {where}: expected an object with {column!r}, got {type(row).__name__}")
        if column not in row:
            raise SourceError(f"{path}, {where}: no {column!r} field")
        text = row[column]
        if text is not None and not isinstance(text, str):
            raise SourceError(f"{path}, {where}: {column!r} is a {type(text).__name__}, expected a string")
        batch.append(text)
        if len(batch) == BATCH_ROWS:
            yield batch
            batch = []
    if batch:
        yield batch
