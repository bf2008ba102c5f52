"""SFT training (`python -m train sft`): batches and masks, the global loss normalization, 1 vs 2 gloo ranks,
learning on a small dataset, and the refusals. Tiny hand-made SFT shards and the `nano` model: seconds."""

import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gpt.chat import uses_template
from gpt.checkpoint import load_model, save_model, saved_chat_template
from gpt.model import GPT, preset
from gpt.template import CHAT_TEMPLATE
from pipelines.sft import SFTConfig
from pipelines.sft import run as sft_pipeline
from shards.manifest import write_manifest
from shards.tokenizer import EOT
from train.checkpoint import latest_checkpoint, resolve_checkpoint, save_checkpoint
from train.config import build_parser, parse_args
from train.data import SFTData
from train.log import read_log
from train.sft import SFTTrainConfig, distinct_prompts, main
from train_shards import write_examples

ROOT = Path(__file__).resolve().parents[1]
# Train examples (prompt, answer); the answer is followed by EOT. Token 0 is "!": a real answer token here.
TRAIN = [([10, 11, 12], [0, 0, 5]), ([20], [0]), ([30, 31], [7, 8, 9, 10, 11, 12, 13, 14, 15]), ([40, 41, 42, 43], [0]),
         ([50], [51, 52]), ([60, 61], [0, 62]), ([70], [71, 72, 73, 74, 75, 76]), ([80, 81, 82], [83])]
VAL = [([90, 91], [92, 0]), ([93], [94, 95, 96])]
FLAGS = ["--seq-len", "32", "--warmup", "1", "--eot-steps", "4", "--sample-tokens", "0", "--show", "0",
         "--no-progress"]


def write_shards(directory: Path, train=TRAIN, val=VAL) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    shards = [{**write_examples(directory / "val.bin", val, EOT), "split": "val"},
              {**write_examples(directory / "train.bin", train, EOT), "split": "train"}]
    write_manifest(directory, {"kind": "sft", "shards": shards})
    return directory


def nano(directory: Path) -> Path:
    torch.manual_seed(0)
    return save_model(GPT(preset("nano")), directory)


@pytest.fixture()
def setup(tmp_path):
    return {"shards": write_shards(tmp_path / "shards"), "init": nano(tmp_path / "init"), "tmp": tmp_path}


def sft(setup, run_dir, *flags):
    return main(["--shards-dir", str(setup["shards"]), "--init", str(setup["init"]), "--run-dir", str(run_dir),
                 *FLAGS, *flags])


def expected_row(prompt, answer, width):
    """By hand: inputs are the tokens but the last, targets the next token where it is supervised."""
    tokens = prompt + answer + [EOT]
    x = tokens[:-1] + [0] * (width - len(tokens) + 1)
    y = [-100] * (len(prompt) - 1) + answer + [EOT] + [-100] * (width - len(tokens) + 1)
    return x, y


def test_rows_mask_the_prompt_and_the_padding_by_length_not_by_token_value(setup):
    data = SFTData(setup["shards"], seq_len=32, batch_rows=8, seed=3)
    ids = data.plan.global_rows(0)
    assert sorted(ids) == list(range(8)) and list(ids) != list(range(8))  # shuffled, every example once
    batches = data.train_batches(0, 0, 1, micro_batch=4)
    ordered = sorted_by_length(ids)  # the rank's rows by length, then cut into micro-batches: little padding
    for (x, y), group in zip(batches, (ordered[:4], ordered[4:])):
        width = max(len(TRAIN[i][0]) + len(TRAIN[i][1]) for i in group)  # the longest row of the micro-batch
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (4, width)
        for row, i in enumerate(group):
            want_x, want_y = expected_row(*TRAIN[i], width)
            assert x[row].tolist() == want_x and y[row].tolist() == want_y, i
    # Example 1 is prompt [20], answer "!" (0): its target 0 is supervised, the 0s of its padding are not.
    x, y = data._batch(data.train, np.array([1, 2]))
    assert x[0].tolist() == [20, 0] + [0] * 9 and y[0].tolist() == [0, EOT] + [-100] * 9
    (vx, vy), = data.val_batches(0, 1, 4)
    assert vx.tolist() == [[90, 91, 92, 0], [93, 94, 95, 96]] and vy.tolist() == [[-100, 92, 0, EOT], [94, 95, 96, EOT]]
    assert data.val_prompt(0).tolist() == [90, 91] and data.val_answers(1)[0].tolist() == [94, 95, 96, EOT]


