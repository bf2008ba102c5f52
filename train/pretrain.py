"""`python -m train pretrain [flags]`: pretrain GPT-2 on token shards, in one process or under torchrun.

Builds the model (a preset, or `--init` weights), the shard stream of the dataset's manifest, and runs the
shared loop (train/loop.py); with `--hellaswag`, HellaSwag's acc_norm at each evaluation (train/hellaswag.py), in
log.jsonl and loss.png. Exit status: 0 when done; 143 (SIGTERM) or 130 (Ctrl-C) when that signal stopped
it after saving a checkpoint; 1 with a message on bad input or a non-finite loss.
"""

from __future__ import annotations

import sys

from gpt.inference import generate, tokenize_batch_input
from gpt.model import GPT, GPTConfig
from pipelines import HELLASWAG_ENDINGS as ENDINGS
from pipelines.stage import find_shards_dir
from shards.tokenizer import get_encoding

from .answers import TRAINING_DECODING
from .config import TrainConfig, parse_args
from .data import PretrainData, verify_data
from .distributed import process_group, run_process
from .hellaswag import HellaSwagData, evaluate, find_data
from .loop import RUN_ERRORS, Hooks, autocast, exit_status, train
from .model import build_model, check_context, resolve_init

SAMPLE_PROMPT = "Hello, how are you today?"


def sample_hook(prompt: str, max_steps: int):
    """Greedy continuation of a fixed prompt, decoded, for the log at each evaluation."""
    input_ids, masks = tokenize_batch_input([prompt])

    def samples(model: GPT) -> list[str]:
        device = next(model.parameters()).device
        new = generate(model, input_ids.to(device), masks.to(device), 0.0, max_steps, truncate=True,
                       **TRAINING_DECODING)
        return [prompt + get_encoding().decode(new[0])]

    return samples


def hellaswag_hook(data: HellaSwagData, cfg: TrainConfig):
    """HellaSwag's acc_norm (and acc) at each evaluation, on the first `cfg.hellaswag_examples` examples (0: all),
    micro-batches of about `cfg.micro_batch` rows."""

    def extra_eval(model: GPT, dist) -> dict:
        result = evaluate(model, data, dist, cfg.hellaswag_examples or None, max(1, cfg.micro_batch // ENDINGS),
                          autocast(cfg, dist.device), cfg.progress)
        return {"hellaswag_acc_norm": result["acc_norm"], "hellaswag_acc": result["acc"]}

    return extra_eval


def main(argv=None) -> int:
    cfg = parse_args(argv)
    try:
        with process_group(cfg.device, cfg.dist_timeout) as dist:
            with dist.unanimous():  # a node that cannot read the shards stops every rank
                cfg = resolve_init(cfg)  # a run folder stands for its checkpoint, which state.json then records
                check_context(cfg, cfg.model)
                shards_dir = cfg.shards_dir or find_shards_dir(cfg.data_dir, "pretrain", cfg.dataset)
                data = PretrainData(shards_dir, cfg.seq_len, cfg.batch_tokens, cfg.seed, cfg.eval_tokens)
                hellaswag = find_data(cfg.data_dir, cfg.hellaswag_dir, "--hellaswag-dir") if cfg.hellaswag else None
                if hellaswag is not None and cfg.verify_data and dist.local_rank == 0:
                    verify_data(hellaswag, GPTConfig.vocab_size, cfg.progress)
            hooks = Hooks(samples=sample_hook(SAMPLE_PROMPT, cfg.sample_tokens) if cfg.sample_tokens else None,
                          extra_eval=hellaswag_hook(hellaswag, cfg) if hellaswag is not None else None,
                          plot_metrics=("hellaswag_acc_norm",) if hellaswag is not None else ())
            result = train(cfg, data, dist, lambda: build_model(cfg, dist, cfg.model), hooks, desc="pretrain")
    except RUN_ERRORS as e:
        print(f"pretrain: error: {e}", file=sys.stderr)
        return 1
    if dist.is_main:
        last = result["last_eval"]
        val = "n/a" if last is None else f"{last['val_loss']:.4f} (at step {last['step']})"
        print(f"pretrain: {result['step']} steps, validation loss {val}, checkpoints in {cfg.run_dir}/ckpt")
    return exit_status(result)


if __name__ == "__main__":
    run_process(main)
