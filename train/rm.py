"""`python -m train rm [flags]`: a reward model trained on preference shards, a configuration of the loop.

The model (gpt.reward.RewardModel) is a GPT-2 backbone started from `--init` or, by default, from the SFT run
`--sft-run` (its checkpoint as `resolve_checkpoint` picks it), and a scalar head, zero at first: at step 0
every reward is 0 and the loss is log 2. A row is one pair of the preference shards, served by
train.data.PrefData: a micro-batch of B pairs is one forward of 2B sequences (the B chosen, then their B
rejected, right-padded), each read whole, prompt, answer and closing EOT, and scored at that EOT (the last
supervised token: found from the shards' mask, never from token values). A pair either of whose sequences has
more than `--seq-len` + 1 tokens is left out; the model's context must hold seq_len + 1 tokens.

The loss is Bradley-Terry's, as InstructGPT and TRL's RewardTrainer compute it: per pair, with the rewards r_c
of the chosen and r_r of the rejected answer, -logsigmoid(r_c - r_r - margin) + center_coef * (r_c + r_r)^2.
`--margin` m (default 0) is Llama 2's margin term with one constant for every pair (the shards carry no
rating to derive a per-pair margin from): the loss keeps pushing a pair apart until r_c - r_r exceeds m.
`--center-coef` c (default 0) is TRL's `center_rewards_coefficient` (Eisenstein et al. 2023): it pulls each
pair's rewards towards a zero sum, so rewards stay centred on 0 (BT alone is blind to a constant shift). The
loop's loss is the mean over the pairs of the global batch. Logged at each step and at each evaluation (on
the validation pairs, as `val_<name>`): the loss, `accuracy` (the share of pairs with r_c > r_r; a tie, as at
step 0, is not), `margin` (the mean of r_c - r_r), `reward/mean` (over every sequence), `reward/min` and
`reward/max` (over every sequence of the global batch, or of the validation pairs); loss.png draws the
validation accuracy. Each evaluation that lowers the validation loss saves a checkpoint and points
`ckpt/best` at it, the model `gpt.load_reward_model(RUN_DIR)` loads. Checkpoints are transformers
`GPT2ForSequenceClassification` folders carrying the Alpaca chat template. At the end, rank 0 prints the
validation loss and accuracy before and at the best checkpoint, then `--show` validation pairs with the
rewards the best checkpoint gives them. Exit status as `train sft`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from gpt.checkpoint import load_reward_model
from gpt.reward import RewardModel
from gpt.template import CHAT_TEMPLATE
from pipelines import CUSTOM, PREF_DATASETS
from pipelines.stage import find_shards_dir
from shards.tokenizer import get_encoding

from .answers import instruction
from .checkpoint import best_evaluations
from .config import RunConfig, parse_args, set_recipes
from .data import PrefData, pairs
from .distributed import process_group, run_process
from .loop import RUN_ERRORS, Hooks, exit_status, train
from .model import build_model, check_context, resolve_sft_init

METRICS = ("accuracy", "margin", "reward/mean")  # means over pairs, logged each step and (val_<name>) each evaluation
MINIMA, MAXIMA = ("reward/min",), ("reward/max",)  # over every sequence


@dataclass
class RMTrainConfig(RunConfig):
    """Reward model: a GPT-2 backbone from --init or --sft-run and a scalar head; the global batch counts pairs."""
    STAGE: ClassVar[str] = "rm"
    FULL_RECIPE: ClassVar[str] = "ultrafeedback"
    BATCH_FLAG: ClassVar[str] = "--batch-pairs"
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {**RunConfig.CHOICES, "dataset": (*PREF_DATASETS, CUSTOM)}
    RESUME_KEYS: ClassVar[tuple[str, ...]] = RunConfig.RESUME_KEYS + ("batch_pairs", "margin", "center_coef",
                                                                        "eval_pairs")
    POSITIVE: ClassVar[tuple[str, ...]] = RunConfig.POSITIVE + ("batch_pairs",)
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = RunConfig.NON_NEGATIVE + ("margin", "center_coef", "eval_pairs", "show")
    HELP: ClassVar[dict[str, str]] = {**RunConfig.HELP,
                                      "micro_batch": "pairs per forward pass per rank (2x as many sequences)",
                                      "seq_len": "a pair is kept when its sequences have at most seq_len + 1 tokens",
                                      "sample_tokens": "not used: a reward model generates nothing"}
    dataset: str = "sample"  # the preference dataset: sample, ultrafeedback or custom (DATA_DIR/<dataset>-prefs/)
    batch_pairs: int = 64  # global batch in pairs (all ranks and accumulation steps)
    margin: float = 0.0  # the loss is -logsigmoid(r_c - r_r - margin)
    center_coef: float = 0.0  # + center_coef * (r_c + r_r)^2 per pair (TRL's center_rewards_coefficient)
    sft_run: str = "runs/fineweb10B/sft"  # without --init: start from this run's checkpoint (resolve_checkpoint)
    eval_pairs: int = 0  # validation pairs evaluated each time; 0: all of them
    weight_decay: float = 0.0  # none, as TRL's RewardTrainer: the backbone is not pulled towards 0
    show: int = 4  # validation pairs printed with their rewards at the end (0: none)


set_recipes(
    RMTrainConfig,
    # The CPU demo: the SFT `tiny` model on the sample pairs (chosen: the corpus answer; rejected: an answer of
    # another category from the same split), 978 train and 104 validation pairs within 129 tokens; 240 steps of 16
    # pairs (4 epochs). lr 1e-3: at 1e-4 the head, from zero, barely moves in 60 steps (56%); 3e-3 and batch 32
    # reach the same ~65% (docs/benchmarks.md). 240 steps rather than 120: over three seeds 64% to 69% at the best
    # checkpoint, where 120 steps gave 61% on one of them (the SFT start of SFT's answer-only projection).
    sample=RMTrainConfig(dataset="sample", batch_pairs=16, micro_batch=16, seq_len=128, lr=1e-3, warmup=5,
                         steps=240, eval_every=20, save_every=40, sample_tokens=0, sft_run="runs/sample/sft"),
    # GPT-2 124M after SFT on UltraFeedback (61,135 train pairs, 2,000 validation): one epoch (955 steps of 64
    # pairs), as InstructGPT and TRL train reward models (a second epoch overfits); lr 5e-5 after 50 warmup steps,
    # cosine to 10%: the rate of OpenAI's GPT-2 reward models (lm-human-preferences, batch 40), where InstructGPT's
    # 9e-6 (6B) and TRL's example's 1e-5 (0.5B) are for models 5 to 50 times larger (docs/preferences.md).
    ultrafeedback=RMTrainConfig(dataset="ultrafeedback", batch_pairs=64, micro_batch=8, seq_len=1023, lr=5e-5,
                                warmup=50, eval_every=100, save_every=200, sample_tokens=0,
                                sft_run="runs/fineweb10B/sft"))


def sequences(batch: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole sequences of a PrefData micro-batch (inputs, targets), right-padded with 0, and their lengths:
    a row's inputs and its last supervised target (the answer's closing EOT), placed after its last input.
    The position comes from the mask of targets (-100 on prompt and padding), never from token values."""
    inputs, targets = batch
    supervised = targets != -100
    width = targets.shape[1]
    last = width - 1 - supervised.flip(1).int().argmax(dim=1)  # each row's last supervised target
    rows = torch.arange(len(inputs), device=inputs.device)
    tokens = F.pad(inputs, (0, 1))
    tokens[rows, last + 1] = targets[rows, last]
    return tokens, last + 2


