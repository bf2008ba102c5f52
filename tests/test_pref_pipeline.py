"""The preference data stage: pairing and masks, drops, split, idempotence, resume, sources, inspect (offline)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import gpt.template as alpaca
from fake_hub import FakeHub
from stage_runs import assert_same_shards, files_of, sigkill_after_a_chunk, with_and_without_bom
from pipelines import examples, hub, pref_sources, prefs, sft_sources
from pipelines.stage import find_shards_dir
from shards.io import sha256_file
from shards.manifest import ManifestError, load_manifest
from shards.report import main as inspect_main
from shards.sft import open_sft_shard
from shards.tokenizer import EOT, get_encoding

SHARD_KEYS = {"file", "split", "side", "num_tokens", "num_examples", "bytes", "sha256", "mask_file", "mask_bytes",
              "mask_sha256", "idx_file", "idx_bytes", "idx_sha256", "supervised_tokens"}
LONG_PROMPT = "Why " * 40 + "?"  # the pair built on it sets max_tokens: exactly at the limit

TRICKY = [
    {"prompt": "Shout.", "chosen": "!Hi! Bye!!! !", "rejected": "no"},               # "!" is token 0
    {"prompt": "Indent.", "chosen": " starts with a space", "rejected": "starts without"},
    {"prompt": "Break.", "chosen": "\nstarts with a newline\n", "rejected": " \n spaces then a newline"},
    {"prompt": "Écris en japonais 🙂", "chosen": "はい、元気です。🙂", "rejected": "Ça va? 🙃"},
    {"prompt": LONG_PROMPT, "chosen": "yes", "rejected": "no, I do not think so"},   # at the limit: kept
    {"prompt": LONG_PROMPT, "chosen": "no, I do not think so at", "rejected": "yes"},  # one token over: dropped
    {"prompt": "Same.", "chosen": "twice", "rejected": "twice"},                    # identical: dropped
    {"prompt": "Empty.", "chosen": "", "rejected": "something"},                     # empty: dropped
    {"prompt": " \n", "chosen": "a", "rejected": "b"},                               # empty prompt: dropped
    {"prompt": "Blank.", "chosen": "a", "rejected": "\t "},                           # blank answer: dropped
]
KEPT = [0, 1, 2, 3, 4]


def limit() -> int:
    """Prompt + longer answer + EOT of TRICKY[4]: the max_tokens that keeps it and drops TRICKY[5]."""
    enc, row = get_encoding(), TRICKY[4]
    n = len(examples.encode_prompt(row["prompt"])) + len(enc.encode_ordinary(row["rejected"])) + 1
    assert len(enc.encode_ordinary(TRICKY[5]["chosen"])) == len(enc.encode_ordinary(row["rejected"])) + 1
    return n


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def run(tmp_path: Path, source: Path, data: str = "data", **kw) -> Path:
    cfg = prefs.PrefsConfig(source=str(source), data_dir=str(tmp_path / data), workers=kw.pop("workers", 1), **kw)
    return prefs.run(cfg)


def many_pairs(n: int) -> list[dict]:
    return [{"prompt": f"Question {i}?", "chosen": f"Answer {i}, " + "lorem ipsum " * (i % 7),
             "rejected": f"Wrong {i}"} for i in range(n)]


def decoded_pairs(out: Path, split: str) -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected) of every pair of a split, decoded, after checking the pairing is exact."""
    enc, found = get_encoding(), []
    chosen, rejected = (open_sft_shard(out / f"{split}.{side}.bin") for side in ("chosen", "rejected"))
    assert len(chosen) == len(rejected)
    for i in range(len(chosen)):
        (c, cm), (r, rm) = chosen.example(i), rejected.example(i)
        n = int((cm == 0).sum())
        assert cm.tolist() == [0] * n + [1] * (len(c) - n) and rm.tolist() == [0] * n + [1] * (len(r) - n)
        assert c[:n].tolist() == r[:n].tolist(), "the same prompt tokens"
        assert c[-1] == EOT and r[-1] == EOT
        found.append(tuple(enc.decode(t.tolist()) for t in (c[:n], c[n:-1], r[n:-1])))
    return found


