"""`python -m train dpo [flags]`: Direct Preference Optimization on preference shards, a configuration of the loop.

The policy starts from `--init` or, by default, from the SFT run `--sft-run` (its checkpoint as
`resolve_checkpoint` picks it); the reference model is that same starting point, frozen (eval mode, no
gradient), and its log-probabilities are computed on the fly in the same step (one more forward, no
backward: about a third more compute per step, and a second copy of the weights in memory). The reference runs
eagerly even with `--compile`, as the evaluations' policy does: at step 0 both give the same log-probabilities,
so every reward is exactly 0 (compiled kernels round differently). A row is one pair of the preference shards,
served by train.data.PrefData: a micro-batch of B pairs is one forward of 2B sequences (the B chosen, then
their B rejected, right-padded to the longest); the global batch is `--batch-pairs` pairs.

The loss is DPO's (Rafailov et al. 2023, as TRL computes it): per sequence, logp = the sum of the
log-probabilities of its answer tokens and closing EOT (the shards' mask); per pair, with the rewards
r = beta * (logp - logp_ref) of the chosen and of the rejected answer, loss = -logsigmoid(r_c - r_r), or with
`--label-smoothing` eps (cDPO) -(1 - eps) * logsigmoid(r_c - r_r) - eps * logsigmoid(r_r - r_c). The loop's
loss is its mean over the pairs of the global batch. Logged at each step and at each evaluation (on the
validation pairs, as `val_<name>`): the loss and the means over pairs of `rewards/chosen`, `rewards/rejected`,
`rewards/accuracies` (r_c > r_r; a tie is not), `rewards/margins` (r_c - r_r), `logps/chosen`, `logps/rejected`;
loss.png draws the validation accuracy and margin. Checkpoints carry the Alpaca chat template (as SFT's). At
the end, rank 0 prints the validation loss and reward accuracy before and after, then `--show` validation
prompts with their greedy answers before (the reference) and after DPO. Exit status as `train sft`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from gpt.checkpoint import load_model
from gpt.model import GPT
from gpt.template import CHAT_TEMPLATE
from pipelines import CUSTOM, PREF_DATASETS
from pipelines.stage import find_shards_dir
from shards.tokenizer import get_encoding

from .answers import answer_text, answers_to, instruction
from .checkpoint import best_evaluations
from .config import RunConfig, parse_args, set_recipes
from .data import PrefData, pairs
from .distributed import process_group, run_process
from .loop import RUN_ERRORS, Hooks, exit_status, train
from .model import build_model, check_context, frozen, resolve_sft_init

# Means over pairs, logged at each step and (val_<name>) at each evaluation, as TRL's DPOTrainer names them
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected")


@dataclass
class DPOTrainConfig(RunConfig):
    """DPO: the policy and its frozen reference start from --init or --sft-run; the global batch counts pairs."""
    STAGE: ClassVar[str] = "dpo"
    FULL_RECIPE: ClassVar[str] = "ultrafeedback"
    BATCH_FLAG: ClassVar[str] = "--batch-pairs"
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {**RunConfig.CHOICES, "dataset": (*PREF_DATASETS, CUSTOM)}
    RESUME_KEYS: ClassVar[tuple[str, ...]] = RunConfig.RESUME_KEYS + ("batch_pairs", "beta", "label_smoothing",
                                                                        "eval_pairs")
    POSITIVE: ClassVar[tuple[str, ...]] = RunConfig.POSITIVE + ("batch_pairs", "beta", "answer_tokens")
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = RunConfig.NON_NEGATIVE + ("eval_pairs", "show")
    HELP: ClassVar[dict[str, str]] = {**RunConfig.HELP,
                                      "label_smoothing": "cDPO: the assumed share of flipped labels, in [0, 0.5)",
                                      "micro_batch": "pairs per forward pass per rank (2x as many sequences)"}
    dataset: str = "sample"  # the preference dataset: sample, ultrafeedback or custom (DATA_DIR/<dataset>-prefs/)
    batch_pairs: int = 64  # global batch in pairs (all ranks and accumulation steps)
    beta: float = 0.1  # the strength of the KL penalty: rewards are beta * (logp - logp_ref)
    label_smoothing: float = 0.0
    sft_run: str = "runs/fineweb10B/sft"  # without --init: start from this run's checkpoint (resolve_checkpoint)
    eval_pairs: int = 0  # validation pairs evaluated each time; 0: all of them
    weight_decay: float = 0.0  # none: the policy is kept near the reference by beta, not pulled towards 0
    answer_tokens: int = 64  # new tokens of the greedy answers printed at the end (--show)
    show: int = 4  # validation prompts printed with their answers before and after DPO (0: none)

    def check(self) -> None:
        super().check()
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"--label-smoothing must be within [0, 0.5), got {self.label_smoothing}")


set_recipes(
    DPOTrainConfig,
    # The CPU demo: the SFT `tiny` model on the sample pairs (chosen: the corpus answer; rejected: an answer of
    # another category in the same split), 978 train and 104 validation pairs that fit in 129 tokens; 120 steps
    # of 16 pairs (two epochs) at lr 1e-3: validation accuracy 74% from step 20, 77% at step 120 (loss 0.50),
    # where lr 1e-4 reached 64% and 3e-4 77% with a smaller margin (docs/benchmarks.md).
    sample=DPOTrainConfig(dataset="sample", batch_pairs=16, micro_batch=16, seq_len=128, lr=1e-3, warmup=5,
                          steps=120, eval_every=20, save_every=40, sample_tokens=32, sft_run="runs/sample/sft"),
    # GPT-2 124M after SFT on UltraFeedback (61,135 train pairs, 2,000 validation): the DPO paper's setting
    # (beta 0.1, 64 pairs per step, lr 1e-6 after 150 warmup steps), one epoch (955 steps), cosine to 10%.
    ultrafeedback=DPOTrainConfig(dataset="ultrafeedback", batch_pairs=64, micro_batch=8, seq_len=1024, lr=1e-6,
                                 warmup=150, eval_every=100, save_every=200, sample_tokens=64,
                                 sft_run="runs/fineweb10B/sft"))


def sequence_logps(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per row: the sum of the log-probabilities of its supervised targets (the answer and its EOT) [rows]; the
    vocabulary projection is made at those positions only (`supervised_only`: two thirds of the sample's tokens
    are prompt, whose logits DPO never reads)."""
    return -model(inputs, targets, reduction="none", supervised_only=True)[1].sum(dim=1)


