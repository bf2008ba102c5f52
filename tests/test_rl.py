"""Online RL (`python -m train rl`): group advantages, the policy-gradient loss against a direct computation, no
change from zero advantages, sampling reproducible from the seed and across SIGTERM and resume (and in the
middle of a batch reused by --updates, on 1 or 2 ranks), 1 vs 2 gloo ranks, the prompts' micro-batches, the
rewards (built-in task, GSM8K's parser, a reward model through its adapter), the recipes and the refusals.

The runs use hand-made SFT shards (prompts of a few tokens) and the `nano` model with GPT-2's vocabulary, and a
fake reward model (`--reward rm:fake`, `gpt.load_reward_model` replaced): its score of a sequence is the share
of its tokens that are odd, which differs between the answers a random model samples. Seconds per run.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gpt
from gpt.checkpoint import load_model, save_model
from gpt.model import GPT, preset
from gpt.reward import RewardModel
from gpt.template import render_prompt
from shards.manifest import write_manifest
from shards.tokenizer import EOT, get_encoding
from train import tasks
from train.config import parse_args
from train.data import PromptData, SFTData
from train.distributed import Dist
from train.log import read_log
from train.model import frozen
from train.rl import (RLTrainConfig, Rollout, Sampler, group_advantages, loss_hook, main, policy_loss,
                      sample_seed)
from train.tasks import arithmetic, gsm8k
from train.tasks.reward_model import ModelReward
from train_shards import one_thread  # noqa: F401 (an autouse fixture)
from train_shards import (assert_same_values, files_of_run, run_two_ranks, stop_after_first_checkpoint, stopped_copy,
                          trainer_command, write_examples)

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--reward", "rm:fake", "--prompts", "sft", "--seq-len", "24", "--max-new", "6", "--group", "4",
         "--batch-prompts", "4", "--micro-batch", "2", "--warmup", "1", "--lr", "1e-2", "--eval-prompts", "4",
         "--sample-tokens", "0", "--show", "0", "--no-progress"]
FAKE_SCORER = '''
from types import SimpleNamespace

import torch

class OddShare:
    """A fake reward model: the share of odd token ids in each sequence."""

    config = SimpleNamespace(block_size=1024)

    def score_tokens(self, sequences, batch_size=32):
        return torch.tensor([sum(t % 2 for t in s) / len(s) for s in sequences])


def load_reward_model(path, device):
    assert path == "fake", path
    return OddShare()
'''


def fake_scorer_module(folder: Path):
    """The fake reward model as a module file (the subprocess runs import it too)."""
    (folder / "fake_scorer.py").write_text(FAKE_SCORER)
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rl")
    rng = np.random.default_rng(0)
    rows = [(rng.integers(10, 5000, rng.integers(2, 6)).tolist(), rng.integers(10, 5000, rng.integers(1, 4)).tolist())
            for _ in range(40)]
    shards = write_sft_shards(tmp / "shards", rows[:32], rows[32:])
    torch.manual_seed(0)
    init = save_model(GPT(preset("nano")), tmp / "init")
    sys.path.insert(0, str(fake_scorer_module(tmp)))
    import fake_scorer
    return {"shards": shards, "init": init, "tmp": tmp, "rows": rows, "scorer": fake_scorer}


@pytest.fixture()
def fake_rm(setup, monkeypatch):
    monkeypatch.setattr(gpt, "load_reward_model", setup["scorer"].load_reward_model, raising=False)


def write_sft_shards(directory: Path, train, val) -> Path:
    """SFT shards of (prompt, answer) rows, each answer followed by EOT (mask 1 on the answer and EOT)."""
    directory.mkdir(parents=True, exist_ok=True)
    shards = [{**write_examples(directory / f"{split}.bin", rows, EOT), "split": split}
              for split, rows in (("val", val), ("train", train))]
    write_manifest(directory, {"kind": "sft", "shards": shards})
    return directory


def flags(setup, run_dir, *extra):
    return ["--shards-dir", str(setup["shards"]), "--init", str(setup["init"]), "--run-dir", str(run_dir),
            *FLAGS, *extra]


# ---- the pieces ---------------------------------------------------------------------------------------------

def test_group_advantages_on_hand_made_rewards():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 3.0])
    advantages = group_advantages(rewards, 4)
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std().item()  # unbiased: 0.5774
    assert advantages[:4].tolist() == pytest.approx([0.5 / (std + 1e-4), -0.5 / (std + 1e-4)] * 1 +
                                                    [-0.5 / (std + 1e-4), 0.5 / (std + 1e-4)])
    assert advantages[4:8].tolist() == [0.0] * 4, "a group whose rewards are all equal teaches nothing"
    assert advantages[8:].tolist() == pytest.approx([-0.75 / (1.5 + 1e-4)] * 3 + [2.25 / (1.5 + 1e-4)])
    mean_only = group_advantages(rewards, 4, mean_only=True)
    assert mean_only.tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0, -0.75, -0.75, -0.75, 2.25])
    assert group_advantages(rewards, 2).view(-1, 2).sum(dim=1).abs().max() < 1e-6, "groups are consecutive rows"


def direct_logps(model, prompt, answer):
    """The log-probability of each answer token after `prompt`, from a forward of this sequence alone."""
    tokens = torch.tensor([prompt + answer])
    logits = model(tokens[:, :-1])[0]
    return F.log_softmax(logits.double(), dim=-1).gather(1, tokens[0, 1:, None])[len(prompt) - 1:, 0]


@pytest.mark.parametrize("updates, kl_beta", [(1, 0.0), (2, 0.0), (2, 0.3)])
def test_the_policy_gradient_loss_equals_a_direct_computation(setup, updates, kl_beta):
    torch.manual_seed(1)
    policy, reference = GPT(preset("nano")).double(), GPT(preset("nano")).double()
    rows = [([11, 12, 13], [40, 41]), ([20], [50, 51, 52, EOT]), ([30, 31], [60])]
    advantages = torch.tensor([1.5, -0.5, -1.0], dtype=torch.float64)
    width = max(len(p) + len(a) for p, a in rows) - 1
    inputs = torch.zeros(len(rows), width, dtype=torch.int64)
    targets = torch.full((len(rows), width), -100, dtype=torch.int64)
    for r, (p, a) in enumerate(rows):
        seq = p + a
        inputs[r, :len(seq) - 1] = torch.tensor(seq[:-1])
        targets[r, len(p) - 1:len(seq) - 1] = torch.tensor(a)
    with torch.no_grad():  # "old" log-probs: the policy's, moved off by up to +-0.5 so that the clip bites
        shift = torch.linspace(-0.5, 0.5, targets.numel()).view_as(targets).double()
        old = (-policy(inputs, targets, reduction="none")[1] + shift) * (targets != -100)
        ref = -reference(inputs, targets, reduction="none")[1]
    cfg = RLTrainConfig(updates=updates, clip=0.2, kl_beta=kl_beta)
    hook = loss_hook(cfg, reference)
    batch = Rollout(inputs, targets, advantages, old if updates > 1 else torch.empty(0), ref)
    loss, kl = hook(policy, batch)
    kl = kl["kl"]
    loss.backward()
    got_grad = policy.transformer.h[0].attn.c_attn.weight.grad.clone()
    policy.zero_grad()
    direct, direct_kl = 0.0, 0.0
    for r, (p, a) in enumerate(rows):
        logps = direct_logps(policy, p, a)
        mine = targets[r] != -100
        old_r = old[r][mine] if updates > 1 else logps.detach()
        ratio = torch.exp(logps - old_r)
        A = advantages[r]
        direct = direct - torch.minimum(ratio * A, torch.clamp(ratio, 0.8, 1.2) * A).sum()
        d = ref[r][mine] - logps
        direct_kl = direct_kl + (torch.exp(d) - d - 1).sum()
    total = direct + kl_beta * direct_kl
    total.backward()
    assert loss.item() == pytest.approx(total.item(), abs=1e-6)
    assert kl.detach().item() == pytest.approx(direct_kl.item(), abs=1e-6) and kl.detach().item() > 0  # always logged
    # the model's cross-entropy computes log-probabilities in float32 (gpt/kernels.py), the direct one in float64
    assert torch.allclose(got_grad, policy.transformer.h[0].attn.c_attn.weight.grad, rtol=1e-5, atol=1e-7)
    assert got_grad.abs().max() > 0
    if updates == 1:  # ratio 1: the loss is -sum(A * tokens), its gradient -sum(A * grad logp)
        assert loss.item() == pytest.approx(-(1.5 * 2 - 0.5 * 4 - 1.0 * 1), abs=1e-12)


def test_policy_loss_clips_the_ratio_where_the_advantage_says():
    logps = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1 against old log-probs 0
    mask = torch.ones(1, 3, dtype=torch.bool)
    up, _ = policy_loss(logps, torch.zeros(1, 3), torch.tensor([1.0]), mask, 0.2, torch.zeros(1, 3))
    down, _ = policy_loss(logps, torch.zeros(1, 3), torch.tensor([-1.0]), mask, 0.2, torch.zeros(1, 3))
    assert up.item() == pytest.approx(-(1.2 + 0.5 + 1.1))  # A > 0: the ratio counts up to 1 + clip
    assert down.item() == pytest.approx(1.5 + 0.8 + 1.1)  # A < 0: down to 1 - clip


def test_prompts_come_in_global_order_and_two_ranks_share_the_micro_batches(setup):
    rows = [(np.array(p), np.array(a + [EOT])) for p, a in setup["rows"]]
    long = (np.arange(10, 30), np.array([1, EOT]))  # 20 tokens: no room for 6 new ones in 24
    data = PromptData(rows[:32] + [long], rows[32:], seq_len=24, max_new=6, batch_prompts=8, seed=3,
                      directory="x", manifest_sha256="0" * 64)
    assert len(data.train) == 32 and data.left_out == 1
    one = data.train_batches(5, 0, 1, 2)
    two = data.train_batches(5, 0, 2, 2) + data.train_batches(5, 1, 2, 2)
    assert len(one) == 4 and all(torch.equal(a, b) for x, y in zip(one, two) for a, b in zip(x, y))
    ids, mask, rows_of, positions = (torch.cat(t) for t in zip(*[(b[0][:, :1], b[1][:, :1], b[2], b[3]) for b in one]))
    assert positions.tolist() == list(range(8)) and rows_of.tolist() == data.plan.global_rows(5).tolist()
    first = one[0]
    for r, i in enumerate(first[2].tolist()):
        n = len(data.train[i][0])
        assert first[0][r, :n].tolist() == data.train[i][0].tolist() and first[1][r].sum() == n
    repeated = PromptData(rows[:32], rows[32:], 24, 6, 8, seed=3, updates=3, directory="x", manifest_sha256="0" * 64)
    assert repeated.plan.steps_per_epoch == 12
    assert [repeated.plan.global_rows(s).tolist() for s in (3, 4, 5)] == [data.plan.global_rows(1).tolist()] * 3
    inputs, targets = data.val_batches(0, 1, 8)[0]
    p, a = setup["rows"][32]
    assert inputs[0, :len(p) + len(a)].tolist() == p + a
    assert targets[0, len(p) - 1:len(p) + len(a)].tolist() == a + [EOT]


def sampler(setup, **overrides):
    cfg = RLTrainConfig(**{**dict(seed=5, group=4, max_new=6, batch_prompts=4, micro_batch=2, seq_len=24,
                                  run_dir=str(setup["tmp"] / "sampler")), **overrides})
    rows = [(np.array(p), np.array(a + [EOT])) for p, a in setup["rows"]]
    data = PromptData(rows[:32], rows[32:], cfg.seq_len, cfg.max_new, cfg.batch_prompts, cfg.seed,
                      directory="x", manifest_sha256="0" * 64)
    scorer = ModelReward(setup["scorer"].OddShare())
    return Sampler(cfg, data, scorer, frozen(load_model(setup["init"])), Dist()), data, cfg


def test_sampling_is_reproducible_from_the_seed(setup):
    model = load_model(setup["init"])
    sample, data, cfg = sampler(setup)
    first, stats = sample(model, 3, data.train_batches(3, 0, 1, cfg.micro_batch))
    again, _ = sample(model, 3, data.train_batches(3, 0, 1, cfg.micro_batch))
    assert all(torch.equal(a, b) for x, y in zip(first, again) for a, b in zip(x, y))
    assert 0 < stats["reward"] < 1 and stats["zero_variance"] < 1 and stats["answer_tokens"] > 1
    other, _ = sampler(setup, seed=6)[0](model, 3, data.train_batches(3, 0, 1, cfg.micro_batch))
    assert not torch.equal(first[0].inputs, other[0].inputs), "another seed, other answers"
    later, _ = sample(model, 4, data.train_batches(3, 0, 1, cfg.micro_batch))
    assert not torch.equal(first[0].inputs, later[0].inputs), "the same prompts at another step, other answers"
    # each micro-batch is seeded from its first prompt's position: micro-batch 1 alone samples the same
    alone, _ = sample(model, 3, data.train_batches(3, 0, 1, cfg.micro_batch)[1:])
    assert torch.equal(alone[0].inputs, first[1].inputs)
    assert sample_seed(5, 3, 2) != sample_seed(5, 3, 0)
    rollout = first[0]  # the group's answers are rows together, their advantages centred per group
    assert rollout.inputs.shape[0] == cfg.micro_batch * cfg.group
    assert rollout.advantages.view(-1, cfg.group).sum(dim=1).abs().max() < 1e-5
    for r in range(rollout.inputs.shape[0]):
        supervised = (rollout.targets[r] != -100).nonzero()[:, 0]
        n = int(supervised.max()) + 1 - int(supervised.min())
        assert n == len(supervised) and 1 <= n <= cfg.max_new, "the answer: contiguous, at most max_new tokens"


# ---- runs ---------------------------------------------------------------------------------------------------

def test_zero_advantages_change_no_parameter(setup, tmp_path, monkeypatch):
    class Constant:
        config = setup["scorer"].OddShare.config

        def score_tokens(self, sequences, batch_size=32):
            return torch.full((len(sequences),), 0.7)

    monkeypatch.setattr(gpt, "load_reward_model", lambda path, device: Constant(), raising=False)
    assert main(flags(setup, tmp_path / "run", "--steps", "3", "--eval-every", "3", "--save-every", "3")) == 0
    log = read_log(tmp_path / "run")
    assert [r["zero_variance"] for r in log if "reward" in r] == [1.0] * 3 and log[-1]["grad_norm"] == 0
    before, after = load_model(setup["init"]).state_dict(), load_model(tmp_path / "run").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_prompts_of_shards_are_kept_whatever_their_answers_length(tmp_path):
    """A prompt that leaves room for --max-new is used even when its reference answer makes the example longer
    than seq_len + 1, and when few whole examples fit (the SFT reader alone leaves such examples out): the
    reference is kept whole for the rewards (gsm8k reads its end), and cut to fit with its prompt only in the
    held-out loss's batches."""
    long = list(range(100, 130))
    rows = [([11, 12, 13], [21, 22]), ([14, 15], long), ([16] * 20, [23]), ([17], long)]
    shards = write_sft_shards(tmp_path / "shards", rows, rows[:2])
    with pytest.raises(ValueError, match="fewer than one global batch of 2"):
        SFTData(shards, 16, 2, 0)  # one whole example fits in 17 tokens
    reader = SFTData(shards, None, 2, 0)
    assert reader.left_out == 0
    data = PromptData.from_shards(reader, 16, max_new=4, batch_prompts=2, seed=0)
    assert [p.tolist() for p, _ in data.train] == [[11, 12, 13], [14, 15], [17]] and data.left_out == 1
    assert data.train[1][1].tolist() == long + [EOT] and data.val[1][1].tolist() == long + [EOT]
    inputs, targets = data.val_batches(0, 1, 2)[0]
    assert inputs.shape[1] == 16 and inputs[1].tolist() == [14, 15] + long[:14]  # 2 + 15 = seq_len + 1 tokens
    assert targets[1].tolist() == [-100] + long[:15]


