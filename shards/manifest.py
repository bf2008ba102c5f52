"""`manifest.json`: the completion marker and public description of a folder of shards.

Written last and atomically by every stage. Its schema is documented in docs/data.md (Manifest).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .io import lock_held, sha256_file, write_json

MANIFEST = "manifest.json"
PARTS = "parts"  # a stage's work in progress, inside its output folder (removed once the manifest is written)


def task_folder(parts: str | os.PathLike, index: int, count: int) -> Path:
    """The folder in `parts` that task `index` of `count` (`--num-tasks`) locks while it writes there."""
    return Path(parts) / f".task-{index}-of-{count}"


def running_tasks(parts: str | os.PathLike) -> list[Path]:
    """The task folders in `parts` whose lock a live task holds now."""
    return [d for d in sorted(Path(parts).glob(".task-*-of-*")) if lock_held(d)]


class ManifestError(ValueError):
    """A missing, unreadable or inconsistent manifest."""


def write_manifest(directory: str | os.PathLike, manifest: dict) -> Path:
    path = Path(directory) / MANIFEST
    write_json(path, manifest)
    return path


def load_manifest(directory: str | os.PathLike) -> dict:
    path = Path(directory) / MANIFEST
    try:
        with open(path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise ManifestError(f"{path}: no manifest (the stage has not finished; run it first)") from None
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path}: not a JSON object (edited by hand? make the shards again)")
    return manifest


def manifest_sha256(directory: str | os.PathLike) -> str:
    """The hash of a manifest file: trainers record it to refuse resuming on changed data."""
    return sha256_file(Path(directory) / MANIFEST)
