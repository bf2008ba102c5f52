"""The shard file: llm.c's `.bin` layout, a 1024-byte header then little-endian uint16 tokens.

Header: 256 little-endian int32.
    [0] = 20240520 (magic, as llm.c)   [1] = 1 (version)   [2] = number of tokens
    [3] = number of documents (pretraining) or examples (SFT) in the shard
    [4..255] = 0 (reserved)
llm.c and modded-nanogpt readers read these files as they are.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .io import atomic_write

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAX_TOKENS = 2**31 - 1  # header[2] is an int32
TOKEN_DTYPE = np.dtype("<u2")
DOCS_DTYPE = np.dtype("<u8")  # a shard's `.docs` sidecar: the token offset of each document's EOT


class ShardError(ValueError):
    """A shard file that is not what its header or manifest says."""


def make_header(num_tokens: int, num_docs: int = 0) -> np.ndarray:
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2], header[3] = MAGIC, VERSION, num_tokens, num_docs
    return header


def _uint16_tokens(path, chunk) -> np.ndarray:
    """`chunk` as contiguous uint16, or a ShardError for ids that uint16 would wrap (negative, > 65535, not integers)."""
    chunk = np.asarray(chunk)
    if chunk.dtype != TOKEN_DTYPE and chunk.size and (chunk.dtype.kind not in "iu" or chunk.min() < 0
                                                      or chunk.max() > np.iinfo(TOKEN_DTYPE).max):
        raise ShardError(f"{path}: tokens must be integers in [0, {np.iinfo(TOKEN_DTYPE).max}] (uint16), got "
                         f"{chunk.dtype} values from {chunk.min()} to {chunk.max()}")
    return np.ascontiguousarray(chunk, dtype=TOKEN_DTYPE)


def write_shard(path: str | os.PathLike, chunks: Iterable[np.ndarray], num_docs: int = 0) -> dict:
    """Write tokens (uint16 arrays, concatenated in order) to `path` atomically.

    Returns {"num_tokens", "bytes", "sha256"} of the written file.
    """
    chunks = [_uint16_tokens(path, c) for c in chunks]
    num_tokens = sum(len(c) for c in chunks)
    if num_tokens > MAX_TOKENS:
        raise ShardError(f"{path}: {num_tokens:,} tokens, more than the header's int32 holds ({MAX_TOKENS:,})")
    h = hashlib.sha256()
    with atomic_write(path) as f:
        for block in (make_header(num_tokens, num_docs).tobytes(), *(c.tobytes() for c in chunks)):
            h.update(block)
            f.write(block)
    return {"num_tokens": num_tokens, "bytes": HEADER_BYTES + 2 * num_tokens, "sha256": h.hexdigest()}


def read_header(path: str | os.PathLike) -> np.ndarray:
    """The header of a shard, checked against the file's size; ShardError names the file otherwise."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except FileNotFoundError:
        raise ShardError(f"{path}: shard file is missing") from None
    if len(raw) < HEADER_BYTES:
        raise ShardError(f"{path}: {len(raw)} bytes, shorter than the {HEADER_BYTES}-byte header")
    header = np.frombuffer(raw, dtype="<i4")
    if header[0] != MAGIC:
        raise ShardError(f"{path}: bad magic {header[0]} (expected {MAGIC})")
    if header[1] != VERSION:
        raise ShardError(f"{path}: unsupported version {header[1]} (expected {VERSION})")
    expected = HEADER_BYTES + 2 * int(header[2])
    if size != expected:
        raise ShardError(f"{path}: {size} bytes but the header says {header[2]} tokens ({expected} bytes)")
    return header


def open_tokens(path: str | os.PathLike) -> np.memmap:
    """The tokens of a shard, memory-mapped read-only (uint16), after checking the header."""
    header = read_header(path)
    if header[2] == 0:
        return np.zeros(0, dtype=TOKEN_DTYPE)
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(int(header[2]),))


def read_docs(path: str | os.PathLike) -> np.ndarray:
    """The document start offsets of a `.docs` sidecar (or a part's), as int64."""
    return np.fromfile(path, dtype=DOCS_DTYPE).astype(np.int64)
