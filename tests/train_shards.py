"""Tiny synthetic pretraining shards, a small-vocabulary model and a one-thread fixture for the trainer tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gpt.checkpoint import save_model
from gpt.model import GPT, preset
from shards.format import write_shard
from shards.manifest import write_manifest

EOT = 50256
SMALL_VOCAB = 256  # the vocabulary of `small_model`: 50x faster than GPT-2's for tests of the machinery


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One thread: faster than two on a loaded 2-core machine, and deterministic (a test module imports it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_model(directory: Path) -> Path:
    """A checkpoint folder (for --init) of the `nano` shape with a 256-token vocabulary."""
    torch.manual_seed(0)
    return save_model(GPT(preset("nano", vocab_size=SMALL_VOCAB)), directory)


def write_test_shards(directory: Path, train_tokens=(3000, 2000), val_tokens=1000, seed: int = 0,
                      eot: int = EOT) -> Path:
    """Documents of 100 tokens (`eot`, then an arithmetic progression mod 97 from a random start): learnable fast."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    shards = []
    specs = [("val_000000.bin", "val", val_tokens)] + [
        (f"train_{i:06d}.bin", "train", n) for i, n in enumerate(train_tokens, start=1)]
    for name, split, n in specs:
        docs = [np.concatenate([[eot], (np.arange(99) * 7 + rng.integers(0, 97)) % 97 + 100]) for _ in range(n // 100)]
        tokens = np.concatenate(docs).astype(np.uint16)
        info = write_shard(directory / name, [tokens], len(docs))
        shards.append({"file": name, "split": split, "num_docs": len(docs), **info})
    write_manifest(directory, {"kind": "pretrain", "shards": shards})
    return directory
