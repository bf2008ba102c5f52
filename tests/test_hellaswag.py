"""HellaSwag: the data stage through a fake hub (tests/fake_hub.py), the scoring against transformers on the same
weights, 2 gloo processes against 1, and the in-training evaluation."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fake_hub import FakeHub
from pipelines import hellaswag, hub
from shards.manifest import load_manifest
from shards.report import main as inspect_main
from shards.sft import open_sft_shard
from shards.tokenizer import get_encoding

VALIDATION = "data/validation-00000-of-00001.parquet"
EXAMPLES = [
    {"ind": 24, "activity_label": "Roof shingle removal",
     "ctx": "A man is sitting on a roof. he", "label": "3",
     "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                 "is holding a rubik's cube.", "starts pulling up roofing on a roof."]},
    {"ind": 92, "activity_label": "Clean and jerk",
     "ctx": "A lady walks to a barbell. She bends down and grabs the pole. the lady", "label": "3",
     "endings": ["swings and lands in her arms.", "pulls the barbell forward.", "pulls a rope attached to the barbell.",
                 "stands and lifts the weight over her head."]},
    {"ind": 106, "activity_label": "Canoeing", "ctx": "Two women in a child are shown in a canoe while a man pulls "
     "the canoe while standing in the water, with other individuals visible in the background. the child and a "
     "different man", "label": "2",
     "endings": ["are then shown paddling down a river in a boat while a woman talks.",
                 "are driving the canoe, they go down the river flowing side to side.",
                 "sit in a canoe while the man paddles.", "walking go down the rapids, while the man in his "
                 "helicopter almost falls and goes out of canoehood."]},
    {"ind": 114, "activity_label": "High jump", "ctx": "A boy is running down a track. the boy", "label": "2",
     "endings": ["runs into a car.", "gets in a mat.", "lifts his body above the height of a pole.",
                 "stands on his hands and springs."]},
    {"ind": 200, "activity_label": "Unicode", "ctx": "Café owners — naïvely — say “hi”. they", "label": "0",
     "endings": ["smile.", "  leave twice.", "", "order ☕ and 🍰."]},
]


def hellaswag_parquet(rows: list[dict]) -> bytes:
    buf = io.BytesIO()
    columns = ("ind", "activity_label", "ctx", "endings", "label")
    pq.write_table(pa.table({c: [r[c] for r in rows] for c in columns}), buf)
    return buf.getvalue()


def run_stage(tmp_path, monkeypatch, rows, faults=None):
    """The stage on `rows`, the hub faked at a commit of its own; returns the output folder."""
    monkeypatch.setitem(hub.SOURCES, "hellaswag", dataclasses.replace(hub.HELLASWAG, revision=FakeHub.COMMIT))
    monkeypatch.setattr(hub, "RETRY", hub.Retry(tries=6, first_s=0.01, max_s=0.05))
    with FakeHub({"Rowan/hellaswag": {VALIDATION: hellaswag_parquet(rows)}}, faults=faults or {}) as server:
        server.point_huggingface_hub(monkeypatch)
        return hellaswag.run(hellaswag.HellaSwagConfig(data_dir=str(tmp_path)))


def test_the_pinned_source_is_rowan_hellaswag_validation():
    assert (hub.HELLASWAG.repo_id, hub.HELLASWAG.repo_type, hub.HELLASWAG.files) == (
        "Rowan/hellaswag", "dataset", (VALIDATION,))
    assert hub.HELLASWAG.revision == "9c75cc00ec2e1f93893cbd25ba617ee30eb70d88"
    assert re.fullmatch(r"[0-9a-f]{40}", hub.HELLASWAG.revision), "a pinned commit, not a branch"


def test_stage_downloads_verifies_and_tokenizes_as_build_nanogpt(tmp_path, monkeypatch, capsys):
    out = run_stage(tmp_path, monkeypatch, EXAMPLES, faults={VALIDATION: [503, "drop"]})
    assert out.parent == tmp_path / "hellaswag-eval"
    m = load_manifest(out)
    payload = hellaswag_parquet(EXAMPLES)
    assert m["kind"] == "hellaswag" and m["source"]["dataset"] == "Rowan/hellaswag"
    assert m["source"]["files"] == [{"file": VALIDATION, "bytes": len(payload),
                                     "sha256": hashlib.sha256(payload).hexdigest()}]
    assert m["totals"]["examples"] == 5 and m["totals"]["rows"] == 20
    enc = get_encoding()
    shard = open_sft_shard(out / "val.bin")
    assert len(shard) == 20
    for i, example in enumerate(EXAMPLES):
        context = enc.encode(example["ctx"])
        for j, ending in enumerate(example["endings"]):
            tokens, mask = shard.example(4 * i + j)
            expected = context + enc.encode(" " + ending)
            assert tokens.tolist() == expected
            assert mask.tolist() == [0] * len(context) + [1] * (len(expected) - len(context))
    labels = np.fromfile(out / "val.labels", dtype=np.uint8)
    assert labels.tolist() == [int(e["label"]) for e in EXAMPLES]
    entry = m["shards"][0]
    assert entry["labels_sha256"] == hashlib.sha256(labels.tobytes()).hexdigest()
    assert entry["split"] == "val" and entry["num_examples"] == 20
    assert inspect_main([str(tmp_path), "--verify", "--decode", "1"]) == 0
    shown = capsys.readouterr().out
    assert "CONTEXT: A man is sitting on a roof. he" in shown
    assert "ENDING 3 (right):  starts pulling up roofing on a roof." in shown

    stat = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    assert hellaswag.run(hellaswag.HellaSwagConfig(data_dir=str(tmp_path))) == out, "a rerun needs no network"
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == stat, "and writes nothing"
    assert "is complete, nothing to do" in capsys.readouterr().out


def test_a_changed_labels_file_fails_inspect_naming_it(tmp_path, monkeypatch, capsys):
    out = run_stage(tmp_path, monkeypatch, EXAMPLES[:2])
    (out / "val.labels").write_bytes(bytes([3, 1]))
    assert inspect_main([str(out), "--verify"]) == 1
    assert f"BAD {out / 'val.labels'}: sha256" in capsys.readouterr().err


def _bad(field, value):
    return [EXAMPLES[0], {**EXAMPLES[1], field: value}]


@pytest.mark.parametrize("rows, message", [
    (_bad("endings", ["a", "b", "c"]), r"row 1: endings is \['a', 'b', 'c'\], expected a list of 4 strings"),
    (_bad("label", "4"), r"row 1: label is '4', expected \"0\" to \"3\""),
    (_bad("label", ""), r"row 1: label is '', expected \"0\" to \"3\""),
    (_bad("ctx", ""), r"row 1: ctx is '', expected a non-empty string"),
], ids=["three-endings", "label-4", "no-label", "no-context"])
def test_bad_rows_are_named_with_file_and_row(tmp_path, monkeypatch, capsys, rows, message):
    with pytest.raises(ValueError, match=re.escape(VALIDATION.split("/")[-1]) + ", " + message):
        run_stage(tmp_path, monkeypatch, rows)
    assert not list((tmp_path / "hellaswag-eval").glob("*/manifest.json"))


# --- scoring -----------------------------------------------------------------------------------------------------

LONG = {"ind": 300, "activity_label": "Long", "label": "1",
        "ctx": " ".join(["The people keep walking along the shore and talking about the weather."] * 6) + " they",
        "endings": ["stop.", "sit down on the warm sand and watch the waves.", "run.", "fly away into the sky."]}


def tiny_model(seed: int = 0):
    import torch
    from gpt.model import GPT, preset
    torch.manual_seed(seed)
    return GPT(preset("nano")).eval()


def hf_losses(hf, tokens: list[int], start: int, context: int) -> tuple[float, float]:
    """Summed and mean loss of tokens[start:] given what precedes them, by transformers, on the last `context` + 1
    (the model's `context` positions as inputs)."""
    import torch
    cut = max(0, len(tokens) - context - 1)
    tokens, start = tokens[cut:], max(1, start - cut)
    with torch.no_grad():
        logits = hf(torch.tensor([tokens[:-1]])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    losses = -logp[torch.arange(len(tokens) - 1), torch.tensor(tokens[1:])][start - 1:]
    return losses.sum().item(), losses.mean().item()


def test_scores_equal_transformers_on_the_same_weights(tmp_path, monkeypatch):
    import torch
    from gpt.hf import to_hf
    from train import hellaswag as score
    from train.distributed import Dist

    out = run_stage(tmp_path, monkeypatch, EXAMPLES + [LONG])
    data = score.HellaSwagData(out)
    model = tiny_model()
    hf = to_hf(model)
    enc = get_encoding()
    expected_right = [0, 0]
    for i, example in enumerate(EXAMPLES + [LONG]):
        context = enc.encode(example["ctx"])
        theirs = [hf_losses(hf, context + enc.encode(" " + e), len(context), model.config.block_size)
                  for e in example["endings"]]
        sums, counts = score.ending_losses(model, data.rows(i), torch.device("cpu"))
        mean = (sums / counts).tolist()
        for j in range(4):
            assert sums[j].item() == pytest.approx(theirs[j][0], abs=1e-5)
            assert mean[j] == pytest.approx(theirs[j][1], abs=1e-5)
        label = int(example["label"])
        expected_right[0] += min(range(4), key=lambda j: theirs[j][0]) == label
        expected_right[1] += min(range(4), key=lambda j: theirs[j][1]) == label
    assert len(enc.encode(LONG["ctx"])) > model.config.block_size, "a row cut from the left"
    for batch in (1, 3, 8):
        result = score.evaluate(model, data, Dist(), batch_examples=batch, progress=False)
        assert (result["examples"], result["correct"], result["correct_norm"]) == (6, *expected_right)
    assert score.evaluate(model, data, Dist(), limit=2, progress=False)["examples"] == 2
    assert not model.training


def test_cli_scores_our_checkpoint_and_a_transformers_folder_alike(tmp_path, monkeypatch, capsys):
    import json
    from gpt.checkpoint import save_model
    from gpt.hf import to_hf
    from train.__main__ import main

    out = run_stage(tmp_path, monkeypatch, EXAMPLES)
    model = tiny_model(1)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    save_model(model, ours)
    to_hf(model).save_pretrained(theirs)
    capsys.readouterr()
    assert main(["hellaswag", "--ckpt", str(ours), "--data-dir", str(tmp_path), "--batch-examples", "2"]) == 0
    shown = capsys.readouterr().out
    assert re.search(r"hellaswag: 5 examples of 5: acc 0\.\d{4} \(\d\), acc_norm 0\.\d{4} \(\d\) in .* s -> "
                     + re.escape(str(ours / "hellaswag.json")), shown), shown
    mine = json.loads((ours / "hellaswag.json").read_text())
    assert mine["examples"] == 5 and mine["acc"] == mine["correct"] / 5 and mine["ckpt"] == str(ours)
    result = tmp_path / "r" / "hf.json"
    assert main(["hellaswag", "--ckpt", str(theirs), "--shards-dir", str(out), "--limit", "3",
                 "--out", str(result)]) == 0
    other = json.loads(result.read_text())
    assert other["examples"] == 3 and other["limit"] == 3
    assert main(["hellaswag", "--ckpt", str(theirs), "--shards-dir", str(out), "--out", str(result)]) == 0
    other = json.loads(result.read_text())
    assert (other["correct"], other["correct_norm"]) == (mine["correct"], mine["correct_norm"])


def test_cli_names_what_is_missing(tmp_path, capsys):
    from gpt.checkpoint import save_model
    from train.evaluate import main

    save_model(tiny_model(), tmp_path / "m")
    assert main(["--ckpt", str(tmp_path / "m"), "--data-dir", str(tmp_path)]) == 1
    assert (f"hellaswag: error: no finished eval shards under {tmp_path / 'hellaswag-eval'}/ (run `make "
            "hellaswag-shards` first, or pass --shards-dir)") in capsys.readouterr().err
    assert main(["--data-dir", str(tmp_path)]) == 1
    assert "--ckpt is required" in capsys.readouterr().err


def test_a_missing_labels_file_is_named_with_what_to_do(tmp_path, monkeypatch):
    """A HellaSwag folder without its val.labels failed with a bare "[Errno 2] No such file or directory"."""
    from shards.format import ShardError
    from train.hellaswag import HellaSwagData

    out = run_stage(tmp_path, monkeypatch, EXAMPLES)
    (out / "val.labels").unlink()
    with pytest.raises(ShardError, match=re.escape(f"{out / 'val.labels'}: missing; remove {out} and run `make "
                                                   "hellaswag-shards` again")):
        HellaSwagData(out)


def _score_rank(rank: int, world_size: int, store: str, ckpt: str, shards: str, out: str) -> None:
    import json
    import torch.distributed as torch_dist
    from gpt.checkpoint import load_model
    from train import hellaswag as score
    from train.distributed import Dist

    if world_size > 1:
        torch_dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    dist = Dist(rank=rank, world_size=world_size)
    result = score.evaluate(load_model(ckpt), score.HellaSwagData(shards), dist, batch_examples=2, progress=False)
    with open(f"{out}.{world_size}.{rank}", "w") as f:
        json.dump(result, f)
    dist.close()


def test_two_gloo_processes_count_what_one_does(tmp_path, monkeypatch):
    import json
    import torch.multiprocessing as mp
    from gpt.checkpoint import save_model

    out = run_stage(tmp_path, monkeypatch, EXAMPLES + [LONG])
    save_model(tiny_model(2), tmp_path / "m")
    args = (str(tmp_path / "m"), str(out), str(tmp_path / "result"))
    _score_rank(0, 1, "", *args)
    mp.spawn(_score_rank, args=(2, str(tmp_path / "store"), *args), nprocs=2)
    one = json.loads((tmp_path / "result.1.0").read_text())
    assert one["examples"] == 6
    for rank in (0, 1):
        assert json.loads((tmp_path / f"result.2.{rank}").read_text()) == one


# --- during pretraining -------------------------------------------------------------------------------------------

def test_hellaswag_at_each_evaluation_logs_acc_norm_and_leaves_the_losses_alone(tmp_path, monkeypatch):
    from train.log import read_log
    from train.pretrain import main as pretrain
    from train_shards import write_test_shards

    run_stage(tmp_path, monkeypatch, EXAMPLES + [LONG])
    shards = write_test_shards(tmp_path / "shards")
    flags = ["--shards-dir", str(shards), "--data-dir", str(tmp_path), "--model", "nano", "--seq-len", "32",
             "--batch-tokens", "256", "--micro-batch", "4", "--warmup", "2", "--eval-tokens", "256", "--no-progress",
             "--steps", "5", "--eval-every", "2", "--sample-tokens", "0"]
    assert pretrain([*flags, "--run-dir", str(tmp_path / "plain")]) == 0
    assert pretrain([*flags, "--run-dir", str(tmp_path / "hs"), "--hellaswag", "--hellaswag-examples", "4"]) == 0
    plain, hs = read_log(tmp_path / "plain"), read_log(tmp_path / "hs")
    keys = ("step", "loss", "val_loss", "grad_norm", "lr")
    assert [{k: r[k] for k in keys if k in r} for r in hs] == [{k: r[k] for k in keys if k in r} for r in plain]
    assert [r["step"] for r in hs if "hellaswag_acc_norm" in r] == [r["step"] for r in hs if "val_loss" in r] == [0, 2,
                                                                                                                 4, 5]
    assert not any("hellaswag_acc_norm" in r for r in plain)
    assert all(r["hellaswag_acc_norm"] in (0, 0.25, 0.5, 0.75, 1) for r in hs if "hellaswag_acc_norm" in r)
    final = "ckpt/step-000005/model.safetensors"
    assert (tmp_path / "hs" / final).read_bytes() == (tmp_path / "plain" / final).read_bytes()


def test_hellaswag_without_the_shards_says_what_to_run(tmp_path, capsys):
    from train.pretrain import main as pretrain
    from train_shards import write_test_shards

    shards = write_test_shards(tmp_path / "shards")
    assert pretrain(["--shards-dir", str(shards), "--data-dir", str(tmp_path), "--run-dir", str(tmp_path / "r"),
                     "--model", "nano", "--seq-len", "32", "--hellaswag"]) == 1
    assert "run `make hellaswag-shards` first" in capsys.readouterr().err


def test_a_run_stopped_at_an_evaluation_step_scores_it_once_when_resumed(tmp_path, monkeypatch):
    """SIGTERM during step 4 (an evaluation step, raised as the step prefetches the next one's batch): step 4 is
    saved without its evaluation, and the resumed run evaluates it first, HellaSwag with it, once: its log is the
    uninterrupted run's."""
    import signal

    from train import loop
    from train import pretrain as stage
    from train.log import read_log
    from train_shards import write_test_shards

    run_stage(tmp_path, monkeypatch, EXAMPLES + [LONG])
    shards = write_test_shards(tmp_path / "shards")
    flags = ["--shards-dir", str(shards), "--data-dir", str(tmp_path), "--model", "nano", "--seq-len", "32",
             "--batch-tokens", "256", "--micro-batch", "4", "--warmup", "2", "--eval-tokens", "256", "--no-progress",
             "--steps", "5", "--eval-every", "2", "--sample-tokens", "0", "--hellaswag"]
    scored, evaluate, fetch = [], stage.evaluate, loop._fetch
    monkeypatch.setattr(stage, "evaluate", lambda *a, **k: scored.append(1) or evaluate(*a, **k))
    assert stage.main([*flags, "--run-dir", str(tmp_path / "plain")]) == 0
    assert len(scored) == 4  # steps 0, 2, 4 and 5

    def fetch_and_stop(data, step, *args):
        if step == 4:
            signal.raise_signal(signal.SIGTERM)
        return fetch(data, step, *args)

    scored.clear()
    monkeypatch.setattr(loop, "_fetch", fetch_and_stop)
    assert stage.main([*flags, "--run-dir", str(tmp_path / "stopped")]) == 143
    monkeypatch.setattr(loop, "_fetch", fetch)
    last = read_log(tmp_path / "stopped")[-1]
    assert last["step"] == 4 and "val_loss" not in last and "hellaswag_acc_norm" not in last
    assert stage.main([*flags, "--run-dir", str(tmp_path / "stopped"), "--resume"]) == 0
    assert len(scored) == 4, "steps 0, 2, 4 (when resumed) and 5, each once"
    keys = ("step", "loss", "val_loss", "hellaswag_acc_norm", "hellaswag_acc")
    assert ([{k: r[k] for k in keys if k in r} for r in read_log(tmp_path / "stopped")]
            == [{k: r[k] for k in keys if k in r} for r in read_log(tmp_path / "plain")])


@pytest.mark.parametrize("folders", [0, 2], ids=["none", "several"])
def test_hellaswag_names_its_own_flag_for_the_shards_folder(tmp_path, capsys, folders):
    """pretrain's --shards-dir is the pretraining data: the HellaSwag folder is --hellaswag-dir."""
    from train.pretrain import main as pretrain
    from train_shards import write_test_shards

    shards = write_test_shards(tmp_path / "shards")
    for name in ("a" * 12, "b" * 12)[:folders]:
        (tmp_path / "hellaswag-eval" / name).mkdir(parents=True)
        (tmp_path / "hellaswag-eval" / name / "manifest.json").write_text("{}")
    assert pretrain(["--shards-dir", str(shards), "--data-dir", str(tmp_path), "--run-dir", str(tmp_path / "r"),
                     "--model", "nano", "--seq-len", "32", "--hellaswag"]) == 1
    err = capsys.readouterr().err
    assert "--hellaswag-dir" in err and "--shards-dir" not in err, err
