"""The SFT data stage: masks, templates, split, idempotence, resume, bad input, sources (offline)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from fake_hub import FakeHub
from stage_runs import assert_same_shards, files_of, sigkill_after_a_chunk, with_and_without_bom
import gpt.template as alpaca
from pipelines import hub, sft, sft_sources
from pipelines.stage import output_dir
from shards.format import read_header
from shards.report import main as inspect_main
from shards.io import directory_lock, sha256_file
from shards.manifest import load_manifest
from shards.sft import open_sft_shard
from shards.tokenizer import EOT, get_encoding

SHARD_KEYS = {"file", "split", "num_tokens", "num_examples", "bytes", "sha256", "mask_file", "mask_bytes",
              "mask_sha256", "idx_file", "idx_bytes", "idx_sha256", "supervised_tokens"}

TRICKY = [
    {"instruction": "Shout.", "input": "", "output": "!Hi! Bye!!! !"},             # "!" is token 0
    {"instruction": "Indent.", "input": "", "output": " starts with a space"},
    {"instruction": "Break.", "input": "", "output": "\nstarts with a newline\n"},
    {"instruction": "Translate to English.", "input": "bonjour", "output": "hello"},
    {"instruction": "Écris en japonais.", "input": "日本語 🙂", "output": "Ça va? はい、元気です。🙂"},
    {"instruction": "Say nothing.", "input": "", "output": ""},                   # skipped: empty
    {"instruction": "Say spaces.", "input": "", "output": "  \n"},               # skipped: only whitespace
    {"instruction": "Ramble.", "input": "", "output": "word " * 300},             # over a 128-token block
]


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def run(tmp_path: Path, source: Path, data: str = "data", **kw) -> Path:
    cfg = sft.SFTConfig(source=str(source), data_dir=str(tmp_path / data), workers=kw.pop("workers", 1), **kw)
    return sft.run(cfg)


def many_examples(n: int, words: int = 5) -> list[dict]:
    return [{"instruction": f"Question {i}?", "input": "ctx" if i % 3 == 0 else "",
             "output": f"Answer {i} " + "lorem ipsum " * words} for i in range(n)]


def test_templates_are_stanford_alpaca():
    assert alpaca.render_prompt("Do X.") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nDo X.\n\n### Response:\n")
    assert alpaca.render_prompt("Do X.", "on Y") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nDo X.\n\n"
        "### Input:\non Y\n\n### Response:\n")
    # pinned: a change of either template renames every SFT and preference data folder (it is in their config)
    assert alpaca.TEMPLATE_SHA256 == "adbe7f23c727b5970ddeb766ab43a53ed1d9ee456ef610c3477549eb8f30b714"


def test_masks_on_tricky_examples(tmp_path):
    enc = get_encoding()
    out = run(tmp_path, write_jsonl(tmp_path / "tricky.jsonl", TRICKY), block_size=128, val_fraction=0.0)
    manifest = load_manifest(out)
    kept = TRICKY[:5]
    shard = open_sft_shard(out / "train.bin")
    assert len(shard) == len(kept) == read_header(out / "train.bin")[3]
    assert len(open_sft_shard(out / "val.bin")) == 0
    for i, ex in enumerate(kept):
        tokens, mask = (np.asarray(a, dtype=np.int64) for a in shard.example(i))
        n_prompt = int((mask == 0).sum())
        assert mask.tolist() == [0] * n_prompt + [1] * (len(mask) - n_prompt), "mask is 0s then 1s"
        assert enc.decode(tokens[:n_prompt].tolist()) == alpaca.render_prompt(ex["instruction"], ex["input"])
        assert tokens[n_prompt:].tolist() == enc.encode_ordinary(ex["output"]) + [EOT]
        assert enc.decode(tokens[n_prompt:-1].tolist()) == ex["output"]
    first_tokens, first_mask = shard.example(0)
    assert 0 in first_tokens[first_mask == 1].tolist(), "token 0 ('!') is a supervised target"
    totals = manifest["totals"]
    supervised = sum(len(enc.encode_ordinary(ex["output"])) + 1 for ex in kept)
    assert totals["supervised_tokens"] == supervised == int(shard.mask.sum())
    assert totals["prompt_tokens"] == len(shard.tokens) - supervised
    assert (totals["rows"], totals["examples"], totals["empty_output"], totals["dropped_too_long"],
            totals["truncated"]) == (8, 5, 2, 1, 0)
    assert manifest["kind"] == "sft" and manifest["template"]["sha256"] == alpaca.TEMPLATE_SHA256
    src = tmp_path / "tricky.jsonl"
    assert manifest["source"]["files"] == [{"file": "tricky.jsonl", "bytes": src.stat().st_size,
                                            "sha256": sha256_file(src)}]
    for entry in manifest["shards"]:
        assert set(entry) == SHARD_KEYS
        for key in ("", "mask_", "idx_"):
            path = out / entry[f"{key}file" if key else "file"]
            assert path.stat().st_size == entry[f"{key}bytes"] and sha256_file(path) == entry[f"{key}sha256"]
    compressed = tmp_path / "tricky.jsonl.zst"  # the same rows, zstd-compressed: the same shards
    compressed.write_bytes(zstandard.ZstdCompressor().compress(src.read_bytes()))
    zst_out = run(tmp_path, compressed, "zst", block_size=128, val_fraction=0.0)
    assert_same_shards(zst_out, out)


def test_truncate_keeps_eot_and_prompt(tmp_path):
    enc = get_encoding()
    long_prompt = {"instruction": "why " * 200, "input": "", "output": "ok"}  # prompt alone over the block
    src = write_jsonl(tmp_path / "long.jsonl", [TRICKY[7], long_prompt])
    out = run(tmp_path, src, block_size=128, truncate=True, val_fraction=0.0)
    totals = load_manifest(out)["totals"]
    assert (totals["examples"], totals["truncated"], totals["dropped_too_long"]) == (1, 1, 1)
    tokens, mask = open_sft_shard(out / "train.bin").example(0)
    assert len(tokens) == 128 and tokens[-1] == EOT and mask[-1] == 1
    n_prompt = int((mask == 0).sum())
    assert enc.decode(tokens[:n_prompt].tolist()) == alpaca.render_prompt("Ramble.")
    assert tokens[n_prompt:-1].tolist() == enc.encode_ordinary(TRICKY[7]["output"])[: 127 - n_prompt]


def test_split_is_by_prompt_hash_and_worker_invariant(tmp_path):
    records = many_examples(150)
    records += [dict(r, output="another answer") for r in records[:30]]  # repeated prompts
    records += [records[3], records[170], records[3]]  # copies of examples, in other chunks: skipped
    src = write_jsonl(tmp_path / "many.jsonl", records)
    one = run(tmp_path, src, "one", val_fraction=0.2, chunk_examples=16, workers=1)
    two = run(tmp_path, src, "two", val_fraction=0.2, chunk_examples=16, workers=2)
    assert files_of(one) == files_of(two)
    totals = load_manifest(one)["totals"]
    assert (totals["rows"], totals["duplicates"], totals["examples"]) == (183, 3, 180)
    enc = get_encoding()
    expected = {"val": [], "train": []}
    for r in records[:180]:
        split = "val" if sft.is_val(r["instruction"], r["input"], 0.2) else "train"
        expected[split].append(alpaca.render_prompt(r["instruction"], r["input"]))
    assert 15 < len(expected["val"]) < 60
    for split, prompts in expected.items():
        shard = open_sft_shard(one / f"{split}.bin")
        got = [enc.decode(t[m == 0].tolist()) for t, m in map(shard.example, range(len(shard)))]
        assert got == prompts, "each split keeps the source order"
    assert not set(expected["val"]) & set(expected["train"]), "no validation prompt is trained on"


def test_rerun_is_a_noop_and_changed_config_gets_its_own_folder(tmp_path, capsys):
    src = write_jsonl(tmp_path / "s.jsonl", many_examples(20))
    out = run(tmp_path, src)
    stat = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in (tmp_path / "data").rglob("*")}
    assert run(tmp_path, src) == out
    assert "nothing to do" in capsys.readouterr().out
    assert {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in (tmp_path / "data").rglob("*")} == stat
    (out / "parts").mkdir()  # what a kill after the manifest, while dropping the parts, leaves
    (out / "parts" / "00000.json").write_text("{}")
    assert run(tmp_path, src) == out and not (out / "parts").exists()
    files = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in (tmp_path / "data").rglob("*") if p.is_file()}
    assert files == {p: v for p, v in stat.items() if p.is_file()}
    other = run(tmp_path, src, block_size=512)
    assert other != out and other.parent == out.parent
    assert load_manifest(other)["config"]["block_size"] == 512


def test_a_second_run_on_a_busy_folder_stops_with_a_message(tmp_path, capsys):
    src = write_jsonl(tmp_path / "s.jsonl", many_examples(20))
    cfg = sft.SFTConfig(source=str(src), data_dir=str(tmp_path / "data"), workers=1)
    config = sft.stage_config(cfg, sft_sources.path_source(src).describe())
    out = output_dir(cfg.data_dir, "custom-sft", config)
    with directory_lock(out):
        assert sft.main(["--source", str(src), "--data-dir", cfg.data_dir, "--workers", "1"]) == 1
    assert f"{out} is in use by another run" in capsys.readouterr().err
    assert not (out / "manifest.json").exists()
    assert sft.run(cfg) == out


def test_resume_after_a_crash_mid_run(tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "s.jsonl", many_examples(100))
    reference = files_of(run(tmp_path, src, "ref", chunk_examples=10))
    real, calls = sft._tokenize_chunk, []

    def crash_on_fourth(job):
        calls.append(job[1])
        if len(calls) == 4:
            (job[0] / f"{job[1]:05d}.train.bin").write_bytes(b"half")  # a torn part, no .json marker
            raise KeyboardInterrupt
        real(job)

    monkeypatch.setattr(sft, "_tokenize_chunk", crash_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, src, "crash", chunk_examples=10)
    out = next((tmp_path / "crash" / "custom-sft").iterdir())
    assert not (out / "manifest.json").exists() and not (out / "train.bin").exists()
    (out / ".train.bin.tmp-99999").write_bytes(b"torn")  # what a kill during the assembly leaves
    (out / "parts" / ".00003.train.bin.tmp-99999").write_bytes(b"torn")  # and one during a chunk
    leftovers = []
    monkeypatch.setattr(sft, "_tokenize_chunk",
                        lambda job: (calls.append(job[1]), leftovers.extend(out.rglob(".*.tmp-*")), real(job)))
    calls.clear()
    assert run(tmp_path, src, "crash", chunk_examples=10) == out
    assert calls == list(range(3, 10)), "finished chunks are not redone"
    assert leftovers == [], "a rerun removes the torn temporaries before it works"
    assert files_of(out) == reference


def test_a_source_file_rewritten_during_the_run_is_named_and_nothing_is_finished(tmp_path, monkeypatch, capsys):
    src = write_jsonl(tmp_path / "s.jsonl", many_examples(100))
    real = sft._tokenize_chunk

    def rewrite_during_the_third(job):
        if job[1] == 2:  # chunks 0 and 1 are of the old rows, the rest of the new
            write_jsonl(src, many_examples(120, words=6))
        real(job)

    monkeypatch.setattr(sft, "_tokenize_chunk", rewrite_during_the_third)
    args = ["--source", str(src), "--data-dir", str(tmp_path / "data"), "--workers", "1", "--chunk-examples", "10"]
    assert sft.main(args) == 1
    assert f"{src}: changed during this run" in capsys.readouterr().err
    assert not list((tmp_path / "data").rglob("manifest.json")) and not list((tmp_path / "data").rglob("parts"))
    monkeypatch.setattr(sft, "_tokenize_chunk", real)
    out = run(tmp_path, src, chunk_examples=10)
    assert files_of(out) == files_of(run(tmp_path, src, "clean", chunk_examples=10)), "a rerun reads the new file"


def test_sigkill_and_rerun_gives_identical_bytes(tmp_path):
    src = write_jsonl(tmp_path / "s.jsonl", many_examples(100))
    args = ["--source", str(src), "--workers", "1", "--chunk-examples", "5"]  # 20 chunks, each fsynced
    out = sigkill_after_a_chunk("sft", tmp_path / "killed", "custom-sft", args)
    assert sft.main(["--data-dir", str(tmp_path / "killed"), *args]) == 0
    assert sft.main(["--data-dir", str(tmp_path / "clean"), *args]) == 0
    assert files_of(out) == files_of(next((tmp_path / "clean" / "custom-sft").iterdir()))


def test_sample_source(tmp_path):
    out = sft.run(sft.SFTConfig(data_dir=str(tmp_path), workers=2))
    assert out.parent == tmp_path / "sample-sft"
    m = load_manifest(out)
    assert m["source"]["dataset"] == "chatterbot-corpus==1.3.3" and len(m["source"]["files"]) == 21
    # 10% of the prompts held out (2% for other datasets): enough to measure an EOT rate; the sample's tech
    # support conversations repeat ten examples about a hundred times each: each is kept once
    assert m["config"]["val_fraction"] == 0.1 and sft.SFTConfig(dataset="alpaca").val_fraction == 0.02
    totals = m["totals"]
    assert (totals["rows"], totals["duplicates"], totals["examples"], totals["val_examples"]) == (2306, 1130, 1176, 108)
    assert inspect_main([str(out), "--verify"]) == 0
    ex = next(sft_sources.sample_source().examples())
    assert ex == ("What is AI?", "",
                  "Artificial Intelligence is the branch of engineering and science devoted to constructing "
                  "machines that think.", None)  # no split of its own: by the prompt's hash


def test_sample_checksum_mismatch_is_refused(monkeypatch):
    """The message gives the files' hash (the pinned one: they are unchanged) against the expected one."""
    actual = sft_sources.SAMPLE_SHA256
    monkeypatch.setattr(sft_sources, "SAMPLE_SHA256", "0" * 64)
    message = rf"the \*\.yml files hash to {actual}, expected 0{{64}}; reinstall chatterbot-corpus==1\.3\.3"
    with pytest.raises(sft_sources.SourceError, match=message):
        sft_sources.sample_source()


