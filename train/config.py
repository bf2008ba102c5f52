"""Every knob of a training run as a plain dataclass, with argparse flags and per-dataset defaults.

`RunConfig` holds what pretraining and SFT share; `TrainConfig` (pretraining, here) and `train.sft`'s
`SFTTrainConfig` add their own fields. A field left at None takes its default from the dataset: on
`sample` a small CPU model that finishes in minutes, on FineWeb the GPT-2 124M recipe (build-nanogpt /
llm.c). `parse_args(argv, config_cls)` builds one from flags: `--batch-tokens 524288` sets
`batch_tokens`, and so on for every field.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, fields
from typing import ClassVar

from gpt.model import PRESETS
from pipelines import CUSTOM, PRETRAIN_DATASETS

# The 124M recipe: global batch 2**19 tokens, sequence 1024, micro-batch 32 per GPU, max lr 6e-4,
# 715 warmup steps, cosine to 10%, AdamW (0.9, 0.95) eps 1e-8, weight decay 0.1, clip 1.0.
FINEWEB_DEFAULTS = dict(model="gpt2", batch_tokens=524288, micro_batch=32, seq_len=1024, lr=6e-4, warmup=715,
                        eval_every=250, eval_tokens=10485760, save_every=1000)
# The CPU demo: the `tiny` model on the built-in sample, a few minutes on 2 cores.
SAMPLE_DEFAULTS = dict(model="tiny", batch_tokens=1024, micro_batch=8, seq_len=128, lr=6e-3, warmup=40,
                       eval_every=60, eval_tokens=16384, save_every=120, steps=720)


@dataclass
class RunConfig:
    """What every training run has (pretraining, SFT): data, init, schedule, evaluation, checkpoints, execution.

    A trainer's subclass adds its batch and model fields and sets the class variables below.
    """
    STAGE: ClassVar[str] = "run"  # names the default run folder, runs/DATASET/STAGE
    # What the fields left at None become: on the built-in sample, and on every other dataset (named in --help)
    SAMPLE_DEFAULTS: ClassVar[dict] = {}
    RECIPE: ClassVar[tuple[str, dict]] = ("other datasets", {})
    BATCH_FLAG: ClassVar[str] = "--batch-tokens"  # the flag that sets the global batch, for messages
    EPOCHS: ClassVar[int] = 1  # what `epochs` becomes when not given
    # A changed value of any of these makes a resumed run differ from an uninterrupted one: refused.
    RESUME_KEYS: ClassVar[tuple[str, ...]] = ("seq_len", "lr", "min_lr_ratio", "warmup", "weight_decay", "beta1",
                                              "beta2", "eps", "grad_clip", "seed", "padded_vocab")
    # The numbers that must be > 0 or >= 0 when set (a subclass adds its own); check() has the fractions
    POSITIVE: ClassVar[tuple[str, ...]] = ("padded_vocab", "steps", "epochs", "micro_batch", "seq_len", "lr", "eps",
                                           "eval_every", "save_every")
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = ("warmup", "weight_decay", "grad_clip", "sample_tokens",
                                               "keep_checkpoints")
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"device": ("auto", "cpu", "cuda"),
                                                     "dtype": ("auto", "float32", "bfloat16")}

    # data
    dataset: str = "sample"
    data_dir: str = "data"
    shards_dir: str | None = None  # a folder with a manifest; default: the one under data_dir for dataset
    verify_data: bool = True  # check each shard file's sha256 and token ids before the first step (remembered)
    # model
    init: str | None = None  # start from these weights (our checkpoint, a run folder: its latest, or an HF GPT-2 folder)
    padded_vocab: int | None = None  # embedding rows; default 50304 on CUDA, none on CPU
    # batch and schedule
    steps: int | None = None  # optimizer steps; default: the dataset's, or `epochs` epochs of the train shards
    epochs: int | None = None  # default EPOCHS; given, it also replaces the dataset's default steps
    micro_batch: int | None = None  # sequences per forward pass per rank
    seq_len: int | None = None
    lr: float | None = None  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    warmup: int | None = None  # linear warmup steps
    weight_decay: float = 0.1  # on matrices and embeddings only (dim >= 2)
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 disables clipping
    # evaluation, checkpoints, logs
    eval_every: int | None = None
    sample_tokens: int = 32  # tokens generated greedily at each eval (0: none)
    save_every: int | None = None
    keep_checkpoints: int = 3  # the last K checkpoint folders stay (0: all)
    run_dir: str | None = None  # default runs/<dataset>/<stage> (stage: pretrain, sft)
    resume: bool = False
    extend: bool = False  # with --resume: more --steps (or --epochs) than the run had; they run at its final lr
    # execution
    compile: bool = False
    seed: int = 1337
    device: str = "auto"  # auto, cpu, cuda
    dtype: str = "auto"  # auto (bfloat16 autocast on GPUs with native bf16, else float32), float32, bfloat16
    progress: bool = True  # a progress bar on rank 0

    def resolved(self):
        """A copy with every None that has a dataset default filled in (the recipe for other datasets)."""
        defaults = self.SAMPLE_DEFAULTS if self.dataset == "sample" else self.RECIPE[1]
        filled = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        if self.epochs is None:
            filled["epochs"] = self.EPOCHS
        else:  # --epochs given: that many epochs, not the dataset's fixed number of steps
            filled.pop("steps", None)
        if self.run_dir is None:
            filled["run_dir"] = f"runs/{self.dataset}/{self.STAGE}"
        return dataclasses.replace(self, **filled)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def check(self) -> None:
        """Raise ValueError, naming the flag, for the first number out of its range."""
        rules = [(self.POSITIVE, lambda v: v > 0, "positive"), (self.NON_NEGATIVE, lambda v: v >= 0, "0 or more"),
                 (("min_lr_ratio",), lambda v: 0 <= v <= 1, "within [0, 1]"),
                 (("beta1", "beta2"), lambda v: 0 <= v < 1, "within [0, 1)")]
        for names, ok, what in rules:
            for name in names:
                value = getattr(self, name)
                if value is not None and not ok(value):
                    raise ValueError(f"--{name.replace('_', '-')} must be {what}, got {value}")


@dataclass
class TrainConfig(RunConfig):
    """Pretraining: a model preset (or --init) on token shards; the global batch counts tokens."""
    STAGE: ClassVar[str] = "pretrain"
    SAMPLE_DEFAULTS: ClassVar[dict] = SAMPLE_DEFAULTS
    RECIPE: ClassVar[tuple[str, dict]] = ("fineweb and custom", FINEWEB_DEFAULTS)
    RESUME_KEYS: ClassVar[tuple[str, ...]] = RunConfig.RESUME_KEYS + ("model", "batch_tokens")

    POSITIVE: ClassVar[tuple[str, ...]] = RunConfig.POSITIVE + ("batch_tokens", "eval_tokens")
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {**RunConfig.CHOICES, "model": tuple(PRESETS),
                                                     "dataset": (*PRETRAIN_DATASETS, CUSTOM)}

    model: str | None = None  # a preset of gpt.model.PRESETS (without --init)
    batch_tokens: int | None = None  # global batch in tokens (all ranks and accumulation steps)
    eval_tokens: int | None = None  # validation tokens evaluated each time (always the same ones)


def _flag_type(field):
    kind = str(field.type)
    if "bool" in kind:
        return None
    if "int" in kind:
        return int
    if "float" in kind:
        return float
    return str


def _help(config_cls, name: str, default) -> str | None:
    """The --help text of a field: its default, or the defaults of the datasets when those set it."""
    if name == "run_dir":
        return f"default: runs/<dataset>/{config_cls.STAGE}"
    recipe, defaults = config_cls.RECIPE
    epochs = "--epochs epochs of the train split"
    if name in config_cls.SAMPLE_DEFAULTS or name in defaults:
        sample, other = (d.get(name, epochs) for d in (config_cls.SAMPLE_DEFAULTS, defaults))
        return f"default follows --dataset: sample {sample}, {recipe} {other}"
    if name == "steps":
        return f"default: {epochs}"
    if name == "epochs":
        return f"default: {config_cls.EPOCHS}; given, it replaces the dataset's default --steps"
    return None if default is None else f"default: {default}"


def build_parser(config_cls=TrainConfig, prog: str = "python -m train pretrain") -> argparse.ArgumentParser:
    """One flag per field of `config_cls` (a RunConfig subclass), defaults from the dataclass."""
    parser = argparse.ArgumentParser(prog=prog, description=" ".join(config_cls.__doc__.split()))
    defaults = config_cls()
    for f in fields(config_cls):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        help = _help(config_cls, f.name, default)
        if _flag_type(f) is None:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help)
        else:
            parser.add_argument(flag, type=_flag_type(f), default=default, choices=config_cls.CHOICES.get(f.name),
                                help=help)
    return parser


def parse_args(argv=None, config_cls=TrainConfig, prog: str = "python -m train pretrain"):
    """The config of these flags, dataset defaults filled in; a value out of range exits with a usage error."""
    parser = build_parser(config_cls, prog)
    cfg = config_cls(**vars(parser.parse_args(argv))).resolved()
    try:
        cfg.check()
    except ValueError as e:
        parser.error(str(e))
    return cfg
