"""pipelines.hub against a local fake hub (tests/fake_hub.py): retries, resume, verification, no-op rerun."""

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import RevisionNotFoundError

from fake_hub import FakeHub
from pipelines import hub
from pipelines.hub import DownloadError, Retry, download

ROOT = Path(__file__).resolve().parents[1]
REPO = "org/web-sample"
_rng = random.Random(0)
FILES = {
    "sample/000.parquet": _rng.randbytes(300_000),
    "sample/001.parquet": _rng.randbytes(200_001),
    "README.md": "a dataset card, stored in git rather than LFS: é\n".encode(),
    "sample/.keep": b"",
}
NAMES = list(FILES)


def expected(names=NAMES) -> list[dict]:
    return [{"file": n, "bytes": len(FILES[n]), "sha256": hashlib.sha256(FILES[n]).hexdigest()} for n in names]


def cdn_path(name: str) -> str:
    return f"/cdn/{hashlib.sha256(FILES[name]).hexdigest()}"


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(hub, "RETRY", Retry(tries=4, first_s=0.001, max_s=0.01))


def serve(monkeypatch, faults=None) -> FakeHub:
    fake = FakeHub({REPO: FILES}, faults=faults, in_git=("README.md", "sample/.keep"))
    fake.point_huggingface_hub(monkeypatch)
    return fake


def assert_exactly_the_files(dest: Path, names=NAMES) -> None:
    for name in names:
        assert (dest / name).read_bytes() == FILES[name], name
    on_disk = {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file() and ".download" not in p.parts}
    assert on_disk == set(names)
    assert not list(dest.rglob("*.part"))


def test_download_survives_5xx_and_dropped_connections(tmp_path, monkeypatch):
    faults = {"api": [503], "sample/000.parquet": [500, "drop", 502, "drop"],
              "sample/001.parquet": ["drop", "ignore-range"], "README.md": [503, "drop"]}
    with serve(monkeypatch, faults) as fake:
        assert download(REPO, NAMES, "main", tmp_path) == expected()
    assert_exactly_the_files(tmp_path)
    assert all(not actions for actions in fake.faults.values())  # every scripted fault was met
    gets = [(path, byte_range) for method, path, byte_range in fake.requests if method == "GET"]
    # a dropped transfer is continued from the bytes already on disk, not restarted
    assert (cdn_path("sample/000.parquet"), "bytes=150000-") in gets
    assert (cdn_path("sample/000.parquet"), "bytes=225000-") in gets
    # the server that ignored the range was answered by starting over, and the file is still exact
    assert (cdn_path("sample/001.parquet"), "bytes=100000-") in gets


def test_rerun_makes_no_request_and_detects_local_changes(tmp_path, monkeypatch):
    with serve(monkeypatch) as fake:
        assert download(REPO, NAMES, FakeHub.COMMIT, tmp_path) == expected()
        seen = len(fake.requests)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # any request would now raise
        assert download(REPO, NAMES, FakeHub.COMMIT, tmp_path) == expected()
        path = tmp_path / "sample/001.parquet"
        os.utime(path, ns=(1, 1))  # touched, same bytes: re-hashed locally, still accepted
        assert download(REPO, NAMES, FakeHub.COMMIT, tmp_path) == expected()
        assert len(fake.requests) == seen
        damaged = bytearray(FILES["sample/001.parquet"])
        damaged[7] ^= 1
        path.write_bytes(damaged)
        with pytest.raises(DownloadError, match=r"HF_HUB_OFFLINE.*sample/001\.parquet"):
            download(REPO, NAMES, FakeHub.COMMIT, tmp_path)
        assert not path.exists()  # a file that no longer matches its record leaves its final name
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        assert download(REPO, NAMES, FakeHub.COMMIT, tmp_path) == expected()
    assert_exactly_the_files(tmp_path)


@pytest.mark.parametrize("name, digest", [("sample/000.parquet", "sha256"), ("README.md", "git-sha1")])
def test_corrupt_payload_fails_naming_the_file_and_leaves_nothing(tmp_path, monkeypatch, name, digest):
    with serve(monkeypatch, {name: ["corrupt"]}):
        with pytest.raises(DownloadError, match=rf"{REPO}@5eed01234567:{name}: downloaded bytes have {digest}"):
            download(REPO, NAMES, "main", tmp_path)
        assert not (tmp_path / name).exists()
        assert not list(tmp_path.rglob("*.part"))
        assert download(REPO, NAMES, "main", tmp_path) == expected()  # the next run fetches it again
    assert_exactly_the_files(tmp_path)


