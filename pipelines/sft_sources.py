"""Where SFT examples come from: the built-in sample, Stanford Alpaca from the hub, or a user's file.

Every source yields `(instruction, input, output)` string triples in a fixed order and describes
itself for the manifest (dataset id, revision, every file with size and sha256).

- `sample`: the English `conversations` of the PyPI package `chatterbot-corpus==1.3.3` (BSD), the 21
  files `chatterbot_corpus/data/english/*.yml` in name order, checked against a pinned hash. A
  conversation is a list of lines, each answering the one before, so every pair of consecutive lines
  is one example `{instruction: line i, input: "", output: line i+1}` (2,306 examples). An entry of
  `conversations` that is not a list is skipped (1.3.3 has one: a single string in trivia.yml).
- `alpaca`: `tatsu-lab/alpaca` (52,002 rows) at the revision pinned in `pipelines.hub`, downloaded and
  verified by the same download stage as FineWeb (`pipelines.sources.download_hub`).
- a path: an Alpaca-format `.json` (a list of objects), `.jsonl` or `.jsonl.zst` (one object a line) or
  `.parquet` file with string fields `instruction`, `input` and `output`.

The preference sources (pipelines/pref_sources.py) read their files and the chatterbot corpus with the same
functions: `user_file`, `read_records`, `check_strings`, `read_chatterbot`.
"""

from __future__ import annotations

import importlib.resources
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from pipelines.sources import SourceError, download_hub, hash_files, read_jsonl
from shards.io import sha256_json

FIELDS = ("instruction", "input", "output")
SAMPLE_DATASET = "chatterbot-corpus==1.3.3"
# sha256_json of [[file name, sha256], ...] of the 21 english/*.yml files of chatterbot-corpus 1.3.3
SAMPLE_SHA256 = "30ff13357ed2a32e2b09e20dd718016d51d149db2a15da186181d1466557b21f"
SUFFIXES = (".json", ".jsonl", ".jsonl.zst", ".parquet")

Example = tuple[str, str, str]


@dataclass
class ExampleSource:
    """Instruction examples: an SFT source (a `pipelines.stage.Source`)."""
    dataset: str            # what the manifest calls it: a hub repo id, a PyPI pin, or the user's file
    revision: str | None    # the hub revision, when there is one
    files: list[Path]
    kind: str               # "chatterbot" or "alpaca-format"
    verified: list[dict] | None = None  # {"file", "bytes", "sha256"} per file, when a download stage checked them

    def describe(self) -> dict:
        """The source as the manifest records it (files not verified by a download stage are hashed now)."""
        files = self.verified or hash_files(self.files, [p.name for p in self.files])
        return {"dataset": self.dataset, "revision": self.revision, "files": files}

    def examples(self) -> Iterator[Example]:
        read = read_chatterbot if self.kind == "chatterbot" else _read_alpaca_format
        for path in self.files:
            yield from read(path)


def sample_source() -> ExampleSource:
    """The chatterbot-corpus English conversations, after checking the pinned hash of its files."""
    root = importlib.resources.files("chatterbot_corpus") / "data" / "english"
    files = sorted((Path(str(p)) for p in root.iterdir() if p.name.endswith(".yml")), key=lambda p: p.name)
    verified = hash_files(files, [p.name for p in files])
    actual = sha256_json([[f["file"], f["sha256"]] for f in verified])
    if actual != SAMPLE_SHA256:
        raise SourceError(f"{root}: the *.yml files hash to {actual}, expected {SAMPLE_SHA256}; "
                          f"reinstall {SAMPLE_DATASET}")
    return ExampleSource(SAMPLE_DATASET, None, files, "chatterbot", verified)


def alpaca_source(data_dir: str | os.PathLike) -> ExampleSource:
    """tatsu-lab/alpaca at the pinned revision, downloaded (or found complete) in DATA_DIR/alpaca-source/."""
    downloaded = download_hub("alpaca", data_dir)
    info = downloaded.description
    return ExampleSource(info["dataset"], info["revision"], downloaded.files, "alpaca-format", info["files"])


