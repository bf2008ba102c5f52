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


def remake(folder: Path) -> str:
    """The advice on a bad manifest: a manifest is written only by its stage, which a rerun skips while it exists."""
    return f" (edited by hand? remove {folder} and make the shards again)"


def check_totals(folder: Path, manifest: dict) -> str | None:
    """What disagrees between the manifest's totals and its list of shards (an entry removed by hand, say):
    the tokens, and the number of shards where the totals count them. None when they agree."""
    totals, entries = manifest.get("totals") or {}, manifest.get("shards") or []
    listed = {"tokens": sum(e["num_tokens"] for e in entries), "shards": len(entries)}
    for key, value in listed.items():
        if key in totals and totals[key] != value:
            said = f"{totals[key]:,}" if type(totals[key]) is int else repr(totals[key])  # a hand edit: "9", 9.0
            return (f"{folder / MANIFEST}: its totals say {said} {key}, its shards list {value:,}"
                    f"{remake(folder)}")
    return None


def not_a_folder(path: Path, what: str) -> str | None:
    """What is wrong with `path` where a folder belongs: a file (not `what`, the folder wanted and a hint), or
    nothing there; None for a folder."""
    if path.is_file():
        return f"{path}: a file, not {what}"
    return None if path.is_dir() else f"{path}: no such folder"


def _missing(directory: Path) -> str:
    """Why `directory` has no manifest: no such folder, a folder above stage folders (`DATA_DIR/sample-pretrain`
    or `DATA_DIR` for `DATA_DIR/sample-pretrain/<fingerprint>`), or a stage that has not finished."""
    if problem := not_a_folder(directory, f"a shards folder (pass the folder that holds {MANIFEST})"):
        return problem
    inner = sorted(str(m.parent) for pattern in (f"*/{MANIFEST}", f"*/*/{MANIFEST}") for m in directory.glob(pattern))
    if inner:
        return (f"{directory / MANIFEST}: no manifest; {directory} holds the finished stage folder(s) "
                f"{', '.join(inner)}: pass one of them")
    return f"{directory / MANIFEST}: no manifest (the stage has not finished; run it first)"


def load_manifest(directory: str | os.PathLike) -> dict:
    path = Path(directory) / MANIFEST
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (FileNotFoundError, NotADirectoryError):
        raise ManifestError(_missing(Path(directory))) from None
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON ({e}){remake(path.parent)}") from None
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path}: not a JSON object{remake(path.parent)}")
    for key in SECTIONS:
        if key in manifest and not isinstance(manifest[key], dict):
            raise ManifestError(f"{path}: {key} is a {type(manifest[key]).__name__}, not an object"
                                f"{remake(path.parent)}")
    if "shards" in manifest:
        _check_entries(path, manifest["shards"])
    return manifest


SECTIONS = ("config", "source", "tokenizer", "totals", "split")  # objects that readers look into, when present
SHARD_FIELDS = ("file", "split", "num_tokens", "bytes", "sha256")  # in every entry of `shards`
SPLITS = ("train", "val")  # an entry's split: the readers take these and no other


def _check_entries(path: Path, entries) -> None:
    """A ManifestError naming the entry and field of `shards` that a reader would trip on: a missing field of
    SHARD_FIELDS, or a field of the wrong type (file names plain names in the folder, split one of SPLITS, counts
    integers >= 0, sha256 64 hex digits)."""
    if not isinstance(entries, list):
        raise ManifestError(f"{path}: shards is a {type(entries).__name__}, not a list"
                            f"{remake(path.parent)}")
    for i, entry in enumerate(entries):
        where = f"{path}: shards[{i}]"
        if not isinstance(entry, dict):
            raise ManifestError(f"{where} is a {type(entry).__name__}, not an object"
                                f"{remake(path.parent)}")
        if isinstance(entry.get("file"), str):
            where += f" ({entry['file']})"
        if missing := [k for k in SHARD_FIELDS if k not in entry]:
            raise ManifestError(f"{where}: no {', '.join(missing)}{remake(path.parent)}")
        for key, value in entry.items():
            if key == "split":
                ok, expected = value in SPLITS, " or ".join(map(repr, SPLITS))
            elif key in ("file", "side") or key.endswith("_file"):
                ok, expected = isinstance(value, str) and value not in ("", ".", "..") and "/" not in value \
                    and "\\" not in value, "a file name in the folder" if "file" in key else "a string"
            elif key == "sha256" or key.endswith("_sha256"):
                ok, expected = isinstance(value, str) and len(value) == 64 and all(
                    c in "0123456789abcdef" for c in value), "64 hex digits"
            elif key in ("bytes", "supervised_tokens") or key.startswith("num_") or key.endswith("_bytes"):
                ok, expected = type(value) is int and value >= 0, "an integer >= 0"
            else:
                continue
            if not ok:
                raise ManifestError(f"{where}: {key} is {value!r}, expected {expected}"
                                    f"{remake(path.parent)}")


def manifest_sha256(directory: str | os.PathLike) -> str:
    """The hash of a manifest file: trainers record it to refuse resuming on changed data."""
    return sha256_file(Path(directory) / MANIFEST)
