"""`python -m train rl [flags]`: online RL, GRPO-style, on the policy's own samples; a configuration of the loop.

The policy starts from `--init` or, by default, from the SFT run `--sft-run` (as DPO's); that start is also
the frozen reference (run eagerly, as DPO's), whose KL to the policy is always logged and, with `--kl-beta` > 0,
penalized. A row is one prompt (train.data.PromptData): the built-in task's (`--reward arithmetic`,
train/tasks/arithmetic.py), the gsm8k SFT shards' (`--reward gsm8k`), or with a reward model (`--reward rm:PATH`)
the preference or SFT shards' prompts of `--dataset` (`--prompts prefs|sft`); the global batch is
`--batch-prompts` prompts.

Each step starts by sampling, with the model as the previous step left it (the loop's `Hooks.prepare`): for
each micro-batch of `--micro-batch` prompts, one `generate` call of prompts x `--group` rows (temperature 1,
`--top-k` if set, at most `--max-new` new tokens), seeded from (`--seed`, the batch of prompts, the position of
the micro-batch's first prompt in the global batch), so a resumed run samples the same answers and 2 ranks
sample what 1 rank with twice the accumulation samples. Each answer is scored (train/tasks); its advantage is
(r - mean of its group) / (std of its group + 1e-4), or r - mean with `--mean-only` (as nanochat). The loss of
an answer token t is the policy gradient with PPO's clipped ratio,
    -min(ratio_t * A, clip(ratio_t, 1 - clip, 1 + clip) * A),  ratio_t = exp(logp_t - logp_old_t),
plus `--kl-beta` times the k3 estimate of the KL to the reference, exp(ref_t - logp_t) - (ref_t - logp_t) - 1;
the loop sums it over the answer tokens of the global batch and divides by their number (DAPO's
normalization). With `--updates` 1 (the default) the policy that sampled is the one trained, so the ratio is 1
and the loss is plain REINFORCE with a group baseline; with `--updates` U > 1 each batch of samples serves U
optimizer steps in a row, logp_old being the log-probabilities at sampling (the samples and logp_old of the
current batch are kept in RUN_DIR/rollouts/, so a run resumed in the middle of a batch goes on exactly).

Logged at each sampling step: `reward` (the mean over answers), `answer_tokens` (mean answer length, EOT
included), `eot_rate` (answers that end with EOT within --max-new), `zero_variance` (the share of groups whose
rewards are all equal: no gradient from them), `gen_tokens_per_s`, and the loop's `prepare_s` (sampling:
generation, rewards, reference log-probs) and `learn_s` (over which `tokens_per_s` is measured), and `kl`
(the k3 estimate, mean per answer token). At each evaluation: `val_reward`, `val_answer_tokens`, `val_eot_rate` of the greedy answers to
the held-out prompts (`--eval-prompts`), and `val_loss`, the cross-entropy of their reference answers (drift
from what the SFT model learned). loss.png draws the train and held-out reward. Checkpoints carry the Alpaca
chat template. At the end rank 0 prints the held-out reward before and after, the split of time between
sampling and learning, and `--show` held-out prompts with their greedy answers before and after. Exit status as
`train sft`.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np
import torch
from safetensors.torch import load_file, save

from gpt.checkpoint import load_model
from gpt.inference import generate
from gpt.model import GPT
from gpt.template import CHAT_TEMPLATE
from pipelines import CUSTOM, PREF_DATASETS, SFT_DATASETS
from pipelines.stage import find_shards_dir
from shards.io import atomic_write
from shards.tokenizer import get_encoding

from . import tasks
from .answers import TRAINING_DECODING, answer_text, answers_to, ended, instruction, without_eot
from .checkpoint import latest_checkpoint, read_state, resolve_checkpoint
from .config import RunConfig, parse_args, set_recipes
from .data import PrefData, PromptData, SFTData, pad_examples, rank_slice, with_answer
from .distributed import Dist, process_group, run_process
from .log import read_log
from .loop import RUN_ERRORS, Hooks, TrainingError, autocast, exit_status, train
from .model import build_model, check_context, frozen, resolve_sft_init, resumed_checkpoint, same_checkpoint

ROLLOUTS = "rollouts"  # RUN_DIR/rollouts/: the samples of the current batch, with --updates > 1


@dataclass
class RLTrainConfig(RunConfig):
    """Online RL (GRPO-style): the policy starts from --init or --sft-run; the global batch counts prompts."""
    STAGE: ClassVar[str] = "rl"
    FULL_RECIPE: ClassVar[str] = "gsm8k"
    BATCH_FLAG: ClassVar[str] = "--batch-prompts"
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        **RunConfig.CHOICES, "dataset": tuple(dict.fromkeys((*SFT_DATASETS, *PREF_DATASETS, CUSTOM))),
        "prompts": ("prefs", "sft")}
    RESUME_KEYS: ClassVar[tuple[str, ...]] = RunConfig.RESUME_KEYS + (
        "reward", "prompts", "task_seed", "batch_prompts", "micro_batch", "group", "max_new", "top_k", "updates",
        "clip", "kl_beta", "mean_only", "eval_prompts")
    POSITIVE: ClassVar[tuple[str, ...]] = RunConfig.POSITIVE + ("batch_prompts", "max_new", "top_k", "updates")
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = RunConfig.NON_NEGATIVE + ("task_seed", "clip", "kl_beta", "eval_prompts",
                                                                        "show")
    HELP: ClassVar[dict[str, str]] = {
        **RunConfig.HELP,
        "reward": "arithmetic (the built-in task), gsm8k (its SFT shards), or rm:PATH (a reward model)",
        "prompts": "with rm:PATH: the prompts of --dataset's preference (prefs) or SFT (sft) shards",
        "micro_batch": "prompts per generate call and forward pass per rank (x --group sequences)",
        "seq_len": "longest prompt + answer: prompts longer than seq_len - max_new are left out",
        "updates": "optimizer steps per batch of samples (> 1: PPO's clipped ratio)",
        "mean_only": "advantage r - group mean, without dividing by the group's std (nanochat's)"}
    dataset: str = "sample"  # the shards' dataset (gsm8k for --reward gsm8k; with rm:PATH, its prompts')
    reward: str = "arithmetic"
    prompts: str = "prefs"
    task_seed: int = 0  # the built-in task's problems and its split
    batch_prompts: int = 16  # global batch in prompts (all ranks and accumulation steps)
    group: int = 8  # answers sampled per prompt
    max_new: int = 16  # new tokens per answer at most
    top_k: int | None = None  # sample among the k most likely tokens (None: all)
    updates: int = 1
    clip: float = 0.2  # PPO's clip of the ratio (used with --updates > 1)
    kl_beta: float = 0.0  # weight of the KL to the reference in the loss (0: logged only)
    mean_only: bool = False
    sft_run: str = "runs/fineweb10B/sft"  # without --init: start from this run's checkpoint (resolve_checkpoint)
    eval_prompts: int = 64  # held-out prompts answered greedily at each evaluation (0: all)
    weight_decay: float = 0.0  # none: the policy is kept near its start by the KL (if any), not pulled towards 0
    show: int = 4  # held-out prompts printed with their greedy answers before and after RL (0: none)

    def check(self) -> None:
        super().check()
        if self.group < 2:
            raise ValueError(f"--group must be at least 2 (a group's mean is its baseline), got {self.group}")
        if self.reward == tasks.MODEL:
            raise ValueError(f"--reward {tasks.MODEL}PATH needs the reward model's PATH")
        tasks.task(self.reward)  # a task's name or rm:PATH
        if self.reward == "gsm8k" and self.dataset != "gsm8k" and not self.shards_dir:
            raise ValueError("--reward gsm8k reads the gsm8k SFT shards: pass --dataset gsm8k (its recipe)")


set_recipes(
    RLTrainConfig,
    # The CPU demo: the SFT `tiny` model on the built-in task (a + b, a <= 49, b <= 4: 230 train and 20 held-out
    # problems), 8 prompts x 8 answers of at most 4 tokens per step (the sums have 1 or 2 digits), 100 steps at a
    # tiny model's rate (SFT's is 6e-3; at 1e-3 the reward had not left 0 after 33 steps); docs/rl.md.
    sample=RLTrainConfig(dataset="sample", reward="arithmetic", batch_prompts=8, micro_batch=8, group=8, max_new=4,
                         seq_len=64, lr=2e-3, warmup=5, steps=100, eval_every=20, save_every=50, sample_tokens=4,
                         sft_run="runs/sample/sft"),
    # GPT-2 124M after SFT on GSM8K's train split, on the same 7,473 problems, held out on 256 of the test's:
    # nanochat's chat_rl (16 prompts x 16 samples of up to 256 tokens per step, temperature 1, top-k 50, one
    # epoch: 467 steps, no KL, no clipping) with TRL GRPO's defaults for what nanochat lacks (std-scaled
    # advantages, clip 0.2 when --updates > 1). lr 1e-5, AdamW without weight decay: TRL's 1e-6 is for models of
    # billions of parameters, nanochat's Adam rates for its embeddings and head (2e-4, 1e-2 after its 0.05
    # factor) are for a model at its own scale trained with Muon; a 124M GPT-2 fine-tunes at 1e-5 to 2e-5.
    gsm8k=RLTrainConfig(dataset="gsm8k", reward="gsm8k", batch_prompts=16, micro_batch=2, group=16, max_new=256,
                        top_k=50, seq_len=512, lr=1e-5, warmup=10, epochs=1, eval_every=60, save_every=60,
                        sample_tokens=64, eval_prompts=256, sft_run="runs/gsm8k/sft"))


class Rollout(NamedTuple):
    """A micro-batch of sampled answers as the loss reads it (a tuple: the loop's micro-batch)."""
    inputs: torch.Tensor  # [R, T] prompt + answer, right-padded with 0
    targets: torch.Tensor  # [R, T] the answer's tokens (its EOT included when sampled) where predicted, else -100
    advantages: torch.Tensor  # [R]
    old_logps: torch.Tensor  # [R, T] at sampling (with --updates > 1), else empty
    ref_logps: torch.Tensor  # [R, T] of the reference


def group_advantages(rewards: torch.Tensor, group: int, mean_only: bool = False) -> torch.Tensor:
    """(r - group mean) / (group std + 1e-4), or r - group mean; rewards [n * group], a group's answers together.
    The std is the unbiased one (torch's, as TRL's)."""
    grouped = rewards.view(-1, group)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)
    if not mean_only:
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + 1e-4)
    return advantages.view(-1)


def policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip: float, ref_logps: torch.Tensor, kl_beta: float = 0.0):
    """(the summed loss of the answer tokens, their summed k3 KL to the reference): per token
    -min(ratio * A, clip(ratio) * A) + kl_beta * k3, with logps, old_logps, ref_logps, mask [R, T], A [R]."""
    ratio = torch.exp(logps - old_logps)
    advantage = advantages[:, None]
    losses = -torch.min(ratio * advantage, ratio.clamp(1 - clip, 1 + clip) * advantage)
    kl = k3(logps, ref_logps)
    penalized = losses + kl_beta * kl if kl_beta else losses  # with kl_beta 0 the KL is only measured
    return (penalized * mask).sum(), (kl * mask).sum()


def k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """The k3 estimate of KL(policy || reference) per sampled token: exp(ref - logp) - (ref - logp) - 1."""
    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1


def token_logps(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The log-probability of every target [R, T] (0 where the target is -100), the vocabulary's projection
    computed at the answer tokens only (most of a row is its prompt: 2.5x faster steps on the sample's)."""
    return -model(inputs, targets, reduction="none", supervised_only=True)[1]


def loss_hook(cfg: RLTrainConfig, reference: GPT):
    """`Hooks.loss`: the summed policy-gradient loss of a Rollout micro-batch, and its summed KL to the reference;
    of a validation batch (inputs, targets), the cross-entropy of the reference answers, and their KL."""

    def loss(model: torch.nn.Module, batch: tuple):
        inputs, targets = batch[:2]
        logps = token_logps(model, inputs, targets)
        mask = targets != -100
        if isinstance(batch, Rollout):
            old = batch.old_logps if cfg.updates > 1 else logps.detach()
            total, kl = policy_loss(logps, old, batch.advantages, mask, cfg.clip, batch.ref_logps, cfg.kl_beta)
        else:
            with torch.no_grad():
                ref = token_logps(reference, inputs, targets)
            total, kl = -logps.sum(), (k3(logps, ref) * mask).sum()
        return total, {"kl": kl}

    return loss


def sample_seed(seed: int, batch: int, position: int) -> int:
    """The generator seed of a micro-batch: from the run's seed, its batch of prompts and its first prompt's
    position in the global batch."""
    return int(np.random.SeedSequence([seed, batch, position]).generate_state(1)[0])


class Sampler:
    """`Hooks.prepare`: a step's prompt micro-batches -> Rollout micro-batches, and the step's sampling figures."""

    STATS = ("reward", "answers", "answer_tokens", "eot", "zero_variance", "groups", "gen_s")

    def __init__(self, cfg: RLTrainConfig, data: PromptData, reward: tasks.Reward, reference: GPT,
                 dist: Dist):
        self.cfg, self.data, self.reward, self.reference, self.dist = cfg, data, reward, reference, dist
        self.current: tuple[int, list[Rollout]] | None = None  # (batch, its rollouts) with --updates > 1

    def __call__(self, model: GPT, step: int, batches: list) -> tuple[list[Rollout], dict]:
        batch, repeat = divmod(step, self.cfg.updates)
        if repeat:  # the batch's samples again: kept in memory, or in RUN_DIR/rollouts/ for a resumed run
            if self.current is None or self.current[0] != batch:
                self.current = batch, self._load(batch)
            return self.current[1], {}
        sums = torch.zeros(len(self.STATS), dtype=torch.float64)
        rollouts = [self._rollout(model, batch, b, sums) for b in batches]
        if self.cfg.updates > 1:
            self.current = batch, rollouts
            self._save(batch, rollouts)
        s = dict(zip(self.STATS, self.dist.all_reduce_sum(sums.to(self.dist.device)).tolist()))
        return rollouts, {"reward": s["reward"] / s["answers"], "answer_tokens": s["answer_tokens"] / s["answers"],
                          "eot_rate": s["eot"] / s["answers"], "zero_variance": s["zero_variance"] / s["groups"],
                          "gen_tokens_per_s": s["answer_tokens"] / (s["gen_s"] / self.dist.world_size)}

    def _rollout(self, model: GPT, batch: int, prompts: tuple, sums: torch.Tensor) -> Rollout:
        cfg, device = self.cfg, self.dist.device
        ids, mask, rows, positions = prompts
        generator = torch.Generator(device).manual_seed(sample_seed(cfg.seed, batch, int(positions[0])))
        start = time.perf_counter()
        with autocast(cfg, device):
            answers = generate(model, ids.repeat_interleave(cfg.group, 0).to(device),
                               mask.repeat_interleave(cfg.group, 0).to(device), 1.0, cfg.max_new, top_k=cfg.top_k,
                               generator=generator, **TRAINING_DECODING)
        gen_s = time.perf_counter() - start
        examples = [self.data.train[int(r)] for r in rows for _ in range(cfg.group)]  # a group's rows together
        rewards = torch.tensor(score(self.reward, examples, answers), dtype=torch.float32)
        advantages = group_advantages(rewards, cfg.group, cfg.mean_only)
        inputs, targets = pad_examples([with_answer(prompt, np.array(answer, dtype=np.int64))
                                        for (prompt, _), answer in zip(examples, answers)])
        inputs, targets = inputs.to(device), targets.to(device)
        with torch.no_grad(), autocast(cfg, device):
            old = token_logps(model, inputs, targets) if cfg.updates > 1 else torch.empty(0, device=device)
            ref = token_logps(self.reference, inputs, targets)
        grouped = rewards.view(-1, cfg.group)
        sums += torch.tensor([rewards.sum().item(), len(answers), sum(map(len, answers)),
                              sum(map(ended, answers)),
                              (grouped == grouped[:, :1]).all(dim=1).sum().item(), len(grouped), gen_s],
                             dtype=torch.float64)
        return Rollout(inputs, targets, advantages.to(device), old, ref)

    def _path(self, batch: int) -> Path:
        return Path(self.cfg.run_dir) / ROLLOUTS / f"batch-{batch:06d}.{self._rank}.safetensors"

    @property
    def _rank(self) -> str:
        return f"rank-{self.dist.rank}-of-{self.dist.world_size}"

    def _save(self, batch: int, rollouts: list[Rollout]) -> None:
        """This rank's samples of `batch`, for a run resumed before its last step; those of batches before the
        latest checkpoint's are removed (no resume needs them)."""
        tensors = {f"{i}.{name}": t.detach().cpu().contiguous() for i, r in enumerate(rollouts)
                   for name, t in r._asdict().items()}
        with atomic_write(self._path(batch)) as f:
            f.write(save(tensors))
        checkpoint = latest_checkpoint(self.cfg.run_dir)
        keep = 0 if checkpoint is None else int(checkpoint.name.split("-")[1]) // self.cfg.updates
        for old in self._path(batch).parent.glob(f"batch-*.{self._rank}.safetensors"):
            if int(old.name.split(".")[0].split("-")[1]) < keep:
                old.unlink()

    def _load(self, batch: int) -> list[Rollout]:
        path = self._path(batch)
        if not path.exists():
            raise TrainingError(f"{path}: missing; a run resumed in the middle of a batch of samples (--updates "
                                f"{self.cfg.updates}) needs them (and as many ranks as sampled them)")
        tensors = load_file(path, device=str(self.dist.device))
        count = len({key.split(".")[0] for key in tensors})
        return [Rollout(**{name: tensors[f"{i}.{name}"] for name in Rollout._fields}) for i in range(count)]


def eval_hook(cfg: RLTrainConfig, data: PromptData, reward: tasks.Reward):
    """At each evaluation: `val_reward`, `val_answer_tokens` and `val_eot_rate` of the greedy answers to the
    held-out prompts (each rank its share), and on rank 0 `samples`, the first two of them."""

    def extra_eval(model: GPT, dist: Dist) -> dict:
        ids = rank_slice(np.arange(len(data.val)), dist.rank, dist.world_size)
        answers, rewards = held_out_answers(model, cfg, data, ids, reward, dist)
        sums = torch.tensor([sum(rewards), sum(map(len, answers)), sum(map(ended, answers)),
                             len(answers)], dtype=torch.float64, device=dist.device)
        dist.all_reduce_sum(sums)
        record = {"val_reward": (sums[0] / sums[3]).item(), "val_answer_tokens": (sums[1] / sums[3]).item(),
                  "val_eot_rate": (sums[2] / sums[3]).item()}
        if dist.is_main and cfg.sample_tokens:  # rank 0's share starts at held-out prompt 0
            enc = get_encoding()
            record["samples"] = [f"{instruction(enc.decode(data.val[i][0].tolist()))} => "
                                 f"{answer_text(a[:cfg.sample_tokens])} (reward {r:.2f})"
                                 for i, a, r in zip(ids[:2], answers, rewards)]
        return record

    return extra_eval


def held_out_answers(model: GPT, cfg: RLTrainConfig, data: PromptData, ids, reward: tasks.Reward,
                     dist: Dist) -> tuple[list[list[int]], list[float]]:
    """The greedy answers of `model` to held-out prompts `ids`, and their rewards."""
    examples = [data.val[i] for i in ids]
    with autocast(cfg, dist.device):
        answers = answers_to(model, [prompt for prompt, _ in examples], cfg.max_new, cfg.micro_batch * cfg.group,
                             progress=dist.is_main and cfg.progress)
    return answers, score(reward, examples, answers)


def score(reward: tasks.Reward, examples: list[tuple[np.ndarray, np.ndarray]], answers: list[list[int]]) -> list[float]:
    """The rewards of `answers` (tokens, EOT included when sampled) to the prompts of `examples` (prompt
    tokens, reference tokens + EOT), as text."""
    enc = get_encoding()
    return reward([enc.decode(prompt.tolist()) for prompt, _ in examples],
                  [enc.decode(reference[:-1].tolist()) for _, reference in examples],
                  [enc.decode(without_eot(a)) for a in answers])


def load_prompts(cfg: RLTrainConfig) -> PromptData:
    """The built-in task's prompts, or those of the shards the reward reads."""
    task = tasks.task(cfg.reward)
    if task is not None and hasattr(task, "examples"):
        train_rows, val_rows, description = task.examples(cfg.task_seed)
        return PromptData(train_rows, val_rows, cfg.seq_len, cfg.max_new, cfg.batch_prompts, cfg.seed, cfg.updates,
                          cfg.eval_prompts, directory=f"<{description['task']} task>",
                          manifest_sha256=task.fingerprint(description))
    kind = "sft" if cfg.reward == "gsm8k" else cfg.prompts
    shards_dir = cfg.shards_dir or find_shards_dir(cfg.data_dir, kind, cfg.dataset)
    reader = (SFTData if kind == "sft" else PrefData)(shards_dir, None, cfg.batch_prompts, cfg.seed,
                                                      batch_flag="--batch-prompts")
    return PromptData.from_shards(reader, cfg.seq_len, cfg.max_new, cfg.batch_prompts, cfg.seed, cfg.updates,
                                  cfg.eval_prompts)


def resolve_reward(cfg: RLTrainConfig) -> RLTrainConfig:
    """`--reward rm:PATH` with PATH as the reward model's checkpoint folder (a run folder stands for its best,
    else its latest), which state.json records: a resume whose PATH now means another checkpoint (the reward
    model's run went on) is refused as a changed reward, never scored by another model. A resumed run that
    recorded a run folder (before this rule) keeps it while it means the same checkpoint."""
    if not cfg.reward.startswith(tasks.MODEL):
        return cfg
    path = cfg.reward[len(tasks.MODEL):]
    resumed = resumed_checkpoint(cfg)
    recorded = read_state(resumed)["config"]["reward"] if resumed is not None else ""
    if recorded.startswith(tasks.MODEL) and same_checkpoint(recorded[len(tasks.MODEL):], path):
        return dataclasses.replace(cfg, reward=recorded)
    return dataclasses.replace(cfg, reward=tasks.MODEL + str(resolve_checkpoint(path)))


def main(argv=None) -> int:
    cfg = parse_args(argv, RLTrainConfig, prog="python -m train rl")
    try:
        with process_group(cfg.device, cfg.dist_timeout) as dist:
            with dist.unanimous():  # a node that cannot read the data or the SFT run stops every rank
                cfg = resolve_reward(resolve_sft_init(cfg, "RL"))
                check_context(cfg)
                data = load_prompts(cfg)
                reward = tasks.load_reward(cfg.reward, dist.device)
                reference = frozen(build_model(cfg, dist))
            if dist.is_main:
                print(f"rl: {len(data.train)} train and {len(data.val)} held-out prompts from {data.dir} "
                      f"({data.left_out} left out: longer than {cfg.seq_len - cfg.max_new} tokens), reward "
                      f"{cfg.reward}, {cfg.group} answers of at most {cfg.max_new} tokens per prompt; policy and "
                      f"frozen reference from {cfg.init}")
            hooks = Hooks(loss=loss_hook(cfg, reference), metrics=("kl",),
                          extra_eval=eval_hook(cfg, data, reward), plot_metrics=("reward", "val_reward"),
                          state={"rl": True}, chat_template=CHAT_TEMPLATE,
                          prepare=Sampler(cfg, data, reward, reference, dist))
            result = train(cfg, data, dist, lambda: build_model(cfg, dist), hooks, desc="rl")
            if dist.is_main and not result["stopped"]:  # preempted: exit at once, the checkpoint is saved
                _report(cfg, data, reward, dist)
    except RUN_ERRORS as e:
        print(f"rl: error: {e}", file=sys.stderr)
        return 1
    return exit_status(result)


def _report(cfg: RLTrainConfig, data: PromptData, reward: tasks.Reward, dist: Dist) -> None:
    """Held-out reward before and after, the time split, then held-out prompts answered before and after."""
    log = read_log(cfg.run_dir)
    evals = [r for r in log if "val_reward" in r]
    steps = [r for r in log if "prepare_s" in r]
    sampled = [r for r in steps if "reward" in r]
    if evals and sampled:
        first, last = evals[0], evals[-1]
        sampling, learning = sum(r["prepare_s"] for r in steps), sum(r["learn_s"] for r in steps)
        print(f"rl: held-out reward (greedy, {len(data.val)} prompts) {first['val_reward']:.3f} (step "
              f"{first['step']}) -> {last['val_reward']:.3f} (step {last['step']}); train reward "
              f"{sampled[0]['reward']:.3f} (step {sampled[0]['step']}) -> {sampled[-1]['reward']:.3f} (step "
              f"{sampled[-1]['step']}); time over {len(steps)} steps: sampling {sampling:.0f} s "
              f"({sampling / (sampling + learning):.0%}), learning {learning:.0f} s; checkpoints in {cfg.run_dir}/ckpt")
    if cfg.show:
        ids = np.arange(min(cfg.show, len(data.val)))
        before, after = (held_out_answers(load_model(folder, device=dist.device), cfg, data, ids, reward, dist)
                         for folder in (cfg.init, latest_checkpoint(cfg.run_dir)))
        enc = get_encoding()
        print(f"held-out prompts, answered greedily before RL ({cfg.init}) and after ({cfg.run_dir}):")
        for i in ids:
            print(f"  prompt:    {instruction(enc.decode(data.val[i][0].tolist()))}\n"
                  f"  reference: {enc.decode(data.val[i][1][:-1].tolist())}\n"
                  f"  before:    {answer_text(before[0][i])} (reward {before[1][i]:.2f})\n"
                  f"  after:     {answer_text(after[0][i])} (reward {after[1][i]:.2f})\n")


if __name__ == "__main__":
    run_process(main)
