"""Shard files checked against their manifest: size, sha256 and token ids, in one read per file.

`check_file` is the check of one file (`make inspect` runs it on every file). `verify_files` is a trainer's
check of the files it reads, before their first use: each `.bin` (its sha256, and every token id below the
model's vocabulary) and an SFT shard's `.mask` and `.idx` (their sha256), and HellaSwag's `.labels`. What a read found is remembered in
`<shards folder>/.verified.json`, keyed by the file's name, size, mtime_ns, ctime_ns and inode, so a restart
reads nothing again; a file whose stat changed in any of them is read again (ctime cannot be set back, so an
edit that restores the mtime, as `touch -r` or `cp -p` do, is seen too). A failure raises ShardError naming
the file and saying to run `make inspect`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .format import HEADER_BYTES, TOKEN_DTYPE, ShardError
from .io import read_blocks, write_json
from .manifest import MANIFEST, ManifestError
from .progress import bytes_bar

CACHE = ".verified.json"
CACHE_VERSION = 1


def file_facts(path: Path, tokens: bool, progress: Callable[[int], object] | None = None) -> dict:
    """{"sha256", "max_token"} of the file, in one read: max_token is the largest token id of a `.bin` (after
    its header; -1 when it holds none), None when not `tokens`."""
    h, top, seen = hashlib.sha256(), -1, 0
    for block in read_blocks(path, progress=progress):
        h.update(block)
        skip, seen = max(0, HEADER_BYTES - seen), seen + len(block)
        if tokens and len(block) > skip:  # blocks of 4 MiB: every one but the first starts on a token
            top = max(top, int(np.frombuffer(memoryview(block)[skip:], dtype=TOKEN_DTYPE).max()))
    return {"sha256": h.hexdigest(), "max_token": top if tokens else None}


def check_file(path: Path, size: int, sha256: str, vocab_size: int | None = None,
               progress: Callable[[int], object] | None = None, facts: dict | None = None) -> dict:
    """Raise ShardError naming `path` when it is missing, is not `size` bytes or of `sha256`, or (`vocab_size`
    given: a `.bin`) holds a token id >= vocab_size. Returns its `file_facts`: those read now, or `facts` when
    given (what an earlier read of the unchanged file found)."""
    if not path.exists():
        raise ShardError(f"{path}: missing")
    actual = path.stat().st_size
    if actual != size:
        raise ShardError(f"{path}: {actual} bytes, the manifest says {size}")
    facts = facts or file_facts(path, vocab_size is not None, progress)
    if facts["sha256"] != sha256:
        raise ShardError(f"{path}: sha256 {facts['sha256']} differs from the manifest's {sha256}")
    if vocab_size is not None and facts["max_token"] >= vocab_size:
        raise ShardError(f"{path}: token id {facts['max_token']} is outside the vocabulary of {vocab_size}")
    return facts


def trainer_files(folder: Path, entries: list[dict]) -> list[tuple[str, int, str, bool]]:
    """(file, bytes, sha256, holds tokens) of every file a trainer reads for these manifest shard entries."""
    files = []
    for entry in entries:
        for key in ("", "mask_", "idx_", "labels_"):
            if key and f"{key}file" not in entry:
                continue
            try:
                files.append((entry[f"{key}file"], entry[f"{key}bytes"], entry[f"{key}sha256"], not key))
            except KeyError as e:
                raise ManifestError(f"{folder / MANIFEST}: the entry of {entry.get('file')} has no {e} "
                                    "(written by another version? make the shards again)") from None
    return files


def _stat(path: Path) -> dict | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}


def _read_cache(path: Path) -> dict:
    """The remembered facts by file name; {} when there are none or the file is unreadable (all are read again)."""
    try:
        cache = json.loads(path.read_text())
        return cache["files"] if cache.get("version") == CACHE_VERSION and isinstance(cache["files"], dict) else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def verify_files(folder: str | os.PathLike, entries: list[dict], vocab_size: int,
                 progress: bool = True) -> tuple[int, bool]:
    """Check every file a trainer reads for the manifest `entries` of `folder` (`check_file`, token ids below
    `vocab_size`), reading only those not remembered unchanged in `folder/.verified.json`, with a progress bar
    over the bytes read; remember the files that pass. Returns the number of bytes read, and whether what they
    found is remembered (False, after a warning, where `.verified.json` cannot be written: a read-only folder).

    Raises ShardError naming the first bad file and saying to run `make inspect`."""
    folder = Path(folder)
    files = trainer_files(folder, entries)
    cache_path = folder / CACHE
    cache = _read_cache(cache_path)
    stats = {name: _stat(folder / name) for name, *_ in files}
    known = {name: cache[name] for name in stats if name in cache and cache[name].get("stat") == stats[name]}
    todo = sum(size for name, size, *_ in files if name not in known)
    remembered, saved = dict(known), True
    try:
        with bytes_bar(todo, f"verify {folder.name}", progress) as bar:
            for name, size, sha256, tokens in files:
                facts = check_file(folder / name, size, sha256, vocab_size if tokens else None, bar.update,
                                   known.get(name))
                remembered[name] = {"stat": stats[name], **facts}
    except ShardError as e:
        raise ShardError(f"{e}; the shards are corrupt or changed since they were written: run `make inspect` to "
                         f"check every file (`python -m shards inspect {folder} --verify` for this folder alone), "
                         f"then remove {folder} and make the shards again") from None
    finally:
        if todo and remembered != known:
            saved = _write_cache(cache_path, {**cache, **remembered})
    return todo, saved


def _write_cache(path: Path, files: dict) -> bool:
    """Write the remembered facts; False, after a warning, when the file cannot be written."""
    try:
        write_json(path, {"version": CACHE_VERSION, "files": files})
    except OSError as e:  # a read-only data folder: verified again at the next start
        print(f"warning: cannot remember the verified shard files in {path} ({e}); the next start reads them "
              "again", file=sys.stderr)
        return False
    return True
