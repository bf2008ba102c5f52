"""What every stage shares: a config fingerprint, the output folder it names, and the finished-check.

A stage writes into `DATA_DIR/<name>/<fingerprint>/`, so a changed config never mixes with old output.
Its work in progress lives in the folder's `parts/`. The folder is complete exactly when its
`manifest.json` exists and records the same config (`finish` writes it, then drops `parts/`);
rerunning a complete stage does nothing (`run_once`).
"""

from __future__ import annotations

import multiprocessing
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from shards.io import directory_lock, sha256_json
from shards.manifest import MANIFEST, PARTS, ManifestError, load_manifest, write_manifest


def fingerprint(config: dict) -> str:
    """A short stable hash of a stage's config (JSON-able dict): it names the output folder."""
    return sha256_json(config)[:12]


def output_dir(data_dir: str | Path, name: str, config: dict) -> Path:
    return Path(data_dir) / name / fingerprint(config)


def finished(directory: str | Path, config: dict) -> dict | None:
    """The manifest if `directory` holds the finished output of this exact config, else None; a finished
    folder's leftover `parts/` (a run killed inside `finish`) is removed.

    A manifest recording another config is an error that says which fields differ.
    """
    if not (Path(directory) / MANIFEST).exists():
        return None
    manifest = load_manifest(directory)
    if manifest.get("config") != config:
        old = manifest.get("config") or {}
        diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
        raise ManifestError(f"{directory}: holds output of another config (differs in: {', '.join(diff)})")
    shutil.rmtree(Path(directory) / PARTS, ignore_errors=True)  # left if a run was killed in `finish`
    return manifest


def finish(directory: Path, manifest: dict) -> None:
    """Mark the stage complete: write the manifest, then drop the work in progress."""
    write_manifest(directory, manifest)
    shutil.rmtree(directory / PARTS, ignore_errors=True)


def run_once(directory: Path, config: dict, build: Callable[[], dict]) -> dict:
    """The manifest of `directory`'s finished output; `build()` (which writes the manifest last and returns
    it) runs only when there is none, under the folder's lock, so two runs never build it at once."""
    manifest = finished(directory, config)
    if manifest is None:
        with directory_lock(directory):
            manifest = finished(directory, config) or build()
    return manifest


def parallel_map(work: Callable, jobs: Iterable, count: int, workers: int, initializer: Callable | None = None,
                 initargs: tuple = ()) -> Iterator:
    """`work(job)` for each of the `count` jobs, yielded as each finishes: in `workers` spawned processes
    (each first runs `initializer(*initargs)`) when there are several workers and jobs, else here in order."""
    workers = min(workers, count)
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield from map(work, jobs)
        return
    with multiprocessing.get_context("spawn").Pool(workers, initializer, initargs) as pool:
        yield from pool.imap_unordered(work, jobs)


def latest(data_dir: str | Path, name: str) -> Path | None:
    """The most recently finished output folder of stage `name` under `data_dir` (None if there is none)."""
    done = [p.parent for p in (Path(data_dir) / name).glob(f"*/{MANIFEST}")]
    return max(done, key=lambda p: ((p / MANIFEST).stat().st_mtime_ns, p.name), default=None)
