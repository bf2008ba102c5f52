"""Trainers refuse corrupt shards before any step: sha256 against the manifest, token ids against the model's
vocabulary, remembered in `<shards>/.verified.json` by stat; `--no-verify-data` skips it; one reader per node."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import shards.verify
from shards.format import HEADER_BYTES
from shards.io import sha256_file
from shards.verify import CACHE, verify_files
from test_sft_train import nano, write_shards
from train import sft
from train.pretrain import main as pretrain
from train_shards import one_thread, small_model, write_test_shards  # noqa: F401 (an autouse fixture)

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--model", "nano", "--seq-len", "32", "--batch-tokens", "256", "--micro-batch", "4", "--warmup", "2",
         "--eval-tokens", "256", "--sample-tokens", "0", "--no-progress", "--steps", "2"]
SFT = ["--seq-len", "32", "--batch-examples", "4", "--micro-batch", "4", "--warmup", "1", "--eot-steps", "4",
       "--sample-tokens", "0", "--show", "0", "--no-progress", "--steps", "2"]


@pytest.fixture()
def small(tmp_path):
    """Pretraining shards (ids 99..196) and an --init model with a 256-token vocabulary."""
    return write_test_shards(tmp_path / "shards", eot=99), small_model(tmp_path / "init")


def run_pretrain(small, run_dir, *flags):
    shards, init = small
    return pretrain(["--shards-dir", str(shards), "--init", str(init), "--run-dir", str(run_dir), *SMALL, *flags])


def run_sft(shards, init, run_dir, *flags):
    return sft.main(["--shards-dir", str(shards), "--init", str(init), "--run-dir", str(run_dir), *SFT, *flags])


def flip_byte(path: Path) -> None:
    """Flip the low bit of the middle even byte (in a `.bin`, a token's low byte), in place."""
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 & ~1] ^= 1
    path.write_bytes(bytes(raw))