def test_pairs_and_masks_on_tricky_rows(tmp_path, capsys):
    enc = get_encoding()
    src = write_jsonl(tmp_path / "tricky.jsonl", TRICKY)
    out = run(tmp_path, src, max_tokens=limit(), val_fraction=0.0)
    assert out.parent == tmp_path / "data" / "custom-prefs"
    assert decoded_pairs(out, "val") == []
    got = decoded_pairs(out, "train")
    assert got == [(alpaca.render_prompt(TRICKY[i]["prompt"]), TRICKY[i]["chosen"], TRICKY[i]["rejected"])
                   for i in KEPT]
    chosen, rejected = (open_sft_shard(out / f"train.{side}.bin") for side in ("chosen", "rejected"))
    for i, row in zip(range(len(KEPT)), (TRICKY[k] for k in KEPT)):  # token-exact, not only decoding to the text
        prompt = examples.encode_prompt(row["prompt"])
        for shard, side in ((chosen, "chosen"), (rejected, "rejected")):
            tokens, mask = shard.example(i)
            assert tokens.tolist() == prompt + enc.encode_ordinary(row[side]) + [EOT]
            assert int(mask.sum()) == len(enc.encode_ordinary(row[side])) + 1
    assert len(chosen.example(4)[0]) < limit() == len(rejected.example(4)[0]), "a pair exactly at the limit is kept"
    assert 0 in chosen.example(0)[0][chosen.example(0)[1] == 1].tolist(), "token 0 ('!') is a supervised target"
    m = load_manifest(out)
    assert m["kind"] == "prefs" and m["template"]["sha256"] == alpaca.TEMPLATE_SHA256
    totals = m["totals"]
    assert {k: totals[k] for k in ("rows", "pairs", "train_pairs", "val_pairs", "empty", "identical",
                                   "dropped_too_long")} == {"rows": 10, "pairs": 5, "train_pairs": 5, "val_pairs": 0,
                                                            "empty": 3, "identical": 1, "dropped_too_long": 1}
    assert totals["supervised_tokens"] == int(chosen.mask.sum()) + int(rejected.mask.sum())
    assert m["pairs"] == [{"split": "val", "pairs": 0, "chosen": "val.chosen.bin", "rejected": "val.rejected.bin"},
                          {"split": "train", "pairs": 5, "chosen": "train.chosen.bin",
                           "rejected": "train.rejected.bin"}]
    assert [(e["split"], e["side"]) for e in m["shards"]] == [("val", "chosen"), ("val", "rejected"),
                                                              ("train", "chosen"), ("train", "rejected")]
    for entry in m["shards"]:
        assert set(entry) == SHARD_KEYS
        for key in ("", "mask_", "idx_"):
            path = out / entry[f"{key}file" if key else "file"]
            assert path.stat().st_size == entry[f"{key}bytes"] and sha256_file(path) == entry[f"{key}sha256"]
    assert m["source"]["files"] == [{"file": "tricky.jsonl", "bytes": src.stat().st_size, "sha256": sha256_file(src)}]
    printed = capsys.readouterr().out
    assert "prefs: 5 pairs (0 val)" in printed and "dropped 3 empty, 1 with identical answers, 1 too long" in printed
    same = tmp_path / "tricky.parquet"  # the same rows as parquet: the same shards
    pq.write_table(pa.table({f: [r[f] for r in TRICKY] for f in ("prompt", "chosen", "rejected")}), same)
    other = run(tmp_path, same, "parquet", max_tokens=limit(), val_fraction=0.0)
    assert_same_shards(other, out)


def test_split_is_by_prompt_hash_and_worker_invariant(tmp_path):
    records = many_pairs(150)
    records += [dict(r, chosen="another answer") for r in records[:30]]  # repeated prompts
    src = write_jsonl(tmp_path / "many.jsonl", records)
    one = run(tmp_path, src, "one", val_fraction=0.2, chunk_pairs=16, workers=1)
    two = run(tmp_path, src, "two", val_fraction=0.2, chunk_pairs=16, workers=2)
    assert files_of(one) == files_of(two)
    expected = {"val": [], "train": []}
    for r in records:
        split = "val" if examples.is_val(r["prompt"], "", 0.2) else "train"
        expected[split].append((alpaca.render_prompt(r["prompt"]), r["chosen"], r["rejected"]))
    assert 15 < len(expected["val"]) < 60
    for split, pairs in expected.items():
        assert decoded_pairs(one, split) == pairs, "each split keeps the source order"
    assert not {p for p, _, _ in expected["val"]} & {p for p, _, _ in expected["train"]}, "no val prompt is trained on"


