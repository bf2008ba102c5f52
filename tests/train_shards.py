"""Tiny synthetic pretraining and preference shards, a small-vocabulary model, a one-thread fixture, and trainer
command lines (one process or torchrun's gloo ranks; a run stopped by SIGTERM at its first checkpoint, or a finished
run's copy rewound to one of its checkpoints) for the trainer tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from gpt.checkpoint import save_model
from gpt.model import GPT, preset
from shards.format import write_shard
from shards.manifest import write_manifest
from shards.sft import write_sft_shard
from train.log import read_log

ROOT = Path(__file__).resolve().parents[1]
EOT = 50256
SMALL_VOCAB = 256  # the vocabulary of `small_model`: 50x faster than GPT-2's for tests of the machinery
SMALL_EOT = 99  # stands for GPT-2's 50256 in the preference shards of that vocabulary


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


def make_pairs(count: int, seed: int) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt, chosen, rejected) token lists: prompts of 2 to 5 tokens, answers of 1 to 6 tokens; an easy task:
    the chosen answers count up from 100 to 115, the rejected ones are other tokens (200 and up)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(count):
        prompt = rng.integers(10, 60, rng.integers(2, 6)).tolist()
        start = int(rng.integers(100, 110))
        chosen = list(range(start, start + int(rng.integers(1, 7))))
        rejected = rng.integers(200, 250, rng.integers(1, 7)).tolist()
        pairs.append((prompt, chosen, rejected))
    return pairs


def write_examples(path: Path, rows: list[tuple[list[int], list[int]]], eot: int = SMALL_EOT) -> dict:
    """One SFT shard of (prompt, answer) examples, each answer followed by `eot` (mask 1 on the answer and EOT);
    its manifest entry, but the split."""
    tokens = [np.array(p + a + [eot], dtype=np.uint16) for p, a in rows]
    masks = [np.array([0] * len(p) + [1] * (len(a) + 1), dtype=np.uint8) for p, a in rows]
    offsets = np.concatenate([[0], np.cumsum([len(t) for t in tokens])]).astype(np.uint64)
    info = write_sft_shard(path, np.concatenate(tokens), np.concatenate(masks), offsets)
    return {"file": path.name, **info, "num_examples": len(rows), "mask_file": f"{path.stem}.mask",
            "idx_file": f"{path.stem}.idx"}


def write_pref_shards(directory: Path, train, val) -> Path:
    """The layout of pipelines/prefs.py: per split, `<split>.chosen.bin` and `<split>.rejected.bin`."""
    directory.mkdir(parents=True, exist_ok=True)
    shards = []
    for split, pairs in (("val", val), ("train", train)):
        for side, index in (("chosen", 1), ("rejected", 2)):
            entry = write_examples(directory / f"{split}.{side}.bin", [(p[0], p[index]) for p in pairs])
            shards.append({**entry, "split": split, "side": side})
    write_manifest(directory, {"kind": "prefs", "shards": shards})
    return directory


def trainer_command(stage: str, nproc: int = 1) -> list[str]:
    """`python -m train <stage>`, in one process or under torchrun with `nproc` ranks on a free local port."""
    if nproc == 1:
        return [sys.executable, "-m", "train", stage]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
            f"--master_port={port}", "-m", "train", stage]


def trainer_env() -> dict[str, str]:
    """The environment of a trainer subprocess: this checkout's code, one thread per process."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def run_two_ranks(stage: str, argv: list[str], env: dict | None = None) -> None:
    """`python -m train <stage> argv` on 2 gloo ranks (torchrun), which must succeed (`env`: trainer_env())."""
    proc = subprocess.run(trainer_command(stage, 2) + argv, cwd=ROOT, env=env or trainer_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]  # the ranks' progress, then torchrun's


def files_of_run(run_dir: Path) -> list[str]:
    """The files under a run folder, relative to it: what its ranks wrote."""
    return sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())


def assert_same_ending(run_dir: Path, reference: Path, steps: int) -> None:
    """Two runs of `steps` steps end with the same final weights, bit for bit, and the same best checkpoint."""
    final = f"ckpt/step-{steps:06d}/model.safetensors"
    assert (run_dir / final).read_bytes() == (reference / final).read_bytes()
    assert (run_dir / "ckpt" / "best").read_text() == (reference / "ckpt" / "best").read_text()


def assert_two_ranks_equal_one(ddp_run: Path, reference: Path, reference_log: list[dict], compared: Callable,
                               steps: int) -> None:
    """A run of 2 ranks with 2 micro-batches per step each gives the values (`compared`: a log's {step: {name:
    value}}) of the 1-rank run `reference` with 4, whose log is `reference_log`, and the same files: rank 0 alone
    writes them."""
    assert read_log(ddp_run)[1]["accumulation"] == 2 and reference_log[1]["accumulation"] == 4
    assert sorted(compared(reference_log)) == list(range(steps + 1))
    assert_same_values(compared(read_log(ddp_run)), compared(reference_log))
    assert files_of_run(ddp_run) == files_of_run(reference)  # rank 0 alone writes the run's files


def assert_two_rank_resume_is_exact(stage: str, ddp_run: Path, copy: Path, argv: list[str], compared: Callable,
                                    steps: int) -> None:
    """`ddp_run` copied to `copy` as stopped after step 3 and resumed on 2 ranks with `argv` (whose run folder is
    `copy`) gives its log values (`compared`), final weights and best checkpoint, bit for bit."""
    stopped_copy(ddp_run, copy, 3)  # stopped between two evaluations
    run_two_ranks(stage, [*argv, "--resume"])
    assert compared(read_log(copy)) == compared(read_log(ddp_run))  # bit for bit
    assert_same_ending(copy, ddp_run, steps)


def stopped_copy(run_dir: Path, copy: Path, step: int) -> Path:
    """A copy of a finished run folder as a run stopped after `step` (a checkpoint step) left it: the checkpoints
    after it gone, `latest` at it, and `best` as its state.json recorded it (none, or that checkpoint's); its
    log.jsonl as it is (a resumed run keeps the records up to its step only)."""
    shutil.copytree(run_dir, copy)
    ckpt = copy / "ckpt"
    for folder in ckpt.glob("step-*"):
        if int(folder.name.split("-")[1]) > step:
            shutil.rmtree(folder)
    (ckpt / "latest").write_text(f"step-{step:06d}\n")
    best = json.loads((ckpt / f"step-{step:06d}" / "state.json").read_text()).get("best")
    if best:
        (ckpt / "best").write_text(f"step-{best['step']:06d}\n")
    else:
        (ckpt / "best").unlink(missing_ok=True)
    return copy


def stop_after_first_checkpoint(stage: str, argv: list[str], run_dir: Path, env: dict | None = None) -> str:
    """Start `python -m train <stage> argv` (`env`: trainer_env()), send it SIGTERM once `run_dir` holds a
    checkpoint; it must exit with 143 after saving one. Returns its output."""
    proc = subprocess.Popen(trainer_command(stage, 1) + argv, cwd=ROOT, env=env or trainer_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while not (run_dir / "ckpt" / "latest").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-3000:]
    return out


def assert_same_values(got: dict[int, dict], want: dict[int, dict], tolerance: float = 1e-5) -> None:
    """Two runs' {step: {name: value}} have the same steps and names, and values within `tolerance`."""
    assert sorted(got) == sorted(want)
    for step, values in want.items():
        assert sorted(got[step]) == sorted(values), step
        for key, value in values.items():
            assert got[step][key] == pytest.approx(value, abs=tolerance), (step, key)