def dpo_losses(logps: torch.Tensor, ref_logps: torch.Tensor, beta: float, label_smoothing: float = 0.0):
    """Per pair: (loss, chosen reward, rejected reward), from per-sequence log-probabilities of the policy and
    the reference whose first half is the chosen answers and second half the rejected ones."""
    chosen, rejected = (beta * (logps - ref_logps)).chunk(2)
    logits = chosen - rejected  # beta * ((logp_c - ref_c) - (logp_r - ref_r))
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return losses, chosen, rejected


def loss_hook(reference: GPT, beta: float, label_smoothing: float):
    """`Hooks.loss`: the summed DPO loss of a micro-batch's pairs, and the sums of METRICS over them."""

    def loss(model: torch.nn.Module, batch: tuple) -> tuple[torch.Tensor, dict]:
        inputs, targets = batch
        logps = sequence_logps(model, inputs, targets)  # chosen and rejected in one forward
        with torch.no_grad():
            ref_logps = sequence_logps(reference, inputs, targets)
        losses, chosen, rejected = dpo_losses(logps, ref_logps, beta, label_smoothing)
        chosen, rejected = chosen.detach(), rejected.detach()
        logp_c, logp_r = logps.detach().chunk(2)
        sums = {"rewards/chosen": chosen.sum(), "rewards/rejected": rejected.sum(),
                "rewards/accuracies": (chosen > rejected).sum(), "rewards/margins": (chosen - rejected).sum(),
                "logps/chosen": logp_c.sum(), "logps/rejected": logp_r.sum()}
        return losses.sum(), sums

    return loss


