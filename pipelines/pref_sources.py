"""Where preference pairs come from: a sanity sample, UltraFeedback from the hub, or a user's file.

Every source yields `(prompt, chosen, rejected, split)` in a fixed order, the three texts as strings and
`split` "train" or "val" when the dataset has its own split (None: the stage splits by a hash of the
prompt), and describes itself for the manifest (dataset id, revision, every file with size and sha256).

- `sample`: built from the English chatterbot corpus that the SFT sample reads (`pipelines.sft_sources`,
  same pinned files, same 2,306 examples in the same order). The prompt is a conversation line, `chosen`
  the corpus answer (the next line), `rejected` the answer of another example drawn from a different
  category (another `*.yml` file) by `random.Random(seed)`, one draw per example in order. A sanity task
  (an on-topic answer against an off-topic one), not human preference data.
- `ultrafeedback`: `HuggingFaceH4/ultrafeedback_binarized` at the revision pinned in `pipelines.hub`, the
  `train_prefs` file as the train split and `test_prefs` as validation, downloaded and verified by the
  download stage (`pipelines.sources.download_hub`). Columns `prompt` (a string), `chosen` and `rejected`
  (lists of `{role, content}` messages): the answer is the content of the last `assistant` message.
- a path: a `.jsonl`, `.jsonl.zst`, `.json` (a list) or `.parquet` file with string fields `prompt`,
  `chosen` and `rejected` (the prompt as the user typed it: the stage renders it into the Alpaca template).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipelines.sft_sources import (SAMPLE_DATASET, check_splits, check_strings, read_chatterbot, read_records,
                                   sample_source as chatterbot_source, split_of, user_file)
from pipelines.sources import SourceError, download_hub, hash_files

FIELDS = ("prompt", "chosen", "rejected")
# the ultrafeedback file of each split, by the name of its split in the repo: `data/<split>-00000-of-00001.parquet`
ULTRAFEEDBACK_SPLITS = {"train_prefs": "train", "test_prefs": "val"}

Pair = tuple[str, str, str, str | None]


@dataclass
class PairSource:
    """Preference pairs: a preference source (a `pipelines.stage.Source`)."""
    dataset: str            # what the manifest calls it: a hub repo id, a PyPI pin, or the user's file
    revision: str | None    # the hub revision, when there is one
    files: list[Path]
    kind: str               # "sample", "ultrafeedback" or "pairs" (a user's file)
    verified: list[dict] | None = None  # {"file", "bytes", "sha256"} per file, when a download stage checked them
    seed: int | None = None  # the sample's draw of rejected answers

    def describe(self) -> dict:
        """The source as the manifest records it (files not verified by a download stage are hashed now)."""
        files = self.verified or hash_files(self.files, [p.name for p in self.files])
        info = {"dataset": self.dataset, "revision": self.revision, "files": files}
        if self.kind == "sample":
            info["pairing"] = {"chosen": "the corpus answer", "seed": self.seed,
                               "rejected": "the answer of another example, drawn from a different category (file)"}
        return info

    def pairs(self) -> Iterator[Pair]:
        if self.kind == "sample":
            yield from _sample_pairs(self.files, self.seed)
        elif self.kind == "ultrafeedback":
            for path in self.files:
                yield from _read_ultrafeedback(path, split_of(path, ULTRAFEEDBACK_SPLITS))
        else:
            for path in self.files:
                for where, record in read_records(path, FIELDS):
                    yield (*check_strings(path, where, record, FIELDS), None)


def sample_source(seed: int = 0) -> PairSource:
    """Pairs from the chatterbot corpus (its pinned hash checked), rejected answers drawn with `seed`."""
    corpus = chatterbot_source()
    return PairSource(SAMPLE_DATASET, None, corpus.files, "sample", corpus.verified, seed)


def ultrafeedback_source(data_dir: str | os.PathLike) -> PairSource:
    """UltraFeedback binarized at the pinned revision, downloaded (or found complete) in
    DATA_DIR/ultrafeedback-source/."""
    downloaded = download_hub("ultrafeedback", data_dir)
    info = downloaded.description
    check_splits(downloaded.files, ULTRAFEEDBACK_SPLITS)
    return PairSource(info["dataset"], info["revision"], downloaded.files, "ultrafeedback", info["files"])


def path_source(path: str | os.PathLike) -> PairSource:
    """A user's file of `prompt`, `chosen`, `rejected` strings."""
    path = user_file(path, "a preference-pairs")
    return PairSource(str(path), None, [path], "pairs")


def _sample_pairs(files: list[Path], seed: int) -> Iterator[Pair]:
    categories = [(path.stem, list(read_chatterbot(path))) for path in files]
    answers = [(category, output) for category, found in categories for _, _, output in found]
    rng = random.Random(seed)
    for category, found in categories:
        others = [answer for other, answer in answers if other != category]
        for instruction, _, output in found:
            yield instruction, output, others[rng.randrange(len(others))], None


def _answer(path: Path, where, record: dict, field: str) -> str:
    """The content of the last assistant message of `record[field]`, a list of {role, content} messages."""
    messages = record[field]
    if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise SourceError(f"{path}, {where}: field {field!r} is not a list of {{role, content}} string messages")
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    if not answers:
        raise SourceError(f"{path}, {where}: field {field!r} has no assistant message")
    return answers[-1]


def _read_ultrafeedback(path: Path, split: str) -> Iterator[Pair]:
    for where, record in read_records(path, FIELDS):
        (prompt,) = check_strings(path, where, record, FIELDS[:1])
        yield prompt, _answer(path, where, record, "chosen"), _answer(path, where, record, "rejected"), split
