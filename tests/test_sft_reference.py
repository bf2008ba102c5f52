"""SFT end to end against an independent reference: the Stanford Alpaca prompt written out here, prompt and answer
encoded apart (special-token text as text), EOT appended; what the pipeline writes (tokens, mask, idx), what the
trainer's batches hold (inputs, targets: the shift, padding 0 never supervised) and the prompt inference feeds."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from gpt.inference import tokenize_batch_input
from gpt.template import render_prompt
from pipelines import sft
from shards.manifest import load_manifest
from shards.sft import open_sft_shard
from shards.tokenizer import get_encoding
from train.data import SFTData

# https://github.com/tatsu-lab/stanford_alpaca (train.py's PROMPT_DICT), with the newline after "### Response:"
WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
              "Write a response that appropriately completes the request.\n\n"
              "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
EXAMPLES = [
    {"instruction": "Say hi.", "input": "", "output": "Hi!"},
    {"instruction": "Translate.", "input": "bonjour", "output": "hello"},
    {"instruction": "Emoji 🙂 é", "input": "日本語", "output": "🎉 ça 🙂"},
    {"instruction": "Quote <|endoftext|> here", "input": "", "output": "The token is <|endoftext|> ok."},
    {"instruction": "CRLF\r\nline", "input": "a\r\nb", "output": "x\r\ny\r\n"},
    {"instruction": "Say hi.", "input": "", "output": "Hi!"},  # a copy: skipped
    {"instruction": "Say hi.", "input": "", "output": "Hello!"},  # the same prompt, another answer: kept
    {"instruction": "Space input", "input": " ", "output": "ok"},  # a non-empty input, if only a space
    {"instruction": "Nothing.", "input": "", "output": " \r\n"},  # an empty answer: skipped
]
KEPT = [EXAMPLES[i] for i in (0, 1, 2, 3, 4, 6, 7)]


def reference(example: dict) -> tuple[list[int], list[int]]:
    """(prompt tokens, answer tokens + EOT), from the raw example."""
    enc = get_encoding()
    prompt = (WITH_INPUT if example["input"] != "" else NO_INPUT).format(**example)
    answer = enc.encode(example["output"], allowed_special=set(), disallowed_special=())
    return enc.encode(prompt, allowed_special=set(), disallowed_special=()), answer + [enc.eot_token]


def in_val(example: dict, fraction: float) -> bool:
    digest = hashlib.sha256(json.dumps([example["instruction"], example["input"]]).encode()).digest()
    return int.from_bytes(digest[:8], "little") < fraction * 2**64


def make_shards(tmp_path: Path, examples, name: str, **kw) -> Path:
    source = tmp_path / f"{name}.jsonl"  # Windows line endings between the records too
    source.write_bytes(b"".join(json.dumps(e, ensure_ascii=False).encode() + b"\r\n" for e in examples))
    return sft.run(sft.SFTConfig(source=str(source), data_dir=str(tmp_path / "data"), workers=1, **kw))


def rows_of(batches) -> list[tuple[list[int], list[int]]]:
    return [(x[r].tolist(), y[r].tolist()) for x, y in batches for r in range(len(x))]


def expected_row(prompt: list[int], answer: list[int], width: int) -> tuple[list[int], list[int]]:
    tokens = prompt + answer
    pad = width - (len(tokens) - 1)
    return tokens[:-1] + [0] * pad, [-100] * (len(prompt) - 1) + answer + [-100] * pad


def test_shards_and_batches_match_the_reference(tmp_path):
    enc = get_encoding()
    assert 0 in enc.encode_ordinary("Hi!") and enc.eot_token not in reference(EXAMPLES[3])[1][:-1]
    out = make_shards(tmp_path, EXAMPLES, "tricky", val_fraction=0.5, block_size=256)
    splits = {split: [e for e in KEPT if in_val(e, 0.5) == (split == "val")] for split in ("train", "val")}
    assert splits["train"] and splits["val"]
    for split, examples in splits.items():
        shard = open_sft_shard(out / f"{split}.bin")
        refs = [reference(e) for e in examples]
        assert shard.offsets.tolist() == np.cumsum([0] + [len(p) + len(a) for p, a in refs]).tolist()
        for i, (prompt, answer) in enumerate(refs):
            tokens, mask = shard.example(i)
            assert tokens.tolist() == prompt + answer and mask.tolist() == [0] * len(prompt) + [1] * len(answer)
    totals = load_manifest(out)["totals"]
    assert (totals["rows"], totals["examples"], totals["duplicates"], totals["empty_output"]) == (9, 7, 1, 1)
    assert totals["supervised_tokens"] == sum(len(reference(e)[1]) for e in KEPT)

    data = SFTData(out, seq_len=255, batch_rows=len(splits["train"]), seed=0)
    for batches, examples in ((data.train_batches(0, 0, 1, 2), splits["train"]), (data.val_batches(0, 1, 2),
                                                                                   splits["val"])):
        seen = []
        for x, y in batches:
            for row in range(len(x)):
                example = next(e for e in examples if x[row, :len(sum(reference(e), [])) - 1].tolist() ==
                               sum(reference(e), [])[:-1])
                assert (x[row].tolist(), y[row].tolist()) == expected_row(*reference(example), x.shape[1])
                seen.append(examples.index(example))
        assert sorted(seen) == list(range(len(examples)))


def test_block_size_boundary_drop_or_truncate_and_the_trainers_seq_len(tmp_path):
    enc = get_encoding()
    prompt_len = len(reference({"instruction": "Count to twelve.", "input": "", "output": ""})[0])
    block = prompt_len + 12
    examples = [{"instruction": "Count to twelve.", "input": "", "output": " x" * k} for k in (10, 11, 12)]
    assert [sum(map(len, reference(e))) for e in examples] == [block - 1, block, block + 1]
    dropped = make_shards(tmp_path, examples, "drop", block_size=block, val_fraction=0.0)
    shard = open_sft_shard(dropped / "train.bin")
    assert [len(shard.example(i)[0]) for i in range(len(shard))] == [block - 1, block]
    assert load_manifest(dropped)["totals"]["dropped_too_long"] == 1
    cut = make_shards(tmp_path, examples, "cut", block_size=block, truncate=True, val_fraction=0.0)
    shard = open_sft_shard(cut / "train.bin")
    tokens, mask = shard.example(2)
    prompt, answer = reference(examples[2])
    assert tokens.tolist() == prompt + answer[:-2] + [enc.eot_token] and mask.tolist() == [0] * len(prompt) + [1] * (
        block - len(prompt))
    # the trainer keeps examples of at most seq_len + 1 tokens (seq_len inputs)
    val = {"instruction": "Check me.", "input": "", "output": "x"}
    seq = make_shards(tmp_path, [*examples[:2], val], "seq", block_size=block, val_fraction=0.5)
    assert in_val(val, 0.5) and not any(in_val(e, 0.5) for e in examples[:2])
    assert SFTData(seq, seq_len=block - 1, batch_rows=1, seed=0).train_ids.tolist() == [0, 1]
    assert SFTData(seq, seq_len=block - 2, batch_rows=1, seed=0).train_ids.tolist() == [0]


def test_inference_feeds_the_prompt_tokens_the_shards_were_trained_on():
    for example in (e for e in KEPT if e["input"] == ""):  # generate and chat wrap an instruction alone
        ids, mask = tokenize_batch_input([render_prompt(example["instruction"])])
        assert ids[0][mask[0].bool()].tolist() == reference(example)[0]
