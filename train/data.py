"""The training data stream: memory-mapped shards from a manifest, cut into rows and dealt out per step and rank.

Shared by every trainer. `BatchPlan` decides which rows (pretraining windows, SFT examples) make each global
batch: a shuffled order that is a function of (number of rows, seed, epoch) only, so the same global batches
come out for any number of ranks x micro-batch x accumulation with the same global batch. Each rank then takes
its own contiguous slice of the batch (`rank_slice`) and cuts it into micro-batches; it reads only those rows.

`PretrainData` serves llm.c-format token shards: row i is the i-th window of seq_len + 1 tokens (windows start
every seq_len tokens inside a shard and never cross shards); inputs are its first seq_len tokens, targets its
last seq_len. The validation rows are the first windows of the validation split, always the same ones.

`ExampleData` serves masked shards (shards/sft.py), as `SFTData` (SFT's) and `PrefData` (the preference
stage's). For SFT a row is one example, its prompt and answer tokens (examples
longer than seq_len + 1 are left out), right-padded with 0 to the longest row of the micro-batch (each rank
orders its share of the global batch by length first, so little is padding); inputs are tokens[:-1],
targets tokens[1:], -100 where the target is a prompt token (its `.mask` is 0) or padding (past the
example's length, from its `.idx` offsets; never from a token value: 0 is "!").

For `PrefData` (pipelines/prefs.py: per split, a chosen and a rejected SFT shard whose example i is pair i)
a row is one pair, and a micro-batch of B pairs is 2B sequences in
one padded batch, the B chosen then their B rejected (pairs ordered by their longer sequence first), for
one forward of both.

`PromptData` serves the prompts of an on-policy stage (RL): a row is one prompt, with its reference answer,
from a task of its own or from the rows of SFT or preference shards; a micro-batch is padded prompts in the
order of the global batch, which the stage turns into sampled answers (`Hooks.prepare`).

`verify_data` checks the files either one reads (`shard_entries`) against the manifest's sha256, and their
token ids against the model's vocabulary, before the first step (shards.verify; remembered across restarts).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from gpt.inference import pad_batch
from shards.format import ShardError, open_tokens
from shards.manifest import ManifestError, check_totals, load_manifest, manifest_sha256
from shards.sft import SFTShard, open_sft_shard
from shards.verify import CACHE, verify_files


def verify_data(data, vocab_size: int, progress: bool) -> None:
    """Check every shard file `data` reads (PretrainData, SFTData: its `shard_entries`) against the manifest,
    token ids below `vocab_size`, before its first use (shards.verify); files remembered unchanged are not read."""
    start = time.perf_counter()
    read, saved = verify_files(data.dir, data.shard_entries, vocab_size, progress)
    if read:
        print(f"verified the shard files of {data.dir} ({read:,} bytes read in {time.perf_counter() - start:.2f} s, "
              f"{f'remembered in {CACHE}' if saved else 'not remembered: read again at the next start'})")


class BatchPlan:
    """Which of `num_rows` rows make global batch `step`: `rows_per_step` rows of a seeded permutation per epoch;
    with `repeats` > 1 (RL's updates per batch of prompts), each batch serves that many steps in a row."""

    def __init__(self, num_rows: int, rows_per_step: int, seed: int, what: str = "rows", repeats: int = 1, *,
                 where: str | Path = "", flag: str = "", per_row: int = 1):
        if num_rows < rows_per_step:
            hint = (f"; lower {flag} to at most {num_rows * per_row:,} (a multiple of what the micro-batches of every "
                    "rank take in one pass) or add data" if flag else "")
            raise ValueError(f"{f'{where}: ' if where else ''}the train split has {num_rows:,} {what}, fewer than one "
                             f"global batch of {rows_per_step:,}{hint}")
        self.num_rows, self.rows_per_step, self.seed, self.repeats = num_rows, rows_per_step, seed, repeats
        self.batches_per_epoch = num_rows // rows_per_step  # the remainder of each epoch is left out
        self.steps_per_epoch = self.batches_per_epoch * repeats
        self._epoch, self._order = -1, None

    def order(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch, self._order = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
        return self._order

    def position(self, step: int) -> dict:
        """Where global batch `step` sits in the data: epoch and batch within the epoch."""
        return {"epoch": step // self.steps_per_epoch, "batch": step // self.repeats % self.batches_per_epoch,
                "rows_per_step": self.rows_per_step, "num_rows": self.num_rows, "seed": self.seed}

    def global_rows(self, step: int) -> np.ndarray:
        epoch, batch = divmod(step // self.repeats, self.batches_per_epoch)
        return self.order(epoch)[batch * self.rows_per_step:(batch + 1) * self.rows_per_step]


def rank_slice(rows: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank `rank`'s contiguous share of `rows` (shares differ by at most one row when they do not divide)."""
    return np.array_split(rows, world_size)[rank]


def micro_batches(rows: np.ndarray, micro_batch: int) -> list[np.ndarray]:
    return [rows[i:i + micro_batch] for i in range(0, len(rows), micro_batch)]


def accumulation_steps(rows_per_step: int, micro_batch: int, world_size: int, batch_flag: str = "--batch-tokens",
                       what: str = "rows") -> int:
    """Micro-batches per rank per step; a clear error, naming `batch_flag`, when the global batch does not divide."""
    per_pass = micro_batch * world_size
    if micro_batch < 1 or rows_per_step % per_pass:
        raise ValueError(f"the global batch of {rows_per_step} {what} is not a multiple of micro-batch "
                         f"{micro_batch} x {world_size} rank(s) = {per_pass}; change {batch_flag}, "
                         f"--micro-batch or the number of GPUs")
    return rows_per_step // per_pass


def _open_manifest(directory: Path, kind: str) -> tuple[dict, str]:
    """The manifest of a shard folder, checked to be of `kind` ("pretrain", "sft" or "prefs") and to list the shards
    its totals count (as `make inspect` checks: an entry repeated or removed by hand), and its sha256."""
    manifest = load_manifest(directory)
    if problem := check_totals(directory, manifest):
        raise ManifestError(problem)
    if manifest.get("kind") != kind:
        target = "pref-shards" if kind == "prefs" else f"{kind}-shards"
        raise ManifestError(f"{directory / 'manifest.json'}: kind {manifest.get('kind')!r}, expected {kind!r} "
                            f"({kind} shards are written by `make {target}`)")
    return manifest, manifest_sha256(directory)


def _open_examples(directory: Path, entry: dict) -> SFTShard:
    """The SFT shard of a manifest entry, checked against the entry's token and example counts."""
    path = directory / entry["file"]
    shard = open_sft_shard(path)
    if len(shard.tokens) != entry["num_tokens"] or len(shard) != entry["num_examples"]:
        raise ShardError(f"{path}: {len(shard.tokens)} tokens in {len(shard)} examples, the manifest says "
                         f"{entry['num_tokens']} in {entry['num_examples']}")
    return shard


def _lengths(shard: SFTShard) -> np.ndarray:
    return np.diff(shard.offsets.astype(np.int64))


def _by_length(ids: np.ndarray, lengths: np.ndarray, micro_batch: int) -> list[np.ndarray]:
    """`ids` ordered by their `lengths` (then id), cut into micro-batches: similar lengths share a micro-batch."""
    return micro_batches(ids[np.lexsort((ids, lengths))], micro_batch)


def pad_examples(examples: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of SFT examples (tokens, mask): inputs padded with 0 and targets with -100 where the
    target is a prompt token or past the example."""
    width = max(len(tokens) for tokens, _ in examples) - 1
    x = torch.zeros(len(examples), width, dtype=torch.int64)
    y = torch.full((len(examples), width), -100, dtype=torch.int64)
    for row, (tokens, mask) in enumerate(examples):
        n = len(tokens) - 1
        tokens = torch.from_numpy(tokens.astype(np.int64))
        x[row, :n] = tokens[:-1]
        y[row, :n] = tokens[1:].masked_fill(torch.from_numpy(mask[1:] == 0), -100)
    return x, y


class PretrainData:
    """Windows of token shards listed by a pretraining manifest, served per step, rank and micro-batch."""

    def __init__(self, shards_dir: str | Path, seq_len: int, batch_tokens: int, seed: int, eval_tokens: int):
        self.dir = Path(shards_dir)
        manifest, self.manifest_sha256 = _open_manifest(self.dir, "pretrain")
        if batch_tokens % seq_len:
            raise ValueError(f"--batch-tokens {batch_tokens} is not a multiple of --seq-len {seq_len}")
        self.shard_entries = [s for s in manifest["shards"] if s["split"] in ("train", "val")]  # what it reads
        train = [self._open(s) for s in self.shard_entries if s["split"] == "train"]
        val = [self._open(s) for s in self.shard_entries if s["split"] == "val"]
        if not train:
            raise ManifestError(f"{self.dir / 'manifest.json'}: no train shards")
        if not val:
            raise ManifestError(f"{self.dir / 'manifest.json'}: no validation shard")
        self.train = _Windows(train, seq_len)
        self.val = _Windows(val, seq_len)
        self.num_val_rows = min(eval_tokens // seq_len, self.val.num_rows)
        if self.num_val_rows < 1:
            raise ValueError(f"--eval-tokens {eval_tokens} < --seq-len {seq_len}: no validation window" if
                             eval_tokens < seq_len else
                             f"{self.dir}: the validation split holds no window of {seq_len + 1} tokens")
        self.plan = BatchPlan(self.train.num_rows, batch_tokens // seq_len, seed, f"windows of {seq_len + 1} tokens",
                              where=self.dir, flag="--batch-tokens", per_row=seq_len)
        self.rows_per_step = self.plan.rows_per_step

    def _open(self, shard: dict) -> np.ndarray:
        path = self.dir / shard["file"]
        tokens = open_tokens(path)
        if len(tokens) != shard["num_tokens"]:
            raise ShardError(f"{path}: {len(tokens)} tokens, the manifest says {shard['num_tokens']}")
        return tokens

    def _batch(self, windows: "_Windows", rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        buf = torch.from_numpy(np.stack([windows.row(int(i)) for i in rows]).astype(np.int64))
        return buf[:, :-1], buf[:, 1:]

    def train_batches(self, step: int, rank: int, world_size: int, micro_batch: int):
        """This rank's micro-batches (inputs, targets) of global batch `step`."""
        rows = rank_slice(self.plan.global_rows(step), rank, world_size)
        return [self._batch(self.train, r) for r in micro_batches(rows, micro_batch)]

    def val_batches(self, rank: int, world_size: int, micro_batch: int):
        """This rank's micro-batches of the validation rows (the same rows at every evaluation)."""
        rows = rank_slice(np.arange(self.num_val_rows), rank, world_size)
        return [self._batch(self.val, r) for r in micro_batches(rows, micro_batch)]


class _Windows:
    """Row i = the i-th window of seq_len + 1 tokens, windows every seq_len tokens, never across shards."""

    def __init__(self, shards: list[np.ndarray], seq_len: int):
        self.shards, self.seq_len = shards, seq_len
        counts = [max(len(t) - 1, 0) // seq_len for t in shards]
        self.starts = np.cumsum([0] + counts)
        self.num_rows = int(self.starts[-1])

    def row(self, i: int) -> np.ndarray:
        shard = int(np.searchsorted(self.starts, i, side="right")) - 1
        offset = (i - int(self.starts[shard])) * self.seq_len
        return self.shards[shard][offset:offset + self.seq_len + 1]


class ExampleData:
    """Examples of a masked-shard manifest (SFT's, or the preference stage's chosen and rejected pairs) as padded
    (inputs, targets) micro-batches per step and rank. A row is one example of each of `SIDES` (the manifest
    entries' `side`; None: the split's one shard), and a micro-batch holds every side's sequences of its rows,
    side after side: SFT's B examples, or DPO's B chosen then their B rejected. Rows whose longest sequence
    exceeds seq_len + 1 tokens are left out (none with seq_len None: RL reads the prompts of every row)."""

    KIND = ""  # the manifest's kind
    SIDES: tuple[str | None, ...] = (None,)
    rows_name = "rows"
    BATCH_FLAG = ""  # the flag that sets `batch_rows`, for messages (RL's readers take --batch-prompts: `batch_flag`)

    def __init__(self, shards_dir: str | Path, seq_len: int | None, batch_rows: int, seed: int, eval_rows: int = 0,
                 batch_flag: str | None = None):
        self.dir = Path(shards_dir)
        manifest, self.manifest_sha256 = _open_manifest(self.dir, self.KIND)
        self.seq_len = seq_len
        self.shard_entries = []  # what it reads
        self.train, self.train_ids = self._split(manifest, "train", "train")
        self.val, self.val_ids = self._split(manifest, "val", "validation")
        self.left_out = len(self.train[0]) - len(self.train_ids) + len(self.val[0]) - len(self.val_ids)
        if eval_rows > 0:
            self.val_ids = self.val_ids[:eval_rows]
        fitting = f" whose sequences fit in {seq_len + 1} tokens" if seq_len is not None else ""
        self.plan = BatchPlan(len(self.train_ids), batch_rows, seed, self.rows_name + fitting, where=self.dir,
                              flag=batch_flag or self.BATCH_FLAG)
        self.rows_per_step = self.plan.rows_per_step

    def _split(self, manifest: dict, split: str, what: str) -> tuple[tuple[SFTShard, ...], np.ndarray]:
        """The split's shards (one per side) and the ids of its rows that fit in seq_len + 1 tokens."""
        shards = []
        for side in self.SIDES:
            entries = [s for s in manifest["shards"] if s["split"] == split and s.get("side") == side]
            if len(entries) != 1:
                named = f"{what} {side}" if side else what
                raise ManifestError(f"{self.dir / 'manifest.json'}: {len(entries)} {named} shards, expected one")
            self.shard_entries.append(entries[0])
            shards.append(_open_examples(self.dir, entries[0]))
        if len({len(shard) for shard in shards}) > 1:
            counts = " and ".join(f"{len(shard)} {side}" for shard, side in zip(shards, self.SIDES))
            raise ShardError(f"{self.dir}: the {what} split has {counts} answers (example i of each is row i)")
        where = self.dir / entries[0]["file"] if len(shards) == 1 else self.dir
        if len(shards[0]) == 0:  # not a matter of --seq-len: the stage put none there (too small a --val-fraction)
            fraction = manifest.get("split", {}).get("val_fraction")
            hint = "" if split != "val" else "; make the shards again with --val-fraction above 0" if not fraction \
                else f" (--val-fraction {fraction} drew none); make the shards again with a larger --val-fraction"
            raise ValueError(f"{where}: the {what} split holds no {self.rows_name}{hint}")
        if self.seq_len is None:
            return tuple(shards), np.arange(len(shards[0]))
        ids = np.flatnonzero(self._longest(shards) <= self.seq_len + 1)
        if len(ids) == 0:
            raise ValueError(f"{where}: no {what} {self.rows_name[:-1]} fits in --seq-len {self.seq_len} + 1 tokens")
        return tuple(shards), ids

    @staticmethod
    def _longest(shards) -> np.ndarray:
        """The length of each row's longest sequence."""
        return np.max([_lengths(shard) for shard in shards], axis=0)

    def _micro_batches(self, shards, ids: np.ndarray, micro_batch: int):
        """`ids` ordered by length (then id), cut into micro-batches: similar lengths share a micro-batch."""
        return [self._batch(shards, rows) for rows in _by_length(ids, self._longest(shards)[ids], micro_batch)]

    def _batch(self, shards, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Every side's sequences of rows `ids`, side after side, inputs padded with 0 and targets with -100 where
        the target is a prompt token or past the sequence."""
        return pad_examples([shard.example(int(i)) for shard in shards for i in ids])

    def train_batches(self, step: int, rank: int, world_size: int, micro_batch: int):
        """This rank's micro-batches (inputs, targets) of global batch `step`: `micro_batch` rows each."""
        rows = rank_slice(self.plan.global_rows(step), rank, world_size)
        return self._micro_batches(self.train, self.train_ids[rows], micro_batch)

    def val_batches(self, rank: int, world_size: int, micro_batch: int):
        """This rank's micro-batches of the validation rows (the same ones at every evaluation)."""
        return self._micro_batches(self.val, rank_slice(self.val_ids, rank, world_size), micro_batch)

    def val_prompt(self, i: int) -> np.ndarray:
        """The prompt tokens of validation row `i` (those before its first supervised token)."""
        tokens, mask = self.val[0].example(int(self.val_ids[i]))
        return tokens[:int(np.argmax(mask))]

    def val_answers(self, i: int) -> tuple[np.ndarray, ...]:
        """The answer tokens (each ending with EOT) of validation row `i`, one per side."""
        return tuple(tokens[int(np.argmax(mask)):] for tokens, mask in
                     (shard.example(int(self.val_ids[i])) for shard in self.val))


class SFTData(ExampleData):
    """SFT examples: a row is one example of the split's shard."""

    KIND = "sft"
    rows_name = "examples"
    BATCH_FLAG = "--batch-examples"


class PrefData(ExampleData):
    """Preference pairs: a row is pair i of the chosen and the rejected shards (the same prompt, two answers); a
    micro-batch of B pairs is 2B sequences, the B chosen then their B rejected."""

    KIND = "prefs"
    SIDES = ("chosen", "rejected")
    rows_name = "pairs"
    BATCH_FLAG = "--batch-pairs"


def pairs(batch: tuple) -> int:
    """`Hooks.count` of a `PrefData` micro-batch: its pairs (half its rows)."""
    return len(batch[0]) // 2


class PromptData:
    """The prompts of an on-policy stage (RL), per step, rank and micro-batch, each with its reference answer.

    Built from (prompt tokens, reference answer tokens ending with EOT) per split: a task's own, or the rows of
    SFT or preference shards (`from_shards`: each row's prompt and its first side's answer: SFT's, or the chosen
    one). A prompt that leaves fewer than `max_new` of the `seq_len` tokens for its answer is left out, whatever
    its reference's length (the held-out loss reads a reference cut to seq_len + 1 tokens with its prompt; the
    rewards read it whole); the first `eval_prompts` validation rows that fit (0: all) are the held-out
    prompts. A micro-batch is (prompts [B, T]
    right-padded with 0, their attention mask [B, T], their rows in `train` [B], their positions in the global
    batch [B]), in the order of the global batch: never reordered by length, so the same micro-batches (and
    the same samples) come out for any number of ranks with the same micro-batch size. With `updates` > 1, each
    global batch serves that many steps in a row (BatchPlan's `repeats`).
    """

    rows_name = "prompts"

    def __init__(self, train: list[tuple[np.ndarray, np.ndarray]], val: list[tuple[np.ndarray, np.ndarray]],
                 seq_len: int, max_new: int, batch_prompts: int, seed: int, updates: int = 1, eval_prompts: int = 0,
                 *, directory: str | Path, manifest_sha256: str, shard_entries: list[dict] = ()):
        fits = [[row for row in rows if len(row[0]) + max_new <= seq_len] for rows in (train, val)]
        self.train, val_fit = fits
        self.left_out = len(train) + len(val) - len(self.train) - len(val_fit)
        self.val = val_fit[:eval_prompts] if eval_prompts > 0 else val_fit
        for split, rows in (("train", self.train), ("validation", self.val)):
            if not rows:
                raise ValueError(f"{directory}: no {split} prompt leaves room for --max-new {max_new} tokens in "
                                 f"--seq-len {seq_len}")
        self.dir, self.manifest_sha256, self.shard_entries = Path(directory), manifest_sha256, list(shard_entries)
        self.seq_len = seq_len
        self.plan = BatchPlan(len(self.train), batch_prompts, seed, f"prompts of at most {seq_len - max_new} tokens",
                              updates, where=directory, flag="--batch-prompts")
        self.rows_per_step = batch_prompts

    @classmethod
    def from_shards(cls, reader: ExampleData, seq_len: int, max_new: int, batch_prompts: int, seed: int,
                    updates: int = 1, eval_prompts: int = 0) -> "PromptData":
        """The prompts of SFT or preference shards (an SFTData or PrefData `reader`, opened with seq_len None: every
        row), with their first answers."""
        def rows(shards, ids):
            split = []
            for i in ids:
                tokens, mask = shards[0].example(int(i))
                start = int(np.argmax(mask))
                split.append((tokens[:start].astype(np.int64), tokens[start:].astype(np.int64)))
            return split

        return cls(rows(reader.train, reader.train_ids), rows(reader.val, reader.val_ids), seq_len, max_new,
                   batch_prompts, seed, updates, eval_prompts, directory=reader.dir,
                   manifest_sha256=reader.manifest_sha256, shard_entries=reader.shard_entries)

    def train_batches(self, step: int, rank: int, world_size: int, micro_batch: int):
        """This rank's micro-batches of global batch `step`: (prompts, mask, rows, positions)."""
        positions = rank_slice(np.arange(self.rows_per_step), rank, world_size)
        rows = self.plan.global_rows(step)[positions]
        return [self._prompts(rows[i:i + micro_batch], positions[i:i + micro_batch])
                for i in range(0, len(rows), micro_batch)]

    def _prompts(self, rows: np.ndarray, positions: np.ndarray) -> tuple[torch.Tensor, ...]:
        ids, mask = pad_batch([self.train[i][0] for i in rows])
        return ids, mask, torch.from_numpy(rows.astype(np.int64)), torch.from_numpy(positions.astype(np.int64))

    def val_batches(self, rank: int, world_size: int, micro_batch: int):
        """(inputs, targets) of this rank's held-out prompts with their reference answers (cut to seq_len + 1 tokens
        with the prompt), as SFT's batches (the validation loss: how well the policy still models the references)."""
        rows = rank_slice(np.arange(len(self.val)), rank, world_size)
        return [pad_examples([with_answer(prompt, answer[:self.seq_len + 1 - len(prompt)])
                              for prompt, answer in (self.val[i] for i in ids)])
                for ids in micro_batches(rows, micro_batch)]


def with_answer(prompt: np.ndarray, answer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, mask) of a prompt and its answer: mask 1 on the answer."""
    return np.concatenate([prompt, answer]), np.concatenate([np.zeros(len(prompt), np.uint8),
                                                             np.ones(len(answer), np.uint8)])