def sorted_by_length(ids):
    return sorted(ids, key=lambda i: (len(TRAIN[i][0]) + len(TRAIN[i][1]), i))


def test_long_examples_are_left_out_and_ranks_share_each_batch(setup):
    data = SFTData(setup["shards"], seq_len=6, batch_rows=2, seed=3)
    assert data.left_out == 2 and 2 not in data.train_ids  # 12 and 8 tokens > seq_len + 1 (7)
    assert data.plan.steps_per_epoch == 3
    seen = []
    for step in range(3):  # one epoch: every kept example once, the same rows for 1 rank or 2 ranks x 1
        whole = unpadded(data.train_batches(step, 0, 1, 2))
        assert sorted(unpadded(data.train_batches(step, 0, 2, 1) + data.train_batches(step, 1, 2, 1))) == sorted(whole)
        assert len(whole) == 2
        seen += whole
    kept = [TRAIN[i][0] + TRAIN[i][1] for i in (0, 1, 3, 4, 5, 7)]  # inputs: every token but the last (EOT)
    assert sorted(seen) == sorted(kept)


def unpadded(batches):
    """The input rows of `batches` without their padding (a row ends at its last supervised target: EOT)."""
    return [x[r, :int((y[r] != -100).nonzero().max()) + 1].tolist() for x, y in batches for r in range(len(x))]


@pytest.mark.parametrize("val_fraction, fix", [
    (0.0, "holds no {}; make the shards again with --val-fraction above 0"),
    (0.02, "holds no {} (--val-fraction 0.02 drew none); make the shards again with a larger --val-fraction")])
def test_an_empty_validation_split_is_named_as_such_not_blamed_on_the_seq_len(tmp_path, val_fraction, fix):
    """Shards made with --val-fraction 0 hold no validation example: the trainers said that none "fits in
    --seq-len", sending the user to raise a --seq-len that was never the cause. A small source split at a
    --val-fraction above 0 (0.02, the default of a --source) can leave it empty too: the fix is then a larger
    --val-fraction, not one "above 0", which it already was."""
    from pipelines.prefs import PrefsConfig, run as pref_pipeline
    from train.data import PrefData
    rows = [{"instruction": f"Colour {i}?", "input": "", "output": "red"} for i in range(8)]
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = [{"prompt": f"Colour {i}?", "chosen": "red", "rejected": "blue"} for i in range(8)]
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    sft_shards = sft_pipeline(SFTConfig(source=str(tmp_path / "sft.jsonl"), data_dir=str(tmp_path / "data"),
                                        workers=1, val_fraction=val_fraction))
    pref_shards = pref_pipeline(PrefsConfig(source=str(tmp_path / "prefs.jsonl"), data_dir=str(tmp_path / "data"),
                                           workers=1, val_fraction=val_fraction))
    sft_error = f"{sft_shards / 'val.bin'}: the validation split {fix.format('examples')}"
    with pytest.raises(ValueError, match=re.escape(sft_error)):
        SFTData(sft_shards, seq_len=128, batch_rows=2, seed=0)
    with pytest.raises(ValueError, match=re.escape(f"{pref_shards}: the validation split {fix.format('pairs')}")):
        PrefData(pref_shards, seq_len=128, batch_rows=2, seed=0)