def test_each_step_samples_with_the_model_its_previous_update_left(setup, tmp_path, fake_rm):
    run_dir = tmp_path / "run"
    assert main(flags(setup, run_dir, "--steps", "3", "--eval-every", "3", "--save-every", "1", "--seed", "5",
                      "--keep-checkpoints", "0", "--lr", "0.3")) == 0  # large steps: other samples after each
    logged = {r["step"]: r for r in read_log(run_dir) if "reward" in r}
    cfg = parse_args(flags(setup, run_dir, "--seed", "5"), RLTrainConfig)
    data = PromptData.from_shards(SFTData(setup["shards"], None, cfg.batch_prompts, cfg.seed), cfg.seq_len,
                                  cfg.max_new, cfg.batch_prompts, cfg.seed, eval_prompts=cfg.eval_prompts)
    sample = Sampler(cfg, data, ModelReward(setup["scorer"].OddShare()), frozen(load_model(setup["init"])), Dist())
    for step, folder in ((0, setup["init"]), (1, run_dir / "ckpt" / "step-000001"),
                         (2, run_dir / "ckpt" / "step-000002")):
        _, stats = sample(load_model(folder), step, data.train_batches(step, 0, 1, cfg.micro_batch))
        assert stats["reward"] == pytest.approx(logged[step + 1]["reward"], abs=1e-6), step
        assert stats["answer_tokens"] == logged[step + 1]["answer_tokens"], step
    _, stale = sample(load_model(setup["init"]), 2, data.train_batches(2, 0, 1, cfg.micro_batch))
    assert stale["reward"] != pytest.approx(logged[3]["reward"], abs=1e-6), "the model before the update samples others"