def bt_losses(rewards: torch.Tensor, margin: float = 0.0, center_coef: float = 0.0):
    """Per pair: (loss, chosen reward, rejected reward), from rewards whose first half is the chosen answers'
    and second half the rejected ones': -logsigmoid(r_c - r_r - margin) + center_coef * (r_c + r_r)^2."""
    chosen, rejected = rewards.chunk(2)
    losses = -F.logsigmoid(chosen - rejected - margin) + center_coef * (chosen + rejected) ** 2
    return losses, chosen, rejected


def loss_hook(margin: float, center_coef: float):
    """`Hooks.loss`: the summed loss of a micro-batch's pairs, the sums of METRICS over them, and the extreme
    rewards (MINIMA, MAXIMA)."""

    def loss(model: torch.nn.Module, batch: tuple) -> tuple[torch.Tensor, dict]:
        rewards = model(*sequences(batch))  # chosen and rejected in one forward
        losses, chosen, rejected = bt_losses(rewards, margin, center_coef)
        rewards, chosen, rejected = rewards.detach(), chosen.detach(), rejected.detach()
        return losses.sum(), {"accuracy": (chosen > rejected).sum(), "margin": (chosen - rejected).sum(),
                              "reward/mean": rewards.sum() / 2,  # a pair's mean reward, summed over pairs
                              "reward/min": rewards.min(), "reward/max": rewards.max()}

    return loss