def test_loss_is_the_mean_over_all_supervised_tokens_of_the_global_batch(setup):
    # Micro-batches of 1 example: 2 steps x 4 micro-batches with 2 to 10 supervised targets each.
    run_dir = setup["tmp"] / "run"
    assert sft(setup, run_dir, "--batch-examples", "4", "--micro-batch", "1", "--steps", "2", "--lr", "1e-2",
               "--eval-every", "2", "--save-every", "2") == 0
    log = read_log(run_dir)
    data = SFTData(setup["shards"], seq_len=32, batch_rows=4, seed=1337)
    model = load_model(setup["init"])  # the weights of step 1's forward pass
    totals, means = [0.0, 0], []
    with torch.no_grad():
        for i in data.plan.global_rows(0):
            x, y = data._batch(data.train, np.array([i]))
            losses = F.cross_entropy(model(x)[0], y[0], ignore_index=-100, reduction="none")[y[0] != -100]
            totals = [totals[0] + losses.sum().item(), totals[1] + len(losses)]
            means.append(losses.mean().item())
        assert log[1]["loss"] == pytest.approx(totals[0] / totals[1], abs=1e-5)
        assert abs(np.mean(means) - totals[0] / totals[1]) > 1e-3  # the mean of means would be told apart
        val = [(F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum").item(), (y != -100).sum().item())
               for x, y in data.val_batches(0, 1, 4)]
        assert log[0]["val_loss"] == pytest.approx(sum(v[0] for v in val) / sum(v[1] for v in val), abs=1e-5)
    assert 0 <= log[0]["eot_rate"] <= 1 and "eot_rate" in log[2]
    state = json.loads((latest_checkpoint(run_dir) / "state.json").read_text())
    assert state["sft"] is True and state["config"]["batch_examples"] == 4
    assert uses_template(latest_checkpoint(run_dir), "auto")  # the chat CLI applies the Alpaca template


def torchrun(nproc, args):
    """2 ranks: torchrun with gloo on 127.0.0.1; 1 rank: `main(args)` in this process (no torch import to pay)."""
    if nproc == 1:
        assert main(args) == 0
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "train", "sft"]
    proc = subprocess.run(command + args, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]  # the ranks' progress, then torchrun's


def test_two_gloo_ranks_give_the_losses_of_one_rank_with_twice_the_accumulation(setup):
    logs = {}
    for nproc in (1, 2):
        run_dir = setup["tmp"] / f"ranks-{nproc}"
        torchrun(nproc, ["--shards-dir", str(setup["shards"]), "--init", str(setup["init"]), "--run-dir",
                         str(run_dir), *FLAGS, "--batch-examples", "4", "--micro-batch", "1", "--steps", "4",
                         "--lr", "1e-2", "--eval-every", "2", "--save-every", "4"])
        logs[nproc] = read_log(run_dir)
    assert [r["step"] for r in logs[1]] == [r["step"] for r in logs[2]] == [0, 1, 2, 3, 4]
    assert logs[1][1]["accumulation"] == 4 and logs[2][1]["accumulation"] == 2
    for one, two in zip(logs[1], logs[2]):
        for key in ("loss", "grad_norm", "val_loss", "eot_rate"):  # grad_norm: the gradients, not only the loss
            assert (key in one) == (key in two)
            if key in one:
                assert two[key] == pytest.approx(one[key], abs=1e-5), (one["step"], key)


