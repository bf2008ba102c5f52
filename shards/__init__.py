"""The on-disk data format: llm.c-compatible token shards, SFT sidecars, manifests, safe file writes, inspection,
and the progress of long steps (a bar on a terminal, plain lines in a log).

At the bottom of the import order (tests/test_layers.py) are three foundations that import nothing above them:
`shards.io` (safe file writes), `shards.tokenizer` (the GPT-2 vocabulary the shards store) and `shards.cli` (the
flag parser of every command). The rest of `shards` imports those and one another (`shards.report` uses
`format`, `sft` and `verify`), nothing of gpt, pipelines, train or bench. The report of `python -m shards
inspect` is `shards.report`.
"""

from .format import (DOCS_DTYPE, HEADER_BYTES, MAGIC, TOKEN_DTYPE, ShardError, open_tokens, read_docs, read_header,
                     write_shard)
from .io import (atomic_directory, atomic_write, directory_lock, fsync_dir, remove_temporaries, sha256_file,
                 sha256_json, write_bytes, write_json)
from .manifest import MANIFEST, ManifestError, load_manifest, manifest_sha256, write_manifest
from .progress import bytes_bar, progress_bar
from .sft import SFTShard, open_sft_shard, write_sft_shard

__all__ = [
    "DOCS_DTYPE", "HEADER_BYTES", "MAGIC", "MANIFEST", "ManifestError", "SFTShard", "ShardError", "TOKEN_DTYPE",
    "atomic_directory", "atomic_write", "bytes_bar", "directory_lock", "fsync_dir", "load_manifest",
    "manifest_sha256", "open_sft_shard", "open_tokens", "progress_bar", "read_docs", "read_header",
    "remove_temporaries", "sha256_file", "sha256_json", "write_bytes", "write_json", "write_manifest",
    "write_sft_shard", "write_shard",
]