def test_a_run_with_a_reference_logs_its_kl_and_learns(setup, tmp_path, fake_rm):
    run_dir = tmp_path / "run"
    assert main(flags(setup, run_dir, "--steps", "12", "--eval-every", "6", "--kl-beta", "0.1",
                      "--save-every", "12")) == 0
    log = read_log(run_dir)
    steps = [r for r in log if "reward" in r]
    assert len(steps) == 12 and steps[0]["kl"] == 0 and steps[-1]["kl"] > 0, "the policy moves from its reference"
    assert all(r["prepare_s"] > 0 and r["learn_s"] > 0 and r["gen_tokens_per_s"] > 0 for r in steps)
    evals = [r for r in log if "val_reward" in r]
    assert [r["step"] for r in evals] == [0, 6, 12] and "val_kl" in evals[-1] and evals[0]["val_kl"] == 0
    assert evals[-1]["val_reward"] > evals[0]["val_reward"] + 0.1, "it learns (the greedy answers' odd share)"
    state = json.loads((run_dir / "ckpt" / "step-000012" / "state.json").read_text())
    assert state["rl"] is True and state["config"]["reward"] == "rm:fake"
    assert (run_dir / "loss.png").exists()


def env(setup):
    """A subprocess's environment: `sitecustomize` in the fake scorer's folder installs it into gpt."""
    site = setup["tmp"] / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text("import gpt, fake_scorer\ngpt.load_reward_model = "
                                           "fake_scorer.load_reward_model\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(setup["tmp"]), str(ROOT)]),
            "OMP_NUM_THREADS": "1"}


