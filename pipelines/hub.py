"""Download files of a Hugging Face hub repo at a pinned revision: resumed, retried, verified, then renamed.

`download(repo_id, filenames, revision, dest_dir)` puts each file at `dest_dir/<path in repo>` only once its
size and digest match the hub's metadata (the LFS sha256; the git blob sha1 for the few files stored in git).
Bookkeeping lives in `dest_dir/.download/`: `<path>.<digest>.part` (that sha256 or git sha1) holds the bytes
received so far and is continued with an HTTP Range request after a dropped connection or a killed process;
`<path>.json` records the verified file, so that a rerun checks size and mtime against it and makes no network
call at all.

Transport: huggingface_hub builds the URLs, headers and token, and answers the metadata calls
(`HfApi.repo_info`, `HfApi.get_paths_info`); the bytes come over plain HTTP(S) from `/resolve/<commit>/<path>`,
which the hub redirects to its CDN or, for xet-backed files, to its xet bridge; both serve byte ranges. hf_xet
is not used, so that every transfer resumes the same way, from our partial file. The endpoint is
huggingface_hub's (`HF_ENDPOINT`); with `HF_HUB_OFFLINE=1` only files already verified are accepted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx2
from huggingface_hub import HfApi, RepoFile, constants, hf_hub_url
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status
from tqdm import tqdm

from shards.io import directory_lock, fsync_dir, sha256_file, write_json
from shards.progress import progress_bar


@dataclass(frozen=True)
class HubSource:
    """A pinned set of files in a hub repo."""

    repo_id: str
    revision: str
    files: tuple[str, ...]
    repo_type: str = "dataset"


# Pinned commits, found with a code search over public repositories (2026-11); the hub's metadata at the
# commit stays the authority for every file's size and sha256:
# - fineweb 9bb295ddab0e05d785b879661af7260fed5140fc: pinned, with a file's LFS sha256, in the external tests of
#   a parquet reader ("parquet-d", tests/external_verify.sh) and in FineWeb experiment scripts whose file list
#   at that commit ends with data/CC-MAIN-2025-26; sample/10BT (15 files) predates that dump, but no listing
#   of it at this very commit was found: a missing file fails the download, naming it.
# - fineweb-edu 87f09149ef4734204d70ed1d046ddc9ca3f2b8f9: a provenance note that lists sample/10BT at this
#   commit as 14 files, 000_00000 to 013_00000.parquet, 28,518,193,415 bytes, with their sha256.
# - alpaca dce01c9b08f87459cf36a430d809084718273017: pinned, with the file below and its sha256
#   06391b656a06fd3fb9d213160ef2398796c3b7f3dc75ef1e3ced30d461517073, in a data-freezing script, and seen in
#   a hub cache path in another project.
# - ultrafeedback_binarized 3949bf5f8c17c394422ccfab0c31ea9c20bdeb85: a dataset note that pins it as main at its
#   check date (last modified 2024-10-16, the release without the TruthfulQA rows and the mislabelled pairs),
#   train_prefs 61,135 rows; the file names follow the card's `data/<split>-*` layout, one file per split.
# - gsm8k cc7b047b6e5bb11b4f1af84efc572db110a51b3c: the commit that dataset caches name
#   (`openai___gsm8k/main/0.0.0/cc7b047b.../gsm8k-test.arrow`) and that evaluation and data-provenance
#   scripts pin, with the `main` config's two files below (train 7,473 rows, test 1,319; columns question, answer).
# - hellaswag 9c75cc00ec2e1f93893cbd25ba617ee30eb70d88: the commit "Convert dataset to Parquet" of Rowan/hellaswag,
#   whose validation file (6.3 MB, 10,042 rows; columns ind, activity_label, ctx, endings (4 strings), label
#   ("0".."3"), ...) is what build-nanogpt and llm.c evaluate (pipelines/hellaswag.py).
FINEWEB_10B = HubSource("HuggingFaceFW/fineweb", "9bb295ddab0e05d785b879661af7260fed5140fc",
                        tuple(f"sample/10BT/{i:03d}_00000.parquet" for i in range(15)))
FINEWEB_EDU_10B = HubSource("HuggingFaceFW/fineweb-edu", "87f09149ef4734204d70ed1d046ddc9ca3f2b8f9",
                            tuple(f"sample/10BT/{i:03d}_00000.parquet" for i in range(14)))
ALPACA = HubSource("tatsu-lab/alpaca", "dce01c9b08f87459cf36a430d809084718273017",
                   ("data/train-00000-of-00001-a09b74b3ef9c3b56.parquet",))
ULTRAFEEDBACK = HubSource("HuggingFaceH4/ultrafeedback_binarized", "3949bf5f8c17c394422ccfab0c31ea9c20bdeb85",
                          ("data/train_prefs-00000-of-00001.parquet", "data/test_prefs-00000-of-00001.parquet"))
GSM8K = HubSource("openai/gsm8k", "cc7b047b6e5bb11b4f1af84efc572db110a51b3c",
                  ("main/train-00000-of-00001.parquet", "main/test-00000-of-00001.parquet"))
HELLASWAG = HubSource("Rowan/hellaswag", "9c75cc00ec2e1f93893cbd25ba617ee30eb70d88",
                      ("data/validation-00000-of-00001.parquet",))
SOURCES = {"fineweb10B": FINEWEB_10B, "fineweb-edu10B": FINEWEB_EDU_10B, "alpaca": ALPACA,
           "ultrafeedback": ULTRAFEEDBACK, "gsm8k": GSM8K, "hellaswag": HELLASWAG}

BOOKKEEPING = ".download"
_COMMIT = re.compile(r"[0-9a-f]{40}")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(\d+|\*)")
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


class DownloadError(RuntimeError):
    """A download that cannot complete, or whose bytes do not match the hub's metadata."""


