"""What every stage shares: a config fingerprint, the output folder it names, the finished-check, the finder.

A stage writes into `DATA_DIR/<name>/<fingerprint>/`, so a changed config never mixes with old output; the
shard stages name theirs `<dataset>-<kind>` (`sample-pretrain`, `alpaca-sft`, `ultrafeedback-prefs`:
`shards_folder`), and readers (the trainers) find the one finished folder with `find_shards_dir`.
Its work in progress lives in the folder's `parts/`. The folder is complete exactly when its
`manifest.json` exists and records the same config (`finish` writes it, then drops `parts/`);
rerunning a complete stage does nothing (`run_once`).
"""

from __future__ import annotations

import multiprocessing
import shutil
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from multiprocessing import resource_tracker
from pathlib import Path
from typing import Protocol, runtime_checkable

from shards.io import directory_lock, sha256_json
from shards.manifest import MANIFEST, PARTS, ManifestError, load_manifest, write_manifest

from . import CUSTOM


@runtime_checkable
class Source(Protocol):
    """What a stage reads, as the pipelines' sources provide it (`pipelines.sources.TextSource`, documents for
    pretraining; `pipelines.sft_sources.ExampleSource`, instruction examples for SFT;
    `pipelines.pref_sources.PairSource`, preference pairs). Each adds how its records are read (units of a
    text column; `examples()`; `pairs()`)."""

    files: list[Path]  # the input files, in the order their records are read

    def describe(self) -> dict:
        """The manifest's "source": `dataset` (a hub repository, a package pin or the user's path), `revision`
        (None but for the hub) and `files`, each with its `file` name, `bytes` and `sha256`."""
        ...


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
    (each first runs `initializer(*initargs)`) when there are several workers and jobs, else here in order.
    A worker that dies (the kernel's OOM killer) stops the run with a RuntimeError, never a hang."""
    workers = min(workers, count)
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield from map(work, jobs)
        return
    # Ctrl-C is held back while the pool starts: the workers inherit the blocked signal, so one that is still
    # starting (Python's start-up, unpickling `initargs`: before _start_worker ignores Ctrl-C) prints no traceback
    # of its own. Multiprocessing's resource tracker is started first, as starting it unblocks Ctrl-C.
    resource_tracker.ensure_running()
    unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        pool = multiprocessing.get_context("spawn").Pool(workers, _start_worker, (initializer, initargs))
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
        raise
    with pool:
        signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)  # a Ctrl-C held back is raised here: the pool stops
        # Pool's own list of its processes (private, but the only sign: a Pool replaces a dead worker silently and
        # never answers its job; ProcessPoolExecutor, which reports it, leaves orphans when the parent is killed)
        started = {process.pid for process in pool._pool}
        results = pool.imap_unordered(work, jobs)
        while True:
            try:
                yield results.next(timeout=1)
            except StopIteration:
                return
            except multiprocessing.TimeoutError:  # the pool replaces a dead worker, but its job is lost: no result
                if {process.pid for process in pool._pool} != started:
                    raise RuntimeError("a worker process died (killed by the system: out of memory?) or could not "
                                       "start (its error is above); the finished work is kept: run the same command "
                                       "again (fewer WORKERS need less memory)")


def _start_worker(initializer: Callable | None, initargs: tuple) -> None:
    """A pool worker ignores Ctrl-C: the parent, interrupted, stops the pool (and says so once, `command`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer(*initargs)


# the make target that writes each kind of shards, and the variable that names its dataset
MAKE_TARGETS = {"pretrain": ("pretrain-shards", "DATASET"), "sft": ("sft-shards", "SFT_DATASET"),
                "prefs": ("pref-shards", "PREF_DATASET"), "eval": ("hellaswag-shards", None)}


def shards_folder(dataset: str, kind: str) -> str:
    """The folder under DATA_DIR of the `kind` ("pretrain", "sft", "prefs" or "eval") shards of `dataset`:
    `<dataset>-<kind>`."""
    return f"{dataset}-{kind}"


def find_shards_dir(data_dir: str | Path, kind: str, dataset: str, flag: str = "--shards-dir") -> Path:
    """The one finished shard folder of `dataset` that the `kind` ("pretrain", "sft", "prefs" or "eval") pipeline wrote,
    `DATA_DIR/<dataset>-<kind>/<fingerprint>/`; an error saying what to run if there is none, and naming them
    all if there are several (a changed data setting writes a folder of its own: which one is meant is not
    guessed); both name `flag`, the command's flag that takes the folder."""
    base = Path(data_dir) / shards_folder(dataset, kind)
    found = sorted(p.parent for p in base.glob(f"*/{MANIFEST}"))
    if not found:
        target, variable = MAKE_TARGETS[kind]
        make = f"make {target}" + ("" if variable is None else " SOURCE=path" if dataset == CUSTOM
                                   else f" {variable}={dataset}")
        raise ManifestError(f"no finished {kind} shards under {base}/ (run `{make}` first, or pass {flag})")
    if len(found) > 1:
        raise ManifestError(f"several finished {kind} shard folders: {', '.join(map(str, found))}; "
                            f"choose one with {flag} (ARGS=\"{flag} ...\"), or delete the old ones")
    return found[0]


def command(run: Callable, cfg) -> int:
    """A stage run from its command line: 0, or 1 with the error's message on stderr (bad input, a busy folder,
    a failed download, a full disk), or 130 after Ctrl-C."""
    try:
        run(cfg)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: the finished work is kept; run the same command again to continue", file=sys.stderr)
        return 130
    return 0