def test_rerun_is_a_noop_and_changed_config_gets_its_own_folder(tmp_path, capsys):
    src = write_jsonl(tmp_path / "s.jsonl", many_pairs(20))
    out = run(tmp_path, src)
    stat = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in (tmp_path / "data").rglob("*")}
    assert run(tmp_path, src) == out
    assert "nothing to do" in capsys.readouterr().out
    assert {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in (tmp_path / "data").rglob("*")} == stat
    other = run(tmp_path, src, max_tokens=512)
    assert other != out and other.parent == out.parent and load_manifest(other)["config"]["max_tokens"] == 512


def test_resume_after_a_crash_mid_run(tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "s.jsonl", many_pairs(100))
    reference = files_of(run(tmp_path, src, "ref", chunk_pairs=10))
    real, calls = prefs._tokenize_chunk, []

    def crash_on_fourth(job):
        calls.append(job[1])
        if len(calls) == 4:
            (job[0] / f"{job[1]:05d}.train.rejected.bin").write_bytes(b"half")  # a torn part, no .json marker
            raise KeyboardInterrupt
        real(job)

    monkeypatch.setattr(prefs, "_tokenize_chunk", crash_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, src, "crash", chunk_pairs=10)
    out = next((tmp_path / "crash" / "custom-prefs").iterdir())
    assert not (out / "manifest.json").exists() and not list(out.glob("*.bin"))
    (out / ".train.chosen.bin.tmp-99999").write_bytes(b"torn")  # what a kill during the assembly leaves
    monkeypatch.setattr(prefs, "_tokenize_chunk", lambda job: (calls.append(job[1]), real(job)))
    calls.clear()
    assert run(tmp_path, src, "crash", chunk_pairs=10) == out
    assert calls == list(range(3, 10)), "finished chunks are not redone"
    assert files_of(out) == reference


@pytest.mark.parametrize("when", ["in_place_mid_run", "replaced_after_planning"])
def test_a_source_file_rewritten_during_the_run_is_named_and_nothing_is_finished(tmp_path, monkeypatch, capsys, when):
    src = write_jsonl(tmp_path / "s.jsonl", many_pairs(100))
    reference = files_of(run(tmp_path, src, "ref", chunk_pairs=10))
    other = many_pairs(120)[20:]  # as many pairs, other texts
    if when == "in_place_mid_run":  # the reader, at its offset in the new text, sees a broken line
        real = prefs._tokenize_chunk
        monkeypatch.setattr(prefs, "_tokenize_chunk",
                            lambda job: (job[1] == 2 and write_jsonl(src, other), real(job)))
    else:  # every chunk is of the new text, under the folder named by the old text's hash
        real_plan = examples.plan

        def plan_then_replace(*args):
            count = real_plan(*args)
            os.replace(write_jsonl(tmp_path / "new.jsonl", other), src)
            return count

        monkeypatch.setattr(examples, "plan", plan_then_replace)
    args = ["--source", str(src), "--data-dir", str(tmp_path / "data"), "--workers", "1", "--chunk-pairs", "10"]
    assert prefs.main(args) == 1
    err = capsys.readouterr().err
    assert f"{src}: changed during this run" in err and "not valid JSON" not in err
    assert not list((tmp_path / "data").rglob("manifest.json")) and not list((tmp_path / "data").rglob("parts"))
    monkeypatch.undo()
    write_jsonl(src, many_pairs(100))  # the old text again, so the same folder: its parts are not reused
    assert files_of(run(tmp_path, src, chunk_pairs=10)) == reference


def test_sigkill_and_rerun_gives_identical_bytes(tmp_path):
    src = write_jsonl(tmp_path / "s.jsonl", many_pairs(100))
    args = ["--source", str(src), "--workers", "1", "--chunk-pairs", "5"]  # 20 chunks, each fsynced
    out = sigkill_after_a_chunk("prefs", tmp_path / "killed", "custom-prefs", args)
    assert prefs.main(["--data-dir", str(tmp_path / "killed"), *args]) == 0
    assert prefs.main(["--data-dir", str(tmp_path / "clean"), *args]) == 0
    assert files_of(out) == files_of(next((tmp_path / "clean" / "custom-prefs").iterdir()))