@dataclass(frozen=True)
class Retry:
    """Exponential backoff: wait first_s, 2 * first_s, ... (at most max_s) between tries of a request, and give up
    after `tries` failures in a row (a try that received bytes starts the count again)."""

    tries: int = 8
    first_s: float = 1.0
    max_s: float = 60.0

    def wait(self, failures: int) -> float:
        return min(self.max_s, self.first_s * 2 ** (failures - 1))


RETRY = Retry()  # the policy of every request (tests shorten it)


class _ShortRead(Exception):
    """The server ended a response before the bytes it announced."""


def _transient(error: Exception) -> bool:
    if isinstance(error, HfHubHTTPError):
        return error.response is not None and error.response.status_code in _TRANSIENT_STATUS
    return isinstance(error, (httpx2.TransportError, _ShortRead))


def _retry_after(error: Exception) -> float:
    """The seconds an HTTP error's Retry-After header asks for (a 429 of the hub's rate limit, a 503), or 0."""
    response = getattr(error, "response", None)
    value = response.headers.get("Retry-After", "").strip() if response is not None else ""
    return float(value) if value.isdigit() else 0.0


def _with_retries(what: str, call, received=lambda: 0, size: int = 0):
    """`call()`, retried with backoff on connection errors and 408/429/5xx (waiting at least what a Retry-After
    header asks for). For a download, `received()` is the bytes of `size` kept so far: a failed try that added
    some starts the count of failures in a row again."""
    failures, have = 0, received()
    while True:
        try:
            return call()
        except Exception as e:
            if not _transient(e):
                raise
            now = received()
            failures, have = (1 if now > have else failures + 1), now
            if failures >= RETRY.tries:
                kept = f", {now} of {size} bytes kept for the next run" if size else ""
                raise DownloadError(f"{what}: giving up after {failures} failed tries in a row{kept}: {e}") from e
            first_line = (str(e) or type(e).__name__).splitlines()[0]
            wait = max(RETRY.wait(failures), _retry_after(e))
            tqdm.write(f"{what}: {first_line}; retrying in {wait:g} s (failed try {failures} of "
                       f"{RETRY.tries} in a row)", file=sys.stderr)  # a wait of minutes is not a silent hang
            time.sleep(wait)


