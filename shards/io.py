"""Safe file primitives: atomic writes (temporary name, fsync, rename), sha256, and a directory lock."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Flush `path`'s directory entries, so that a rename or a new file in it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """Yield a file that appears at `path` only if the block completes; a failure leaves nothing there.

    The bytes go to `.<name>.tmp-<pid>` first; a killed process can leave that behind (remove_temporaries).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise OSError(e.errno, f"disk full while writing {path}") from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike):
    """Yield an empty temporary folder (`.<name>.tmp-<pid>` beside `path`) that becomes `path` only if the
    block completes; a failure leaves nothing there. `path` must not exist (or be an empty folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        yield tmp
        os.rename(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_temporaries(directory: Path, stems: list[str] | None = None) -> None:
    """Delete the files atomic_write left in `directory` when killed; only names starting `<stem>.` if
    `stems` is given.

    Call it while holding the directory's lock (or the lock on those stems' work), never beside a live writer.
    """
    for p in directory.glob(".*.tmp-*"):
        if p.is_file() and (stems is None or p.name[1:].split(".", 1)[0] in stems):
            p.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, obj) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def write_bytes(path: str | os.PathLike, data: bytes) -> dict:
    """Write `data` to `path` atomically; returns {"bytes", "sha256"} of it, for a manifest."""
    with atomic_write(path) as f:
        f.write(data)
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def read_blocks(path: str | os.PathLike, chunk: int = 1 << 22, progress: Callable[[int], object] | None = None):
    """The bytes of the file, `chunk` at a time; `progress(n)` is called after each block of n bytes (a progress
    bar's update)."""
    with open(path, "rb") as f:
        while block := f.read(chunk):
            yield block
            if progress is not None:
                progress(len(block))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22, progress: Callable[[int], object] | None = None) -> str:
    """The file's sha256; `progress(n)` is called after each block of n bytes (a progress bar's update)."""
    h = hashlib.sha256()
    for block in read_blocks(path, chunk, progress):
        h.update(block)
    return h.hexdigest()


def sha256_json(obj) -> str:
    """A stable hash of a JSON-able object (keys sorted): config fingerprints, template hashes."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def lock_held(directory: str | os.PathLike) -> bool:
    """Whether a live process holds `directory_lock(directory)` now (probed by taking and dropping a shared lock)."""
    try:
        fd = os.open(Path(directory) / ".lock", os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the probe's lock


@contextlib.contextmanager
def directory_lock(directory: str | os.PathLike):
    """Hold an exclusive lock on `directory` for the block; a second holder fails at once with a clear error.

    The lock is an flock on `directory/.lock`, released by the kernel if the process dies.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"{directory} is in use by another run (lock {directory / '.lock'}); "
                               "wait for it to finish or stop it") from None
        except OSError as e:  # e.g. ENOLCK / ENOSYS: a network file system mounted without flock
            raise OSError(e.errno, f"cannot lock {directory / '.lock'} ({e.strerror}); put it on a file "
                                   "system with flock (for Lustre or NFS: mount with flock / local_lock)") from None
        yield
    finally:
        os.close(fd)
