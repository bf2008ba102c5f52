"""The shard file is llm.c's `.bin` byte for byte; bad files are named; inspect verifies SFT shards too; atomic folders."""

import hashlib
import json
import os
import re
import struct

import numpy as np
import pytest

from shards import report
from shards.format import HEADER_BYTES, ShardError, open_tokens, read_header, write_shard
from shards.io import atomic_directory, remove_temporaries
from shards.manifest import write_manifest
from shards.sft import write_sft_shard


def test_header_and_tokens_are_llmc_layout(tmp_path):
    path = tmp_path / "x.bin"
    tokens = np.array([50256, 0, 1, 65535, 31373, 995], dtype=np.uint16)
    info = write_shard(path, [tokens[:2], tokens[2:]], num_docs=2)
    raw = path.read_bytes()
    expected = struct.pack("<256i", 20240520, 1, 6, 2, *([0] * 252)) + struct.pack("<6H", *tokens.tolist())
    assert raw == expected
    assert info == {"num_tokens": 6, "bytes": HEADER_BYTES + 12, "sha256": hashlib.sha256(expected).hexdigest()}
    # read back the way llm.c's and modded-nanogpt's loaders do
    header = np.frombuffer(raw[:HEADER_BYTES], dtype=np.int32)
    assert header[0] == 20240520 and header[1] == 1 and header[2] == 6
    assert np.array_equal(np.frombuffer(raw[HEADER_BYTES:], dtype=np.uint16), tokens)
    assert np.array_equal(open_tokens(path), tokens)
    assert read_header(path)[3] == 2


def test_more_tokens_than_the_int32_header_holds_is_named(tmp_path, monkeypatch):
    from shards import format

    monkeypatch.setattr(format, "MAX_TOKENS", 3)
    with pytest.raises(ShardError, match=r"x\.bin: 4 tokens, more than the header's int32 holds \(3\)"):
        write_shard(tmp_path / "x.bin", [np.zeros(4, np.uint16)])
    assert list(tmp_path.iterdir()) == []


def test_token_ids_that_uint16_would_wrap_are_refused(tmp_path):
    """70000, -1 and 1.5 were written as 4464, 65535 and 1: a shard of other tokens than given, silently."""
    for bad in ([70000, 1], [-1, 1], [1.5, 1]):
        with pytest.raises(ShardError, match=re.escape(f"{tmp_path / 'a.bin'}: tokens must be integers in [0, 65535] "
                                                       "(uint16)")):
            write_shard(tmp_path / "a.bin", [np.array(bad)], 1)
    assert not (tmp_path / "a.bin").exists()
    write_shard(tmp_path / "a.bin", [np.array([50256, 65535], dtype=np.int64), [7]], 1)
    assert open_tokens(tmp_path / "a.bin").tolist() == [50256, 65535, 7]


def test_empty_shard(tmp_path):
    write_shard(tmp_path / "e.bin", [], num_docs=0)
    assert len(open_tokens(tmp_path / "e.bin")) == 0


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[:-2], "bytes but the header says 6 tokens"),
    (lambda raw: raw[:100], "shorter than the 1024-byte header"),
    (lambda raw: b"\0\0\0\0" + raw[4:], "bad magic 0"),
    (lambda raw: raw[:4] + struct.pack("<i", 7) + raw[8:], "unsupported version 7"),
    (lambda raw: raw + b"\0\0", "bytes but the header says 6 tokens"),
])
def test_bad_files_are_named(tmp_path, damage, message):
    path = tmp_path / "bad.bin"
    write_shard(path, [np.arange(6, dtype=np.uint16)])
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ShardError, match=message) as e:
        open_tokens(path)
    assert str(path) in str(e.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ShardError, match=r"nope\.bin: shard file is missing"):
        read_header(tmp_path / "nope.bin")


def _sft_folder(tmp_path):
    tokens = np.array([10, 11, 12, 0, 50256, 20, 21, 0, 50256], dtype=np.uint16)
    mask = np.array([0, 0, 1, 1, 1, 0, 1, 1, 1], dtype=np.uint8)
    offsets = np.array([0, 5, 9], dtype=np.uint64)
    info = write_sft_shard(tmp_path / "sft_val_000000.bin", tokens, mask, offsets)
    entry = {"file": "sft_val_000000.bin", "split": "val", "num_examples": 2, "mask_file": "sft_val_000000.mask",
             "idx_file": "sft_val_000000.idx", "supervised_tokens": 6, **info}
    manifest = {"kind": "sft", "name": "test-sft", "shards": [entry]}
    write_manifest(tmp_path, manifest)
    return manifest


