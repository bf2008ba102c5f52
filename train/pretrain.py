"""`python -m train pretrain [flags]`: pretrain GPT-2 on token shards, in one process or under torchrun.

Builds the model (a preset, or `--init` weights), the shard stream of the dataset's manifest, and runs the
shared loop (train/loop.py). Exit status: 0 when done; 143 (SIGTERM) or 130 (Ctrl-C) when that signal stopped
it after saving a checkpoint; 1 with a message on bad input or a non-finite loss.
"""

from __future__ import annotations

import dataclasses
import sys

from gpt.checkpoint import load_config, load_model
from gpt.inference import generate, tokenize_batch_input
from gpt.model import GPT, preset
from gpt.tokenizer import get_encoding

from .checkpoint import latest_checkpoint, resolve_checkpoint
from .config import RunConfig, parse_args
from .data import PretrainData, find_shards_dir
from .distributed import Dist, process_group
from .loop import RUN_ERRORS, Hooks, exit_status, train

SAMPLE_PROMPT = "Hello, how are you today?"
PADDED_VOCAB_CUDA = 50304  # a multiple of 128: faster matmuls on GPU


def build_model(cfg: RunConfig, dist: Dist, preset_name: str | None = None) -> GPT:
    """`cfg.init` weights (our checkpoint or a Hugging Face GPT-2 folder) or a fresh `preset_name` model."""
    padded = cfg.padded_vocab or (PADDED_VOCAB_CUDA if dist.device.type == "cuda" else None)
    if cfg.init:
        model = load_model(cfg.init, device=dist.device, padded_vocab_size=padded)
    else:
        model = GPT(preset(preset_name, padded_vocab_size=padded))
    return model.train()


def check_context(cfg: RunConfig, preset_name: str | None = None) -> None:
    """Refuse a --seq-len beyond the context of the model the run trains (its latest checkpoint when resuming,
    else `cfg.init`, else the preset), from its config alone: before the data, whose checks depend on it."""
    start = (latest_checkpoint(cfg.run_dir) if cfg.resume else None) or cfg.init
    context = (load_config(start) if start else preset(preset_name)).block_size
    if context < cfg.seq_len:
        raise ValueError(f"--seq-len {cfg.seq_len} exceeds the model's context of {context}")


def sample_hook(prompt: str, max_steps: int):
    """Greedy continuation of a fixed prompt, decoded, for the log at each evaluation."""
    input_ids, masks = tokenize_batch_input([prompt])

    def samples(model: GPT) -> list[str]:
        device = next(model.parameters()).device
        new = generate(model, input_ids.to(device), masks.to(device), 0.0, max_steps, truncate=True)
        return [prompt + get_encoding().decode(new[0])]

    return samples


def main(argv=None) -> int:
    cfg = parse_args(argv)
    try:
        with process_group(cfg.device) as dist:
            with dist.unanimous():  # a node that cannot read the shards stops every rank
                if cfg.init:  # a run folder stands for its latest checkpoint, which state.json then records
                    cfg = dataclasses.replace(cfg, init=str(resolve_checkpoint(cfg.init)))
                check_context(cfg, cfg.model)
                shards_dir = cfg.shards_dir or find_shards_dir(cfg.data_dir, "pretrain", cfg.dataset)
                data = PretrainData(shards_dir, cfg.seq_len, cfg.batch_tokens, cfg.seed, cfg.eval_tokens)
            hooks = Hooks(samples=sample_hook(SAMPLE_PROMPT, cfg.sample_tokens) if cfg.sample_tokens else None)
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
    sys.exit(main())
