"""The pretraining pipeline on small local data: tokens, manifest, WORKERS invariance, kill and resume,
rerun no-op, config changes, locking, task splitting, bad input, the FineWeb path, inspect."""

import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from pipelines import hub, pretrain, sources, stage, tokenize_stage
from shards import report
from shards.format import open_tokens, read_header
from shards.io import directory_lock, sha256_file
from shards.tokenizer import EOT, get_encoding

REPO = Path(__file__).resolve().parents[1]
WORDS = ["the", "cat", "sat", "on", "a", "mat.", "Naïve", "café", "日本語", "🎉", "it's", "1234", "<|endoftext|>",
         "\n", "\n\n", "  ", "don't", "(x)", "—", "tab\tbed"]
FLAGS = ["--shard-tokens", "3000", "--val-tokens", "1000", "--workers", "1"]


def make_docs(rng: random.Random, n: int) -> list[str | None]:
    docs = []
    for i in range(n):
        if i % 37 == 5:
            docs.append("" if i % 2 else None)  # empty documents: skipped and counted
        else:
            docs.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 60))))
    return docs


def write_parquet(path: Path, docs, row_group_size: int, column: str = "text") -> None:
    pq.write_table(pa.table({column: pa.array(docs, pa.string())}), path, row_group_size=row_group_size)


def jsonl_bytes(docs) -> bytes:
    return b"".join(json.dumps({"text": d, "id": i}).encode() + b"\n" for i, d in enumerate(docs))


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> tuple[Path, list]:
    """A folder with two parquet files (several row groups), a jsonl.zst and a jsonl, and its documents in order."""
    root = tmp_path_factory.mktemp("src")
    rng = random.Random(0)
    a, b, c, d = make_docs(rng, 120), make_docs(rng, 90), make_docs(rng, 60), make_docs(rng, 40)
    b[7] = " ".join(rng.choice(WORDS) for _ in range(3000))  # a long document
    write_parquet(root / "a.parquet", a, 25)
    write_parquet(root / "b.parquet", b, 40)
    frames = [zstandard.ZstdCompressor().compress(jsonl_bytes(part)) for part in (c[:25], c[25:])]
    (root / "c.jsonl.zst").write_bytes(b"".join(frames))  # two frames, as pzstd writes: every one is read
    (root / "d.jsonl").write_bytes(jsonl_bytes(d))
    return root, a + b + c + d


def run(data_dir: Path, source: Path, *extra: str) -> int:
    return pretrain.main(["--source", str(source), "--data-dir", str(data_dir), *FLAGS, *extra])


def out_dir(data_dir: Path, source: Path, *extra: str) -> Path:
    cfg = pretrain.parse_args(["--source", str(source), "--data-dir", str(data_dir), *FLAGS, *extra])
    s = sources.local_source(source)
    return stage.output_dir(data_dir, f"{s.name}-pretrain", pretrain.stage_config(cfg, s))