def download(repo_id: str, filenames: list[str], revision: str, dest_dir: Path,
             repo_type: str = "dataset") -> list[dict]:
    """Make `dest_dir/<name>` the verified file `name` of `repo_id` at `revision`, for every name.

    Returns one {"file", "bytes", "sha256"} per name, in order. Files verified by an earlier call are not
    downloaded again, and when all are, no request is made. Raises DownloadError naming the file on a
    missing file, a size or checksum mismatch (the partial bytes are deleted), or when the retries run out
    (the partial bytes are kept, and the next call continues them).
    """
    dest_dir = Path(dest_dir)
    with directory_lock(dest_dir / BOOKKEEPING):
        records = {name: _trusted_record(dest_dir, name, repo_id, repo_type, revision) for name in filenames}
        missing = [name for name, record in records.items() if record is None]
        if missing:
            records.update(_fetch_missing(repo_id, missing, revision, dest_dir, repo_type))
    return [{"file": name, "bytes": records[name]["bytes"], "sha256": records[name]["sha256"]}
            for name in filenames]


def _record_path(dest_dir: Path, name: str) -> Path:
    return dest_dir / BOOKKEEPING / f"{name}.json"


def _trusted_record(dest_dir: Path, name: str, repo_id: str, repo_type: str, revision: str) -> dict | None:
    """The record of an earlier verified download of this file, if the file on disk is still that file."""
    path, record_path = dest_dir / name, _record_path(dest_dir, name)
    if not path.is_file() or not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
    except json.JSONDecodeError:
        return None
    if (record.get("repo_id"), record.get("repo_type"), record.get("revision"), record.get("file")) != \
            (repo_id, repo_type, revision, name):
        return None
    stat = path.stat()
    touched = stat.st_mtime_ns != record.get("mtime_ns")  # then trust the bytes only after hashing them
    if stat.st_size != record.get("bytes") or (touched and _digest(path, "sha256") != record.get("sha256")):
        print(f"{path}: changed since it was verified; deleted, to be downloaded again")
        path.unlink()
        record_path.unlink()
        return None
    if touched:
        record = {**record, "mtime_ns": stat.st_mtime_ns}
        write_json(record_path, record)
    return record


def _fetch_missing(repo_id: str, names: list[str], revision: str, dest_dir: Path, repo_type: str) -> dict[str, dict]:
    if constants.is_offline_mode():
        raise DownloadError(f"HF_HUB_OFFLINE is set, and {', '.join(names)} of {repo_id} at {revision} "
                            f"are not downloaded and verified in {dest_dir}")
    api = HfApi()
    commit = revision if _COMMIT.fullmatch(revision) else _with_retries(
        f"{repo_id}: resolving revision {revision}",
        lambda: api.repo_info(repo_id, revision=revision, repo_type=repo_type).sha)
    infos = _with_retries(f"{repo_id}: metadata of {len(names)} files at {commit}",
                          lambda: api.get_paths_info(repo_id, names, revision=commit, repo_type=repo_type))
    by_path = {info.path: info for info in infos if isinstance(info, RepoFile)}
    if absent := [name for name in names if name not in by_path]:
        raise DownloadError(f"{', '.join(absent)}: no such file in {repo_type} {repo_id} at {commit}")
    records = {}
    for name in names:
        info = by_path[name]
        # LFS files (all the data files) are checked by their sha256; files kept in git by their git blob sha1
        expected = _Expected(info.size, *(("sha256", info.lfs.sha256) if info.lfs else ("git-sha1", info.blob_id)))
        where = f"{repo_id}@{commit[:12]}:{name}"
        path = dest_dir / name
        if path.is_file() and expected.matches(path):
            print(f"{path}: already there and verified")
        else:
            if path.is_file():
                print(f"{path}: differs from the hub's {expected.algorithm}; deleted, to be downloaded again")
                path.unlink()
            url = hf_hub_url(repo_id, name, repo_type=repo_type, revision=commit)
            _download_file(url, dest_dir, name, expected, where)
        sha256 = expected.digest if expected.algorithm == "sha256" else _digest(path, "sha256")
        record = {"repo_id": repo_id, "repo_type": repo_type, "revision": revision, "commit": commit, "file": name,
                  "bytes": info.size, "sha256": sha256, "mtime_ns": path.stat().st_mtime_ns}
        write_json(_record_path(dest_dir, name), record)
        records[name] = record
    return records