STEPS = 6
RUN = ["--steps", str(STEPS), "--eval-every", "3", "--save-every", "1", "--keep-checkpoints", "0"]


def compared(log):
    keys = ("loss", "reward", "answer_tokens", "eot_rate", "zero_variance", "val_loss", "val_reward")
    return {r["step"]: {k: r[k] for k in keys if k in r} for r in log}


@pytest.fixture(scope="module")
def reference_run(setup):
    """1 rank, 2 micro-batches of 2 prompts (8 answers each) per step: the run the others are compared with."""
    run_dir = setup["tmp"] / "reference"
    assert subprocess.run(trainer_command("rl") + flags(setup, run_dir, *RUN), cwd=ROOT, env=env(setup),
                          timeout=300).returncode == 0
    return read_log(run_dir)


def test_two_gloo_ranks_give_what_one_rank_gives_with_twice_the_accumulation(setup, reference_run):
    run_dir = setup["tmp"] / "ddp"
    run_two_ranks("rl", flags(setup, run_dir, *RUN), env(setup))
    ddp, ref = compared(read_log(run_dir)), compared(reference_run)
    assert read_log(run_dir)[1]["accumulation"] == 1 and reference_run[1]["accumulation"] == 2
    assert sorted(ddp) == sorted(ref) == list(range(STEPS + 1))
    assert len({r["reward"] for r in reference_run if "reward" in r}) > 1
    assert_same_values(ddp, ref)