def contents(directory: Path) -> dict[str, bytes]:
    """Every file of a finished folder (not the lock), by name."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def reference(src, tmp_path_factory) -> tuple[Path, dict]:
    data = tmp_path_factory.mktemp("ref")
    assert run(data, src[0]) == 0
    out = out_dir(data, src[0])
    return out, contents(out)


def test_tokens_equal_tiktoken_and_manifest_is_complete(src, reference):
    root, docs = src
    out, files = reference
    enc = get_encoding()
    expected = [t for d in docs if d for t in [EOT, *enc.encode_ordinary(d)]]
    m = json.loads(files["manifest.json"])
    shards = m["shards"]
    stream = np.concatenate([open_tokens(out / s["file"]) for s in shards])
    assert stream.tolist() == expected
    # documents: EOT before each, starts recorded per shard, empty ones counted
    starts = np.concatenate([np.fromfile(out / s["docs_file"], "<u8").astype(np.int64) + off
                             for s, off in zip(shards, np.cumsum([0] + [s["num_tokens"] for s in shards]))])
    assert starts.tolist() == np.flatnonzero(stream == EOT).tolist()
    assert m["totals"]["documents"] == sum(1 for d in docs if d) == len(starts)
    assert m["totals"]["empty_documents"] == sum(1 for d in docs if not d) > 0
    assert m["totals"]["tokens"] == len(expected)
    # split: val first, ending at a document boundary at or after 1000 tokens; train shards of 3000
    assert [s["split"] for s in shards] == ["val"] + ["train"] * (len(shards) - 1) and len(shards) >= 4
    assert shards[0]["num_tokens"] >= 1000 and shards[0]["num_tokens"] in starts
    assert all(s["num_tokens"] == 3000 for s in shards[1:-1]) and 0 < shards[-1]["num_tokens"] <= 3000
    assert [s["file"] for s in shards[:2]] == ["custom_val_000000.bin", "custom_train_000001.bin"]
    for s in shards:
        header = read_header(out / s["file"])
        assert header[2] == s["num_tokens"] and header[3] == s["num_docs"]
        assert s["bytes"] == (out / s["file"]).stat().st_size and s["sha256"] == sha256_file(out / s["file"])
        assert s["docs_sha256"] == sha256_file(out / s["docs_file"])
    # provenance
    assert m["kind"] == "pretrain" and m["fingerprint"] == out.name == stage.fingerprint(m["config"])
    assert [f["file"] for f in m["source"]["files"]] == ["a.parquet", "b.parquet", "c.jsonl.zst", "d.jsonl"]
    assert all(f["sha256"] == sha256_file(root / f["file"]) for f in m["source"]["files"])
    assert m["tokenizer"]["name"] == "gpt2" and m["tokenizer"]["eot"] == EOT
    assert not (out / "parts").exists()


def test_output_does_not_depend_on_workers(src, reference, tmp_path):
    assert run(tmp_path, src[0], "--workers", "2") == 0
    assert contents(out_dir(tmp_path, src[0])) == reference[1]


def test_small_buffers_and_pieces_give_the_same_bytes(src, reference, tmp_path, monkeypatch):
    monkeypatch.setattr(tokenize_stage, "BUFFER_TOKENS", 64)
    monkeypatch.setattr(tokenize_stage, "PIECE_CHARS", 100)
    monkeypatch.setattr(tokenize_stage, "COPY_TOKENS", 50)
    assert run(tmp_path, src[0]) == 0
    assert contents(out_dir(tmp_path, src[0])) == reference[1]


def test_rerun_is_a_noop(src, reference, tmp_path, capsys):
    assert run(tmp_path, src[0]) == 0
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    assert run(tmp_path, src[0]) == 0
    assert "already finished" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_changed_config_gets_a_new_folder(src, reference, tmp_path):
    assert run(tmp_path, src[0]) == 0
    assert run(tmp_path, src[0], "--shard-tokens", "5000") == 0
    old, new = out_dir(tmp_path, src[0]), out_dir(tmp_path, src[0], "--shard-tokens", "5000")
    assert old != new and contents(old) == reference[1]
    assert json.loads((new / "manifest.json").read_text())["config"]["shard_tokens"] == 5000


def test_concurrent_run_is_refused(src, tmp_path, capsys):
    out = out_dir(tmp_path, src[0])
    with directory_lock(out):
        assert run(tmp_path, src[0]) == 1
    assert "in use by another run" in capsys.readouterr().err
    assert not (out / "manifest.json").exists()


def test_a_run_beside_a_running_task_is_refused_and_leaves_its_temporaries(src, tmp_path, capsys):
    out = out_dir(tmp_path, src[0])
    live = out / "parts" / ".a-0.tok.tmp-99"  # what the running task is writing now
    with directory_lock(out / "parts" / ".task-1-of-2"):
        live.write_bytes(b"x")
        assert run(tmp_path, src[0]) == 1
        assert run(tmp_path, src[0], "--assemble") == 1
    err = capsys.readouterr().err
    assert f"in use by task run .task-1-of-2 (lock {out / 'parts' / '.task-1-of-2' / '.lock'})" in err
    assert live.exists() and not (out / "manifest.json").exists()


def test_a_file_system_without_locks_is_named(src, tmp_path, capsys, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    assert run(tmp_path, src[0]) == 1
    err = capsys.readouterr().err
    assert "cannot lock" in err and ".lock (No locks available); put it on a file system with flock" in err


KILLER = """
import os, signal, sys
from pipelines import pretrain, tokenize_stage
name, after = sys.argv[1], int(sys.argv[2])
original, calls = getattr(tokenize_stage, name), [0]
def killing(*args, **kwargs):
    calls[0] += 1
    if calls[0] == after:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)
