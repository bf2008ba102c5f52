"""DPO training (`python -m train dpo`): pair batches, the loss against a direct computation, log 2 at the first
step, label smoothing, 1 vs 2 gloo ranks (and 2 ranks resumed), SIGTERM and resume, learning, the recipes and the
refusals.

Hand-made preference shards (the SFT format, chosen and rejected, as the prefs pipeline writes them) of a
256-token vocabulary and the `nano` model: seconds per run. The task is easy: the chosen answers count up
from 100, the rejected ones are other tokens (200 and up), so DPO learns to prefer the chosen quickly.
"""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gpt.checkpoint import best_checkpoint, load_model, resolve_checkpoint
from shards.manifest import write_manifest
from train.config import build_parser, parse_args
from train.data import PrefData
from train.dpo import DPOTrainConfig, dpo_losses, main
from train.checkpoint import read_state
from train.log import read_log
from train_shards import SMALL_EOT as EOT
from train_shards import one_thread  # noqa: F401 (an autouse fixture)
from train_shards import (assert_two_rank_resume_is_exact, assert_two_ranks_equal_one, make_pairs, run_two_ranks,
                          small_model, stop_after_first_checkpoint, write_pref_shards)

FLAGS = ["--seq-len", "32", "--warmup", "1", "--sample-tokens", "0", "--show", "0", "--no-progress"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dpo")
    shards = write_pref_shards(tmp / "shards", make_pairs(64, 0), make_pairs(12, 1))
    return {"shards": shards, "init": small_model(tmp / "init"), "tmp": tmp}


def flags(setup, run_dir, *extra):
    return ["--shards-dir", str(setup["shards"]), "--init", str(setup["init"]), "--run-dir", str(run_dir),
            *FLAGS, *extra]


def expected_rows(pair, width):
    """By hand, for one sequence (prompt, answer): its inputs and targets padded to `width`."""
    prompt, answer = pair
    tokens = prompt + answer + [EOT]
    x = tokens[:-1] + [0] * (width - len(tokens) + 1)
    y = [-100] * (len(prompt) - 1) + answer + [EOT] + [-100] * (width - len(tokens) + 1)
    return x, y


def test_a_micro_batch_is_the_chosen_then_the_rejected_of_its_pairs_padded_together(setup):
    pairs = make_pairs(64, 0)
    data = PrefData(setup["shards"], seq_len=32, batch_rows=8, seed=3)
    assert data.rows_name == "pairs" and len(data.train_ids) == 64 and len(data.val_ids) == 12
    rows = data.plan.global_rows(0)
    batches = data.train_batches(0, 0, 1, micro_batch=4)
    longer = [sequence(p) for p in pairs]
    ordered = sorted(rows, key=lambda i: (longer[i], i))  # pairs by their longer sequence, then cut
    for (x, y), group in zip(batches, (ordered[:4], ordered[4:])):
        width = max(longer[i] for i in group) - 1  # the longest of the 8 sequences, its inputs
        assert x.shape == y.shape == (8, width)
        for row, i in enumerate(group):
            for side in (1, 2):  # rows 0-3: chosen; rows 4-7: the rejected of the same pairs
                want_x, want_y = expected_rows((pairs[i][0], pairs[i][side]), width)
                r = row + 4 * (side - 1)
                assert x[r].tolist() == want_x and y[r].tolist() == want_y, (i, side)
    two = data.train_batches(0, 0, 2, 4) + data.train_batches(0, 1, 2, 4)  # 2 ranks: the same pairs
    assert sorted(pair_rows(two)) == sorted(pair_rows(batches))
    short = PrefData(setup["shards"], seq_len=8, batch_rows=4, seed=3)  # a pair goes when either side is long
    assert short.left_out == sum(n > 9 for n in longer) + sum(sequence(p) > 9 for p in make_pairs(12, 1))
    assert set(short.train_ids) == {i for i, n in enumerate(longer) if n <= 9}
    assert data.val_prompt(0).tolist() == make_pairs(12, 1)[0][0]
    chosen, rejected = data.val_answers(0)
    assert (chosen.tolist(), rejected.tolist()) == tuple(a + [EOT] for a in make_pairs(12, 1)[0][1:])


def sequence(pair) -> int:
    """The tokens of a pair's longer sequence: prompt, answer, EOT."""
    prompt, chosen, rejected = pair
    return len(prompt) + max(len(chosen), len(rejected)) + 1


def pair_rows(batches):
    """(chosen inputs, rejected inputs) of every pair of `batches`, without padding."""
    out = []
    for x, y in batches:
        half = len(x) // 2
        seqs = [tuple(x[r, :int((y[r] != -100).nonzero().max()) + 1].tolist()) for r in range(len(x))]
        out += list(zip(seqs[:half], seqs[half:]))
    return out


def logp(model, prompt, answer) -> float:
    """The summed log-probability of `answer` + EOT after `prompt`, from a forward of this sequence alone."""
    tokens = torch.tensor([prompt + answer + [EOT]])
    logits = model(tokens[:, :-1])[0]
    picked = F.log_softmax(logits.double(), dim=-1).gather(1, tokens[0, 1:, None])[:, 0]
    return picked[len(prompt) - 1:].sum().item()


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_loss_and_metrics_equal_a_direct_computation_and_start_at_log_2(setup, label_smoothing):
    run_dir = setup["tmp"] / f"direct-{label_smoothing}"
    beta = 0.5
    assert main(flags(setup, run_dir, "--batch-pairs", "8", "--micro-batch", "2", "--steps", "2", "--lr", "1e-2",
                      "--beta", str(beta), "--label-smoothing", str(label_smoothing), "--eval-every", "2",
                      "--save-every", "1", "--keep-checkpoints", "0")) == 0
    log = read_log(run_dir)
    # At step 0 (validation) and step 1 (train) the policy is the reference: every reward 0, the loss log 2
    for record, prefix in ((log[0], "val_"), (log[1], "")):
        assert record[f"{prefix}loss"] == pytest.approx(math.log(2), abs=1e-7)
        for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
            assert record[f"{prefix}{name}"] == 0.0, name
    # Step 2: the policy after one step against the reference, from two independent forwards per pair
    pairs = make_pairs(64, 0)
    data = PrefData(setup["shards"], seq_len=32, batch_rows=8, seed=1337)
    policy, reference = load_model(run_dir / "ckpt" / "step-000001"), load_model(setup["init"])
    losses, chosen_rewards, rejected_rewards, logps_c, logps_r = [], [], [], [], []
    with torch.no_grad():
        for i in data.plan.global_rows(1):
            prompt, chosen, rejected = pairs[data.train_ids[i]]
            c, r = logp(policy, prompt, chosen), logp(policy, prompt, rejected)
            rc, rr = logp(reference, prompt, chosen), logp(reference, prompt, rejected)
            z = beta * ((c - rc) - (r - rr))
            losses.append(-(1 - label_smoothing) * F.logsigmoid(torch.tensor(z, dtype=torch.float64)).item()
                          - label_smoothing * F.logsigmoid(torch.tensor(-z, dtype=torch.float64)).item())
            chosen_rewards.append(beta * (c - rc))
            rejected_rewards.append(beta * (r - rr))
            logps_c.append(c)
            logps_r.append(r)
    step = log[2]
    assert step["loss"] == pytest.approx(np.mean(losses), abs=1e-5)
    assert abs(np.mean(losses) - math.log(2)) > 1e-3  # the step moved the policy
    assert step["rewards/chosen"] == pytest.approx(np.mean(chosen_rewards), abs=1e-5)
    assert step["rewards/rejected"] == pytest.approx(np.mean(rejected_rewards), abs=1e-5)
    margins = np.array(chosen_rewards) - np.array(rejected_rewards)
    assert step["rewards/margins"] == pytest.approx(margins.mean(), abs=1e-5)
    assert step["rewards/accuracies"] == pytest.approx((margins > 0).mean())
    assert step["logps/chosen"] == pytest.approx(np.mean(logps_c), abs=1e-4)
    assert step["logps/rejected"] == pytest.approx(np.mean(logps_r), abs=1e-4)
    assert "val_rewards/accuracies" in step and "val_logps/rejected" in step  # evaluated at the last step
    state = json.loads((run_dir / "ckpt" / "step-000002" / "state.json").read_text())
    assert state["dpo"] is True and state["config"]["init"] == str(setup["init"])
    assert state["config"]["label_smoothing"] == label_smoothing


def test_dpo_losses_follow_the_formulas():
    logps = torch.tensor([-3.0, -5.0, -4.0, -2.0])  # chosen of pairs 0, 1, then their rejected
    ref = torch.tensor([-3.5, -4.0, -4.5, -2.5])
    losses, chosen, rejected = dpo_losses(logps, ref, beta=0.1)
    assert chosen.tolist() == pytest.approx([0.05, -0.1]) and rejected.tolist() == pytest.approx([0.05, 0.05])
    z = torch.tensor([0.0, -0.15])
    assert losses.tolist() == pytest.approx((-F.logsigmoid(z)).tolist())
    smoothed, _, _ = dpo_losses(logps, ref, beta=0.1, label_smoothing=0.25)
    assert smoothed.tolist() == pytest.approx((-0.75 * F.logsigmoid(z) - 0.25 * F.logsigmoid(-z)).tolist())


STEPS = 8
RUN = ["--batch-pairs", "8", "--steps", str(STEPS), "--lr", "1e-2", "--eval-every", "4", "--save-every", "1",
       "--keep-checkpoints", "0"]


@pytest.fixture(scope="module")
def reference_run(setup):
    """1 rank, 4 micro-batches of 2 pairs per step: the run the others are compared with; it learns."""
    run_dir = setup["tmp"] / "reference"
    assert main(flags(setup, run_dir, *RUN, "--micro-batch", "2")) == 0
    return read_log(run_dir)


def test_the_easy_task_is_learned_and_the_best_checkpoint_kept(setup, reference_run):
    first, last = reference_run[0], reference_run[-1]
    assert first["val_rewards/accuracies"] == 0 and last["val_rewards/accuracies"] >= 0.9
    assert last["val_rewards/margins"] > 0.5 and last["val_loss"] < 0.5
    assert last["val_rewards/chosen"] > 0 > last["val_rewards/rejected"]
    evals = [r for r in reference_run if "val_loss" in r and r["step"] > 0]
    lowest = min(evals, key=lambda r: r["val_loss"])
    run_dir = setup["tmp"] / "reference"
    assert read_state(best_checkpoint(run_dir))["step"] == lowest["step"]
    assert resolve_checkpoint(run_dir) == best_checkpoint(run_dir)  # what chat and generate load


def compared(log):
    keys = ("loss", "val_loss", *(f"{p}rewards/{m}" for p in ("", "val_") for m in ("accuracies", "margins")))
    return {r["step"]: {k: r[k] for k in keys if k in r} for r in log}


@pytest.fixture(scope="module")
def ddp_run(setup):
    """2 gloo ranks, 2 micro-batches of 2 pairs each per step: the reference run's global batches."""
    run_dir = setup["tmp"] / "ddp"
    run_two_ranks("dpo", flags(setup, run_dir, *RUN, "--micro-batch", "2"))
    return run_dir


def test_two_gloo_ranks_give_the_losses_of_one_rank_with_twice_the_accumulation(setup, reference_run, ddp_run):
    assert_two_ranks_equal_one(ddp_run, setup["tmp"] / "reference", reference_run, compared, STEPS)


def test_two_ranks_resumed_from_a_checkpoint_give_the_uninterrupted_two_rank_run(setup, ddp_run):
    copy = setup["tmp"] / "ddp-resumed"
    assert_two_rank_resume_is_exact("dpo", ddp_run, copy, flags(setup, copy, *RUN, "--micro-batch", "2"), compared,
                                    STEPS)


def test_sigterm_then_resume_gives_the_same_losses(setup, reference_run, capsys):
    run_dir = setup["tmp"] / "interrupted"
    out = stop_after_first_checkpoint("dpo", flags(setup, run_dir, *RUN, "--micro-batch", "2"), run_dir)
    stopped_at = max(r["step"] for r in read_log(run_dir))
    assert 1 <= stopped_at < STEPS and f"stopped by SIGTERM after step {stopped_at}" in out
    assert main(flags(setup, run_dir, *RUN, "--micro-batch", "2", "--resume")) == 0
    assert compared(read_log(run_dir)) == compared(reference_run)  # bit for bit
    capsys.readouterr()
    assert main(flags(setup, run_dir, *RUN, "--micro-batch", "2", "--resume", "--init", str(run_dir))) == 1
    assert (f"cannot resume from {run_dir / 'ckpt' / f'step-{STEPS:06d}'}: the run started from {setup['init']}, "
            f"not {run_dir}") in capsys.readouterr().err


def test_recipes_and_show_config(capsys):
    sample = parse_args([], DPOTrainConfig)
    assert (sample.recipe, sample.sft_run, sample.run_dir, sample.beta) == ("sample", "runs/sample/sft",
                                                                           "runs/sample/dpo", 0.1)
    with pytest.raises(SystemExit) as exit:
        parse_args(["--dataset", "ultrafeedback", "--beta", "0.05", "--show-config"], DPOTrainConfig)
    assert exit.value.code == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["recipe"] == "ultrafeedback" and shown["beta"] == 0.05
    assert (shown["batch_pairs"], shown["lr"], shown["seq_len"], shown["steps"], shown["epochs"]) == (64, 1e-6, 1024,
                                                                                                     None, 1)
    assert (shown["sft_run"], shown["run_dir"], shown["label_smoothing"]) == ("runs/fineweb10B/sft",
                                                                              "runs/ultrafeedback/dpo", 0.0)
    help_text = " ".join(build_parser(DPOTrainConfig, "python -m train dpo").format_help().split())
    assert "--lr LR recipes: sample 0.001, ultrafeedback 1e-06" in help_text and "--batch-pairs" in help_text
    with pytest.raises(SystemExit):
        parse_args(["--label-smoothing", "0.5"], DPOTrainConfig)
    assert "--label-smoothing must be within [0, 0.5)" in capsys.readouterr().err


def test_refusals_name_the_fix(setup, tmp_path, capsys):
    assert main(["--shards-dir", str(setup["shards"]), "--sft-run", str(tmp_path / "nothing"),
                 "--run-dir", str(tmp_path / "run"), *FLAGS]) == 1
    assert f"no SFT checkpoint under {tmp_path / 'nothing'}/ckpt to start DPO from" in capsys.readouterr().err
    assert main(flags(setup, tmp_path / "run", "--batch-pairs", "8", "--micro-batch", "3")) == 1
    assert "the global batch of 8 pairs is not a multiple of micro-batch 3 x 1 rank(s) = 3; change " \
           "--batch-pairs" in capsys.readouterr().err
    sft = tmp_path / "sft-shards"
    sft.mkdir()
    write_manifest(sft, {"kind": "sft", "shards": []})
    assert main(["--shards-dir", str(sft), "--init", str(setup["init"]), "--run-dir", str(tmp_path / "run"),
                 *FLAGS]) == 1
    assert "kind 'sft', expected 'prefs' (prefs shards are written by `make pref-shards`)" in capsys.readouterr().err
    assert not (tmp_path / "run" / "ckpt").exists()