def rehash(folder: Path, name: str) -> None:
    """Make the manifest agree with the file as it is now (a manifest written for bad data)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["shards"]:
        for key in ("", "mask_", "idx_"):
            if entry.get(f"{key}file") == name:
                entry[f"{key}sha256"] = sha256_file(folder / name)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def assert_stopped_before_any_step(run_dir: Path, err: str, path: Path, message: str) -> None:
    assert f"{path}: {message}" in err and "run `make inspect`" in err, err
    assert not (run_dir / "ckpt").exists() and not (run_dir / "log.jsonl").exists()


def test_a_flipped_byte_in_a_train_shard_stops_pretraining(small, tmp_path, capsys):
    bad = small[0] / "train_000002.bin"
    flip_byte(bad)
    assert run_pretrain(small, tmp_path / "run") == 1
    assert_stopped_before_any_step(tmp_path / "run", capsys.readouterr().err, bad, "sha256 ")


def test_a_flipped_byte_in_an_sft_mask_stops_sft(tmp_path, capsys):
    shards, init = write_shards(tmp_path / "shards"), nano(tmp_path / "init")
    bad = shards / "train.mask"
    flip_byte(bad)
    assert run_sft(shards, init, tmp_path / "run") == 1
    assert_stopped_before_any_step(tmp_path / "run", capsys.readouterr().err, bad, "sha256 ")


def test_token_ids_outside_the_models_vocabulary_stop_training_even_when_the_hash_matches(small, tmp_path, capsys):
    bad = small[0] / "val_000000.bin"
    raw = bytearray(bad.read_bytes())
    raw[HEADER_BYTES + 200:HEADER_BYTES + 204] = b"\xff\xff\xff\xff"  # two tokens 0xFFFF
    bad.write_bytes(bytes(raw))
    rehash(small[0], bad.name)
    assert run_pretrain(small, tmp_path / "run") == 1
    assert_stopped_before_any_step(tmp_path / "run", capsys.readouterr().err, bad,
                                   "token id 65535 is outside the vocabulary of 256")
    # SFT: GPT-2's vocabulary (the nano model's), 50257 is the first id outside it
    shards, init = write_shards(tmp_path / "sft-shards"), nano(tmp_path / "nano")
    tokens = np.fromfile(shards / "train.bin", dtype="<u2", offset=HEADER_BYTES)
    tokens[3] = 50257
    with open(shards / "train.bin", "r+b") as f:
        f.seek(HEADER_BYTES)
        f.write(tokens.tobytes())
    rehash(shards, "train.bin")
    assert run_sft(shards, init, tmp_path / "sft") == 1
    assert_stopped_before_any_step(tmp_path / "sft", capsys.readouterr().err, shards / "train.bin",
                                   "token id 50257 is outside the vocabulary of 50257")


def test_no_verify_data_skips_the_check(small, tmp_path, capsys):
    flip_byte(small[0] / "train_000001.bin")  # a token's low byte: a wrong hash, ids still in the vocabulary
    assert run_pretrain(small, tmp_path / "run", "--no-verify-data") == 0
    assert not (small[0] / CACHE).exists()
    assert run_pretrain(small, tmp_path / "run2") == 1
    assert "train_000001.bin: sha256" in capsys.readouterr().err


def test_verified_files_are_remembered_and_a_changed_one_is_read_again(small, tmp_path, monkeypatch, capsys):
    shards_dir = small[0]
    entries = json.loads((shards_dir / "manifest.json").read_text())["shards"]
    reads = []
    real = shards.verify.file_facts
    monkeypatch.setattr(shards.verify, "file_facts", lambda path, *a, **k: reads.append(path.name) or real(path, *a, **k))
    total = sum(e["bytes"] for e in entries)
    assert verify_files(shards_dir, entries, 256) == (total, True)
    assert sorted(reads) == sorted(e["file"] for e in entries)
    cache = json.loads((shards_dir / CACHE).read_text())
    assert sorted(cache["files"]) == sorted(reads) and cache["files"]["val_000000.bin"]["max_token"] == 196
    reads.clear()
    assert verify_files(shards_dir, entries, 256) == (0, True) and reads == []  # a restart reads nothing
    # A token id the remembered facts already rule out: refused without reading
    with pytest.raises(ValueError, match="token id 196 is outside the vocabulary of 150"):
        verify_files(shards_dir, entries, 150)
    assert reads == []
    # A new mtime: read again (and still good)
    path = shards_dir / "train_000001.bin"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
    assert verify_files(shards_dir, entries, 256) == (st.st_size, True) and reads == [path.name]
    # Same size, and the mtime set back after the edit (cp -p, touch -r): the ctime tells, the hash refuses
    reads.clear()
    st = path.stat()
    flip_byte(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns, path.stat().st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
    with pytest.raises(ValueError, match=f"{path}: sha256"):
        verify_files(shards_dir, entries, 256)
    assert reads == [path.name]
    # A resumed run notices too: its start is checked like a fresh one's
    flip_byte(path)  # the original bytes again, a new ctime
    assert run_pretrain(small, tmp_path / "run", "--steps", "4", "--save-every", "2") == 0
    (tmp_path / "run" / "ckpt" / "latest").write_text("step-000002\n")
    flip_byte(shards_dir / "train_000002.bin")
    capsys.readouterr()
    assert run_pretrain(small, tmp_path / "run", "--steps", "4", "--resume") == 1
    assert f"{shards_dir / 'train_000002.bin'}: sha256" in capsys.readouterr().err


def test_a_read_only_shards_folder_is_not_said_to_be_remembered(small, tmp_path, monkeypatch, capsys):
    """Where .verified.json cannot be written (a read-only shards folder), the run warned that it cannot remember
    the check and then said the check was "remembered in .verified.json": both now say it is read again."""
    def read_only(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(shards.verify, "write_json", read_only)
    for run in ("first", "second"):
        assert run_pretrain(small, tmp_path / run) == 0
        captured = capsys.readouterr()
        assert f"cannot remember the verified shard files in {small[0] / CACHE}" in captured.err
        assert f"verified the shard files of {small[0]} (" in captured.out
        assert "not remembered: read again at the next start)" in captured.out
        assert "remembered in" not in captured.out
    assert not (small[0] / CACHE).exists()


def test_one_rank_per_node_verifies_and_a_bad_file_stops_every_rank(small, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={port}", "-m", "train", "pretrain", "--shards-dir", str(small[0]), "--init",
               str(small[1]), *SMALL]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command + ["--run-dir", str(tmp_path / "good")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("verified the shard files") == 1  # local rank 0 read them, rank 1 waited
    flip_byte(small[0] / "train_000001.bin")
    proc = subprocess.run(command + ["--run-dir", str(tmp_path / "bad")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"{small[0] / 'train_000001.bin'}: sha256" in out and "other rank(s) failed" in out, out[-3000:]
    assert not (tmp_path / "bad" / "ckpt").exists()