setattr(tokenize_stage, name, killing)
sys.exit(pretrain.main(sys.argv[3:]))
"""


@pytest.mark.parametrize("where, after", [("write_json", 3), ("write_shard", 3)])
def test_killed_run_resumes_to_identical_bytes(src, reference, tmp_path, where, after):
    # SIGKILL inside a unit (its tokens written, its completion marker not), or in the middle of assembling
    args = ["--source", str(src[0]), "--data-dir", str(tmp_path), *FLAGS]
    proc = subprocess.run([sys.executable, "-c", KILLER, where, str(after), *args], cwd=REPO,
                          capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    out = out_dir(tmp_path, src[0])
    assert not (out / "manifest.json").exists() and (out / "parts").exists()
    assert run(tmp_path, src[0]) == 0
    assert contents(out) == reference[1]
    assert not list(out.rglob(".*.tmp-*"))


INTERRUPTER = """
import multiprocessing, os, signal, sys, threading
from pipelines import pretrain, stage, tokenize_stage
signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal's Ctrl-C finds it
original = tokenize_stage.parallel_map
def interrupting(*args, **kwargs):
    for k, result in enumerate(original(*args, **kwargs)):
        if k == 2:  # Ctrl-C reaches the whole process group: this process and its workers
            os.killpg(0, signal.SIGINT)
        yield result
class Starting:  # Ctrl-C 50 ms into the start of the pool: its workers are starting (unpickling the tokenizer)
    def Pool(self, *args, **kwargs):
        threading.Timer(0.05, os.killpg, (0, signal.SIGINT)).start()
        return multiprocessing.get_context("spawn").Pool(*args, **kwargs)
if sys.argv.pop(1) == "started":
    tokenize_stage.parallel_map = interrupting
else:
    stage.multiprocessing = type("M", (), {"get_context": staticmethod(lambda method: Starting())})
