"""The offline GPT-2 tokenizer: known ids, round trips, EOT, the numpy encoder and piecewise encoding."""

import os
import random
import subprocess
import sys

import numpy as np
import pytest

import shards.tokenizer as tok
from pipelines import tokenize_stage

TEXTS = [
    "hello world",
    "Hello world",
    " Hello",
    "",
    "naïve café — 日本語のテキスト 🎉🎉 and tabs\tand\r\nwindows lines",
    "numbers 1234567 3.14159 and contractions: it's, we'll, they've, I'd",
    "   leading and trailing spaces   ",
    "<|endoftext|> is plain text here",
    "line one\n\n\nline two\n  indented\n",
]


def test_known_ids_and_eot():
    enc = tok.get_encoding()
    assert enc.encode_ordinary("hello world") == [31373, 995]
    assert enc.encode_ordinary("Hello world") == [15496, 995]
    assert enc.encode_ordinary(" Hello") == [18435]
    assert enc.encode_ordinary("<|endoftext|>") == [27, 91, 437, 1659, 5239, 91, 29]
    assert enc.encode("<|endoftext|>", allowed_special="all") == [tok.EOT] == [50256]
    assert enc.eot_token == 50256 and enc.n_vocab == 50257
    assert enc.decode([tok.EOT]) == "<|endoftext|>"


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_and_numpy_encoder(text):
    enc = tok.get_encoding()
    ids = enc.encode_ordinary(text)
    assert enc.decode(ids) == text
    fast = tokenize_stage.encode(text)
    assert fast.dtype == np.uint32 and fast.tolist() == ids


def test_lone_surrogate_is_fixed_up_like_tiktoken():
    text = "a \ud800 b"
    assert tokenize_stage.encode(text).tolist() == tok.get_encoding().encode_ordinary(text)


def _random_text(rng: random.Random, n: int) -> str:
    atoms = ["word", "Word", " ", "  ", "\n", "\n\n", " \n", "\t", "123", ".", ",", "!?", "'s", "é", "日本",
             "🎉", "-", "x" * 30, "\r\n", "  \n  "]
    return "".join(rng.choice(atoms) for _ in range(n))


@pytest.mark.parametrize("seed", range(6))
def test_long_documents_encode_identically_in_pieces(seed):
    enc = tok.get_encoding()
    text = _random_text(random.Random(seed), 4000)
    pieces = list(tokenize_stage.split_pieces(text, limit=97))
    assert len(pieces) > 10 and "".join(pieces) == text
    joined = np.concatenate([tokenize_stage.encode(p) for p in pieces]).tolist()
    assert joined == enc.encode_ordinary(text)


def test_packaged_file_hash_mismatch_fails_loudly(monkeypatch):
    monkeypatch.setattr(tok, "VOCAB_BPE_SHA256", "0" * 64)
    tok.get_encoding.cache_clear()
    try:
        with pytest.raises(RuntimeError, match=r"vocab\.bpe: sha256 .* != expected 0{64}"):
            tok.get_encoding()
    finally:
        tok.get_encoding.cache_clear()


def test_describe_pins_the_ranks():
    """The ranks' hash is pinned: a change renames every data folder (it is in each stage's config)."""
    d = tok.describe()
    assert d["name"] == "gpt2" and d["eot"] == 50256
    assert d["ranks_sha256"] == "575286e919ed264146adfc229d261ed90ce6213974ee035239fe9d4c1f2f3f70"


def test_a_fresh_process_builds_the_same_encoding_offline(tmp_path):
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1",
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    code = "from shards.tokenizer import get_encoding; print(get_encoding().encode_ordinary(%r))" % TEXTS[4]
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tok.get_encoding().encode_ordinary(TEXTS[4]))