def test_inspect_verifies_and_decodes_sft(tmp_path, capsys):
    _sft_folder(tmp_path)
    assert report.main([str(tmp_path), "--verify", "--decode", "2"]) == 0
    out = capsys.readouterr().out
    assert "examples" in out and "verified" in out
    assert out.count("PROMPT: ") == 2 and out.count("ANSWER: ") == 2
    assert "ANSWER: -!<|endoftext|>" in out  # tokens 12, 0 ("!"), EOT are the supervised part of example 0
    with pytest.raises(SystemExit):  # was: accepted, and nothing decoded
        report.main([str(tmp_path), "--decode", "-1"])
    assert "--decode must be 0 or more, got -1" in capsys.readouterr().err


def test_inspect_decode_names_a_shard_with_a_token_outside_the_vocabulary(tmp_path, capsys):
    _sft_folder(tmp_path)
    path = tmp_path / "sft_val_000000.bin"
    raw = bytearray(path.read_bytes())
    raw[HEADER_BYTES + 2 * 6:HEADER_BYTES + 2 * 7] = b"\xff\xff"  # example 1's first answer token: 65535
    path.write_bytes(bytes(raw))
    assert report.main([str(tmp_path), "--decode", "2"]) == 1  # without --verify, decoding meets it
    assert capsys.readouterr().err == (f"BAD {path}: token id 65535 is outside the vocabulary of 50257\n"
                                       "error: 1 bad file(s)\n")  # was: "manifest.json: an entry has no 'Invalid token"


def test_inspect_names_a_total_edited_into_a_string(tmp_path, capsys):
    manifest = _sft_folder(tmp_path)
    write_manifest(tmp_path, {**manifest, "totals": {"tokens": "9", "shards": 1}})  # edited by hand
    assert report.main([str(tmp_path), "--verify"]) == 1
    assert (f"BAD {tmp_path / 'manifest.json'}: its totals say '9' tokens, its shards list 9 (edited by hand?"
            in capsys.readouterr().err)  # was: "Cannot specify ',' with 's'."


def test_inspect_of_a_file_or_a_missing_folder_says_so(tmp_path, capsys):
    _sft_folder(tmp_path)
    for path in (tmp_path / "manifest.json", tmp_path / "sft_val_000000.bin"):  # was "no manifest.json under <it>"
        assert report.main([str(path), "--verify"]) == 1
        assert capsys.readouterr().err == (f"error: {path}: a file, not a folder (pass the shards folder that holds "
                                           "manifest.json, or a folder above it: DATA_DIR)\n")
    assert report.main([str(tmp_path / "nowhere")]) == 1
    assert capsys.readouterr().err == f"error: {tmp_path / 'nowhere'}: no such folder\n"


@pytest.mark.parametrize("which, values, message", [
    ("mask", np.array([0, 0, 2, 1, 1, 0, 1, 1, 1], np.uint8), "mask values other than 0 and 1"),
    ("idx", np.array([0, 5, 5, 9], np.uint64), "offsets do not strictly increase"),
    ("mask", np.array([0, 0, 1, 1, 1, 0, 1, 1], np.uint8), "8 mask bytes for 9 tokens"),
])
def test_inspect_names_a_bad_sft_sidecar(tmp_path, capsys, which, values, message):
    manifest = _sft_folder(tmp_path)
    path = tmp_path / f"sft_val_000000.{which}"
    path.write_bytes(values.tobytes())
    entry = manifest["shards"][0]  # a manifest that agrees with the bad file: only the content checks catch it
    entry[f"{which}_bytes"], entry[f"{which}_sha256"] = values.nbytes, hashlib.sha256(values.tobytes()).hexdigest()
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert report.main([str(tmp_path), "--verify"]) == 1
    err = capsys.readouterr().err
    assert message in err and path.name in err


def test_inspect_names_a_changed_sft_mask(tmp_path, capsys):
    _sft_folder(tmp_path)
    path = tmp_path / "sft_val_000000.mask"
    path.write_bytes(np.array([0, 0, 0, 1, 1, 0, 1, 1, 1], np.uint8).tobytes())
    assert report.main([str(tmp_path), "--verify"]) == 1
    assert f"{path}: sha256" in capsys.readouterr().err


def test_inspect_names_token_ids_outside_the_vocabulary(tmp_path, capsys):
    manifest = _sft_folder(tmp_path)
    path = tmp_path / "sft_val_000000.bin"
    raw = path.read_bytes()[:HEADER_BYTES] + np.array([10, 11, 12, 0, 50257, 20, 21, 0, 50256], np.uint16).tobytes()
    path.write_bytes(raw)
    manifest["shards"][0]["sha256"] = hashlib.sha256(raw).hexdigest()  # a manifest that agrees with the bad ids
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert report.main([str(tmp_path), "--verify"]) == 1
    assert f"{path}: token id 50257 is outside the vocabulary of 50257" in capsys.readouterr().err


