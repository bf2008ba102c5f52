"""`python -m train sft [flags]`: supervised fine-tuning on SFT shards, a configuration of the shared loop.

The model starts from `--init` (our checkpoint or a Hugging Face GPT-2 folder) or, by default, from the
latest checkpoint of the pretraining run `--pretrain-run`. A row is one example of the SFT shards, served
by train.data.SFTData; the global batch is `--batch-examples` examples, and the loop's loss is the mean
over every supervised (answer) token of the global batch.

At each evaluation: the answer-only loss on the validation split (`val_loss`) and `eot_rate`, the fraction
of validation prompts whose greedy answer ends with EOT within `--eot-steps` new tokens; both go to
log.jsonl and loss.png. Each evaluation that lowers `val_loss` saves a checkpoint and points `ckpt/best` at
it: the model that `make generate`, `chat` and `export-hf` use. Checkpoints carry the Alpaca prompt as the
chat template of their tokenizer_config.json (and `"sft": true` in state.json), so the chat CLI applies it.
At the end, rank 0 prints the figures of the best checkpoint and `--show` validation prompts with its greedy
answers and answers sampled as `make chat` samples. Exit status as `train pretrain`: 0 done, 143 or 130 stopped by SIGTERM or Ctrl-C after a
checkpoint, 1 with a message.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from gpt.chat import TEMPERATURE, TOP_P
from gpt.checkpoint import load_model
from gpt.model import GPT
from gpt.template import CHAT_TEMPLATE
from pipelines import CUSTOM, SFT_DATASETS
from pipelines.stage import find_shards_dir
from shards.tokenizer import EOT, get_encoding

from .answers import answer_text, answers_to, instruction
from .checkpoint import best_evaluations, latest_checkpoint
from .config import RunConfig, parse_args, set_recipes
from .data import SFTData, rank_slice
from .distributed import Dist, process_group, run_process
from .loop import RUN_ERRORS, Hooks, autocast, exit_status, token_loss, train
from .model import build_model, check_context, resolve_init, resumed_checkpoint


@dataclass
class SFTTrainConfig(RunConfig):
    """SFT: the model comes from --init or --pretrain-run, the global batch counts examples."""
    STAGE: ClassVar[str] = "sft"
    FULL_RECIPE: ClassVar[str] = "alpaca"
    BATCH_FLAG: ClassVar[str] = "--batch-examples"
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {**RunConfig.CHOICES, "dataset": (*SFT_DATASETS, CUSTOM)}
    RESUME_KEYS: ClassVar[tuple[str, ...]] = RunConfig.RESUME_KEYS + ("batch_examples", "eval_examples")
    POSITIVE: ClassVar[tuple[str, ...]] = RunConfig.POSITIVE + ("batch_examples", "eot_steps")
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = RunConfig.NON_NEGATIVE + ("eval_examples", "show")
    dataset: str = "sample"  # the SFT dataset: sample, alpaca or custom (the folder DATA_DIR/<dataset>-sft/)
    epochs: int = 2
    batch_examples: int = 64  # global batch in examples (all ranks and accumulation steps)
    pretrain_run: str = "runs/fineweb10B/pretrain"  # without --init: start from this run's latest checkpoint
    eval_examples: int = 0  # validation examples evaluated (loss and EOT rate) each time; 0: all of them
    eot_steps: int = 64  # new tokens within which a greedy answer must end with EOT to count in eot_rate
    sample_tokens: int = 64  # tokens shown of the answers to two validation prompts at each eval (0: none)
    show: int = 4  # validation prompts printed with their greedy and sampled answers at the end (0: none)


set_recipes(
    SFTTrainConfig,
    # The CPU demo: the pretrained `tiny` model on the chatterbot sample (1,020 train examples, 104 validation).
    # Examples of at most 129 tokens: that leaves out the ~50 long code answers, whose runs of whitespace
    # tokens would be 9% of the supervised tokens and make the tiny model's greedy answers runs of spaces. 4
    # epochs at lr 6e-3: at 3e-3 (2, 4 or 8 epochs) or 1e-3 the greedy answers of a seed end at some evaluations
    # and loop at others (EOT rate 0% to 100%); this recipe kept 94% or more at every evaluation from step 120
    # on, in three runs (docs/benchmarks.md).
    sample=SFTTrainConfig(dataset="sample", epochs=4, batch_examples=16, micro_batch=16, seq_len=128, lr=6e-3,
                          warmup=10, eval_every=40, save_every=100, pretrain_run="runs/sample/pretrain"),
    # Stanford Alpaca on GPT-2 124M: 2 epochs of 52k examples, 64 per step, small lr, short warmup, cosine decay.
    alpaca=SFTTrainConfig(dataset="alpaca", batch_examples=64, micro_batch=8, seq_len=1024, lr=2e-5, warmup=50,
                          eval_every=200, save_every=400, pretrain_run="runs/fineweb10B/pretrain"))


def distinct_prompts(data: SFTData) -> np.ndarray:
    """The validation examples (indices) whose prompt comes first among those equal to it: the EOT rate and
    the shown answers count each prompt once, since a prompt with several answers has one greedy answer."""
    first: dict[bytes, int] = {}
    for i in range(len(data.val_ids)):
        first.setdefault(data.val_prompt(i).tobytes(), i)
    return np.fromiter(first.values(), dtype=np.int64)


def eval_hook(data: SFTData, cfg: SFTTrainConfig):
    """At each evaluation: `eot_rate`, the fraction of distinct validation prompts whose greedy answer is not
    empty and ends with EOT within eot_steps new tokens, and on rank 0 `samples`, the first two of those answers (sample_tokens long)."""
    prompts = distinct_prompts(data)

    def extra_eval(model: GPT, dist: Dist) -> dict:
        ids = rank_slice(prompts, dist.rank, dist.world_size)
        with autocast(cfg, dist.device):
            answers = answers_to(model, [data.val_prompt(i) for i in ids], cfg.eot_steps, cfg.micro_batch,
                                 progress=dist.is_main and cfg.progress)
        counts = torch.tensor([sum(len(a) > 1 and a[-1] == EOT for a in answers), len(answers)],  # not empty
                              dtype=torch.float64, device=dist.device)
        dist.all_reduce_sum(counts)
        record = {"eot_rate": (counts[0] / counts[1]).item()}
        if dist.is_main and cfg.sample_tokens:  # rank 0's share starts at validation example 0
            shown = [_format(data, i, answer[:cfg.sample_tokens]) for i, answer in zip(ids[:2], answers)]
            record["samples"] = [f"{question} => {answer}" for question, _, answer in shown]
        return record

    return extra_eval


def _format(data: SFTData, i: int, answer: list[int]) -> tuple[str, str, str]:
    """(instruction, reference answer, `answer`) of validation example `i`, as text."""
    enc = get_encoding()
    reference = enc.decode(data.val_answers(i)[0][:-1].tolist())
    return instruction(enc.decode(data.val_prompt(i).tolist())), reference, answer_text(answer)


def show_answers(model: GPT, data: SFTData, count: int, max_steps: int) -> list[tuple[str, str, str, str]]:
    """(instruction, reference answer, greedy answer, sampled answer) for the first `count` distinct validation
    prompts; sampled with the defaults of `generate` and `chat` (gpt.chat's TEMPERATURE and TOP_P), seed 0."""
    ids = distinct_prompts(data)[:count]
    prompts, batch = [data.val_prompt(i) for i in ids], max(len(ids), 1)
    greedy = answers_to(model, prompts, max_steps, batch)
    generator = torch.Generator(next(model.parameters()).device).manual_seed(0)
    sampled = answers_to(model, prompts, max_steps, batch, temperature=TEMPERATURE, top_p=TOP_P, generator=generator)
    return [(*_format(data, i, g), answer_text(s)) for i, g, s in zip(ids, greedy, sampled)]


def resolve_sft_start(cfg: SFTTrainConfig) -> SFTTrainConfig:
    """`init` as a checkpoint folder: the resumed run's or --init's (`resolve_init`), else the pretraining run's
    latest checkpoint. A resumed run goes on from its checkpoint even where it records no init (one resumed before
    state.json kept it)."""
    cfg = resolve_init(cfg)
    if cfg.init or resumed_checkpoint(cfg) is not None:
        return cfg
    folder = latest_checkpoint(cfg.pretrain_run)
    if folder is None:
        raise FileNotFoundError(f"no pretraining checkpoint under {cfg.pretrain_run}/ckpt to start SFT from: run "
                                f"`make pretrain` first, or pass --pretrain-run RUN_DIR or --init FOLDER "
                                f"(our checkpoint or a Hugging Face GPT-2 folder)")
    return dataclasses.replace(cfg, init=str(folder))


def main(argv=None) -> int:
    cfg = parse_args(argv, SFTTrainConfig, prog="python -m train sft")
    try:
        with process_group(cfg.device, cfg.dist_timeout) as dist:
            with dist.unanimous():  # a node that cannot read the shards or the pretraining run stops every rank
                cfg = resolve_sft_start(cfg)
                check_context(cfg)
                shards_dir = cfg.shards_dir or find_shards_dir(cfg.data_dir, "sft", cfg.dataset)
                data = SFTData(shards_dir, cfg.seq_len, cfg.batch_examples, cfg.seed, cfg.eval_examples)
            if dist.is_main:
                print(f"sft: {len(data.train_ids)} train and {len(data.val_ids)} validation examples from "
                      f"{shards_dir} ({data.left_out} longer than {cfg.seq_len + 1} tokens left out), starting from "
                      f"{cfg.init or latest_checkpoint(cfg.run_dir)}")
            hooks = Hooks(loss=functools.partial(token_loss, supervised_only=True), extra_eval=eval_hook(data, cfg),
                          plot_metrics=("eot_rate",), state={"sft": True}, chat_template=CHAT_TEMPLATE, keep_best=True)
            result = train(cfg, data, dist, lambda: build_model(cfg, dist), hooks, desc="sft")
            if dist.is_main and not result["stopped"]:  # preempted: exit at once, the checkpoint is saved
                _report(cfg, data, dist.device)
    except RUN_ERRORS as e:
        print(f"sft: error: {e}", file=sys.stderr)
        return 1
    return exit_status(result)


def _report(cfg: SFTTrainConfig, data: SFTData, device: torch.device) -> None:
    """Validation answer loss and EOT rate before and at the best checkpoint (and at the last step), then a few
    held-out prompts with the best checkpoint's answers."""
    folder, first, best, last = best_evaluations(cfg.run_dir)
    if first and best:
        print(f"sft: validation answer loss {first['val_loss']:.4f} -> {best['val_loss']:.4f}, EOT rate within "
              f"{cfg.eot_steps} tokens {first['eot_rate']:.0%} -> {best['eot_rate']:.0%} (step 0 -> {best['step']}, "
              f"the best checkpoint: {folder}; at the last step, {last['step']}: {last['val_loss']:.4f} and "
              f"{last['eot_rate']:.0%})")
    if cfg.show:
        model = load_model(folder, device=device)
        print(f"held-out prompts and the answers of {folder}, greedy and sampled as `make chat` samples "
              f"(temperature {TEMPERATURE}, top-p {TOP_P}):")
        for question, reference, greedy, sampled in show_answers(model, data, cfg.show, cfg.eot_steps):
            print(f"  prompt:    {question}\n  reference: {reference}\n  greedy:    {greedy}\n  sampled:   {sampled}\n")


if __name__ == "__main__":
    run_process(main)