def test_every_retry_is_announced_with_its_wait(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(hub, "RETRY", Retry(tries=3, first_s=0.001, max_s=0.01))
    with serve(monkeypatch, {"api": [503, 503, 503]}):  # no answer: minutes of backoff at the real policy
        with pytest.raises(DownloadError, match="giving up after 3 failed tries in a row"):
            download(REPO, NAMES, "main", tmp_path)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "retrying" in line]
    assert len(lines) == 2 and all(line.startswith(f"{REPO}: resolving revision main: ") and "503" in line
                                   for line in lines)  # one line each, the error's first
    assert lines[0].endswith("; retrying in 0.001 s (failed try 1 of 3 in a row)")
    assert lines[1].endswith("; retrying in 0.002 s (failed try 2 of 3 in a row)")


def test_giving_up_keeps_the_partial_file_and_the_next_run_continues_it(tmp_path, monkeypatch):
    name = "sample/000.parquet"
    with serve(monkeypatch, {name: ["drop", 503, 503, 503, 503]}) as fake:
        with pytest.raises(DownloadError, match=rf"{name}: giving up after 4 failed tries in a row, "
                                                r"150000 of 300000 bytes kept"):
            download(REPO, [name], "main", tmp_path)
        assert not (tmp_path / name).exists()
        assert download(REPO, [name], "main", tmp_path) == expected([name])
    assert (cdn_path(name), "bytes=150000-") in [(p, r) for _, p, r in fake.requests]
    assert_exactly_the_files(tmp_path, [name])


def test_partial_files_of_another_version_or_too_long_are_discarded(tmp_path, monkeypatch):
    parts = tmp_path / ".download" / "sample"
    parts.mkdir(parents=True)
    (parts / f"000.parquet.{'0' * 64}.part").write_bytes(b"bytes of another version")
    sha = hashlib.sha256(FILES["sample/001.parquet"]).hexdigest()
    (parts / f"001.parquet.{sha}.part").write_bytes(b"x" * (len(FILES["sample/001.parquet"]) + 1))
    (parts / "000.parquet.keep.part").write_bytes(b"not a partial of ours")
    with serve(monkeypatch):
        assert download(REPO, NAMES, "main", tmp_path) == expected()
    assert sorted(p.name for p in parts.iterdir()) == [".keep.json", "000.parquet.json", "000.parquet.keep.part",
                                                       "001.parquet.json"]
    for name in NAMES:
        assert (tmp_path / name).read_bytes() == FILES[name]


def test_killed_download_resumes_from_its_partial_file(tmp_path, monkeypatch):
    """SIGKILL a download (a fresh process pointed at the fake hub by HF_ENDPOINT) mid-file, then rerun."""
    name = "sample/000.parquet"
    dest = tmp_path / "dest"
    with serve(monkeypatch, {name: ["hang"]}) as fake:
        code = f"from pipelines.hub import download; download({REPO!r}, {[name]!r}, 'main', {str(dest)!r})"
        with open(tmp_path / "child.log", "wb") as log:
            child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=log, stderr=log,
                                     env={**os.environ, **fake.env(tmp_path / "hf_home")})
        try:
            deadline = time.monotonic() + 60
            while not any(p.stat().st_size for p in dest.rglob("*.part")):
                assert child.poll() is None, (tmp_path / "child.log").read_text()
                assert time.monotonic() < deadline, "the child never started writing"
                time.sleep(0.02)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        [part] = dest.rglob("*.part")
        kept = part.stat().st_size
        assert 0 < kept < len(FILES[name]) and not (dest / name).exists()
        assert download(REPO, [name], "main", dest) == expected([name])
    assert (cdn_path(name), f"bytes={kept}-") in [(p, r) for _, p, r in fake.requests]
    assert_exactly_the_files(dest, [name])