def test_inspect_lists_unfinished_stage_folders_and_how_to_remove_them(tmp_path, capsys):
    from shards.io import directory_lock

    _sft_folder(tmp_path / "test-sft" / "done")
    (tmp_path / "test-sft" / "done" / ".lock").touch()  # a finished stage keeps its lock file
    killed = tmp_path / "sample-pretrain" / "killed"
    (killed / "parts").mkdir(parents=True)
    (killed / "parts" / "unit.bin").write_bytes(b"x" * 1000)
    (killed / ".lock").touch()
    failed = tmp_path / "test-sft" / "failed"
    failed.mkdir(parents=True)
    (failed / ".lock").touch()
    (tmp_path / "sample-source" / "done" / ".download").mkdir(parents=True)  # a download's own bookkeeping
    (tmp_path / "sample-source" / "done" / ".download" / ".lock").touch()
    (tmp_path / "sample-source" / "done" / "manifest.json").write_text(json.dumps({"kind": "source"}))
    running = tmp_path / "sample-sft" / "running"
    task = tmp_path / "sample-pretrain" / "task"  # a `--num-tasks` task locks only its folder in parts/
    with directory_lock(running), directory_lock(task / "parts" / ".task-0-of-2"):
        assert report.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    listed = out[out.index("unfinished stage folders"):].splitlines()
    assert listed[1:] == [f"  {killed}  1,000 bytes", f"  {task}  0 bytes  (a stage is running in it now)",
                          f"  {running}  0 bytes  (a stage is running in it now)", f"  {failed}  0 bytes",
                          f"rerunning the command that started one continues it; to remove them instead: "
                          f"rm -rf {killed} {failed}"]


def test_inspect_skips_files_a_running_stage_renames_while_they_are_counted(tmp_path, monkeypatch):
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "unit.tok").write_bytes(b"x" * 10)
    walk = os.walk

    def walk_then_rename(top):
        for root, dirs, names in walk(top):
            yield root, dirs, names + [".unit.json.tmp-7"]  # listed, then renamed before its stat

    monkeypatch.setattr(os, "walk", walk_then_rename)
    assert report.folder_bytes(tmp_path) == 10