def test_sft_from_the_pretraining_run_lowers_the_answer_loss_and_raises_the_eot_rate(tmp_path, capsys):
    # A repetitive Alpaca-format dataset through the real SFT pipeline: the answer is a colour named by i % 3.
    colours = ["red", "green", "blue"]
    rows = [{"instruction": f"Colour {i}?", "input": "", "output": colours[i % 3]} for i in range(240)]
    (tmp_path / "colours.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shards = sft_pipeline(SFTConfig(source=str(tmp_path / "colours.jsonl"), data_dir=str(tmp_path / "data"),
                                    workers=1, val_fraction=0.1, block_size=64))
    assert shards.parent.name == "custom-sft"
    torch.manual_seed(0)
    pretrained = GPT(preset("nano"))  # stands for a pretraining run's last checkpoint
    save_checkpoint(tmp_path / "pretrain", 1, pretrained, torch.optim.AdamW(pretrained.parameters()), {}, keep=1)
    assert main(["--dataset", "custom", "--data-dir", str(tmp_path / "data"), "--pretrain-run",
                 str(tmp_path / "pretrain"), "--run-dir", str(tmp_path / "sft"), "--seq-len", "64",
                 "--batch-examples", "16", "--micro-batch", "16", "--steps", "30", "--lr", "1e-2", "--warmup", "2",
                 "--eval-every", "30", "--save-every", "30", "--eot-steps", "8", "--sample-tokens", "4",
                 "--show", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"starting from {tmp_path / 'pretrain' / 'ckpt' / 'step-000001'}" in out
    assert out.count("sample: 'Colour") == 4  # two validation prompts' answers at each of the two evaluations
    assert saved_chat_template(latest_checkpoint(tmp_path / "sft")) == CHAT_TEMPLATE  # the Alpaca prompt, for HF
    assert saved_chat_template(latest_checkpoint(tmp_path / "pretrain")) is None
    assert "held-out prompts and the answers of" in out and out.count("reference:") == 2
    assert out.count("  greedy:    ") == out.count("  sampled:   ") == 2
    first, last = [r for r in read_log(tmp_path / "sft") if "val_loss" in r]
    assert (first["step"], last["step"]) == (0, 30)
    assert first["val_loss"] > 10 and last["val_loss"] < 2  # ~ln 3 / 2: the colour is a guess, EOT is not
    assert first["eot_rate"] == 0 and last["eot_rate"] == 1


def scripted_val_losses(monkeypatch, losses, stop_after=None):
    """Make the loop's validation loss `losses`, one per evaluation; after the `stop_after`-th, a SIGTERM (the
    run then saves at the end of the next step and stops)."""
    import signal

    calls = iter(range(len(losses)))

    def evaluate(*args):
        i = next(calls)
        if i + 1 == stop_after:
            os.kill(os.getpid(), signal.SIGTERM)
        return {"val_loss": losses[i]}

    monkeypatch.setattr("train.loop.evaluate", evaluate)


def folders(run_dir):
    return sorted(p.name for p in (run_dir / "ckpt").iterdir())


def test_best_checkpoint_is_saved_at_each_improvement_kept_from_pruning_and_preferred(setup, monkeypatch, capsys):
    """Evaluations at every step: the loss improves at steps 1 and 3 only; checkpoints are due at step 6 alone."""
    flags = ["--batch-examples", "4", "--micro-batch", "4", "--steps", "6", "--eval-every", "1", "--save-every",
             "100", "--show", "1"]
    scripted_val_losses(monkeypatch, [9.0, 5.0, 6.0, 4.0, 4.5, 4.0, 4.7])  # step 0 (not a checkpoint) to 6
    run_dir = setup["tmp"] / "all"
    assert sft(setup, run_dir, *flags, "--keep-checkpoints", "0") == 0
    assert folders(run_dir) == ["best", "latest", "step-000001", "step-000003", "step-000006"]
    best = run_dir / "ckpt" / "step-000003"
    assert json.loads((run_dir / "ckpt" / "step-000006" / "state.json").read_text())["best"] == \
        {"step": 3, "val_loss": 4.0}  # a tie (step 5) is no improvement
    out = capsys.readouterr().out  # the summary and the held-out answers are the best checkpoint's
    assert "validation answer loss 9.0000 -> 4.0000" in out and f"(step 0 -> 3, the best checkpoint: {best}; " \
        "at the last step, 6: 4.7000" in out and f"held-out prompts and the answers of {best}, greedy and " in out
    # a run folder (and its ckpt/, and ckpt/best) means the best checkpoint; ckpt/latest still the latest
    for path in (run_dir, run_dir / "ckpt", run_dir / "ckpt" / "best"):
        assert resolve_checkpoint(path) == best
    assert resolve_checkpoint(run_dir / "ckpt" / "latest") == run_dir / "ckpt" / "step-000006"
    # pruning keeps the last checkpoint and the best
    scripted_val_losses(monkeypatch, [9.0, 5.0, 6.0, 4.0, 4.5, 4.0, 4.7])
    assert sft(setup, setup["tmp"] / "pruned", *flags, "--keep-checkpoints", "1") == 0
    assert folders(setup["tmp"] / "pruned") == ["best", "latest", "step-000003", "step-000006"]


@pytest.mark.parametrize("step_4, best", [(4.3, 2), (3.0, 4)])
def test_a_run_stopped_at_an_evaluation_step_evaluates_it_when_resumed_and_keeps_its_best(setup, monkeypatch,
                                                                                            step_4, best):
    """SIGTERM at step 4 (--eval-every 1) saves it unevaluated; the resumed run evaluates it first: its log, its
    checkpoints and its best (step 2's 4.0, or step 4's 3.0) are those of the uninterrupted run."""
    flags = ["--batch-examples", "4", "--micro-batch", "4", "--steps", "6", "--eval-every", "1", "--save-every",
             "100", "--keep-checkpoints", "1"]
    losses = [9.0, 5.0, 4.0, 4.5, step_4, 4.2, 4.1]  # steps 0 to 6: steps 5 and 6 worse than step 2's 4.0
    scripted_val_losses(monkeypatch, losses)
    assert sft(setup, setup["tmp"] / "uninterrupted", *flags) == 0
    run_dir = setup["tmp"] / "resumed"
    scripted_val_losses(monkeypatch, losses[:4], stop_after=4)  # SIGTERM during step 3's evaluation
    assert sft(setup, run_dir, *flags) == 143  # saved at the end of step 4, without its evaluation
    assert folders(run_dir) == ["best", "latest", "step-000002", "step-000004"]
    assert "val_loss" not in read_log(run_dir)[4]
    scripted_val_losses(monkeypatch, losses[4:])
    assert sft(setup, run_dir, *flags, "--resume") == 0
    log = read_log(run_dir)
    assert [(r["step"], r.get("val_loss")) for r in log] == list(enumerate(losses))
    assert [sorted(r) for r in log] == [sorted(r) for r in read_log(setup["tmp"] / "uninterrupted")]
    expected = sorted({"best", "latest", f"step-{best:06d}", "step-000006"})
    assert folders(run_dir) == folders(setup["tmp"] / "uninterrupted") == expected
    assert resolve_checkpoint(run_dir).name == f"step-{best:06d}"
    for step in (best, 6):
        state = json.loads((run_dir / "ckpt" / f"step-{step:06d}" / "state.json").read_text())
        assert state["best"] == {"step": best, "val_loss": losses[best]}


def test_the_eot_rate_counts_each_validation_prompt_once_and_an_empty_answer_as_not_ended(tmp_path, monkeypatch,
                                                                                          capsys):
    """A prompt with several answers has one greedy answer: it counts once, as it is shown once. An answer that is
    EOT alone says nothing: it does not count as one that ends."""
    val = [([90, 91], [92, 0]), ([93], [94]), ([90, 91], [5]), ([90, 91], [6, 7]), ([95], [96])]
    shards = write_shards(tmp_path / "shards", val=val)
    assert distinct_prompts(SFTData(shards, seq_len=32, batch_rows=4, seed=0)).tolist() == [0, 1, 4]
    # an answer that ends for the prompt [90, 91] (1 of 3 distinct prompts, 3 of 5 examples), an empty one for
    # [95], one cut short for [93]
    monkeypatch.setattr("train.sft.answers_to", lambda model, prompts, *args, **kwargs: [
        {90: [1, EOT], 93: [1], 95: [EOT]}[int(p[0])] for p in prompts])
    assert main(["--shards-dir", str(shards), "--init", str(nano(tmp_path / "init")), "--run-dir",
                 str(tmp_path / "run"), *FLAGS, "--batch-examples", "4", "--micro-batch", "4", "--steps", "1", "--show", "5"]) == 0
    assert [r["eot_rate"] for r in read_log(tmp_path / "run") if "eot_rate" in r] == [pytest.approx(1 / 3)] * 2
    assert capsys.readouterr().out.count("reference:") == 3


def test_refusals_name_the_fix(setup, tmp_path, capsys):
    assert main(["--shards-dir", str(setup["shards"]), "--pretrain-run", str(tmp_path / "nothing"),
                 "--run-dir", str(tmp_path / "run"), *FLAGS]) == 1
    assert f"no pretraining checkpoint under {tmp_path / 'nothing'}/ckpt" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # pretraining's batch in tokens is no SFT flag
        sft(setup, tmp_path / "run", "--batch-tokens", "4096")
    assert "unrecognized arguments: --batch-tokens 4096" in capsys.readouterr().err
    assert sft(setup, tmp_path / "run", "--batch-examples", "4", "--micro-batch", "3") == 1
    assert "the global batch of 4 examples is not a multiple of micro-batch 3 x 1 rank(s) = 3; change " \
           "--batch-examples" in capsys.readouterr().err
    manifest = json.loads((setup["shards"] / "manifest.json").read_text())
    (setup["shards"] / "manifest.json").write_text(json.dumps({**manifest, "kind": "pretrain"}))
    assert sft(setup, tmp_path / "run") == 1
    assert "kind 'pretrain', expected 'sft'" in capsys.readouterr().err
    assert not (tmp_path / "run" / "ckpt").exists()


def test_dataset_defaults():
    sample = parse_args([], SFTTrainConfig)
    assert (sample.epochs, sample.lr, sample.seq_len, sample.pretrain_run) == (4, 6e-3, 128, "runs/sample/pretrain")
    assert parse_args(["--epochs", "1"], SFTTrainConfig).epochs == 1
    alpaca = parse_args(["--dataset", "alpaca", "--lr", "3e-5"], SFTTrainConfig)
    assert (alpaca.epochs, alpaca.batch_examples, alpaca.micro_batch, alpaca.seq_len) == (2, 64, 8, 1024)
    assert (alpaca.lr, alpaca.warmup, alpaca.min_lr_ratio) == (3e-5, 50, 0.1)
    assert not {"model", "batch_tokens", "eval_tokens"} & {f.name for f in dataclasses.fields(SFTTrainConfig)}
    assert (sample.run_dir, alpaca.run_dir) == ("runs/sample/sft", "runs/alpaca/sft")
    help_text = " ".join(build_parser(SFTTrainConfig).format_help().split())
    assert "--lr LR recipes: sample 0.006, alpaca 2e-05" in help_text
    assert "--epochs EPOCHS given, it replaces the recipe's --steps; recipes: sample 4, alpaca 2" in help_text
    assert "default: runs/<dataset>/sft" in help_text


def test_make_demo_ends_with_its_duration_and_what_to_try_next(tmp_path):
    """The demo's steps replaced by `true` (MAKE=true), its setup by an up-to-date stamp in an empty VENV."""
    (tmp_path / ".installed").touch()
    proc = subprocess.run(["make", "--no-print-directory", "demo", "MAKE=true", f"VENV={tmp_path}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert re.fullmatch(r"demo: done in 0 min \d+ s\. Try next:", lines[-4]), lines
    assert [line.split()[:2] for line in lines[-3:]] == [["make", "chat"], ["make", "generate"], ["make", "export-hf"]]


def test_a_run_whose_state_records_no_init_resumes_from_its_checkpoint(setup, capsys):
    """A run resumed before state.json kept --init recorded `init: null`: RESUME=1 (no INIT=) goes on from its
    checkpoint as before, without a pretraining run (it looked for one to start from: an error without it, else that
    run's latest recorded as the start it never was)."""
    run_dir = setup["tmp"] / "run"
    flags = ["--batch-examples", "4", "--micro-batch", "4", "--steps", "4", "--save-every", "2", "--eval-every", "2",
             "--keep-checkpoints", "0"]
    assert sft(setup, run_dir, *flags) == 0
    shutil.rmtree(run_dir / "ckpt" / "step-000004")
    (run_dir / "ckpt" / "latest").write_text("step-000002\n")
    state_path = run_dir / "ckpt" / "step-000002" / "state.json"
    state = json.loads(state_path.read_text())
    state["config"]["init"] = None
    state_path.write_text(json.dumps(state))
    assert sft(setup, run_dir, *flags, "--resume") == 1  # its first --init again: the record cannot confirm it
    assert (f"cannot resume from {run_dir / 'ckpt' / 'step-000002'} with --init {setup['init']}: its state.json "
            "records no init (a new model, or a run resumed before the init was recorded); resume without --init"
            ) in capsys.readouterr().err
    assert main(["--shards-dir", str(setup["shards"]), "--run-dir", str(run_dir), "--pretrain-run",
                 str(setup["tmp"] / "no-pretraining"), *FLAGS, *flags, "--resume"]) == 0
    assert json.loads((run_dir / "ckpt" / "step-000004" / "state.json").read_text())["config"]["init"] is None
