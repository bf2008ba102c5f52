"""Reward-model training (`python -m train rm`): whole sequences from pair batches, the Bradley-Terry loss (with
margin and centering) and its metrics against a direct computation, log 2 at step 0, 1 vs 2 gloo ranks (and 2
ranks resumed), SIGTERM and resume, learning, the recipes and the refusals.

Hand-made preference shards of a 256-token vocabulary (train_shards: the chosen answers count up from 100, the
rejected ones are other tokens) and the `nano` model: seconds per run.
"""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gpt import RewardModel, load_reward_model
from train.config import build_parser, parse_args
from train.data import PrefData
from train.log import read_log
from train.rm import RMTrainConfig, bt_losses, main, sequences
from train_shards import SMALL_EOT as EOT
from train_shards import one_thread  # noqa: F401 (an autouse fixture)
from train_shards import (assert_two_rank_resume_is_exact, assert_two_ranks_equal_one, make_pairs, run_two_ranks,
                          small_model, stop_after_first_checkpoint, write_pref_shards)

FLAGS = ["--seq-len", "32", "--warmup", "1", "--show", "0", "--no-progress"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rm")
    shards = write_pref_shards(tmp / "shards", make_pairs(64, 0), make_pairs(12, 1))
    return {"shards": shards, "init": small_model(tmp / "init"), "tmp": tmp}


def flags(setup, run_dir, *extra):
    return ["--shards-dir", str(setup["shards"]), "--init", str(setup["init"]), "--run-dir", str(run_dir),
            *FLAGS, *extra]


def test_sequences_are_whole_to_the_closing_eot_found_from_the_mask_not_from_token_values(tmp_path):
    # token 0 ("!", also the padding) inside and at the end of answers: a length found from token values fails
    pairs = [([10, 11], [0, 0, 5, 0], [7]), ([12], [13], [0, 0, 0, 0, 0, 0]), ([14, 0, 15], [0], [16, 0])]
    shards = write_pref_shards(tmp_path / "shards", pairs, pairs[:1])
    data = PrefData(shards, seq_len=32, batch_rows=3, seed=0)
    (batch,) = data.train_batches(0, 0, 1, micro_batch=3)
    tokens, lengths = sequences(batch)
    longest = [len(p) + max(len(c), len(r)) + 1 for p, c, r in pairs]
    ids = sorted(range(3), key=lambda i: (longest[i], i))  # PrefData's order: pairs by their longer sequence
    whole = [pairs[i][0] + pairs[i][side] + [EOT] for side in (1, 2) for i in ids]  # the chosen, then the rejected
    assert lengths.tolist() == [len(s) for s in whole]
    assert tokens.shape == (6, max(map(len, whole)))
    assert [row[:n].tolist() for row, n in zip(tokens, lengths)] == whole
    assert all(not row[n:].any() for row, n in zip(tokens, lengths))  # right-padded with 0


def test_bt_losses_follow_the_formulas():
    rewards = torch.tensor([1.0, -0.5, 0.2, 0.3], dtype=torch.float64)  # chosen of pairs 0, 1, then their rejected
    losses, chosen, rejected = bt_losses(rewards)
    assert chosen.tolist() == [1.0, -0.5] and rejected.tolist() == [0.2, 0.3]
    assert losses.tolist() == pytest.approx([math.log1p(math.exp(-0.8)), math.log1p(math.exp(0.8))], abs=1e-12)
    with_margin, _, _ = bt_losses(rewards, margin=0.5)
    assert with_margin.tolist() == pytest.approx([math.log1p(math.exp(-0.3)), math.log1p(math.exp(1.3))], abs=1e-12)
    centered, _, _ = bt_losses(rewards, margin=0.5, center_coef=0.25)
    assert (centered - with_margin).tolist() == pytest.approx([0.25 * 1.2 ** 2, 0.25 * 0.2 ** 2], abs=1e-12)


def reward(model, prompt, answer) -> float:
    """The reward of prompt + answer + EOT, from a forward of this sequence alone."""
    tokens = prompt + answer + [EOT]
    return model(torch.tensor([tokens]), torch.tensor([len(tokens)])).item()


@pytest.mark.parametrize("margin, center_coef", [(0.0, 0.0), (0.5, 0.1)])
def test_loss_and_metrics_equal_a_direct_computation(setup, margin, center_coef):
    run_dir = setup["tmp"] / f"direct-{margin}-{center_coef}"
    assert main(flags(setup, run_dir, "--batch-pairs", "8", "--micro-batch", "2", "--steps", "2", "--lr", "1e-2",
                      "--margin", str(margin), "--center-coef", str(center_coef), "--eval-every", "2",
                      "--save-every", "1", "--keep-checkpoints", "0")) == 0
    log = read_log(run_dir)
    # At step 0 (validation) and step 1 (train) the head is zero: every reward 0, the loss log(1 + e^margin)
    for record, prefix in ((log[0], "val_"), (log[1], "")):
        assert record[f"{prefix}loss"] == pytest.approx(math.log1p(math.exp(margin)), abs=1e-7)
        for name in ("accuracy", "margin", "reward/mean", "reward/min", "reward/max"):
            assert record[f"{prefix}{name}"] == 0.0, name
    # Step 2: the model after one step, from two independent forwards per pair
    pairs = make_pairs(64, 0)
    data = PrefData(setup["shards"], seq_len=32, batch_rows=8, seed=1337)
    model = load_reward_model(run_dir / "ckpt" / "step-000001")
    assert model.head.weight.any()  # the first step moved the head
    with torch.no_grad():
        rewards = np.array([[reward(model, p, c), reward(model, p, r)]
                            for p, c, r in (pairs[data.train_ids[i]] for i in data.plan.global_rows(1))])
    chosen, rejected = rewards[:, 0], rewards[:, 1]
    losses = (-F.logsigmoid(torch.tensor(chosen - rejected - margin)).numpy()
              + center_coef * (chosen + rejected) ** 2)
    step = log[2]
    assert step["loss"] == pytest.approx(losses.mean(), abs=1e-5)
    assert step["accuracy"] == pytest.approx((chosen > rejected).mean())
    assert step["margin"] == pytest.approx((chosen - rejected).mean(), abs=1e-5)
    assert step["reward/mean"] == pytest.approx(rewards.mean(), abs=1e-5)
    assert step["reward/min"] == pytest.approx(rewards.min(), abs=1e-5)
    assert step["reward/max"] == pytest.approx(rewards.max(), abs=1e-5)
    assert step["reward/min"] < step["reward/mean"] < step["reward/max"]
    assert {"val_accuracy", "val_reward/min", "val_reward/max"} <= set(step)  # evaluated at the last step
    state = json.loads((run_dir / "ckpt" / "step-000002" / "state.json").read_text())
    assert state["reward_model"] is True and state["config"]["init"] == str(setup["init"])
    assert (state["config"]["margin"], state["config"]["center_coef"]) == (margin, center_coef)


STEPS = 8
RUN = ["--batch-pairs", "8", "--steps", str(STEPS), "--lr", "1e-2", "--eval-every", "4", "--save-every", "1",
       "--keep-checkpoints", "0", "--center-coef", "0.01"]


@pytest.fixture(scope="module")
def reference_run(setup):
    """1 rank, 4 micro-batches of 2 pairs per step: the run the others are compared with; it learns."""
    run_dir = setup["tmp"] / "reference"
    assert main(flags(setup, run_dir, *RUN, "--micro-batch", "2")) == 0
    return read_log(run_dir)


def test_the_easy_task_is_learned_and_the_best_checkpoint_loads_as_a_reward_model(setup, reference_run):
    first, last = reference_run[0], reference_run[-1]
    assert first["val_accuracy"] == 0 and last["val_accuracy"] >= 0.9
    assert last["val_margin"] > 0.5 and last["val_loss"] < 0.5
    model = load_reward_model(setup["tmp"] / "reference")  # the run folder: its best checkpoint
    assert isinstance(model, RewardModel)
    prompt, chosen, rejected = make_pairs(1, 1)[0]
    with torch.no_grad():
        assert reward(model, prompt, chosen) > reward(model, prompt, rejected)


def compared(log):
    keys = ("loss", "val_loss", *(f"{p}{m}" for p in ("", "val_") for m in ("accuracy", "margin", "reward/mean",
                                                                            "reward/min", "reward/max")))
    return {r["step"]: {k: r[k] for k in keys if k in r} for r in log}


@pytest.fixture(scope="module")
def ddp_run(setup):
    """2 gloo ranks, 2 micro-batches of 2 pairs each per step: the reference run's global batches."""
    run_dir = setup["tmp"] / "ddp"
    run_two_ranks("rm", flags(setup, run_dir, *RUN, "--micro-batch", "2"))
    return run_dir


def test_two_gloo_ranks_give_the_losses_of_one_rank_with_twice_the_accumulation(setup, reference_run, ddp_run):
    assert_two_ranks_equal_one(ddp_run, setup["tmp"] / "reference", reference_run, compared, STEPS)


def test_two_ranks_resumed_from_a_checkpoint_give_the_uninterrupted_two_rank_run(setup, ddp_run):
    copy = setup["tmp"] / "ddp-resumed"
    assert_two_rank_resume_is_exact("rm", ddp_run, copy, flags(setup, copy, *RUN, "--micro-batch", "2"), compared,
                                    STEPS)


def test_sigterm_then_resume_gives_the_same_losses(setup, reference_run, capsys):
    run_dir = setup["tmp"] / "interrupted"
    out = stop_after_first_checkpoint("rm", flags(setup, run_dir, *RUN, "--micro-batch", "2"), run_dir)
    stopped_at = max(r["step"] for r in read_log(run_dir))
    assert 1 <= stopped_at < STEPS and f"stopped by SIGTERM after step {stopped_at}" in out
    assert main(flags(setup, run_dir, *RUN, "--micro-batch", "2", "--resume")) == 0
    assert compared(read_log(run_dir)) == compared(reference_run)  # bit for bit
    capsys.readouterr()
    assert main(flags(setup, run_dir, *RUN, "--micro-batch", "2", "--resume", "--center-coef", "0.02")) == 1
    assert "the run's config changed (center_coef: 0.01 -> 0.02)" in capsys.readouterr().err


def test_recipes_and_show_config(capsys):
    sample = parse_args([], RMTrainConfig)
    assert (sample.recipe, sample.sft_run, sample.run_dir) == ("sample", "runs/sample/sft", "runs/sample/rm")
    assert (sample.margin, sample.center_coef, sample.weight_decay) == (0.0, 0.0, 0.0)
    with pytest.raises(SystemExit) as exit:
        parse_args(["--dataset", "ultrafeedback", "--center-coef", "0.01", "--show-config"], RMTrainConfig)
    assert exit.value.code == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["recipe"] == "ultrafeedback" and shown["center_coef"] == 0.01
    assert (shown["batch_pairs"], shown["lr"], shown["seq_len"], shown["steps"], shown["epochs"]) == (64, 5e-5, 1023,
                                                                                                     None, 1)
    assert (shown["sft_run"], shown["run_dir"]) == ("runs/fineweb10B/sft", "runs/ultrafeedback/rm")
    help_text = " ".join(build_parser(RMTrainConfig, "python -m train rm").format_help().split())
    assert "--lr LR recipes: sample" in help_text and "--center-coef" in help_text and "--margin" in help_text
    with pytest.raises(SystemExit):
        parse_args(["--margin", "-1"], RMTrainConfig)
    assert "--margin must be 0 or more" in capsys.readouterr().err


def test_refusals_name_the_fix(setup, tmp_path, capsys):
    assert main(["--shards-dir", str(setup["shards"]), "--sft-run", str(tmp_path / "nothing"),
                 "--run-dir", str(tmp_path / "run"), *FLAGS]) == 1
    assert f"no SFT checkpoint under {tmp_path / 'nothing'}/ckpt to start the reward model from" in \
        capsys.readouterr().err
    assert main(flags(setup, tmp_path / "run", "--seq-len", "64")) == 1  # nano's context: 64 tokens
    assert "--seq-len 64 + 1 (the reward model reads each sequence whole, its closing EOT too) exceeds the " \
           "model's context of 64" in capsys.readouterr().err
    assert main(flags(setup, tmp_path / "run", "--batch-pairs", "8", "--micro-batch", "3")) == 1
    assert "the global batch of 8 pairs is not a multiple of micro-batch 3 x 1 rank(s) = 3; change " \
           "--batch-pairs" in capsys.readouterr().err
    assert not (tmp_path / "run" / "ckpt").exists()