def _digest(path: Path, algorithm: str) -> str:
    """The sha256 of a file, or its git blob sha1 ("git-sha1": sha1 of b"blob <size>\\0" + bytes)."""
    if algorithm == "sha256":
        return sha256_file(path)
    h = hashlib.sha1()
    h.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class _Expected:
    """What the hub's metadata says a file is."""

    size: int
    algorithm: str  # "sha256" or "git-sha1"
    digest: str

    def matches(self, path: Path) -> bool:
        return path.stat().st_size == self.size and _digest(path, self.algorithm) == self.digest


def _download_file(url: str, dest_dir: Path, name: str, expected: _Expected, where: str) -> None:
    """Fetch `url` into a partial file, continuing what an earlier try left, verify it, rename it to `name`."""
    part = dest_dir / BOOKKEEPING / f"{name}.{expected.digest}.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    part.touch()  # an empty file needs no request, but still goes through the partial file
    version = re.compile(re.escape(Path(name).name) + r"\.[0-9a-f]{40,64}\.part")
    for stale in part.parent.iterdir():  # bytes of another version of this file
        if stale != part and version.fullmatch(stale.name):
            stale.unlink()
    size = expected.size
    if part.stat().st_size > size:
        os.truncate(part, 0)

    def received() -> int:
        return part.stat().st_size

    with progress_bar(total=size, initial=received(), desc=name, unit="B", bytes_=True) as bar:
        if received() < size:
            _with_retries(where, lambda: _get_range(url, part, received(), size, bar, where), received, size)
    got = _digest(part, expected.algorithm)
    if got != expected.digest:
        part.unlink()
        raise DownloadError(f"{where}: downloaded bytes have {expected.algorithm} {got}, the hub says "
                            f"{expected.digest}; the partial download was deleted, run again to download it again")
    final = dest_dir / name
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, final)
    fsync_dir(final.parent)  # the rename itself survives a crash


def _get_range(url: str, part: Path, have: int, size: int, bar, where: str) -> None:
    """One GET of the bytes from `have` on, appended to `part` as they arrive."""
    headers = build_hf_headers()
    headers["Accept-Encoding"] = "identity"  # byte ranges of the file itself, never of a compressed body
    if have:
        headers["Range"] = f"bytes={have}-"
    with get_session().stream("GET", url, headers=headers, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as response:
        if response.status_code == 416 and have:  # the server's copy ends before `have`: not the announced file
            part.unlink()
            raise DownloadError(f"{where}: the server has no bytes from {have} on (416 Range Not Satisfiable), "
                                f"the hub announced {size} bytes; the partial download was deleted, run again to "
                                "download it again")
        if response.status_code >= 400:
            response.read()
            try:
                hf_raise_for_status(response)
            except HfHubHTTPError as e:  # the CDN's URL names only the sha256: name the file
                if _transient(e):
                    raise
                raise DownloadError(f"{where}: {e}") from e
        start = 0
        if response.status_code == 206:
            sent = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
            start = int(sent.group(1)) if sent else -1
            if start != have:
                raise DownloadError(f"{where}: asked for bytes from {have}, the server answered with "
                                    f"Content-Range {response.headers.get('Content-Range')!r}")
        elif have:  # the server ignored the range: start over
            bar.update(-have)
        with open(part, "r+b" if start else "wb") as f:
            f.seek(start)
            f.truncate()
            for chunk in response.iter_bytes():
                if start + len(chunk) > size:
                    f.close()
                    part.unlink()
                    raise DownloadError(f"{where}: the server sent more than the {size} bytes the hub announced; "
                                        "the partial download was deleted, run again to download it again")
                f.write(chunk)
                start += len(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
    if start < size:
        raise _ShortRead(f"connection closed at byte {start} of {size}")
