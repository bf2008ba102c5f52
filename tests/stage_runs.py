"""Helpers of the data stages' tests: a stage's output as bytes, two outputs compared, and a stage killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import zstandard

REPO = Path(__file__).resolve().parents[1]


def files_of(directory: Path) -> dict:
    """Every file under `directory` (its path relative to it) with its bytes."""
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def assert_same_shards(one: Path, two: Path) -> None:
    """The folders' files are byte for byte the same but for manifest.json (its source differs), whose shards and
    totals are the same."""
    files, others = files_of(one), files_of(two)
    manifest, other = json.loads(files.pop("manifest.json")), json.loads(others.pop("manifest.json"))
    assert sorted(files) == sorted(others), (sorted(files), sorted(others))
    differ = [name for name in files if files[name] != others[name]]
    assert not differ, f"different bytes: {differ}"
    assert manifest["shards"] == other["shards"], "the manifests' shards differ"
    assert manifest["totals"] == other["totals"], (manifest["totals"], other["totals"])


def with_and_without_bom(folder: Path, records: list, suffix: str) -> tuple[Path, Path]:
    """`records` written to two source files of `suffix` (.json: one list; .jsonl and .jsonl.zst: a line each), the
    first opened by a UTF-8 byte-order mark, as Windows tools write it."""
    if suffix == ".json":
        text = json.dumps(records, ensure_ascii=False).encode()
    else:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    pack = zstandard.ZstdCompressor().compress if suffix == ".jsonl.zst" else bytes
    marked, plain = folder / f"marked{suffix}", folder / f"plain{suffix}"
    marked.write_bytes(pack("\ufeff".encode() + text))
    plain.write_bytes(pack(text))
    return marked, plain


def sigkill_after_a_chunk(command: str, data_dir: Path, folder: str, args: list[str]) -> Path:
    """Run `python -m pipelines <command> --data-dir data_dir *args`, SIGKILL it once a chunk of its work is
    done, check that nothing is under a final name, and return its unfinished stage folder."""
    proc = subprocess.Popen([sys.executable, "-m", "pipelines", command, "--data-dir", str(data_dir), *args],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = data_dir / folder
    deadline = time.monotonic() + 60
    while not list(parts.glob("*/parts/*.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the stage finished before it could be killed"
    out = next(parts.iterdir())
    assert not (out / "manifest.json").exists() and not list(out.glob("*.bin")), "nothing under a final name"
    return out