def samples_hook(data: PrefData, count: int, max_steps: int):
    """At each evaluation (rank 0): the greedy answers of the first `count` validation prompts."""

    def samples(model: GPT) -> list[str]:
        prompts = [data.val_prompt(i) for i in range(min(count, len(data.val_ids)))]
        answers = answers_to(model, prompts, max_steps, max(len(prompts), 1))
        return [f"{instruction(get_encoding().decode(p.tolist()))} => {answer_text(a)}"
                for p, a in zip(prompts, answers)]

    return samples


def main(argv=None) -> int:
    cfg = parse_args(argv, DPOTrainConfig, prog="python -m train dpo")
    try:
        with process_group(cfg.device, cfg.dist_timeout) as dist:
            with dist.unanimous():  # a node that cannot read the shards or the SFT run stops every rank
                cfg = resolve_sft_init(cfg, "DPO")
                check_context(cfg)
                shards_dir = cfg.shards_dir or find_shards_dir(cfg.data_dir, "prefs", cfg.dataset)
                data = PrefData(shards_dir, cfg.seq_len, cfg.batch_pairs, cfg.seed, cfg.eval_pairs)
                reference = frozen(build_model(cfg, dist))
            if dist.is_main:
                print(f"dpo: {len(data.train_ids)} train and {len(data.val_ids)} validation pairs from {shards_dir} "
                      f"({data.left_out} with a sequence longer than {cfg.seq_len + 1} tokens left out), beta "
                      f"{cfg.beta}; policy and frozen reference from {cfg.init}")
            hooks = Hooks(loss=loss_hook(reference, cfg.beta, cfg.label_smoothing), count=pairs, metrics=METRICS,
                          samples=samples_hook(data, 2, cfg.sample_tokens) if cfg.sample_tokens else None,
                          plot_metrics=("val_rewards/accuracies", "val_rewards/margins"),
                          state={"dpo": True}, chat_template=CHAT_TEMPLATE, keep_best=True)
            result = train(cfg, data, dist, lambda: build_model(cfg, dist), hooks, desc="dpo")
            if dist.is_main and not result["stopped"]:  # preempted: exit at once, the checkpoint is saved
                _report(cfg, data, dist.device)
    except RUN_ERRORS as e:
        print(f"dpo: error: {e}", file=sys.stderr)
        return 1
    return exit_status(result)


def _report(cfg: DPOTrainConfig, data: PrefData, device: torch.device) -> None:
    """Validation loss and reward accuracy before and at the best checkpoint (and at the last step), then
    held-out prompts answered before (the reference) and after (the best checkpoint)."""
    folder, first, best, last = best_evaluations(cfg.run_dir)
    if first and best:
        print(f"dpo: validation loss {first['val_loss']:.4f} -> {best['val_loss']:.4f}, rewards/accuracies "
              f"{first['val_rewards/accuracies']:.1%} -> {best['val_rewards/accuracies']:.1%}, rewards/margins "
              f"{first['val_rewards/margins']:.3f} -> {best['val_rewards/margins']:.3f} on {len(data.val_ids)} "
              f"validation pairs (step 0 -> {best['step']}, the best checkpoint: {folder}; at step 0 the policy is "
              f"the reference: every reward is 0, and a tie is not counted as accurate; at the last step, "
              f"{last['step']}: {last['val_loss']:.4f} and {last['val_rewards/accuracies']:.1%})")
    if cfg.show:
        count = min(cfg.show, len(data.val_ids))
        prompts = [data.val_prompt(i) for i in range(count)]
        before, after = ([answer_text(a) for a in answers_to(load_model(path, device=device), prompts,
                                                                  cfg.answer_tokens, max(count, 1))]
                         for path in (cfg.init, folder))
        enc = get_encoding()
        print(f"held-out prompts, answered greedily before DPO ({cfg.init}) and after ({folder}):")
        for i, prompt in enumerate(prompts):
            chosen, rejected = (enc.decode(a[:-1].tolist()) for a in data.val_answers(i))
            print(f"  prompt:    {instruction(enc.decode(prompt.tolist()))}\n  chosen:    {chosen}\n"
                  f"  rejected:  {rejected}\n  SFT:       {before[i]}\n  DPO:       {after[i]}\n")


if __name__ == "__main__":
    run_process(main)
