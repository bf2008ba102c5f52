"""Tiny synthetic pretraining shards, a small-vocabulary model, a one-thread fixture, and trainer command lines
(one process or torchrun's gloo ranks; a run stopped by SIGTERM at its first checkpoint) for the trainer tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
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


def trainer_command(stage: str, nproc: int = 1) -> list[str]:
    """`python -m train STAGE`, in one process or under torchrun with `nproc` ranks on a free local port."""
    if nproc == 1:
        return [sys.executable, "-m", "train", stage]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
            f"--master_port={port}", "-m", "train", stage]


def sigterm_at_first_checkpoint(command: list[str], run_dir: Path, cwd: Path, env: dict) -> tuple[int, str]:
    """Run `command`, send SIGTERM as soon as `run_dir` holds a checkpoint; (its exit status, its output)."""
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    while not (run_dir / "ckpt" / "latest").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, out
