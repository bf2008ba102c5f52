"""Every knob of a training run as a plain dataclass, and the named recipes that set them.

`RunConfig` holds what every training stage shares; a stage's config subclasses it with its own batch and
model fields, and names complete recipes in its `RECIPES` (pretraining's, here: `sample`, the CPU demo, and
`gpt2-124m`, the GPT-2 124M recipe of build-nanogpt / llm.c). `parse_args(argv, config_cls)` starts from
`--recipe` (default: `sample` on the sample dataset, else the stage's `FULL_RECIPE`), lays the flags given over
it (`--batch-tokens 524288` sets `batch_tokens`, one flag per field, by shards.cli) and, with `--show-config`,
prints the result whole and exits. Every checkpoint's state.json records the config a run resolved to.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import ClassVar

from gpt.checkpoint import load_config
from gpt.kernels import COMPILE_MODES
from gpt.model import PRESETS, GPTConfig
from pipelines import CUSTOM, PRETRAIN_DATASETS
from shards import cli


@dataclass
class RunConfig:
    """What every training run has (pretraining, SFT): data, init, schedule, evaluation, checkpoints, execution.

    A trainer's subclass adds its batch and model fields and sets the class variables below.
    """
    STAGE: ClassVar[str] = "run"  # names the default run folder, runs/DATASET/STAGE
    RECIPES: ClassVar[dict] = {}  # name -> a complete config of the stage (set below each stage's class)
    FULL_RECIPE: ClassVar[str] = ""  # the recipe of every dataset but the sample
    BATCH_FLAG: ClassVar[str] = "--batch-tokens"  # the flag that sets the global batch, for messages
    # A changed value of any of these makes a resumed run differ from an uninterrupted one: refused. Each stage
    # adds its own, its validation set's size among them (keep_best compares val_loss with the old best's).
    RESUME_KEYS: ClassVar[tuple[str, ...]] = ("seq_len", "lr", "min_lr_ratio", "warmup", "weight_decay", "beta1",
                                              "beta2", "eps", "grad_clip", "seed", "padded_vocab")
    # The numbers that must be > 0 or >= 0 when set (a subclass adds its own); check() has the fractions
    POSITIVE: ClassVar[tuple[str, ...]] = ("padded_vocab", "steps", "epochs", "micro_batch", "seq_len", "lr", "eps",
                                           "eval_every", "save_every", "dist_timeout")
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = ("warmup", "weight_decay", "grad_clip", "sample_tokens",
                                               "keep_checkpoints")
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"device": ("auto", "cpu", "cuda"),
                                                     "dtype": ("auto", "float32", "bfloat16"),
                                                     "compile_mode": COMPILE_MODES}
    HELP: ClassVar[dict[str, str]] = {"epochs": "given, it replaces the recipe's --steps",
                                      "show_config": "print the resolved config as JSON and exit",
                                      "compile_mode": "torch.compile's mode, with --compile (tuned: inductor times "
                                                      "its kernels' launch settings at the start; max-autotune-no-"
                                                      "cudagraphs: minutes of timing kernels at the start)",
                                      "dist_timeout": "minutes a rank waits in a collective for the others before "
                                                      "the job stops (NCCL's default: 10)"}

    recipe: str = "sample"  # the named recipe the other fields start from
    # data
    dataset: str = "sample"
    data_dir: str = "data"
    shards_dir: str | None = None  # a folder with a manifest; default: the one under data_dir for dataset
    verify_data: bool = True  # check each shard file's sha256 and token ids before the first step (remembered)
    # model
    init: str | None = None  # these weights (our checkpoint, a run folder: its best, else latest; an HF folder)
    padded_vocab: int | None = None  # embedding rows; default 50304 on CUDA, none on CPU
    # batch and schedule
    steps: int | None = None  # optimizer steps; None: `epochs` epochs of the train split
    epochs: int = 1  # given on the command line, it replaces the recipe's steps
    micro_batch: int = 32  # sequences per forward pass per rank
    seq_len: int = 1024
    lr: float = 6e-4  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    warmup: int = 0  # linear warmup steps
    weight_decay: float = 0.1  # on matrices and embeddings only (dim >= 2)
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 disables clipping
    # evaluation, checkpoints, logs
    eval_every: int = 250
    sample_tokens: int = 32  # tokens generated greedily at each eval (0: none)
    save_every: int = 1000
    keep_checkpoints: int = 3  # the last K checkpoint folders stay (0: all)
    run_dir: str | None = None  # default runs/<dataset>/<stage> (stage: pretrain, sft)
    resume: bool = False
    extend: bool = False  # with --resume: more --steps (or --epochs) than the run had; they run at its final lr
    # execution
    compile: bool = False
    compile_mode: str = "default"
    seed: int = 1337
    device: str = "auto"  # auto, cpu, cuda
    # minutes a rank may wait in a collective for the others (rank 0's first check of the shards, its checkpoint
    # writes) before the process group stops the job; NCCL's default, 10, is short for a slow disk
    dist_timeout: float = 30
    dtype: str = "auto"  # auto (bfloat16 autocast on GPUs with native bf16, else float32), float32, bfloat16
    progress: bool = True  # a progress bar on rank 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def check(self) -> None:
        """Raise ValueError, naming the flag, for the first number out of its range."""
        rules = [(self.POSITIVE, lambda v: v > 0, "positive"), (self.NON_NEGATIVE, lambda v: v >= 0, "0 or more"),
                 (("min_lr_ratio",), lambda v: 0 <= v <= 1, "within [0, 1]"),
                 (("beta1", "beta2"), lambda v: 0 <= v < 1, "within [0, 1)"),
                 (("seed",), lambda v: 0 <= v < 2 ** 64, "within [0, 2**64)"),  # numpy's and torch's seeds
                 (("padded_vocab",), lambda v: v >= GPTConfig.vocab_size,
                  f"at least the vocabulary's {GPTConfig.vocab_size}"),
                 # the process group's timeout: 1e9 minutes ran under torchrun, 1.4e12 or more was a traceback
                 (("dist_timeout",), lambda v: v <= 1e8, "at most 100000000 (minutes)")]
        for names, ok, what in rules:
            for name in names:
                value = getattr(self, name)
                if value is not None and not ok(value):
                    raise ValueError(f"--{name.replace('_', '-')} must be {what}, got {value}")
        for field in dataclasses.fields(self):  # inf passes the ranges above: --lr inf made every weight nan
            value = getattr(self, field.name)
            if isinstance(value, float) and math.isinf(value):
                raise ValueError(f"--{field.name.replace('_', '-')} must be a finite number, got {value}")
        if self.compile_mode != "default" and not self.compile:
            raise ValueError(f"--compile-mode {self.compile_mode} needs --compile")


@dataclass
class TrainConfig(RunConfig):
    """Pretraining: a model preset (or --init) on token shards; the global batch counts tokens."""
    STAGE: ClassVar[str] = "pretrain"
    FULL_RECIPE: ClassVar[str] = "gpt2-124m"
    RESUME_KEYS: ClassVar[tuple[str, ...]] = RunConfig.RESUME_KEYS + ("model", "batch_tokens", "eval_tokens")

    POSITIVE: ClassVar[tuple[str, ...]] = RunConfig.POSITIVE + ("batch_tokens", "eval_tokens")
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = RunConfig.NON_NEGATIVE + ("hellaswag_examples",)
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {**RunConfig.CHOICES, "model": tuple(PRESETS),
                                                     "dataset": (*PRETRAIN_DATASETS, CUSTOM)}
    HELP: ClassVar[dict[str, str]] = {
        **RunConfig.HELP,
        "hellaswag": "HellaSwag's acc_norm and acc at each evaluation (--eval-every), on every rank, logged as "
                     "hellaswag_acc_norm and hellaswag_acc (make hellaswag-shards first; docs/evaluation.md)",
        "hellaswag_examples": "the first N HellaSwag examples each time (0: all 10,042)",
        "hellaswag_dir": "the HellaSwag shards folder (default: the one under --data-dir)"}

    model: str = "gpt2"  # a preset of gpt.model.PRESETS (without --init)
    batch_tokens: int = 524288  # global batch in tokens (all ranks and accumulation steps)
    eval_tokens: int = 10485760  # validation tokens evaluated each time (always the same ones)
    hellaswag: bool = False  # HellaSwag at each evaluation, as llm.c (train/hellaswag.py)
    hellaswag_examples: int = 0  # the first N examples each time; 0: all
    hellaswag_dir: str | None = None  # default: the one under data_dir (DATA_DIR/hellaswag-eval/<fingerprint>/)

    def check(self) -> None:
        super().check()
        if not self.hellaswag and (self.hellaswag_examples or self.hellaswag_dir):
            given = "--hellaswag-examples" if self.hellaswag_examples else "--hellaswag-dir"
            raise ValueError(f"{given} needs --hellaswag")


def set_recipes(config_cls, **recipes: RunConfig) -> None:
    """Name the complete configs of a stage; `--recipe` chooses among them."""
    config_cls.RECIPES = {name: dataclasses.replace(cfg, recipe=name) for name, cfg in recipes.items()}
    config_cls.CHOICES = {**config_cls.CHOICES, "recipe": tuple(recipes)}


set_recipes(
    TrainConfig,
    # The CPU demo: the `tiny` model on the built-in sample, a few minutes on 2 cores (docs/benchmarks.md).
    sample=TrainConfig(dataset="sample", model="tiny", batch_tokens=1024, micro_batch=8, seq_len=128, lr=6e-3,
                       warmup=40, eval_every=60, eval_tokens=16384, save_every=120, steps=720),
    # GPT-2 124M on FineWeb-10B: global batch 2**19 tokens, sequence 1024, micro-batch 32 per GPU, max lr 6e-4,
    # 715 warmup steps, cosine to 10%, AdamW (0.9, 0.95) eps 1e-8, weight decay 0.1, clip 1.0, one epoch.
    **{"gpt2-124m": TrainConfig(dataset="fineweb10B", model="gpt2", batch_tokens=524288, micro_batch=32,
                                seq_len=1024, lr=6e-4, warmup=715, eval_every=250, eval_tokens=10485760,
                                save_every=1000)})


def _recipe_help(config_cls):
    """The "default: ..." text of a field's --help: its value in every recipe, or the one they share."""
    recipes = config_cls.RECIPES

    def text(name: str) -> str | None:
        if name == "recipe":
            return f"default: sample on --dataset sample, else {config_cls.FULL_RECIPE}"
        if name == "run_dir":
            return f"default: runs/<dataset>/{config_cls.STAGE}"
        values = {recipe: getattr(cfg, name) for recipe, cfg in recipes.items()}
        shown = {recipe: "--epochs epochs" if name == "steps" and v is None else v for recipe, v in values.items()}
        if len(set(map(repr, shown.values()))) > 1:
            return "recipes: " + ", ".join(f"{recipe} {v}" for recipe, v in shown.items())
        value = next(iter(shown.values()))
        return None if value is None else f"default: {value}"

    return text