def test_sample_pairs_an_answer_of_the_same_split_and_another_category(tmp_path, capsys):
    source = pref_sources.sample_source(0, 0.1)
    pairs = list(source.pairs())
    corpus = sft_sources.sample_source()
    distinct = list(dict.fromkeys((i, o) for i, _, o, _ in corpus.examples()))
    assert len(distinct) < 2306 and [(p, c) for p, c, _, _ in pairs] == distinct, "the distinct SFT examples"
    category, split = {}, {}
    for path in corpus.files:
        for instruction, _, output in sft_sources.read_chatterbot(path):
            category.setdefault(output, set()).add(path.stem)
            split.setdefault(output, set()).add("val" if examples.is_val(instruction, "", 0.1) else "train")
    own = {}
    for path in corpus.files:
        for instruction, _, output in sft_sources.read_chatterbot(path):
            own.setdefault((instruction, output), path.stem)
    assert all(s == ("val" if examples.is_val(p, "", 0.1) else "train") for p, _, _, s in pairs), "the stage's split"
    assert all(category[r] - {own[p, c]} for p, c, r, _ in pairs), "another category's answer"
    assert all(s in split[r] for _, _, r, s in pairs), "an answer of the same split"
    # the leak this prevents: no validation pair's chosen answer is only ever a train answer, and the other way round
    train_rejected = {r for _, _, r, s in pairs if s == "train"}
    assert not {c for _, c, _, s in pairs if s == "val"} & train_rejected - {c for _, c, _, s in pairs if s == "train"}
    assert list(pref_sources.sample_source(0, 0.1).pairs()) == pairs, "deterministic"
    assert [r for _, _, r, _ in pref_sources.sample_source(1, 0.1).pairs()] != [r for _, _, r, _ in pairs]
    out = prefs.run(prefs.PrefsConfig(data_dir=str(tmp_path), workers=2))
    assert out == find_shards_dir(tmp_path, "prefs", "sample")
    m = load_manifest(out)
    assert m["source"]["dataset"] == "chatterbot-corpus==1.3.3" and m["source"]["pairing"]["seed"] == 0
    assert m["config"]["pairing"] == pref_sources.SAMPLE_PAIRING
    val = sum(s == "val" for *_, s in pairs)
    assert (m["totals"]["rows"], m["totals"]["pairs"], m["totals"]["val_pairs"]) == (len(pairs), len(pairs), val)
    assert 0.07 < val / len(pairs) < 0.13  # 10%
    sft_val = {i for i, _, _, _ in corpus.examples() if examples.is_val(i, "", 0.1)}
    assert {p for p, _, _, s in pairs if s == "val"} == sft_val, "the SFT sample's val prompts"
    assert inspect_main([str(tmp_path), "--verify", "--decode", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("--- val pair") == 2 and printed.count("\nPROMPT: ") == 2
    assert printed.count("\nCHOSEN: ") == 2 and printed.count("\nREJECTED: ") == 2


def test_inspect_names_a_flipped_byte_and_a_broken_pairing(tmp_path, capsys):
    out = run(tmp_path, write_jsonl(tmp_path / "s.jsonl", many_pairs(40)), val_fraction=0.2)
    assert inspect_main([str(out), "--verify"]) == 0
    capsys.readouterr()
    shard = out / "train.rejected.bin"
    good = shard.read_bytes()
    raw = bytearray(good)
    raw[1024 + 2] ^= 1  # the low byte of the second token: the first pair's prompt
    shard.write_bytes(bytes(raw))
    assert inspect_main([str(out), "--verify"]) == 1
    assert f"{shard}: sha256" in capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())  # a manifest that agrees with the changed file
    next(e for e in manifest["shards"] if e["file"] == shard.name)["sha256"] = sha256_file(shard)
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert inspect_main([str(out), "--verify"]) == 1
    assert f"{shard}: pair 0 has a prompt other than train.chosen.bin's" in capsys.readouterr().err


def test_find_shards_dir_says_how_to_make_preference_shards(tmp_path):
    with pytest.raises(ManifestError, match=r"ultrafeedback-prefs/ \(run `make pref-shards PREF_DATASET=ultrafeedback"):
        find_shards_dir(tmp_path, "prefs", "ultrafeedback")


def messages(prompt: str, answer: str) -> list[dict]:
    return [{"content": prompt, "role": "user"}, {"content": answer, "role": "assistant"}]


def ultrafeedback_parquet(rows: list[dict]) -> bytes:
    """A file as the hub has them: prompt, prompt_id, chosen, rejected, messages, score_chosen, score_rejected."""
    message = pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))
    table = pa.table({
        "prompt": pa.array([r["prompt"] for r in rows], pa.string()),
        "prompt_id": pa.array([hashlib.sha256(r["prompt"].encode()).hexdigest() for r in rows], pa.string()),
        "chosen": pa.array([messages(r["prompt"], r["chosen"]) for r in rows], message),
        "rejected": pa.array([messages(r["prompt"], r["rejected"]) for r in rows], message),
        "messages": pa.array([messages(r["prompt"], r["chosen"]) for r in rows], message),
        "score_chosen": pa.array([8.5] * len(rows), pa.float64()),
        "score_rejected": pa.array([6.0] * len(rows), pa.float64())})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def test_ultrafeedback_download_through_a_flaky_hub(tmp_path, monkeypatch):
    train_rows, test_rows = TRICKY[:4] + many_pairs(30), many_pairs(8)[::-1]
    train_name, test_name = hub.ULTRAFEEDBACK.files
    payloads = {train_name: ultrafeedback_parquet(train_rows), test_name: ultrafeedback_parquet(test_rows)}
    monkeypatch.setitem(hub.SOURCES, "ultrafeedback", dataclasses.replace(hub.ULTRAFEEDBACK, revision=FakeHub.COMMIT))
    monkeypatch.setattr(hub, "RETRY", hub.Retry(tries=6, first_s=0.01, max_s=0.05))
    cfg = prefs.PrefsConfig(dataset="ultrafeedback", data_dir=str(tmp_path), workers=1)
    with FakeHub({"HuggingFaceH4/ultrafeedback_binarized": payloads},
                 faults={train_name: [503, "drop", 500, "drop"], test_name: ["drop"]}) as server:
        server.point_huggingface_hub(monkeypatch)
        out = prefs.run(cfg)
        assert any(r is not None and r != "bytes=0-" for _, _, r in server.requests), "a dropped download resumed"
    assert out == find_shards_dir(tmp_path, "prefs", "ultrafeedback")
    m = load_manifest(out)
    assert m["source"]["dataset"] == "HuggingFaceH4/ultrafeedback_binarized"
    assert m["source"]["revision"] == FakeHub.COMMIT
    assert m["source"]["files"] == [{"file": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                                    for name, data in payloads.items()]
    assert "val_fraction" not in m["config"] and m["split"]["method"].startswith("the dataset's own")
    assert (m["totals"]["train_pairs"], m["totals"]["val_pairs"]) == (34, 8)
    assert decoded_pairs(out, "val") == [(alpaca.render_prompt(r["prompt"]), r["chosen"], r["rejected"])
                                         for r in test_rows]
    assert decoded_pairs(out, "train") == [(alpaca.render_prompt(r["prompt"]), r["chosen"], r["rejected"])
                                           for r in train_rows]
    stat = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    assert prefs.run(cfg) == out, "a rerun with the hub gone needs no network"
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == stat


def _put(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _ultrafeedback_file(path: Path, rows: list[dict], chosen: list) -> Path:
    """A user's file of UltraFeedback's shape, read as UltraFeedback (its message lists as given)."""
    table = {"prompt": [r["prompt"] for r in rows], "chosen": chosen,
             "rejected": [messages(r["prompt"], r["rejected"]) for r in rows]}
    pq.write_table(pa.table(table), path)
    return path


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".jsonl.zst"])
def test_a_byte_order_mark_at_the_start_of_the_file_is_read_past(tmp_path, suffix):
    """Windows tools write a UTF-8 BOM first (pandas and datasets read past it): the same shards as without it."""
    marked, plain = with_and_without_bom(tmp_path, TRICKY[:5] + many_pairs(20), suffix)
    assert_same_shards(run(tmp_path, marked), run(tmp_path, plain))