def test_sigterm_then_resume_samples_and_learns_the_same(setup, reference_run):
    run_dir = setup["tmp"] / "interrupted"
    out = stop_after_first_checkpoint("rl", flags(setup, run_dir, *RUN), run_dir, env(setup))
    stopped_at = max(r["step"] for r in read_log(run_dir))
    assert 1 <= stopped_at < STEPS and f"stopped by SIGTERM after step {stopped_at}" in out
    proc = subprocess.run(trainer_command("rl") + flags(setup, run_dir, *RUN, "--resume"), cwd=ROOT,
                          env=env(setup), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert compared(read_log(run_dir)) == compared(reference_run)  # bit for bit


def test_updates_reuse_the_samples_and_resume_in_the_middle_of_a_batch(setup, tmp_path, fake_rm, capsys):
    run = [*flags(setup, tmp_path / "run", "--steps", "4", "--updates", "2", "--eval-every", "4", "--save-every", "1",
                  "--keep-checkpoints", "0")]
    assert main(run) == 0
    log = read_log(tmp_path / "run")
    assert [r["step"] for r in log if "reward" in r] == [1, 3], "one batch of samples per 2 steps"
    assert log[1]["loss"] != log[2]["loss"], "the second update sees the ratio move"
    assert sorted(p.name for p in (tmp_path / "run" / "rollouts").iterdir()) == [
        "batch-000001.rank-0-of-1.safetensors"], "the samples of batches before the latest checkpoint's are gone"
    # Stopped after step 3 (in the middle of batch 1): its checkpoint, then the same step 4
    shutil.copytree(tmp_path / "run", tmp_path / "resumed")
    ckpt = tmp_path / "resumed" / "ckpt"
    shutil.rmtree(ckpt / "step-000004")
    (ckpt / "latest").write_text("step-000003\n")
    assert main([*run[:5], str(tmp_path / "resumed"), *run[6:], "--resume"]) == 0
    assert compared(read_log(tmp_path / "resumed")) == compared(log)
    rollouts = tmp_path / "resumed" / "rollouts" / "batch-000001.rank-0-of-1.safetensors"
    rollouts.unlink()
    shutil.rmtree(ckpt / "step-000004")
    (ckpt / "latest").write_text("step-000003\n")
    capsys.readouterr()
    assert main([*run[:5], str(tmp_path / "resumed"), *run[6:], "--resume"]) == 1
    assert f"{rollouts}: missing; a run resumed in the middle of a batch of samples (--updates 2)" in (
        capsys.readouterr().err)


def test_two_ranks_with_updates_keep_their_own_samples_and_resume_in_the_middle_of_a_batch(setup, tmp_path, fake_rm,
                                                                                           capsys):
    """--updates 2 on 2 gloo ranks: what 1 rank gives, each rank's samples in a file of its own, and a 2-rank run
    resumed in the middle of a batch (from those files) goes on as the uninterrupted one; 1 rank cannot resume it."""
    run = ["--steps", "4", "--updates", "2", "--eval-every", "4", "--save-every", "1", "--keep-checkpoints", "0"]
    assert main(flags(setup, tmp_path / "one", *run)) == 0
    run_two_ranks("rl", flags(setup, tmp_path / "two", *run), env(setup))
    one, two = read_log(tmp_path / "one"), read_log(tmp_path / "two")
    assert two[1]["accumulation"] == 1 and one[1]["accumulation"] == 2
    assert [r["step"] for r in two if "reward" in r] == [1, 3]
    assert_same_values(compared(two), compared(one))
    rollouts = [f"rollouts/batch-000001.rank-{rank}-of-2.safetensors" for rank in (0, 1)]
    assert files_of_run(tmp_path / "two") == sorted(
        [f for f in files_of_run(tmp_path / "one") if not f.startswith("rollouts/")] + rollouts)
    resumed = stopped_copy(tmp_path / "two", tmp_path / "resumed", 3)  # in the middle of batch 1
    run_two_ranks("rl", flags(setup, resumed, *run, "--resume"), env(setup))
    assert compared(read_log(resumed)) == compared(two)  # bit for bit
    final = "ckpt/step-000004/model.safetensors"
    assert (resumed / final).read_bytes() == (tmp_path / "two" / final).read_bytes()
    alone = stopped_copy(tmp_path / "two", tmp_path / "alone", 3)
    capsys.readouterr()
    assert main(flags(setup, alone, *run, "--resume")) == 1
    assert f"{alone / 'rollouts' / 'batch-000001.rank-0-of-1.safetensors'}: missing" in capsys.readouterr().err


# ---- rewards --------------------------------------------------------------------------------------------------

def test_the_built_in_task_scores_hand_made_answers():
    answers = ["12", " 12 apples", "It is 14, or 12", "no idea", "2", "-12", "0", "twelve", "9" * 5000]
    references = ["12"] * 6 + ["0", "12", "12"]
    assert arithmetic.NEAR == 0.5 and arithmetic.SPREAD == 5  # the numbers below
    assert arithmetic.reward(["p"] * 9, references, answers) == pytest.approx(  # int() refuses 5,000 digits
        [1.0, 1.0, 0.5 / (1 + 2 / 5), 0.0, 0.5 / (1 + 10 / 5), 0.5 / (1 + 24 / 5), 1.0, 0.0, 0.0])
    train, val = arithmetic.problems(0)
    assert len(val) == 20 and len(train) + len(val) == 50 * 5
    assert not set(train) & set(val), "no held-out problem is trained on"
    assert arithmetic.problems(0) == (train, val) and arithmetic.problems(1)[1] != val
    instruction, answer = val[0]
    a, b = (int(x) for x in instruction.removeprefix("What is ").removesuffix("?").split(" + "))
    assert int(answer) == a + b
    rows, _, description = arithmetic.examples(0)
    enc = get_encoding()
    assert enc.decode(rows[0][0].tolist()) == render_prompt(train[0][0])
    assert rows[0][1].tolist() == enc.encode_ordinary(train[0][1]) + [EOT] and description["seed"] == 0


@pytest.mark.parametrize("text, number", [
    ("so 3 + 4 = 7\n#### 7", 7), ("#### 1,234", 1234), ("#### -5", -5), ("####  $18.50 dollars", 18.5),
    ("#### 3\nmore #### 4", 4), ("the answer is 42", None), ("#### none", None), ("", None), ("#### .5", 0.5),
    ("#### -.25 left", -0.25), ("#### 7.", 7), ("#### -$5", -5), ("#### $-5", -5), ("#### -5.00", -5),
    ("#### \u22125", -5), ("#### \u2212$5", -5), ("#### -1,000", -1000), ("#### -.5", -0.5), ("#### 3 - 5", 3),
    ("#### a-b 5", 5)])
def test_gsm8k_reads_the_number_after_the_last_marks(text, number):
    got = gsm8k.final_number(text)
    assert (got is None and number is None) or float(got) == number


def test_gsm8k_reward_is_exact_match_of_the_final_number():
    reference = "She has 1,200 + 34 = 1,234 pens.\n#### 1,234"
    answers = ["#### 1234", "1,234 pens\n#### 1,234", "#### 1234.0", "#### 1235", "1234", "#### 12 34", "",
               "#### .1234"]
    assert gsm8k.reward(["p"] * len(answers), [reference] * len(answers), answers) == [1, 1, 1, 0, 0, 0, 0, 0]


def test_gsm8k_reward_keeps_the_sign_of_a_negative_answer():
    reference = "She owes $5.\n#### -5"
    answers = ["#### -$5", "#### $-5", "#### -5.00", "#### \u22125", "#### $5", "#### 5"]
    assert gsm8k.reward(["p"] * len(answers), [reference] * len(answers), answers) == [1, 1, 1, 1, 0, 0]


def test_a_reward_model_scores_prompt_and_answer_tokens_through_its_adapter():
    seen = {}

    class Scorer:
        def score_tokens(self, sequences, batch_size=32):
            seen.update(sequences=sequences, batch_size=batch_size)
            return torch.tensor([float(len(s)) for s in sequences], dtype=torch.bfloat16)

    reward = ModelReward(Scorer(), batch_size=7)
    prompt = render_prompt("Say hi.")
    got = reward([prompt, prompt], ["hello", "hello"], ["Hi!", " Hello there"])
    enc = get_encoding()
    expected = [enc.encode_ordinary(prompt) + enc.encode_ordinary(a) for a in ("Hi!", " Hello there")]
    assert seen == {"sequences": expected, "batch_size": 7}, "prompt and answer tokenized apart, no EOT added"
    assert got == [float(len(s)) for s in expected] and all(isinstance(r, float) for r in got)
    assert tasks.load_reward("gsm8k", "cpu") is gsm8k.reward


def test_a_real_reward_model_scores_the_samples(setup, tmp_path):
    torch.manual_seed(1)
    model = RewardModel(GPT(preset("nano")))
    with torch.no_grad():
        model.head.weight.normal_()  # a head that is not zero: rewards that differ
    save_model(model, tmp_path / "rm")
    reward = tasks.load_reward(f"rm:{tmp_path / 'rm'}", "cpu")
    enc = get_encoding()
    prompt = render_prompt("Say hi")
    got = reward([prompt, prompt], ["", ""], ["Hi!", " Hello there"])
    want = model.score_tokens([enc.encode_ordinary(prompt) + enc.encode_ordinary(a) for a in ("Hi!", " Hello there")])
    assert got == pytest.approx(want.tolist(), abs=1e-6) and got[0] != got[1]
    long = " one" * 100  # the prompt's 32 tokens and 100 more: cut to the nano model's 64 with the EOT
    cut = model.score_tokens([(enc.encode_ordinary(prompt) + enc.encode_ordinary(long))[:63]])
    assert reward([prompt], [""], [long]) == pytest.approx(cut.tolist(), abs=1e-6)
    run_dir = tmp_path / "run"
    assert main(flags(setup, run_dir, "--reward", f"rm:{tmp_path / 'rm'}", "--steps", "1")) == 0
    assert math.isfinite(read_log(run_dir)[1]["reward"])


def test_a_reward_models_run_is_pinned_to_its_checkpoint(setup, tmp_path, capsys):
    """rm:RUN_FOLDER is recorded as the checkpoint it meant: once the reward model's run has a newer checkpoint, a
    resume is refused as a changed reward, where it used to go on scoring with the other model."""
    rm_run = tmp_path / "rm-run"
    for step in (1, 2):
        folder = save_model(RewardModel(GPT(preset("nano"))), rm_run / "ckpt" / f"step-{step:06d}")
        (folder / "state.json").write_text(json.dumps({"step": step}))  # a finished checkpoint
        (rm_run / "ckpt" / "latest").write_text(f"step-{step:06d}\n")
        if step == 1:
            run_dir = tmp_path / "run"
            assert main(flags(setup, run_dir, "--reward", f"rm:{rm_run}", "--steps", "1", "--save-every", "1")) == 0
            state = json.loads((run_dir / "ckpt" / "step-000001" / "state.json").read_text())
            assert state["config"]["reward"] == f"rm:{rm_run / 'ckpt' / 'step-000001'}"
    assert main(flags(setup, run_dir, "--reward", f"rm:{rm_run}", "--steps", "2", "--resume", "--extend")) == 1
    assert (f"reward: 'rm:{rm_run / 'ckpt' / 'step-000001'}' -> 'rm:{rm_run / 'ckpt' / 'step-000002'}'"
            in capsys.readouterr().err)
    # a run made before this rule recorded the run folder: it resumes while the folder means the same checkpoint
    state["config"]["reward"] = f"rm:{rm_run}"
    (run_dir / "ckpt" / "step-000001" / "state.json").write_text(json.dumps(state))
    assert main(flags(setup, run_dir, "--reward", f"rm:{rm_run}", "--steps", "2", "--resume", "--extend")) == 0


# ---- recipes and refusals -------------------------------------------------------------------------------------

def test_recipes_and_show_config(capsys):
    sample = parse_args([], RLTrainConfig)
    assert (sample.recipe, sample.reward, sample.sft_run, sample.run_dir) == ("sample", "arithmetic",
                                                                              "runs/sample/sft", "runs/sample/rl")
    with pytest.raises(SystemExit) as exit:
        parse_args(["--dataset", "gsm8k", "--kl-beta", "0.04", "--show-config"], RLTrainConfig)
    assert exit.value.code == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["recipe"], shown["reward"], shown["kl_beta"], shown["run_dir"]) == ("gsm8k", "gsm8k", 0.04,
                                                                                      "runs/gsm8k/rl")
    assert (shown["group"], shown["batch_prompts"], shown["max_new"], shown["top_k"]) == (16, 16, 256, 50)
    for bad, message in ((["--group", "1"], "--group must be at least 2"),
                         (["--reward", "gsm8k"], "--reward gsm8k reads the gsm8k SFT shards: pass --dataset gsm8k"),
                         (["--reward", "chess"], "--reward 'chess': choose arithmetic, gsm8k or rm:PATH"),
                         (["--reward", "rm:"], "--reward rm:PATH needs the reward model's PATH"),
                         (["--updates", "0"], "--updates must be positive"),
                         (["--task-seed", "-1"], "--task-seed must be 0 or more, got -1")):
        with pytest.raises(SystemExit):
            parse_args(bad, RLTrainConfig)
        assert message in capsys.readouterr().err, bad