sys.exit(pretrain.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("when", ["started", "starting"])
def test_ctrl_c_says_what_is_kept_without_tracebacks_then_resumes(src, reference, tmp_path, when):
    args = ["--source", str(src[0]), "--data-dir", str(tmp_path), *FLAGS[:-1], "2"]  # two worker processes
    proc = subprocess.run([sys.executable, "-c", INTERRUPTER, when, *args], cwd=REPO, capture_output=True,
                          timeout=120, start_new_session=True)
    err = proc.stderr.decode()
    assert proc.returncode == 130, err
    assert "interrupted: the finished work is kept; run the same command again to continue" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err  # not the parent's, nor a worker's
    out = out_dir(tmp_path, src[0])
    assert not (out / "manifest.json").exists()
    assert when == "starting" or list((out / "parts").glob("*.json"))
    assert run(tmp_path, src[0]) == 0
    assert contents(out) == reference[1]


WORKER_KILLER = """
import multiprocessing, os, signal, sys, threading, time
from pipelines import stage
def kill_one():
    while len(multiprocessing.active_children()) < 2:
        time.sleep(0.1)
    time.sleep(3)  # both workers are inside their job by now
    os.kill(multiprocessing.active_children()[0].pid, signal.SIGKILL)  # as the OOM killer does
threading.Thread(target=kill_one, daemon=True).start()
try:
    list(stage.parallel_map(time.sleep, [600, 600], 2, 2))
except RuntimeError as e:
    sys.exit(str(e))
"""


def test_a_worker_killed_by_the_system_stops_the_run_with_a_message_not_a_hang():
    proc = subprocess.run([sys.executable, "-c", WORKER_KILLER], cwd=REPO, capture_output=True, timeout=120)
    assert proc.returncode == 1, proc.stderr.decode()
    assert "a worker process died (killed by the system: out of memory?)" in proc.stderr.decode()


def test_full_disk_leaves_nothing_half_written_then_resumes(src, reference, tmp_path, monkeypatch, capsys):
    real_fsync, calls = os.fsync, [0]

    def fsync(fd):
        calls[0] += 1
        if calls[0] == 12:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert run(tmp_path, src[0]) == 1
    assert "disk full while writing" in capsys.readouterr().err
    out = out_dir(tmp_path, src[0])
    assert not (out / "manifest.json").exists() and not list(tmp_path.rglob(".*.tmp-*"))
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert run(tmp_path, src[0]) == 0
    assert contents(out) == reference[1]


def test_tasks_then_assemble_equal_one_run(src, reference, tmp_path, capsys):
    assert run(tmp_path, src[0], "--num-tasks", "3", "--task-index", "0") == 0
    assert run(tmp_path, src[0], "--num-tasks", "3", "--task-index", "2") == 0
    assert run(tmp_path, src[0], "--assemble") == 1
    assert "parts are not finished" in capsys.readouterr().err
    assert run(tmp_path, src[0], "--num-tasks", "3", "--task-index", "1", "--workers", "2") == 0
    assert run(tmp_path, src[0], "--assemble") == 0
    assert contents(out_dir(tmp_path, src[0])) == reference[1]


def test_a_part_copied_in_part_is_named_with_what_to_do(src, reference, tmp_path, capsys):
    for task in range(2):  # parts of two machines, copied into one parts/ folder
        assert run(tmp_path, src[0], "--num-tasks", "2", "--task-index", str(task)) == 0
    out = out_dir(tmp_path, src[0])
    tok = sorted((out / "parts").glob("*.tok"))[3]
    good = tok.read_bytes()
    tok.write_bytes(good[:-6])  # an interrupted copy
    assert run(tmp_path, src[0], "--assemble") == 1
    assert (f"{tok}: {len(good) - 6:,} bytes, its {tok.stem}.json says {len(good):,}; delete that .json and run "
            "again (without --assemble, or the task of that unit) to tokenize the unit anew") in capsys.readouterr().err
    tok.with_suffix(".json").unlink()
    assert run(tmp_path, src[0]) == 0
    assert contents(out) == reference[1]


def _bad_input(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / "bad"
    folder.mkdir()
    docs = make_docs(random.Random(1), 30)
    if name == "column":
        write_parquet(folder / "x.parquet", docs, 10, column="content")
    elif name == "corrupt":
        (folder / "x.parquet").write_bytes(b"PAR1" + bytes(range(256)) * 4 + b"PAR1")
    elif name == "truncated":
        write_parquet(tmp_path / "good.parquet", docs, 10)
        raw = (tmp_path / "good.parquet").read_bytes()
        (folder / "x.parquet").write_bytes(raw[: len(raw) // 2])
    elif name == "utf8":
        lines = jsonl_bytes(docs).splitlines(keepends=True)
        lines[2] = b'{"text": "caf\xe9 au lait"}\n'
        (folder / "x.jsonl").write_bytes(b"".join(lines))
    elif name == "json":
        (folder / "x.jsonl").write_bytes(jsonl_bytes(docs[:3]) + b'{"text": "unterminated\n')
    elif name == "brace":  # the JSON error's position is within the line, not past its end ("line 2 column 1")
        (folder / "x.jsonl").write_bytes(jsonl_bytes(docs[:3]) + b'{"text": "a"\r\n' + jsonl_bytes(docs[3:5]))
    elif name == "type":
        (folder / "x.jsonl").write_bytes(jsonl_bytes(docs[:3]) + b'{"text": 42}\n')
    elif name == "zst_truncated":
        raw = zstandard.ZstdCompressor().compress(jsonl_bytes(docs))
        (folder / "x.jsonl.zst").write_bytes(raw[: len(raw) // 2])
    elif name == "deep":  # nested past the JSON parser's recursion limit
        (folder / "x.jsonl").write_bytes(jsonl_bytes(docs[:3]) + b'{"text": "a", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n")
    elif name == "array":
        (folder / "x.jsonl").write_bytes(jsonl_bytes(docs[:1]) + b'["text", "a"]\n')
    elif name == "zst_empty":
        (folder / "x.jsonl.zst").write_bytes(b"")
    elif name == "bom_mid":  # a byte-order mark is read past at the start of the file only
        (folder / "x.jsonl").write_bytes(jsonl_bytes(docs[:1]) + "\ufeff".encode() + jsonl_bytes(docs[1:3]))
    elif name == "zst_corrupt":
        (folder / "x.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(jsonl_bytes(docs))[:-20] + bytes(20))
    return folder


@pytest.mark.parametrize("name, message", [
    ("column", r"x\.parquet: no column 'text' \(columns: content\)"),
    ("corrupt", r"x\.parquet: not a readable parquet file"),
    ("truncated", r"x\.parquet: not a readable parquet file"),
    ("utf8", r"x\.jsonl, line 3: invalid UTF-8"),
    ("json", r"x\.jsonl, line 4: not valid JSON"),
    ("brace", r"x\.jsonl, line 4: not valid JSON \(Expecting ',' delimiter: line 1 column 13 \(char 12\)\)"),
    ("type", r"x\.jsonl, line 4: 'text' is a int, expected a string"),
    ("deep", r"x\.jsonl, line 4: not valid JSON \(maximum recursion depth"),
    ("array", r"x\.jsonl, line 2: expected an object with 'text', got list"),
    ("bom_mid", r"x\.jsonl, line 2: not valid JSON \(Unexpected UTF-8 BOM"),
    ("zst_empty", r"x\.jsonl\.zst: an empty file, not a zstd stream"),
    ("zst_truncated", r"x\.jsonl\.zst: the zstd stream ends inside a frame"),
    ("zst_corrupt", r"x\.jsonl\.zst: (corrupt zstd stream after line \d+|the zstd stream ends inside a frame)"),
])
def test_bad_input_is_named_and_nothing_is_finished(tmp_path, capsys, name, message):
    folder = _bad_input(tmp_path, name)
    assert pretrain.main(["--source", str(folder), "--data-dir", str(tmp_path / "data"), *FLAGS]) == 1
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert str(folder) in err
    assert not list((tmp_path / "data").rglob("manifest.json")) and not list(tmp_path.rglob(".*.tmp-*"))


def test_a_source_file_rewritten_during_the_run_is_named_and_nothing_is_finished(src, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "in"
    shutil.copytree(src[0], folder)
    real_assemble = tokenize_stage.assemble

    def rewrite_then_assemble(*args, **kwargs):
        with open(folder / "d.jsonl", "ab") as f:  # after it was tokenized, before it is hashed
            f.write(jsonl_bytes(["one more document"]))
        return real_assemble(*args, **kwargs)

    monkeypatch.setattr(tokenize_stage, "assemble", rewrite_then_assemble)
    assert run(tmp_path / "data", folder) == 1
    assert f"{folder / 'd.jsonl'}: changed during this run" in capsys.readouterr().err
    assert not list((tmp_path / "data").rglob("manifest.json"))


@pytest.mark.parametrize("kind", ["string_view", "dictionary"])
def test_a_text_column_of_string_views_or_a_dictionary_reads_as_strings(tmp_path, kind):
    # string_view: what polars 1.38 and DataFusion write; dictionary: a pandas category column
    docs = make_docs(random.Random(3), 80)
    column = pa.array(docs, pa.string())
    column = column.cast(pa.string_view()) if kind == "string_view" else column.dictionary_encode()
    for name, values in (("plain", pa.array(docs, pa.string())), (kind, column)):
        (tmp_path / name).mkdir()
        pq.write_table(pa.table({"text": values}), tmp_path / name / "x.parquet", row_group_size=30)
        assert run(tmp_path / "data", tmp_path / name) == 0
    plain, other = (contents(out_dir(tmp_path / "data", tmp_path / name)) for name in ("plain", kind))
    assert {k: v for k, v in other.items() if k.endswith(".bin")} == {k: v for k, v in plain.items()
                                                                        if k.endswith(".bin")}


@pytest.mark.parametrize("flag", ["--shard-tokens", "--val-tokens"])
def test_token_counts_a_shard_header_cannot_hold_are_refused_before_tokenizing(src, tmp_path, capsys, flag):
    pretrain._check(pretrain.parse_args([flag, str(2**30)]))  # the largest allowed
    assert run(tmp_path / "big", src[0], flag, str(2**31)) == 1
    assert f"{flag} must be in [1, 1,073,741,824] (a shard header counts tokens in an int32), got 2,147,483,648" \
        in capsys.readouterr().err
    assert not (tmp_path / "big").exists()


def test_a_source_without_documents_or_with_one_is_named(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "x.jsonl").write_bytes(b'{"text": ""}\n{"text": null}\n')
    write_parquet(folder / "y.parquet", [""], 10)
    flags = ["--source", str(folder), "--data-dir", str(tmp_path / "data"), *FLAGS]
    assert pretrain.main(flags) == 1
    assert "no documents: every text in the source is empty (2 file(s): x.jsonl, y.parquet)" in capsys.readouterr().err
    (folder / "x.jsonl").write_bytes(jsonl_bytes(["a single document"]))
    assert pretrain.main(flags) == 1
    assert "only 1 document (4 tokens): the validation split and the train split" in capsys.readouterr().err


def test_parquet_files_without_a_row_group_are_named(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    pq.ParquetWriter(folder / "x.parquet", pa.schema([("text", pa.string())])).close()  # no row group at all
    assert run(tmp_path / "data", folder) == 1
    assert f"no documents: the source holds no rows (1 file(s): {folder / 'x.parquet'})" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()  # refused before a stage folder is made


def test_files_of_other_types_in_a_source_folder_are_named_hidden_ones_skipped(src, tmp_path, capsys):
    folder = tmp_path / "in"
    shutil.copytree(src[0], folder)
    for name in ("NOTES.JSONL", "extra.json", ".cache/y.jsonl"):
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_text('{"text": "not read"}\n')
    assert [p.name for p in sources.local_source(folder).files] == [p.name for p in sources.local_source(src[0]).files]
    assert "skipping 2 file(s) that are not .parquet, .jsonl, .jsonl.zst: NOTES.JSONL, extra.json" in capsys.readouterr().err


def test_sample_source_checks_its_checksum(tmp_path):
    fake = tmp_path / "dataset.json"
    fake.write_text(json.dumps({"c": {"messages": [[{"text": "hi"}]]}}))
    with pytest.raises(sources.SourceError, match=f"{fake}: sha256 .* != expected {sources.SAMPLE_SHA256}"):
        sources.build_sample(tmp_path / "data", json_path=fake)
    assert not list((tmp_path / "data").rglob("*.parquet")) and not list((tmp_path / "data").rglob("manifest.json"))


def test_sample_source_one_conversation_per_document(tmp_path):
    s = sources.build_sample(tmp_path)
    table = pq.read_table(s.files[0])
    assert table.num_rows == 7168 and pq.ParquetFile(s.files[0]).num_row_groups == 14
    assert table.column("text")[0].as_py().startswith("Hello\nHow are you doing today?\nwhats up MD\n")
    assert s.description["files"][0]["sha256"] == sha256_file(s.files[0])
    again = sources.build_sample(tmp_path)
    assert again.identity == s.identity


def local_hub(monkeypatch) -> list:
    """hub.download replaced by parquet files of 12 documents each written in place; returns its calls."""
    calls = []

    def fake_download(repo_id, filenames, revision, dest_dir, repo_type="dataset"):
        calls.append((repo_id, revision))
        records = []
        for k, name in enumerate(filenames):
            path = Path(dest_dir) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            write_parquet(path, make_docs(random.Random(k), 12), 6)
            records.append({"file": name, "bytes": path.stat().st_size, "sha256": sha256_file(path)})
        return records

    monkeypatch.setattr(hub, "download", fake_download)
    return calls


def test_fineweb_path_with_the_hub_replaced_by_local_files(tmp_path, monkeypatch, capsys):
    calls = local_hub(monkeypatch)
    args = ["--dataset", "fineweb10B", "--data-dir", str(tmp_path), "--shard-tokens", "2000", "--val-tokens", "500",
            "--workers", "1"]
    assert pretrain.main(args) == 0
    out = stage.find_shards_dir(tmp_path, "pretrain", "fineweb10B")
    m = json.loads((out / "manifest.json").read_text())
    pinned = hub.SOURCES["fineweb10B"]
    assert m["source"]["dataset"] == "HuggingFaceFW/fineweb" and m["source"]["revision"] == pinned.revision
    assert [f["file"] for f in m["source"]["files"]] == list(pinned.files) and len(pinned.files) == 15
    assert m["shards"][0]["file"] == "fineweb10B_val_000000.bin"
    assert m["totals"]["units"] == 30
    assert pretrain.main(args) == 0 and len(calls) == 1  # the finished download stage is not run again
    assert report.main([str(tmp_path), "--verify"]) == 0


def test_a_downloaded_file_changed_after_its_stage_finished_is_named_not_tokenized(tmp_path, monkeypatch, capsys):
    local_hub(monkeypatch)
    args = ["--dataset", "fineweb10B", "--data-dir", str(tmp_path), "--shard-tokens", "2000", "--val-tokens", "500",
            "--workers", "1"]
    assert pretrain.main([*args, "--download-only"]) == 0
    changed = next(tmp_path.glob("fineweb10B-source/*/sample/10BT/003_00000.parquet"))
    size = changed.stat().st_size
    write_parquet(changed, make_docs(random.Random(3), 5), 6)  # a cut copy, say: it was tokenized, its old sha256
    assert pretrain.main(args) == 1                            # recorded in the manifest as the source's
    assert (f"{changed}: {changed.stat().st_size:,} bytes, but its source stage verified {size:,}"
            in capsys.readouterr().err)
    assert not list(tmp_path.glob("fineweb10B-pretrain/*/manifest.json"))


def test_inspect_verifies_decodes_and_names_corruption(src, reference, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(reference[0], out)
    assert report.main([str(tmp_path), "--verify", "--decode", "2"]) == 0
    printed = capsys.readouterr().out
    assert "custom_val_000000.bin" in printed and "verified" in printed and printed.count("--- custom_val") == 2
    shard = out / "custom_train_000002.bin"
    good = shard.read_bytes()
    raw = bytearray(good)
    raw[1024] ^= 1  # first token byte
    shard.write_bytes(bytes(raw))
    assert report.main([str(out), "--verify"]) == 1
    assert f"{shard}: sha256" in capsys.readouterr().err
    shard.write_bytes(good[:-10])  # only truncated: the size against the header names it
    assert report.main([str(out), "--verify"]) == 1
    tokens = (len(good) - 1024) // 2
    assert f"{shard}: {len(good) - 10} bytes but the header says {tokens} tokens ({len(good)} bytes)" in (
        capsys.readouterr().err)
    (out / "custom_val_000000.docs").unlink()
    assert report.main([str(out), "--verify", "--decode", "2"]) == 1  # a message, no traceback from decoding
    assert "custom_val_000000.docs: missing" in capsys.readouterr().err
    assert report.main([str(out), "--decode", "2"]) == 1
    assert "custom_val_000000.docs" in capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["shards"][1]["split"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert report.main([str(out)]) == 1
    assert f"{out / 'manifest.json'}: shards[1] (custom_train_000001.bin): no split" in capsys.readouterr().err


def test_inspect_names_a_manifest_whose_shards_disagree_with_its_totals(src, reference, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(reference[0], out)
    manifest = json.loads((out / "manifest.json").read_text())
    gone = manifest["shards"].pop(2)  # a shard removed by hand, with its entry: every listed file still matches
    (out / gone["file"]).unlink()
    (out / gone["docs_file"]).unlink()
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert report.main([str(out), "--verify"]) == 1
    tokens = manifest["totals"]["tokens"]
    assert (f"{out / 'manifest.json'}: its totals say {tokens:,} tokens, its shards list "
            f"{tokens - gone['num_tokens']:,}") in capsys.readouterr().err
    manifest["totals"]["tokens"] -= gone["num_tokens"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert report.main([str(out), "--verify"]) == 1
    assert (f"its totals say {len(manifest['shards']) + 1:,} shards, its shards list {len(manifest['shards']):,}"
            in capsys.readouterr().err)


def test_bench_shards_runs_and_counts_the_same_tokens_as_tiktoken(capsys):
    from bench import shards as bench_shards

    assert bench_shards.main(["--repeat", "1", "--rounds", "1", "--workers", "1"]) == 0  # exits if counts differ
    out = capsys.readouterr().out
    assert "input: 7,168 documents" in out and "3,196,530 tokens" in out and "peak RSS per worker" in out


def test_jsonl_units_read_every_line_once_and_name_lines_exactly(tmp_path):
    lines = [b'{"text": "a"}\n', b"\n", b'{"text": "' + b"long " * 30 + b'"}\n', b'{"text": "b"}\r\n', b"  \n",
             b'{"text": "c"}\n', b'{"text": "' + "é".encode() * 9 + b'"}\n', b'{"text": "no newline at the end"}']
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"".join(lines))
    whole = [(str(where), value) for where, value in sources.read_jsonl(path)]
    assert [w for w, _ in whole] == ["line 1", "line 3", "line 4", "line 6", "line 7", "line 8"]
    for unit_bytes in range(1, len(path.read_bytes()) + 2):
        spans = [(k * unit_bytes, (k + 1) * unit_bytes) for k in range(-(-path.stat().st_size // unit_bytes))]
        assert [(str(w), v) for span in spans for w, v in sources.read_jsonl(path, span)] == whole, unit_bytes


def test_a_byte_order_mark_at_the_start_of_a_jsonl_file_is_read_past(src, reference, tmp_path):
    """Windows tools write a UTF-8 BOM first (pandas and datasets read past it): the same shards as without it,
    in a plain .jsonl (every unit, however small) and at the start of a .jsonl.zst stream."""
    bom = "\ufeff".encode()
    root = tmp_path / "bom"
    shutil.copytree(src[0], root)
    (root / "d.jsonl").write_bytes(bom + (src[0] / "d.jsonl").read_bytes())
    first, second = (zstandard.ZstdCompressor().compress(part) for part in (bom, jsonl_bytes(src[1][-100:-40])))
    (root / "c.jsonl.zst").write_bytes(first + second)  # the mark alone in a frame of its own
    assert run(tmp_path / "data", root) == 0
    files, ref = contents(out_dir(tmp_path / "data", root)), dict(reference[1])
    m, ref_m = json.loads(files.pop("manifest.json")), json.loads(ref.pop("manifest.json"))
    assert files == ref and m["shards"] == ref_m["shards"] and m["totals"] == ref_m["totals"]
    path = root / "d.jsonl"
    whole = [(str(where), value) for where, value in sources.read_jsonl(src[0] / "d.jsonl")]
    assert [(str(where), value) for where, value in sources.read_jsonl(path)] == whole
    for unit_bytes in (1, 2, 3, 4, 50):
        spans = [(k * unit_bytes, (k + 1) * unit_bytes) for k in range(-(-path.stat().st_size // unit_bytes))]
        assert [(str(w), v) for span in spans for w, v in sources.read_jsonl(path, span)] == whole, unit_bytes


def test_a_jsonl_file_cut_into_units_gives_the_same_shards(src, reference, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sources, "JSONL_UNIT_BYTES", 300)  # d.jsonl (40 documents) becomes many units
    assert sources.num_units(src[0] / "d.jsonl") > 10
    assert run(tmp_path, src[0], "--workers", "2") == 0  # the workers get each unit's byte range with it
    out = out_dir(tmp_path, src[0])
    assert out.name != reference[0].name  # the unit size is part of the config: a killed run's parts stay apart
    files, ref = contents(out), reference[1]
    m, ref_m = json.loads(files.pop("manifest.json")), json.loads(ref["manifest.json"])
    assert files == {name: data for name, data in ref.items() if name != "manifest.json"}
    assert m["shards"] == ref_m["shards"]
    assert m["totals"] == {**ref_m["totals"], "units": m["totals"]["units"]} and m["totals"]["units"] > 10  # more units
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jsonl").write_bytes(jsonl_bytes(make_docs(random.Random(2), 40)[:30]) + b'{"text": broken}\n')
    assert run(tmp_path / "data-bad", bad) == 1  # a unit far into the file still names the line
    assert f"{bad / 'x.jsonl'}, line 31: not valid JSON" in capsys.readouterr().err
