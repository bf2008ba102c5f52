"""The model a training stage starts from, shared by every stage (pretrain, sft, dpo, rm, rl).

`build_model` gives the `--init` weights (our checkpoint or a Hugging Face GPT-2 folder) or a fresh preset;
`check_context` refuses a `--seq-len` beyond that model's context before the data is read. The stages after
SFT (DPO, the reward model, RL) start where `resolve_sft_init` says (the SFT run's checkpoint, or `--init`), every
stage where `resolve_init` says when resuming (where its first run started);
DPO and RL keep that start as their `frozen` reference.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from gpt.checkpoint import load_config, load_model
from gpt.model import GPT, preset

from .checkpoint import latest_checkpoint, read_state, resolve_checkpoint
from .config import RunConfig
from .distributed import Dist
from .loop import TrainingError

PADDED_VOCAB_CUDA = 50304  # a multiple of 128: faster matmuls on GPU


def build_model(cfg: RunConfig, dist: Dist, preset_name: str | None = None) -> GPT:
    """`cfg.init` weights (our checkpoint or a Hugging Face GPT-2 folder) or a fresh `preset_name` model."""
    padded = cfg.padded_vocab or (PADDED_VOCAB_CUDA if dist.device.type == "cuda" else None)
    if cfg.init:
        model = load_model(cfg.init, device=dist.device, padded_vocab_size=padded)
    else:
        model = GPT(preset(preset_name, padded_vocab_size=padded))
    return model.train()


def check_context(cfg: RunConfig, preset_name: str | None = None, whole: bool = False) -> None:
    """Refuse a --seq-len beyond the context of the model the run trains (its latest checkpoint when resuming,
    else `cfg.init`, else the preset), from its config alone: before the data, whose checks depend on it.
    `whole`: the model reads each sequence whole, seq_len + 1 tokens (the reward model), not its seq_len inputs."""
    start = resumed_checkpoint(cfg) or cfg.init
    context = (load_config(start) if start else preset(preset_name)).block_size
    if context < cfg.seq_len + whole:
        read = " + 1 (the reward model reads each sequence whole, its closing EOT too)" if whole else ""
        raise ValueError(f"--seq-len {cfg.seq_len}{read} exceeds the model's context of {context}")


def frozen(model: GPT) -> GPT:
    """A reference model: eval mode, no gradient."""
    return model.eval().requires_grad_(False)


def resumed_checkpoint(cfg: RunConfig) -> Path | None:
    """The checkpoint a resumed run goes on from (its latest), or None when `cfg` starts a run or has none yet."""
    return latest_checkpoint(cfg.run_dir) if cfg.resume else None


def same_checkpoint(a, b) -> bool:
    """Whether two paths mean the same checkpoint folder (a run folder stands for its best, else its latest)."""
    return os.path.realpath(resolve_checkpoint(a)) == os.path.realpath(resolve_checkpoint(b))


def resumed_init(cfg: RunConfig) -> RunConfig | None:
    """When `cfg` resumes a run that has a checkpoint: `cfg` with the `init` its first run recorded (RESUME=1 needs
    no INIT=, and every checkpoint's state.json keeps naming where the run started), after refusing an --init
    that names another start (the checkpoint's weights go on, not that init's). Otherwise None."""
    resumed = resumed_checkpoint(cfg)
    if resumed is None:
        return None
    recorded = read_state(resumed)["config"]["init"]
    if cfg.init and recorded is None:
        raise TrainingError(f"cannot resume from {resumed} with --init {cfg.init}: its state.json records no init (a "
                            "new model, or a run resumed before the init was recorded); resume without --init")
    if cfg.init and not same_checkpoint(cfg.init, recorded):
        raise TrainingError(f"cannot resume from {resumed}: the run started from {recorded}, not {cfg.init}")
    return dataclasses.replace(cfg, init=recorded)


def resolve_init(cfg: RunConfig) -> RunConfig:
    """`cfg` with `init` as a checkpoint folder (a run folder stands for its best checkpoint, else its latest):
    the resumed run's (`resumed_init`), else --init's, else none (a fresh model)."""
    resumed = resumed_init(cfg)
    if resumed is not None:
        return resumed
    return dataclasses.replace(cfg, init=str(resolve_checkpoint(cfg.init))) if cfg.init else cfg


def resolve_sft_init(cfg: RunConfig, stage: str) -> RunConfig:
    """`cfg` with `init` as a checkpoint folder, where a stage after SFT (named `stage` in messages) starts: the
    resumed run's or --init's (`resolve_init`), else the checkpoint of the SFT run `cfg.sft_run`
    (`resolve_checkpoint`: its best, else its latest)."""
    cfg = resolve_init(cfg)
    if cfg.init:
        return cfg
    if latest_checkpoint(cfg.sft_run) is None:
        raise FileNotFoundError(f"no SFT checkpoint under {cfg.sft_run}/ckpt to start {stage} from: run `make sft` "
                                f"first, or pass --sft-run RUN_DIR or --init FOLDER")
    return dataclasses.replace(cfg, init=str(resolve_checkpoint(cfg.sft_run)))
