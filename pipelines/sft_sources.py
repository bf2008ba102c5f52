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
- `gsm8k`: `openai/gsm8k`, config `main` (train 7,473 rows, test 1,319) at the revision pinned in
  `pipelines.hub`, downloaded and verified by the same download stage. An example is the `question` as the
  instruction and the `answer` (its reasoning, then `#### <number>`) as the output, the calculator annotations
  `<<48/2=24>>` removed (the model has no calculator); the dataset's own split: train is train, test is val
  (the RL stage's `--reward gsm8k` reads these shards: its prompts, and the number after `####`).
- a path: an Alpaca-format `.json` (a list of objects), `.jsonl` or `.jsonl.zst` (one object a line) or
  `.parquet` file with string fields `instruction`, `input` and `output`.

`examples()` yields each example with its split: "train" or "val" when the dataset has its own (gsm8k), else
None (the stage splits by a hash of the prompt).

The preference sources (pipelines/pref_sources.py) read their files and the chatterbot corpus with the same
functions: `user_file`, `read_records`, `check_strings`, `read_chatterbot`.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import re
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
# the gsm8k file of each split (`main/<split>-00000-of-00001.parquet`), and its calculator annotations
GSM8K_SPLITS = {"train": "train", "test": "val"}
GSM8K_FIELDS = ("question", "answer")
CALCULATOR = re.compile(r"<<[^<>]*>>")


@dataclass
class ExampleSource:
    """Instruction examples: an SFT source (a `pipelines.stage.Source`)."""
    dataset: str            # what the manifest calls it: a hub repo id, a PyPI pin, or the user's file
    revision: str | None    # the hub revision, when there is one
    files: list[Path]
    kind: str               # "chatterbot", "alpaca-format" or "gsm8k"
    verified: list[dict] | None = None  # {"file", "bytes", "sha256"} per file, when a download stage checked them
    stage_dir: Path | None = None  # the download stage that verified the files

    def describe(self) -> dict:
        """The source as the manifest records it (files not verified by a download stage are hashed now)."""
        files = self.verified or hash_files(self.files, [p.name for p in self.files])
        return {"dataset": self.dataset, "revision": self.revision, "files": files}

    def examples(self) -> Iterator[tuple[str, str, str, str | None]]:
        """(instruction, input, output, split) of every example in order; split None: by the prompt's hash."""
        read = {"chatterbot": read_chatterbot, "gsm8k": _read_gsm8k}.get(self.kind, _read_alpaca_format)
        for path in self.files:
            split = split_of(path, GSM8K_SPLITS) if self.kind == "gsm8k" else None
            for example in read(path):
                yield (*example, split)


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
    return ExampleSource(info["dataset"], info["revision"], downloaded.files, "alpaca-format", info["files"],
                         downloaded.stage_dir)


def gsm8k_source(data_dir: str | os.PathLike) -> ExampleSource:
    """openai/gsm8k (main) at the pinned revision, downloaded (or found complete) in DATA_DIR/gsm8k-source/."""
    downloaded = download_hub("gsm8k", data_dir)
    info = downloaded.description
    check_splits(downloaded.files, GSM8K_SPLITS)
    return ExampleSource(info["dataset"], info["revision"], downloaded.files, "gsm8k", info["files"],
                         downloaded.stage_dir)


def split_of(path: Path, splits: dict[str, str]) -> str:
    """Our split ("train" or "val") of a hub file named `<the repo's split>-...` (`splits`: theirs -> ours)."""
    return splits[path.name.split("-")[0]]


def check_splits(files: list[Path], splits: dict[str, str]) -> None:
    """A SourceError naming the downloaded files that belong to none of `splits`."""
    unknown = [p.name for p in files if p.name.split("-")[0] not in splits]
    if unknown:
        raise SourceError(f"{', '.join(unknown)}: not a file of {', '.join(splits)}")


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


def _read_gsm8k(path: Path) -> Iterator[Example]:
    for where, record in read_records(path, GSM8K_FIELDS):
        question, answer = check_strings(path, where, record, GSM8K_FIELDS)
        yield question, "", CALCULATOR.sub("", answer)


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
            records = json.loads(path.read_bytes().decode("utf-8-sig"))  # a byte-order mark first is read past
        except UnicodeDecodeError as e:
            raise SourceError(f"{path}: invalid UTF-8 ({e})") from None
        except (json.JSONDecodeError, RecursionError) as e:
            hint = ("; one object a line is JSON Lines (what `datasets`' to_json writes by default): name the file "
                    ".jsonl") if isinstance(e, json.JSONDecodeError) and e.msg == "Extra data" else ""
            raise SourceError(f"{path}: not valid JSON ({e}){hint}") from None
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