@pytest.mark.parametrize("make, message", [
    (lambda d: write_jsonl(d / "a.jsonl", [TRICKY[0], {"prompt": "x", "chosen": "y"}]),
     r"a\.jsonl, line 2: missing field 'rejected'"),
    (lambda d: _put(d / "b.json", json.dumps([TRICKY[0], dict(TRICKY[0], chosen=["y"])]).encode()),
     r"b\.json, row 1: field 'chosen' is list, not a string"),
    (lambda d: _put(d / "c.jsonl", b'{"prompt": "\xff"}\n'), r"c\.jsonl, line 1: invalid UTF-8"),
    (lambda d: _put(d / "l.json", b"".join(json.dumps(r).encode() + b"\n" for r in TRICKY[:2])),
     r"l\.json: not valid JSON \(Extra data: line 2 column 1 \(char \d+\)\); one object a line is JSON Lines .*: "
     r"name the file \.jsonl"),
    (lambda d: _put(d / "d.parquet", ultrafeedback_parquet(TRICKY[:2])),
     r"d\.parquet, row 0: field 'chosen' is list, not a string"),
    (lambda d: write_jsonl(d / "h.txt", [TRICKY[0]]), r"h\.txt: unsupported file type"),
    (lambda d: write_jsonl(d / "i.jsonl", TRICKY[6:]), r"i\.jsonl: every pair was dropped"),
    (lambda d: _put(d / "m.jsonl", json.dumps(TRICKY[0]).encode() + "\n\ufeff".encode() + json.dumps(TRICKY[1]).encode()),
     r"m\.jsonl, line 2: not valid JSON \(Unexpected UTF-8 BOM"),  # a byte-order mark is read past first only
])
def test_bad_input_names_file_and_row(tmp_path, capsys, make, message):
    src = make(tmp_path)
    assert prefs.main(["--source", str(src), "--data-dir", str(tmp_path / "data"), "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert str(src) in err and re.search(message, err), err
    assert not list((tmp_path / "data").rglob("manifest.json"))


@pytest.mark.parametrize("chosen, message", [
    ([messages("a", "b"), [{"content": "a", "role": "user"}]], r"row 1: field 'chosen' has no assistant message"),
    ([messages("a", "b"), [{"content": None, "role": "assistant"}]],
     r"row 1: field 'chosen' is not a list of \{role, content\} string messages"),
])
def test_bad_ultrafeedback_rows_name_file_and_row(tmp_path, chosen, message):
    rows = [{"prompt": "a", "rejected": "c"}, {"prompt": "d", "rejected": "e"}]
    path = _ultrafeedback_file(tmp_path / "train_prefs-00000-of-00001.parquet", rows, chosen)
    source = pref_sources.PairSource("test", None, [path], "ultrafeedback")
    with pytest.raises(pref_sources.SourceError, match=re.escape(str(path)) + ", " + message):
        list(source.pairs())


def test_the_last_assistant_message_is_the_answer(tmp_path):
    chosen = [[{"content": "a", "role": "user"}, {"content": "first", "role": "assistant"},
               {"content": "more?", "role": "user"}, {"content": "last", "role": "assistant"}]]
    path = _ultrafeedback_file(tmp_path / "test_prefs-00000-of-00001.parquet", [{"prompt": "a", "rejected": "r"}],
                               chosen)
    assert list(pref_sources.PairSource("test", None, [path], "ultrafeedback").pairs()) == [("a", "last", "r", "val")]


@pytest.mark.parametrize("flag, value, message", [
    ("--max-tokens", "1", "--max-tokens must be at least 2, got 1"),
    ("--val-fraction", "1", r"--val-fraction must be in [0, 1), got 1.0"),
    ("--chunk-pairs", "0", "--chunk-pairs must be positive, got 0"),
])
def test_bad_flags_are_named(tmp_path, capsys, flag, value, message):
    src = write_jsonl(tmp_path / "a.jsonl", TRICKY[:3])
    assert prefs.main(["--source", str(src), "--data-dir", str(tmp_path / "data"), flag, value]) == 1
    assert f"error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()