def _parquet(path: Path, table: dict) -> Path:
    pq.write_table(pa.table(table), path)
    return path


def _put(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncated_parquet(path: Path) -> Path:
    whole = _parquet(path.with_suffix(".whole"), {"instruction": ["a"] * 99, "input": [""] * 99, "output": ["b"] * 99})
    return _put(path, whole.read_bytes()[:300])


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".jsonl.zst"])
def test_a_byte_order_mark_at_the_start_of_the_file_is_read_past(tmp_path, suffix):
    """Windows tools write a UTF-8 BOM first (pandas and datasets read past it): the same shards as without it."""
    marked, plain = with_and_without_bom(tmp_path, TRICKY[:5] + many_examples(20), suffix)
    assert_same_shards(run(tmp_path, marked), run(tmp_path, plain))


@pytest.mark.parametrize("make, message", [
    (lambda d: write_jsonl(d / "a.jsonl", [TRICKY[0], {"instruction": "x", "input": ""}]),
     r"a\.jsonl, line 2: missing field 'output'"),
    (lambda d: _put(d / "b.json", json.dumps([TRICKY[0], dict(TRICKY[0], output=3)]).encode()),
     r"b\.json, row 1: field 'output' is int, not a string"),
    (lambda d: _put(d / "c.jsonl", b'{"instruction": "\xff"}\n'), r"c\.jsonl, line 1: invalid UTF-8"),
    (lambda d: _put(d / "c.json", b'[{"instruction": "a",'), r"c\.json: not valid JSON"),
    (lambda d: _parquet(d / "d.parquet", {"instruction": ["a"], "input": [""]}),
     r"d\.parquet: missing column\(s\) output"),
    (lambda d: _parquet(d / "e.parquet", {"instruction": ["a", "b"], "input": ["", ""], "output": ["x", None]}),
     r"e\.parquet, row 1: field 'output' is NoneType"),
    (lambda d: _truncated_parquet(d / "f.parquet"), r"f\.parquet: unreadable parquet file"),
    (lambda d: _parquet(d / "g.parquet", {"instruction": pa.array([b"a", b"caf\xe9"], pa.binary()).view(pa.string()),
                                          "input": ["", ""], "output": ["x", "y"]}),
     r"g\.parquet: rows 0 to 1: invalid UTF-8"),
    (lambda d: _put(d / "n.json", b"[" * 100_000 + b"]" * 100_000), r"n\.json: not valid JSON \(maximum recursion"),
    (lambda d: _put(d / "n.jsonl", b'{"instruction": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"),
     r"n\.jsonl, line 1: not valid JSON \(maximum recursion"),
    (lambda d: _put(d / "m.jsonl", json.dumps(TRICKY[0]).encode() + "\n\ufeff".encode() + json.dumps(TRICKY[1]).encode()),
     r"m\.jsonl, line 2: not valid JSON \(Unexpected UTF-8 BOM"),  # a byte-order mark is read past first only
    (lambda d: _put(d / "m.json", b"[" + "\ufeff".encode() + json.dumps(TRICKY[0]).encode() + b"]"),
     r"m\.json: not valid JSON"),
    (lambda d: write_jsonl(d / "h.txt", [TRICKY[0]]), r"h\.txt: unsupported file type"),
    (lambda d: write_jsonl(d / "i.jsonl", [TRICKY[5], TRICKY[6]]), r"i\.jsonl: every example was skipped"),
])
def test_bad_input_names_file_and_row(tmp_path, capsys, make, message):
    src = make(tmp_path)
    assert sft.main(["--source", str(src), "--data-dir", str(tmp_path / "data"), "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert str(src) in err
    assert re.search(message, err), err
    data = tmp_path / "data"
    assert not list(data.rglob("manifest.json"))
    assert not [p for p in data.rglob("*.bin") if "parts" not in p.parts], "nothing under a final name"


@pytest.mark.parametrize("flag, value, message", [
    ("--block-size", "1", "--block-size must be at least 2, got 1"),
    ("--val-fraction", "1", r"--val-fraction must be in [0, 1), got 1.0"),
    ("--chunk-examples", "0", "--chunk-examples must be positive, got 0"),
])
def test_bad_flags_are_named(tmp_path, capsys, flag, value, message):
    src = write_jsonl(tmp_path / "a.jsonl", TRICKY[:3])
    assert sft.main(["--source", str(src), "--data-dir", str(tmp_path / "data"), flag, value]) == 1
    assert f"error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_alpaca_download_through_a_flaky_hub(tmp_path, monkeypatch):
    records = TRICKY[:5] + many_examples(40)
    buf = io.BytesIO()
    pq.write_table(pa.table({f: [r[f] for r in records] for f in ("instruction", "input", "output")}), buf)
    payload = buf.getvalue()
    name = hub.ALPACA.files[0]
    monkeypatch.setitem(hub.SOURCES, "alpaca", dataclasses.replace(hub.ALPACA, revision=FakeHub.COMMIT))
    monkeypatch.setattr(hub, "RETRY", hub.Retry(tries=6, first_s=0.01, max_s=0.05))
    cfg = sft.SFTConfig(dataset="alpaca", data_dir=str(tmp_path), workers=1)
    with FakeHub({"tatsu-lab/alpaca": {name: payload}}, faults={name: [503, "drop", 500, "drop"]}) as server:
        server.point_huggingface_hub(monkeypatch)
        out = sft.run(cfg)
        assert any(r is not None and r != "bytes=0-" for _, _, r in server.requests), "a dropped download resumed"
    m = load_manifest(out)
    assert out.parent == tmp_path / "alpaca-sft"
    assert m["source"]["dataset"] == "tatsu-lab/alpaca" and m["source"]["revision"] == FakeHub.COMMIT
    assert m["source"]["files"] == [{"file": name, "bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}]
    assert m["totals"]["rows"] == 45 and m["totals"]["examples"] == 45
    stat = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    assert sft.run(cfg) == out, "a rerun with the hub gone needs no network"
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == stat


def test_a_downloaded_file_changed_after_its_stage_finished_is_named_not_tokenized(tmp_path, monkeypatch, capsys):
    def fake_download(repo_id, filenames, revision, dest_dir, repo_type="dataset"):
        (path,) = (Path(dest_dir) / name for name in filenames)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = many_examples(40)
        pq.write_table(pa.table({f: [r[f] for r in rows] for f in ("instruction", "input", "output")}), path)
        return [{"file": filenames[0], "bytes": path.stat().st_size, "sha256": sha256_file(path)}]

    monkeypatch.setattr(hub, "download", fake_download)
    flags = ["--dataset", "alpaca", "--data-dir", str(tmp_path), "--workers", "1"]
    assert sft.main(flags) == 0
    (changed,) = tmp_path.glob("alpaca-source/*/data/*.parquet")
    size, rows = changed.stat().st_size, many_examples(40)[:30]  # a cut copy, say
    pq.write_table(pa.table({f: [r[f] for r in rows] for f in ("instruction", "input", "output")}), changed)
    assert sft.main([*flags, "--block-size", "512"]) == 1  # it was tokenized, recorded as the verified file
    assert (f"{changed}: {changed.stat().st_size:,} bytes, but its source stage verified {size:,}"
            in capsys.readouterr().err)
    assert len(list(tmp_path.glob("alpaca-sft/*/manifest.json"))) == 1


GSM8K_TRAIN = [("Ann has 48 apples and gives half away. How many are left?",
                "She gives 48/2 = <<48/2=24>>24 away.\nSo 48-24 = <<48-24=24>>24 are left.\n#### 24"),
               ("A shop sells 1,200 pens a day. How many in 3 days?", "1,200*3 = <<1200*3=3600>>3,600\n#### 3,600")]
GSM8K_TEST = [("What is 7 times 6?", "7*6 = <<7*6=42>>42\n#### 42")]


def gsm8k_parquet(rows) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"question": [q for q, _ in rows], "answer": [a for _, a in rows]}), buf)
    return buf.getvalue()


def test_gsm8k_download_through_the_fake_hub_keeps_its_split_and_drops_the_calculator(tmp_path, monkeypatch):
    train_name, test_name = hub.GSM8K.files
    assert (hub.GSM8K.repo_id, train_name, test_name) == ("openai/gsm8k", "main/train-00000-of-00001.parquet",
                                                          "main/test-00000-of-00001.parquet")
    assert re.fullmatch(r"[0-9a-f]{40}", hub.GSM8K.revision), "a pinned commit, not a branch"
    payloads = {train_name: gsm8k_parquet(GSM8K_TRAIN), test_name: gsm8k_parquet(GSM8K_TEST)}
    monkeypatch.setitem(hub.SOURCES, "gsm8k", dataclasses.replace(hub.GSM8K, revision=FakeHub.COMMIT))
    monkeypatch.setattr(hub, "RETRY", hub.Retry(tries=6, first_s=0.01, max_s=0.05))
    cfg = sft.SFTConfig(dataset="gsm8k", data_dir=str(tmp_path), workers=1)
    with FakeHub({"openai/gsm8k": payloads}, faults={train_name: [503, "drop"]}) as server:
        server.point_huggingface_hub(monkeypatch)
        out = sft.run(cfg)
    m = load_manifest(out)
    assert out.parent == tmp_path / "gsm8k-sft" and m["source"]["dataset"] == "openai/gsm8k"
    assert m["source"]["files"] == [{"file": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                                    for name, data in payloads.items()]
    assert m["split"]["method"] == "the dataset's own: train is train, test is val"
    assert (m["totals"]["train_examples"], m["totals"]["val_examples"]) == (2, 1)
    enc = get_encoding()

    def decoded(split):
        shard = open_sft_shard(out / f"{split}.bin")
        rows = []
        for i in range(len(shard)):
            tokens, mask = shard.example(i)
            start = int(np.argmax(mask))
            assert tokens[-1] == EOT
            rows.append((enc.decode(tokens[:start].tolist()), enc.decode(tokens[start:-1].tolist())))
        return rows

    assert decoded("val") == [(alpaca.render_prompt("What is 7 times 6?"), "7*6 = 42\n#### 42")]
    assert decoded("train") == [
        (alpaca.render_prompt(GSM8K_TRAIN[0][0]), "She gives 48/2 = 24 away.\nSo 48-24 = 24 are left.\n#### 24"),
        (alpaca.render_prompt(GSM8K_TRAIN[1][0]), "1,200*3 = 3,600\n#### 3,600")]
    assert sft.run(cfg) == out, "a rerun with the hub gone needs no network"
    assert "val_fraction" not in m["config"]
    stat = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    assert sft.run(dataclasses.replace(cfg, val_fraction=0.3)) == out, "gsm8k ignores --val-fraction: one folder"
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == stat


def test_both_pipelines_sources_are_one_protocol(tmp_path):
    from pipelines import sources, stage
    (tmp_path / "docs.jsonl").write_text('{"text": "a"}\n')
    for source in (sources.local_source(tmp_path / "docs.jsonl"), sft_sources.sample_source()):
        assert isinstance(source, stage.Source)
        assert source.describe()["files"][0]["sha256"] == sha256_file(source.files[0])