def test_missing_file_revision_and_offline_errors(tmp_path, monkeypatch):
    with serve(monkeypatch):
        with pytest.raises(DownloadError, match=rf"sample/404\.parquet: no such file in dataset {REPO}"):
            download(REPO, ["README.md", "sample/404.parquet"], "main", tmp_path)
        assert not (tmp_path / "README.md").exists()  # nothing is fetched before every name is known to exist
        with pytest.raises(RevisionNotFoundError, match="no-such-branch"):
            download(REPO, ["README.md"], "no-such-branch", tmp_path)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        with pytest.raises(DownloadError, match=r"HF_HUB_OFFLINE is set, and README\.md of org/web-sample"):
            download(REPO, ["README.md"], "main", tmp_path)


def test_fake_hub_answers_huggingface_hub_like_the_hub(tmp_path, monkeypatch):
    """The fake serves what huggingface_hub's own download path expects, so other tests can rely on it."""
    name = "sample/001.parquet"
    with serve(monkeypatch):
        meta = get_hf_file_metadata(hf_hub_url(REPO, name, repo_type="dataset", revision="main"))
        path = hf_hub_download(REPO, name, repo_type="dataset", revision="main", cache_dir=tmp_path)
    assert (meta.commit_hash, meta.etag, meta.size) == \
        (FakeHub.COMMIT, hashlib.sha256(FILES[name]).hexdigest(), len(FILES[name]))
    assert Path(path).read_bytes() == FILES[name]


def test_a_refused_file_fails_naming_it_and_keeps_the_files_before_it(tmp_path, monkeypatch):
    """A 404 or 403 of the CDN (whose URL names only the sha256) is reported with the file's name."""
    name = "sample/001.parquet"
    for status in (404, 403):
        dest = tmp_path / str(status)
        with serve(monkeypatch, {name: [status]}):
            with pytest.raises(DownloadError, match=rf"^{REPO}@5eed01234567:{name}: .*{status}"):
                download(REPO, NAMES, "main", dest)
            assert (dest / "sample/000.parquet").read_bytes() == FILES["sample/000.parquet"]
            assert not (dest / name).exists()
            assert download(REPO, NAMES, "main", dest) == expected()
        assert_exactly_the_files(dest)


def test_a_429_waits_as_long_as_its_retry_after_says(tmp_path, monkeypatch, capsys):
    """The hub's rate limit answers 429 with Retry-After: retrying sooner (the backoff's first waits) is refused
    again, and 8 quick tries gave up in about two minutes where the server asked for five."""
    name = "sample/000.parquet"
    with serve(monkeypatch, {"api": [(429, {"Retry-After": "1"})], name: [(503, {"Retry-After": "1"})]}):
        t0 = time.monotonic()
        assert download(REPO, [name], "main", tmp_path) == expected([name])
        assert time.monotonic() - t0 >= 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "retrying" in line]
    assert len(lines) == 2 and all(line.endswith("; retrying in 1 s (failed try 1 of 4 in a row)") for line in lines)
    assert_exactly_the_files(tmp_path, [name])


@pytest.mark.parametrize("fault", ["truncate", "extend"])
def test_a_served_file_of_another_size_fails_naming_it_and_the_next_run_starts_over(tmp_path, monkeypatch, fault):
    """A CDN copy shorter than the hub's metadata ends in a 416 for the missing bytes' range, one longer sends
    more than announced: both stop with an error naming the file and delete the partial download (before, a
    short copy left a partial file that every later run asked the same range of, failing with an unnamed 416)."""
    name = "sample/001.parquet"
    with serve(monkeypatch, {name: [fault] * (2 if fault == "truncate" else 1)}) as fake:  # the first run's GETs
        with pytest.raises(DownloadError, match=rf"^{REPO}@5eed01234567:{name}: the server .*200001 bytes"):
            download(REPO, NAMES, "main", tmp_path)
        assert not (tmp_path / name).exists() and not list(tmp_path.rglob("*.part"))
        assert download(REPO, NAMES, "main", tmp_path) == expected()
    assert_exactly_the_files(tmp_path)
    gets = [r for m, p, r in fake.requests if m == "GET" and p == cdn_path(name)]
    assert gets[-1] is None  # the last run started over