def test_refusals_name_the_fix(setup, tmp_path, capsys, fake_rm):
    assert main(["--shards-dir", str(setup["shards"]), "--sft-run", str(tmp_path / "nothing"),
                 "--run-dir", str(tmp_path / "run"), *FLAGS]) == 1
    assert f"no SFT checkpoint under {tmp_path / 'nothing'}/ckpt to start RL from" in capsys.readouterr().err
    assert main(flags(setup, tmp_path / "run", "--micro-batch", "3")) == 1
    assert "the global batch of 4 prompts is not a multiple of micro-batch 3 x 1 rank(s) = 3; change " \
           "--batch-prompts" in capsys.readouterr().err
    assert main(flags(setup, tmp_path / "run", "--max-new", "30")) == 1
    assert "no train prompt leaves room for --max-new 30 tokens in --seq-len 24" in capsys.readouterr().err
    assert not (tmp_path / "run" / "ckpt").exists()


def test_generation_in_a_training_run_decodes_eagerly_where_static_is_the_default(setup, fake_rm, tmp_path,
                                                                                monkeypatch):
    """Static decoding is generate's default on a GPU without autocast (a float32 run); a training run's rollouts,
    held-out answers and pretraining's samples still decode with the eager loop: no CUDA graph captured between
    steps, no decoder's KV cache kept through the run."""
    from gpt import inference
    from train.pretrain import sample_hook

    def made(*args, **kwargs):
        raise AssertionError("a static decoder was made during training")

    monkeypatch.setattr(inference, "_static_decoding", lambda model, use_cache, static, compile: static is not False)
    monkeypatch.setattr(inference, "StaticDecoder", made)
    assert main(flags(setup, tmp_path / "rl", "--steps", "2", "--eval-every", "1", "--show", "2")) == 0
    assert len(read_log(tmp_path / "rl")) == 3
    assert sample_hook("Hello", 3)(GPT(preset("nano")).eval())[0].startswith("Hello")