def main(argv=None) -> int:
    cfg = parse_args(argv, RMTrainConfig, prog="python -m train rm")
    try:
        with process_group(cfg.device, cfg.dist_timeout) as dist:
            with dist.unanimous():  # a node that cannot read the shards or the SFT run stops every rank
                cfg = resolve_sft_init(cfg, "the reward model")
                check_context(cfg, whole=True)
                shards_dir = cfg.shards_dir or find_shards_dir(cfg.data_dir, "prefs", cfg.dataset)
                data = PrefData(shards_dir, cfg.seq_len, cfg.batch_pairs, cfg.seed, cfg.eval_pairs)
            if dist.is_main:
                print(f"rm: {len(data.train_ids)} train and {len(data.val_ids)} validation pairs from {shards_dir} "
                      f"({data.left_out} with a sequence longer than {cfg.seq_len + 1} tokens left out), margin "
                      f"{cfg.margin}, center coef {cfg.center_coef}; backbone from {cfg.init}, head zero")
            hooks = Hooks(loss=loss_hook(cfg.margin, cfg.center_coef), count=pairs, metrics=METRICS, minima=MINIMA,
                          maxima=MAXIMA, plot_metrics=("val_accuracy",), state={"reward_model": True},
                          chat_template=CHAT_TEMPLATE, keep_best=True, load=load_reward_model)
            result = train(cfg, data, dist, lambda: RewardModel(build_model(cfg, dist)), hooks, desc="rm")
            if dist.is_main and not result["stopped"]:  # preempted: exit at once, the checkpoint is saved
                _report(cfg, data, dist.device)
    except RUN_ERRORS as e:
        print(f"rm: error: {e}", file=sys.stderr)
        return 1
    return exit_status(result)


def _report(cfg: RMTrainConfig, data: PrefData, device: torch.device) -> None:
    """Validation loss and accuracy before and at the best checkpoint, then validation pairs and their rewards."""
    folder, first, best, _ = best_evaluations(cfg.run_dir)
    if first and best:
        print(f"rm: validation loss {first['val_loss']:.4f} -> {best['val_loss']:.4f}, accuracy "
              f"{first['val_accuracy']:.1%} -> {best['val_accuracy']:.1%}, margin {best['val_margin']:.3f} on "
              f"{len(data.val_ids)} validation pairs (step 0 -> {best['step']}, the best checkpoint: {folder}; at "
              f"step 0 every reward is 0, and a tie is not counted as accurate)")
    if cfg.show:
        model = load_reward_model(folder, device=device)
        count = min(cfg.show, len(data.val_ids))
        enc = get_encoding()
        sides = [(data.val_prompt(i), *data.val_answers(i)) for i in range(count)]
        rewards = model.score_tokens([[*p, *a] for p, *answers in sides for a in answers]).view(-1, 2).tolist()
        print(f"validation pairs and the rewards {folder} gives them:")
        for (prompt, chosen, rejected), (r_c, r_r) in zip(sides, rewards):
            print(f"  prompt:   {instruction(enc.decode(prompt.tolist()))}\n"
                  f"  chosen:   {r_c:+.3f}  {enc.decode(chosen[:-1].tolist())}\n"
                  f"  rejected: {r_r:+.3f}  {enc.decode(rejected[:-1].tolist())}\n")


if __name__ == "__main__":
    run_process(main)
