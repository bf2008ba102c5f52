"""The training data stream: windows, deterministic order, per-rank slices, accumulation errors, bad manifests."""

import json
import re

import numpy as np
import pytest
import torch

from pipelines.stage import find_shards_dir
from shards.format import ShardError, open_tokens
from shards.manifest import ManifestError
from shards.manifest import write_manifest
from train.data import (BatchPlan, PrefData, PretrainData, PromptData, SFTData, accumulation_steps, micro_batches,
                        rank_slice)
from train_shards import make_pairs, write_examples, write_pref_shards, write_test_shards

SEQ = 16


@pytest.fixture()
def shards(tmp_path):
    return write_test_shards(tmp_path / "sample-pretrain" / "abc123")


def data(shards, batch_tokens=8 * SEQ, seed=1):
    return PretrainData(shards, SEQ, batch_tokens, seed, eval_tokens=4 * SEQ)


def global_batch(d, step, world, micro):
    """Every (input row) of global batch `step` as the ranks see it, in rank then micro-batch order."""
    rows = []
    for rank in range(world):
        for x, y in d.train_batches(step, rank, world, micro):
            assert x.shape[0] <= micro
            rows += [tuple(r) for r in x.tolist()]
    return rows


def test_windows_are_shard_slices_with_targets_shifted(shards):
    d = data(shards)
    tokens = open_tokens(shards / "train_000001.bin")
    assert d.train.num_rows == (3000 - 1) // SEQ + (2000 - 1) // SEQ
    assert np.array_equal(d.train.row(0), tokens[:SEQ + 1])
    assert np.array_equal(d.train.row(3), tokens[3 * SEQ:4 * SEQ + 1])
    second = open_tokens(shards / "train_000002.bin")
    assert np.array_equal(d.train.row((3000 - 1) // SEQ), second[:SEQ + 1])  # never across shards
    x, y = d.train_batches(0, 0, 1, 8)[0]
    assert x.dtype == y.dtype == torch.int64
    assert x.shape == y.shape == (8, SEQ)
    assert (x[:, 1:] == y[:, :-1]).all()


def test_same_global_batches_for_any_world_size_and_micro_batch(shards):
    d = data(shards)
    for step in (0, 1, 5):
        reference = global_batch(d, step, 1, 8)
        assert len(reference) == 8
        for world, micro in ((1, 2), (2, 4), (2, 1), (4, 2), (8, 1)):
            assert global_batch(d, step, world, micro) == reference


def test_rank_slices_are_disjoint_and_cover_the_batch():
    rows = np.arange(100, 112)
    for world in (1, 2, 3, 4, 12):
        parts = [rank_slice(rows, r, world) for r in range(world)]
        assert sorted(np.concatenate(parts).tolist()) == rows.tolist()
        assert sum(len(p) for p in parts) == len(rows)  # disjoint: nothing counted twice
        assert np.array_equal(np.concatenate(parts), rows)  # contiguous, in order
    assert [m.tolist() for m in micro_batches(np.arange(5), 2)] == [[0, 1], [2, 3], [4]]


def test_order_is_a_seeded_permutation_per_epoch():
    plan = BatchPlan(num_rows=40, rows_per_step=8, seed=3)
    assert plan.steps_per_epoch == 5
    epoch0 = np.concatenate([plan.global_rows(s) for s in range(5)])
    epoch1 = np.concatenate([plan.global_rows(s) for s in range(5, 10)])
    assert sorted(epoch0.tolist()) == sorted(epoch1.tolist()) == list(range(40))  # each row once per epoch
    assert not np.array_equal(epoch0, epoch1)
    assert not np.array_equal(epoch0, np.arange(40))  # shuffled
    again = BatchPlan(40, 8, seed=3)  # asked in another order (epochs interleaved): the same batches
    rows = {s: again.global_rows(s).copy() for s in (7, 0, 3, 9, 1, 4, 2)}
    assert np.array_equal(np.concatenate([rows[s] for s in range(5)]), epoch0)
    assert np.array_equal(np.concatenate([rows[7], rows[9]]), np.concatenate([epoch1[16:24], epoch1[32:40]]))
    other = BatchPlan(40, 8, seed=4)
    assert not np.array_equal(np.concatenate([other.global_rows(s) for s in range(5)]), epoch0)
    assert plan.position(7) == {"epoch": 1, "batch": 2, "rows_per_step": 8, "num_rows": 40, "seed": 3}


def test_validation_rows_are_fixed_and_split_over_ranks(shards):
    d = data(shards)
    one = [tuple(r) for x, _ in d.val_batches(0, 1, 3) for r in x.tolist()]
    assert len(one) == 4
    two = [tuple(r) for rank in range(2) for x, _ in d.val_batches(rank, 2, 3) for r in x.tolist()]
    assert two == one
    first = open_tokens(shards / "val_000000.bin")[:SEQ]
    assert list(one[0]) == first.tolist()


def test_accumulation_errors_are_clear():
    assert accumulation_steps(32, 4, 2) == 4
    with pytest.raises(ValueError, match=r"global batch of 32 rows is not a multiple of micro-batch 3 x 2 rank"):
        accumulation_steps(32, 3, 2)
    with pytest.raises(ValueError, match="not a multiple"):
        accumulation_steps(8, 4, 4)


def test_bad_batch_and_data_errors(shards, tmp_path):
    with pytest.raises(ValueError, match="--batch-tokens 100 is not a multiple of --seq-len 16"):
        data(shards, batch_tokens=100)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        data(shards, batch_tokens=1000 * SEQ)
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["shards"][1]["num_tokens"] += 1
    (shards / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="train_000001.bin: 3000 tokens, the manifest says 3001"):
        data(shards)


def test_too_small_a_train_split_names_the_shards_folder_and_the_flag_of_each_stage(shards, tmp_path):
    """"the train split has N rows, fewer than one global batch of M" named neither the shards folder nor the flag
    that sets the global batch: each stage's reader names both."""
    with pytest.raises(ValueError) as e:  # 187 + 124 windows of 17 tokens
        data(shards, batch_tokens=1000 * SEQ)
    assert str(e.value) == (f"{shards}: the train split has 311 windows of 17 tokens, fewer than one global batch "
                            f"of 1,000; lower --batch-tokens to at most 4,976 (a multiple of what "
                            "the micro-batches of every rank take in one pass) or add data")
    sft = tmp_path / "sft"
    sft.mkdir()
    rows = [([11, 12], [21, 22])] * 3
    write_manifest(sft, {"kind": "sft", "shards": [{**write_examples(sft / f"{split}.bin", rows), "split": split}
                                                   for split in ("val", "train")]})
    with pytest.raises(ValueError, match=re.escape(f"{sft}: the train split has 3 examples whose sequences fit in 17 "
                                                   f"tokens, fewer than one global batch of 4; lower --batch-examples "
                                                   f"to at most 3 (a multiple of what the micro-batches of every rank "
                                                   "take in one pass) or add data")):
        SFTData(sft, 16, 4, 0)
    prefs = write_pref_shards(tmp_path / "prefs", make_pairs(3, 0), make_pairs(2, 1))
    with pytest.raises(ValueError, match=re.escape(f"{prefs}: the train split has 3 pairs whose sequences fit in 17 "
                                                   f"tokens, fewer than one global batch of 4; lower --batch-pairs")):
        PrefData(prefs, 16, 4, 0)
    with pytest.raises(ValueError, match=re.escape(f"{prefs}: the train split has 3 pairs, fewer than one global "
                                                   f"batch of 4; lower --batch-prompts to at most 3")):
        PrefData(prefs, None, 4, 0, batch_flag="--batch-prompts")  # RL's reader of the preference shards' prompts
    reader = SFTData(sft, None, 1, 0)
    with pytest.raises(ValueError, match=re.escape(f"{sft}: the train split has 3 prompts of at most 12 tokens, "
                                                   f"fewer than one global batch of 4; lower --batch-prompts")):
        PromptData.from_shards(reader, 16, max_new=4, batch_prompts=4, seed=0)


def test_a_manifest_whose_totals_disagree_with_its_shards_is_refused(shards):
    """A shard listed twice in a hand-edited manifest (or one left out) was trained on silently, although `make
    inspect` reports that manifest as bad: the trainers read the totals it checks too."""
    path = shards / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["totals"] = {"tokens": sum(e["num_tokens"] for e in manifest["shards"]), "shards": len(manifest["shards"])}
    path.write_text(json.dumps(manifest))
    assert data(shards).train.num_rows == (2999 // SEQ) + (1999 // SEQ)  # a manifest that agrees
    manifest["shards"].append(manifest["shards"][1])  # train_000001.bin once more
    path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=re.escape(f"{path}: its totals say 6,000 tokens, its shards list 9,000 "
                                                      f"(edited by hand? remove {shards} and make the shards again)")):
        data(shards)


def test_an_empty_validation_split_blames_eval_tokens_only_when_they_are_the_cause(shards):
    with pytest.raises(ValueError) as e:  # the validation shard holds 1000 tokens
        PretrainData(shards, 1000, 1000, 1, eval_tokens=10485760)
    assert str(e.value) == f"{shards}: the validation split holds no window of 1001 tokens"
    with pytest.raises(ValueError, match=r"^--eval-tokens 16 < --seq-len 32: no validation window$"):
        PretrainData(shards, 32, 256, 1, eval_tokens=16)


def test_find_shards_dir(shards, tmp_path):
    assert find_shards_dir(tmp_path, "pretrain", "sample") == shards
    with pytest.raises(ManifestError, match=r"no finished pretrain shards under .*fineweb10B-pretrain/ \(run `make "
                                            r"pretrain-shards DATASET=fineweb10B`"):
        find_shards_dir(tmp_path, "pretrain", "fineweb10B")
    with pytest.raises(ManifestError, match=r"no finished sft shards under .*alpaca-sft/ \(run `make sft-shards "
                                            r"SFT_DATASET=alpaca`"):
        find_shards_dir(tmp_path, "sft", "alpaca")
    with pytest.raises(ManifestError, match=r"custom-sft/ \(run `make sft-shards SOURCE=path` first, or pass --shards"):
        find_shards_dir(tmp_path, "sft", "custom")
    write_test_shards(tmp_path / "sample-pretrain" / "def456")
    with pytest.raises(ManifestError, match="several .*abc123, .*def456; choose one with --shards-dir"):
        find_shards_dir(tmp_path, "pretrain", "sample")


def test_a_shards_dir_without_a_manifest_says_why(shards, tmp_path):
    """--shards-dir naming a missing folder, or the folder above the stage folder (DATA_DIR/sample-pretrain, as
    docs/data.md's `--shards-dir DATA_DIR/...` invites), was refused as "the stage has not finished; run it
    first", although a rerun of the stage only says it has finished."""
    with pytest.raises(ManifestError, match=f"^{re.escape(str(tmp_path / 'typo'))}: no such folder$"):
        data(tmp_path / "typo")
    manifest = shards / "manifest.json"  # the manifest itself: a NotADirectoryError's traceback before
    with pytest.raises(ManifestError, match=f"^{re.escape(str(manifest))}: a file, not a shards folder \\(pass the "
                                            "folder that holds manifest.json\\)$"):
        data(manifest)
    for above in (tmp_path / "sample-pretrain", tmp_path):
        with pytest.raises(ManifestError, match=re.escape(f"{above / 'manifest.json'}: no manifest; {above} holds the "
                                                          f"finished stage folder(s) {shards}: pass one of them")):
            data(above)
    (tmp_path / "sample-pretrain" / "def456" / "parts").mkdir(parents=True)  # a stage that has not finished
    with pytest.raises(ManifestError, match=r"def456/manifest\.json: no manifest \(the stage has not finished"):
        data(tmp_path / "sample-pretrain" / "def456")
