"""SFT shard files: tokens, a supervision mask and example offsets, side by side.

    <name>.bin   tokens, the same llm.c-compatible header and uint16 layout as pretraining shards
                 (header[3] = number of examples)
    <name>.mask  one uint8 per token: 1 where the token is a supervised target (answer and closing EOT)
    <name>.idx   little-endian uint64: the start offset of every example, then the end of the last
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .format import ShardError, open_tokens, write_shard
from .io import write_bytes

MASK_DTYPE = np.dtype("u1")
IDX_DTYPE = np.dtype("<u8")


def sidecar(bin_path: str | os.PathLike, suffix: str) -> Path:
    return Path(bin_path).with_suffix(suffix)


def write_sft_shard(bin_path: str | os.PathLike, tokens: np.ndarray, mask: np.ndarray, offsets: np.ndarray) -> dict:
    """Write the three files of an SFT shard atomically; returns their sizes and sha256 for the manifest."""
    tokens, mask, offsets = np.asarray(tokens), np.asarray(mask), np.asarray(offsets)
    if len(mask) != len(tokens) or offsets[-1] != len(tokens):
        raise ValueError(f"{bin_path}: tokens ({len(tokens)}), mask ({len(mask)}) and offsets (end {offsets[-1]}) disagree")
    info = write_shard(bin_path, [tokens], num_docs=len(offsets) - 1)
    mask_info = write_bytes(sidecar(bin_path, ".mask"), mask.astype(MASK_DTYPE).tobytes())
    idx_info = write_bytes(sidecar(bin_path, ".idx"), offsets.astype(IDX_DTYPE).tobytes())
    return {**info, "mask_bytes": mask_info["bytes"], "mask_sha256": mask_info["sha256"],
            "idx_bytes": idx_info["bytes"], "idx_sha256": idx_info["sha256"]}


@dataclass
class SFTShard:
    tokens: np.ndarray   # uint16 [N]
    mask: np.ndarray     # uint8 [N]
    offsets: np.ndarray  # uint64 [examples + 1]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and mask of example i."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.tokens[a:b], self.mask[a:b]


def open_sft_shard(bin_path: str | os.PathLike) -> SFTShard:
    """Memory-map an SFT shard and check that its three files agree; ShardError names the bad file."""
    tokens = open_tokens(bin_path)
    mask_path, idx_path = sidecar(bin_path, ".mask"), sidecar(bin_path, ".idx")
    for p in (mask_path, idx_path):
        if not p.exists():
            raise ShardError(f"{p}: missing")
    mask = np.memmap(mask_path, dtype=MASK_DTYPE, mode="r") if mask_path.stat().st_size else np.zeros(0, MASK_DTYPE)
    if idx_path.stat().st_size % IDX_DTYPE.itemsize:
        raise ShardError(f"{idx_path}: size is not a multiple of 8")
    offsets = np.fromfile(idx_path, dtype=IDX_DTYPE)
    if len(mask) != len(tokens):
        raise ShardError(f"{mask_path}: {len(mask)} mask bytes for {len(tokens)} tokens")
    if len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(tokens):
        raise ShardError(f"{idx_path}: offsets must start at 0 and end at {len(tokens)}")
    if np.any(np.diff(offsets.astype(np.int64)) <= 0):
        raise ShardError(f"{idx_path}: offsets do not strictly increase")
    return SFTShard(tokens, mask, offsets)