def path_source(path: str | os.PathLike) -> ExampleSource:
    """A user's Alpaca-format .json, .jsonl, .jsonl.zst or .parquet file."""
    path = user_file(path, "an Alpaca-format")
    return ExampleSource(str(path), None, [path], "alpaca-format")


def user_file(path: str | os.PathLike, what: str) -> Path:
    """The resolved path of a user's records file (SOURCE=), after checking it exists and has a known suffix."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: no such file (SOURCE must be {what} {', '.join(SUFFIXES)} file)")
    if not path.name.endswith(SUFFIXES):
        raise SourceError(f"{path}: unsupported file type {path.suffix!r} (expected one of {', '.join(SUFFIXES)})")
    return path.resolve()


def check_strings(path: Path, where, record, fields: tuple[str, ...]) -> tuple[str, ...]:
    """The string values of `fields` in `record`; a SourceError naming file and row for anything else."""
    if not isinstance(record, dict):
        raise SourceError(f"{path}, {where}: expected an object with {', '.join(fields)}, got {type(record).__name__}")
    values = []
    for field in fields:
        if field not in record:
            raise SourceError(f"{path}, {where}: missing field {field!r}")
        value = record[field]
        if not isinstance(value, str):
            raise SourceError(f"{path}, {where}: field {field!r} is {type(value).__name__}, not a string")
        values.append(value)
    return tuple(values)


def _read_alpaca_format(path: Path) -> Iterator[Example]:
    for where, record in read_records(path, FIELDS):
        yield check_strings(path, where, record, FIELDS)


def read_records(path: Path, fields: tuple[str, ...]) -> Iterator[tuple[object, object]]:
    """(where, record) of every record of a .json (a list), .jsonl, .jsonl.zst or .parquet file, in order
    (`where`: "row i", or the jsonl line); of a parquet file, only the columns `fields` (each must exist).
    Unreadable input stops it with a SourceError naming the file (and the row or line)."""
    if path.suffix == ".parquet":
        yield from _read_parquet(path, fields)
    elif path.name.endswith((".jsonl", ".jsonl.zst")):
        yield from read_jsonl(path)
    else:
        try:
            records = json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as e:
            raise SourceError(f"{path}: invalid UTF-8 ({e})") from None
        except (json.JSONDecodeError, RecursionError) as e:
            raise SourceError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(records, list):
            raise SourceError(f"{path}: expected a JSON list of objects, got {type(records).__name__}")
        yield from ((f"row {row}", record) for row, record in enumerate(records))


def _read_parquet(path: Path, fields: tuple[str, ...]) -> Iterator[tuple[str, dict]]:
    try:
        pf = pq.ParquetFile(path)
        missing = [f for f in fields if f not in pf.schema_arrow.names]
        if missing:
            raise SourceError(f"{path}: missing column(s) {', '.join(missing)} (has {', '.join(pf.schema_arrow.names)})")
        row = 0
        for batch in pf.iter_batches(columns=list(fields)):
            try:
                columns = [batch.column(f).to_pylist() for f in fields]
            except UnicodeDecodeError as e:
                raise SourceError(f"{path}: rows {row} to {row + len(batch) - 1}: invalid UTF-8 ({e})") from None
            for values in zip(*columns):
                yield f"row {row}", dict(zip(fields, values))
                row += 1
    except (pa.ArrowException, OSError) as e:
        raise SourceError(f"{path}: unreadable parquet file ({e})") from None


def read_chatterbot(path: Path) -> Iterator[Example]:
    """The examples of one chatterbot-corpus file (one category: ai.yml, food.yml, ...), in order."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise SourceError(f"{path}: unreadable YAML ({e})") from None
    for i, lines in enumerate(data.get("conversations") or []):
        if not isinstance(lines, list):
            continue
        for j, (question, answer) in enumerate(zip(lines, lines[1:])):
            where = f"conversation {i}, lines {j}-{j + 1}"
            yield check_strings(path, where, {"instruction": question, "input": "", "output": answer}, FIELDS)