def _another_model(model: str, init) -> str | None:
    """Why a --model given beside --init names another model than --init's, which the run trains (--model was
    ignored), or None; an --init that cannot be read is left to the run, which names what is wrong with it."""
    def shape(config: GPTConfig) -> tuple[int, int, int, int]:
        return config.n_layer, config.n_head, config.n_embd, config.block_size

    try:
        start = shape(load_config(init))
    except (OSError, ValueError):
        return None
    if start == shape(PRESETS[model]):
        return None
    return (f"--model {model} is not the model of --init {init} ({start[0]} layers, {start[1]} heads, width "
            f"{start[2]}, context {start[3]}): the run trains --init's model; drop --model (MODEL=)")


def build_parser(config_cls=TrainConfig, prog: str = "python -m train pretrain"):
    """One flag per field of `config_cls` (a flag not given is absent from the result), and --show-config."""
    parser = cli.build_parser(config_cls, prog, " ".join(config_cls.__doc__.split()), _recipe_help(config_cls),
                              suppress_defaults=True)
    parser.add_argument("--show-config", action="store_true", help="print the resolved config as JSON and exit")
    return parser


def parse_args(argv=None, config_cls=TrainConfig, prog: str = "python -m train pretrain"):
    """The recipe of --recipe with the flags given laid over it; a value out of range exits with a usage error,
    and --show-config prints the result and exits."""
    parser = build_parser(config_cls, prog)
    given = vars(parser.parse_args(argv))
    show = given.pop("show_config")
    recipe = given.get("recipe") or ("sample" if given.get("dataset", "sample") == "sample"
                                     else config_cls.FULL_RECIPE)
    if "epochs" in given and "steps" not in given:  # --epochs replaces the recipe's fixed number of steps
        given["steps"] = None
    cfg = dataclasses.replace(config_cls.RECIPES[recipe], **given)
    if cfg.run_dir is None:
        cfg = dataclasses.replace(cfg, run_dir=f"runs/{cfg.dataset}/{cfg.STAGE}")
    try:
        cfg.check()
    except ValueError as e:
        parser.error(str(e))
    if "model" in given and cfg.init and (problem := _another_model(cfg.model, cfg.init)):
        parser.error(problem)
    if show:
        print(json.dumps(cfg.to_dict(), indent=1))
        raise SystemExit(0)
    return cfg
