"""The on-disk data format: llm.c-compatible token shards, SFT sidecars, manifests, and inspection."""

from .format import HEADER_BYTES, MAGIC, ShardError, open_tokens, read_header, write_shard
from .io import atomic_write, directory_lock, sha256_file, write_json
from .manifest import MANIFEST, ManifestError, load_manifest, manifest_sha256, write_manifest
from .sft import SFTShard, open_sft_shard, write_sft_shard

__all__ = [
    "HEADER_BYTES", "MAGIC", "MANIFEST", "ManifestError", "SFTShard", "ShardError", "atomic_write",
    "directory_lock", "load_manifest", "manifest_sha256", "open_sft_shard", "open_tokens", "read_header",
    "sha256_file", "write_json", "write_manifest", "write_sft_shard", "write_shard",
]
