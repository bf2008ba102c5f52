"""Where preference pairs come from: a sanity sample, UltraFeedback from the hub, or a user's file.

Every source yields `(prompt, chosen, rejected, split)` in a fixed order, the three texts as strings and
`split` "train" or "val" when the dataset has its own split (None: the stage splits by a hash of the
prompt), and describes itself for the manifest (dataset id, revision, every file with size and sha256).

- `sample`: built from the English chatterbot corpus that the SFT sample reads (`pipelines.sft_sources`,
  same pinned files and order), each distinct (prompt, answer) example once (the corpus repeats some
  tech-support examples ~100 times; the SFT stage drops the repeats too). The prompt is a conversation line,
  `chosen` the corpus answer (the next line), `rejected` the answer of another example of the SAME split
  (train or validation, by the stage's prompt hash) drawn from a different category (another `*.yml` file) by
  `random.Random(seed)`, one draw per example in order. The same split matters: a rejected answer drawn from
  anywhere made the chosen answers of validation pairs the rejected answers of train pairs (and the other way
  round), so a model that learned which answers are good, not which answer fits the prompt, scored below
  chance on validation (DPO: 16%). A sanity task (an on-topic answer against an off-topic one), not human
  preference data; the source gives each pair's split.
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

from pipelines.examples import is_val
from pipelines.sft_sources import (SAMPLE_DATASET, check_splits, check_strings, read_chatterbot, read_records,
                                   sample_source as chatterbot_source, split_of, user_file)
from pipelines.sources import SourceError, download_hub, hash_files

FIELDS = ("prompt", "chosen", "rejected")
# How the sample pairs are built (part of the stage's config: a change makes a new output folder)
SAMPLE_PAIRING = {"examples": "each distinct (prompt, answer) of the corpus once, in order",
                  "chosen": "the corpus answer",
                  "rejected": "the answer of another example of the same split, drawn from a different category (file)"}
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
    val_fraction: float | None = None  # the sample's split, which its draw of rejected answers keeps to
    stage_dir: Path | None = None  # the download stage that verified the files

    def describe(self) -> dict:
        """The source as the manifest records it (files not verified by a download stage are hashed now)."""
        files = self.verified or hash_files(self.files, [p.name for p in self.files])
        info = {"dataset": self.dataset, "revision": self.revision, "files": files}
        if self.kind == "sample":
            info["pairing"] = {**SAMPLE_PAIRING, "seed": self.seed, "val_fraction": self.val_fraction}
        return info

    def pairs(self) -> Iterator[Pair]:
        if self.kind == "sample":
            yield from _sample_pairs(self.files, self.seed, self.val_fraction)
        elif self.kind == "ultrafeedback":
            for path in self.files:
                yield from _read_ultrafeedback(path, split_of(path, ULTRAFEEDBACK_SPLITS))
        else:
            for path in self.files:
                for where, record in read_records(path, FIELDS):
                    yield (*check_strings(path, where, record, FIELDS), None)


def sample_source(seed: int, val_fraction: float) -> PairSource:
    """Pairs from the chatterbot corpus (its pinned hash checked), split by the prompt hash at `val_fraction`,
    rejected answers drawn with `seed` within each split."""
    corpus = chatterbot_source()
    return PairSource(SAMPLE_DATASET, None, corpus.files, "sample", corpus.verified, seed, val_fraction)


def ultrafeedback_source(data_dir: str | os.PathLike) -> PairSource:
    """UltraFeedback binarized at the pinned revision, downloaded (or found complete) in
    DATA_DIR/ultrafeedback-source/."""
    downloaded = download_hub("ultrafeedback", data_dir)
    info = downloaded.description
    check_splits(downloaded.files, ULTRAFEEDBACK_SPLITS)
    return PairSource(info["dataset"], info["revision"], downloaded.files, "ultrafeedback", info["files"],
                      stage_dir=downloaded.stage_dir)


def path_source(path: str | os.PathLike) -> PairSource:
    """A user's file of `prompt`, `chosen`, `rejected` strings."""
    path = user_file(path, "a preference-pairs")
    return PairSource(str(path), None, [path], "pairs")


def _sample_pairs(files: list[Path], seed: int, val_fraction: float) -> Iterator[Pair]:
    first = {}  # each distinct example once, in order, in the category (file) it first appears in
    for path in files:
        for instruction, _, output in read_chatterbot(path):
            first.setdefault((instruction, output), path.stem)
    examples = [(category, instruction, output) for (instruction, output), category in first.items()]
    split = {instruction: "val" if is_val(instruction, "", val_fraction) else "train"
             for _, instruction, _ in examples}
    others = {}  # (split, category) -> the answers of that split in other categories
    for key in {(split[instruction], category) for category, instruction, _ in examples}:
        others[key] = [output for category, instruction, output in examples
                       if (split[instruction], category) != key and split[instruction] == key[0]]
    rng = random.Random(seed)
    for category, instruction, output in examples:
        candidates = others[split[instruction], category]
        if not candidates:
            raise SourceError(f"{files[0].parent}: the {split[instruction]} split has no answer outside category "
                              f"{category!r} to draw a rejected answer from (--val-fraction {val_fraction})")
        yield instruction, output, candidates[rng.randrange(len(candidates))], split[instruction]


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