def test_atomic_directory_appears_whole_or_not_at_all_and_temporaries_go(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(tmp_path / "d") as tmp:
            (tmp / "f").write_text("x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(tmp_path / "d") as tmp:
        (tmp / "f").write_text("x")
    assert [p.name for p in tmp_path.iterdir()] == ["d"] and (tmp_path / "d" / "f").read_text() == "x"
    (tmp_path / ".g.bin.tmp-2").write_text("")  # what a killed atomic_write leaves
    (tmp_path / ".h.bin.tmp-3").write_text("")
    remove_temporaries(tmp_path, ["h"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".g.bin.tmp-2", "d"]
    remove_temporaries(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


@pytest.mark.parametrize("edit, message", [
    (lambda e: e.update(num_tokens="1000"), r"shards\[0\] \(a\.bin\): num_tokens is '1000', expected an integer >= 0"),
    (lambda e: e.update(bytes=True), r"shards\[0\] \(a\.bin\): bytes is True, expected an integer >= 0"),
    (lambda e: e.update(sha256=5), r"shards\[0\] \(a\.bin\): sha256 is 5, expected 64 hex digits"),
    (lambda e: e.update(mask_sha256="x" * 64), r"shards\[0\] \(a\.bin\): mask_sha256 is 'x+', expected 64 hex digits"),
    (lambda e: e.update(file="../a.bin"),
     r"shards\[0\] \(\.\./a\.bin\): file is '\.\./a\.bin', expected a file name in"),
    (lambda e: e.update(idx_file=3), r"shards\[0\] \(a\.bin\): idx_file is 3, expected a file name in the folder"),
    (lambda e: e.pop("split"), r"shards\[0\] \(a\.bin\): no split \(edited by hand"),
    # a split the readers do not know: a trainer read only the "train" and "val" entries, the others left out unsaid
    (lambda e: e.update(split="training"), r"shards\[0\] \(a\.bin\): split is 'training', expected 'train' or 'val'"),
    (lambda e: e.pop("file"), r"shards\[0\]: no file \(edited by hand")])
def test_a_manifest_entry_of_the_wrong_shape_is_named(tmp_path, edit, message):
    """A manifest edited by hand (or by another tool) fails where it is read, naming the entry and the field, not
    later with a KeyError, a TypeError or "1000 tokens, the manifest says 1000" (a count written as a string)."""
    from shards.manifest import ManifestError, load_manifest

    entry = {"file": "a.bin", "split": "train", "num_tokens": 1000, "bytes": 3024, "sha256": "0" * 64,
             "num_examples": 3, "mask_sha256": "1" * 64, "idx_file": "a.idx"}
    write_manifest(tmp_path, {"kind": "sft", "shards": [entry]})
    assert load_manifest(tmp_path)["shards"] == [entry]
    edit(entry)
    write_manifest(tmp_path, {"kind": "sft", "shards": [entry]})
    with pytest.raises(ManifestError, match=re.escape(str(tmp_path / "manifest.json")) + ": " + message) as e:
        load_manifest(tmp_path)
    assert str(e.value).endswith(f"(edited by hand? remove {tmp_path} and make the shards again)")  # a rerun skips
    write_manifest(tmp_path, {"kind": "sft", "shards": {"a.bin": entry}})
    with pytest.raises(ManifestError, match="shards is a dict, not a list"):
        load_manifest(tmp_path)


@pytest.mark.parametrize("text", ["[]", "null", '"x"'])
def test_a_manifest_that_is_not_an_object_is_named(tmp_path, capsys, text):
    from pipelines import stage
    from shards.manifest import ManifestError, load_manifest

    _sft_folder(tmp_path)
    (tmp_path / "manifest.json").write_text(text)  # edited by hand
    with pytest.raises(ManifestError, match=r"manifest\.json: not a JSON object"):
        load_manifest(tmp_path)
    with pytest.raises(ManifestError, match="not a JSON object"):  # a stage's rerun, as the trainers', gets the message
        stage.finished(tmp_path, {})
    assert report.main([str(tmp_path), "--verify"]) == 1  # no traceback
    assert f"BAD {tmp_path / 'manifest.json'}: not a JSON object" in capsys.readouterr().err


@pytest.mark.parametrize("key, value", [("tokenizer", "gpt2"), ("totals", [1]), ("config", "x"), ("source", 3)])
def test_a_manifest_section_that_is_not_an_object_is_named(tmp_path, capsys, key, value):
    """A section that inspect, a stage's rerun or a trainer looks into, edited into another type: its name, not an
    AttributeError's traceback ('str' object has no attribute 'get')."""
    from pipelines import stage
    from shards.manifest import ManifestError

    manifest = _sft_folder(tmp_path)
    write_manifest(tmp_path, {**manifest, key: value})  # edited by hand
    message = f"{tmp_path / 'manifest.json'}: {key} is a {type(value).__name__}, not an object (edited by hand?"
    with pytest.raises(ManifestError, match=re.escape(message)):
        stage.finished(tmp_path, {})
    assert report.main([str(tmp_path), "--verify"]) == 1
    assert f"BAD {message}" in capsys.readouterr().err


def test_progress_of_a_long_step_outside_a_terminal_is_plain_lines(capsys, monkeypatch):
    """A long step (a download, tokenizing, verifying shards) in a log: lines at the first update, every
    PLAIN_EVERY_S seconds and at the total, with the time left at the rate since the first update, sizes in bytes
    for byte counts; a bar on a terminal; nothing when disabled."""
    from shards import progress

    clock = iter([0.0, 1.0, 2.0, 70.0, 100.0, 101.0, 102.0, 103.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    with progress.progress_bar(total=4 << 30, initial=1 << 30, desc="get a.parquet", unit="B", bytes_=True) as bar:
        assert isinstance(bar, progress.PlainProgress)  # pytest's stderr is not a terminal
        bar.update(1 << 30)  # at 1 s
        bar.update(-(1 << 30))  # at 2 s, a server that ignored the range: the count goes back, no line yet
        bar.update(2 << 30)  # at 70 s
    assert list(progress.progress_bar(range(3), desc="assemble", unit="shard")) == [0, 1, 2]  # from 100 s
    assert capsys.readouterr().err.splitlines() == [
        "get a.parquet: 2.00GB/4.00GB (50.0%), 00:01 elapsed",
        "get a.parquet: 3.00GB/4.00GB (75.0%), 01:10 elapsed, 01:09 left",
        "assemble: 1/3 shards (33.3%), 00:01 elapsed",
        "assemble: 3/3 shards (100.0%), 00:03 elapsed, 00:00 left"]
    clock = iter([0.0, 1.0, 2.0, 3.0, 4.0])
    past = progress.progress_bar(total=2, desc="past", unit="x")  # a count past its total: one line at the total
    for _ in range(4):
        past.update()
    assert capsys.readouterr().err.splitlines() == ["past: 1/2 xs (50.0%), 00:01 elapsed",
                                                    "past: 2/2 xs (100.0%), 00:02 elapsed, 00:00 left"]
    with progress.progress_bar(total=3, desc="x", unit="y", terminal=True) as bar:
        assert type(bar).__name__ == "tqdm"
    capsys.readouterr()
    quiet = progress.bytes_bar(10, "verify", enabled=False)
    quiet.update(10)
    quiet.close()
    assert capsys.readouterr().err == ""
