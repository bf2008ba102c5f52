"""THE training loop, shared by every training stage: accumulation, DDP, schedule, eval, checkpoints, resume.

A training stage (pretraining, SFT, DPO, the reward model, RL) is one module that brings four things
to this loop, and nothing else:
1. its recipe: a `RunConfig` subclass with named complete configs (train/config.py: `set_recipes`);
2. its data reader: an object with `plan` (a train.data.BatchPlan), `rows_per_step`, `manifest_sha256`, `dir`
   (the shards folder), `shard_entries` (the manifest entries of the files it reads: verified before the first
   step unless --no-verify-data), and `train_batches(step, rank, world_size, micro_batch)` /
   `val_batches(rank, world_size, micro_batch)` returning lists of micro-batches, tuples of tensors whose first
   is the input ids [B, T] (and optionally `rows_name`, what a row is, for error messages);
3. its loss: `Hooks.loss(model, batch)`, summed over the batch's units, and `Hooks.count(batch)`, how many
   units that is, known before the forward (default: next-token cross-entropy over (inputs, targets), targets
   -100 where not supervised; units are the supervised targets); with `Hooks.metrics` named, the loss returns
   (that sum, {name: its sum over the units}), and each name's mean over the units is logged at every step
   and, as `val_<name>`, at each evaluation (DPO's rewards); the names of `Hooks.minima` and `Hooks.maxima`
   are the batch's minimum or maximum of something instead, logged as the minimum or maximum over the global
   batch (the reward model's extreme rewards);
4. its evaluation hooks: `Hooks.extra_eval`, `samples`, `plot_metrics`, and what checkpoints carry, and how
   its checkpoints load when a run resumes (`Hooks.load`: gpt.load_model, or the reward model's loader).
`train(cfg, data, dist, build_model, hooks)` then runs `cfg.steps` optimizer steps (default: `cfg.epochs`
epochs).

An on-policy stage (RL) trains on what the model itself makes: its `Hooks.prepare(model, step, batches)` turns
the step's micro-batches from `train_batches` (prompts) into the micro-batches trained on (sampled answers and
their advantages), with the model as the previous step's update left it, at the start of the step and before
they are counted; the seconds it took are logged as `prepare_s`, apart from the learning's (`learn_s`, over
which `tokens_per_s` is measured).

The loss of a step is the sum of the per-unit losses of the global batch divided by its number of units (all
ranks, all micro-batches): the usual mean for pretraining, the right normalization for SFT. Each rank
backpropagates its summed loss times world_size / global count, so DDP's gradient average is exactly the
gradient of that loss. Validation reports the same mean over the validation rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from gpt.checkpoint import load_model
from gpt.kernels import compile_options, native_bf16
from gpt.model import GPT
from shards.format import ShardError
from shards.io import directory_lock, remove_temporaries
from shards.manifest import ManifestError

from .checkpoint import (finish_pruning, latest_checkpoint, load_training_state, mark_best, read_state,
                         save_checkpoint)
from .config import RunConfig
from .data import accumulation_steps, verify_data
from .distributed import Dist, RankFailed
from .log import RunLog

# Dense bf16 peak FLOP/s per GPU (datasheets, without sparsity), for MFU; the first name found in
# torch.cuda.get_device_name() wins, so the more specific names come first.
PEAK_BF16_FLOPS = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H200 NVL", 835e12), ("H100", 989e12),
                   ("H200", 989e12), ("A100", 312e12), ("A10G", 70e12), ("A10", 125e12), ("L40S", 362e12),
                   ("L40", 181e12), ("L4", 121e12))


class TrainingError(RuntimeError):
    """A run that cannot go on: a non-finite loss, a refused resume."""


# What a trainer's command line reports as a one-line message (exit status 1) rather than a traceback:
# OSError covers a full disk or a permission error on the run folder, whose messages name the file.
RUN_ERRORS = (TrainingError, RankFailed, ManifestError, ShardError, ValueError, OSError)


def token_loss(model, batch, supervised_only: bool = False) -> torch.Tensor:
    """Next-token cross-entropy of (inputs, targets), summed over the supervised targets; `supervised_only` (SFT,
    whose prompts and padding are most targets) projects onto the vocabulary at those positions only when eager."""
    inputs, targets = batch
    return model(inputs, targets, reduction="sum", supervised_only=supervised_only)[1]  # the logits are not kept


def supervised_targets(batch) -> int:
    """The units `token_loss` sums over: the targets that are not -100."""
    return int((batch[1] != -100).sum())


@dataclass
class Hooks:
    """What a training stage adds to the shared loop (see the module's docstring)."""
    # summed over the batch's units; with `metrics`, (that sum, {metric: its sum over the units})
    loss: Callable[[torch.nn.Module, tuple], torch.Tensor | tuple[torch.Tensor, dict]] = token_loss
    count: Callable[[tuple], int] = supervised_targets  # the batch's units, counted before the forward
    metrics: tuple[str, ...] = ()  # means over the units logged each step, and as val_<name> at each evaluation
    # more metrics at each evaluation (e.g. SFT's EOT rate); rank 0's "samples" (texts) are printed too
    extra_eval: Callable[[GPT, Dist], dict] | None = None
    samples: Callable[[GPT], list[str]] | None = None  # texts generated at each evaluation (rank 0)
    plot_metrics: tuple[str, ...] = ()  # extra_eval metrics drawn in loss.png (right axis), e.g. ("eot_rate",)
    state: dict = field(default_factory=dict)  # extra keys for each checkpoint's state.json (e.g. {"sft": True})
    chat_template: str | None = None  # for each checkpoint's tokenizer_config.json (SFT: the Alpaca prompt)
    # save a checkpoint at each evaluation after step 0 that lowers val_loss, and point ckpt/best at it (SFT)
    keep_best: bool = False
    # minimums and maximums over the units, logged each step and as val_<name> (the loss returns each over its batch)
    minima: tuple[str, ...] = ()
    maxima: tuple[str, ...] = ()
    load: Callable[..., torch.nn.Module] = load_model  # a checkpoint folder to the model, as load_model's arguments
    # on-policy stages (RL): (the raw model in eval mode, step, this rank's micro-batches of train_batches) ->
    # (the micro-batches to train on, on the device; {name: value} for the step's record, the same on every rank)
    prepare: Callable[[GPT, int, list], tuple[list, dict]] | None = None


def lr_at(step: int, cfg: RunConfig, total_steps: int) -> float:
    """Linear warmup over `warmup` steps to `lr`, then cosine decay to `lr * min_lr_ratio` at `total_steps`
    (the run's first total: steps added by --extend stay at `lr * min_lr_ratio`, even after a run that ended
    in its warmup)."""
    min_lr = cfg.lr * cfg.min_lr_ratio
    if step >= total_steps:
        return min_lr
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, total_steps - cfg.warmup))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - min_lr)


def make_optimizer(model: GPT, cfg: RunConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings (dim >= 2) only; fused (one kernel per step on CUDA,
    3x faster than the for-loop version on a CPU)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                             fused=device.type in ("cuda", "cpu"))


def dtype_name(cfg: RunConfig, device: torch.device) -> str:
    """--dtype auto: bf16 autocast on a GPU with native bf16, else float32."""
    if cfg.dtype != "auto":
        return cfg.dtype
    return "bfloat16" if native_bf16(device) else "float32"


def _device_name(device: torch.device) -> str:
    return f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)


def peak_bf16_flops(device_name: str) -> float | None:
    """Dense bf16 peak FLOP/s of the GPU named `device_name` (torch.cuda.get_device_name), for MFU."""
    return next((flops for name, flops in PEAK_BF16_FLOPS if name in device_name), None)


def mfu_peak(cfg: RunConfig, device: torch.device) -> float | None:
    """The peak FLOP/s that MFU is measured against: the GPU's dense bf16 peak when the run computes in bf16;
    None (no MFU) on a CPU, on an unknown GPU, and under --dtype float32 (TF32 products peak at half of it)."""
    if device.type != "cuda" or dtype_name(cfg, device) != "bfloat16":
        return None
    return peak_bf16_flops(torch.cuda.get_device_name(device))


def autocast(cfg: RunConfig, device: torch.device):
    dtype = dtype_name(cfg, device)
    if dtype == "float32":
        return contextlib.nullcontext()
    if dtype == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise ValueError(f"--dtype {cfg.dtype!r}: choose auto, float32 or bfloat16")


def total_steps(cfg: RunConfig, data) -> int:
    return cfg.steps if cfg.steps else cfg.epochs * data.plan.steps_per_epoch


def _sums(output, hooks: Hooks) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loss of one `Hooks.loss` output, the float64 vector [loss, *metrics] of its sums, and its peaks,
    [*maxima, *(-minima)] (whose maximum over batches and ranks gives both), detached."""
    loss, extra = (output, {}) if torch.is_tensor(output) else output
    sums = torch.stack([loss.detach().double(), *(extra[k].detach().double() for k in hooks.metrics)])
    peaks = [extra[k].detach().double() for k in hooks.maxima] + [-extra[k].detach().double() for k in hooks.minima]
    return loss, sums, torch.stack(peaks) if peaks else sums.new_zeros(0)


def _no_peaks(hooks: Hooks, device: torch.device) -> torch.Tensor:
    """The peaks before any batch: -inf, below every value."""
    return torch.full((len(hooks.maxima) + len(hooks.minima),), -math.inf, dtype=torch.float64, device=device)


def _extremes(hooks: Hooks, dist: Dist, peaks: torch.Tensor, prefix: str = "") -> dict:
    """{name: the maximum or minimum over every rank} of this rank's `peaks` (from `_sums`)."""
    if not len(peaks):
        return {}
    values = dist.all_reduce_max(peaks).tolist()
    maxima, minima = values[:len(hooks.maxima)], [-v for v in values[len(hooks.maxima):]]
    return {f"{prefix}{k}": v for k, v in zip((*hooks.maxima, *hooks.minima), (*maxima, *minima))}


@torch.no_grad()
def evaluate(model: GPT, data, dist: Dist, cfg: RunConfig, hooks: Hooks) -> dict:
    """{"val_loss": the mean loss over the units of the validation rows (the same rows every time), all ranks,
    and "val_<name>": the mean of each of `hooks.metrics`}."""
    model.eval()
    totals = torch.zeros(len(hooks.metrics) + 2, dtype=torch.float64, device=dist.device)
    peaks = _no_peaks(hooks, dist.device)
    batches = data.val_batches(dist.rank, dist.world_size, cfg.micro_batch)
    for batch in tqdm(batches, desc="eval", unit="batch", leave=False,
                      disable=None if dist.is_main and cfg.progress else True):  # None: not outside a terminal
        count = hooks.count(batch)
        with autocast(cfg, dist.device):
            _, sums, batch_peaks = _sums(hooks.loss(model, tuple(t.to(dist.device) for t in batch)), hooks)
        totals += torch.cat([sums, sums.new_tensor([count])])
        peaks = torch.maximum(peaks, batch_peaks)
    dist.all_reduce_sum(totals)
    model.train()
    means = (totals[:-1] / totals[-1]).tolist()
    return {**dict(zip(["val_loss", *(f"val_{name}" for name in hooks.metrics)], means)),
            **_extremes(hooks, dist, peaks, "val_")}


def _resume(cfg: RunConfig, data, dist: Dist, total: int, load: Callable[..., torch.nn.Module]):
    """The checkpoint to resume from, its state.json and its model, or (None, None, None) for a fresh start."""
    folder = latest_checkpoint(cfg.run_dir)
    if folder is None:
        if cfg.resume and dist.is_main:
            print(f"--resume: no checkpoint under {cfg.run_dir}/ckpt yet, starting from step 0")
        return None, None, None
    if not cfg.resume:
        raise TrainingError(f"{cfg.run_dir} already holds checkpoints (latest {folder.name}); "
                            "pass --resume (RESUME=1) to continue that run, or choose another --run-dir")
    state = read_state(folder)
    if state["manifest_sha256"] != data.manifest_sha256:
        raise TrainingError(f"cannot resume from {folder}: it was trained on shards whose manifest had sha256 "
                            f"{state['manifest_sha256'][:16]}…, and {data.dir}/manifest.json is now "
                            f"{data.manifest_sha256[:16]}… (the data changed; start a new --run-dir)")
    old = state["config"]
    keys = cfg.RESUME_KEYS
    diff = [f"{k}: {old.get(k)!r} -> {getattr(cfg, k)!r}" for k in keys if old.get(k) != getattr(cfg, k)]
    rows = state["data_position"].get("num_rows")  # same shards, but other rows kept (the reader's rule changed)
    if rows != data.plan.num_rows:
        diff.append(f"train rows: {rows} -> {data.plan.num_rows}")
    longer = total > state["total_steps"]
    if total != state["total_steps"] and not (longer and cfg.extend):
        diff.append(f"total steps: {state['total_steps']} -> {total}")
    if diff:
        hint = "; more steps need --extend (EXTEND=1)" if longer and not cfg.extend else ""
        raise TrainingError(f"cannot resume from {folder}: the run's config changed ({'; '.join(diff)}){hint}")
    model = load(folder, device=dist.device, padded_vocab_size=cfg.padded_vocab).train()
    return folder, state, model


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # preemption and Ctrl-C: save at the end of the step, then return


class _StopFlag:
    """Records the first of STOP_SIGNALS; the loop then saves a checkpoint at the end of the step and returns.

    Every later one is ignored: torchrun forwards the Ctrl-C that the terminal already sent each worker."""

    def __init__(self, verbose: bool):
        self.signal: signal.Signals | None = None
        self.verbose = verbose

    def __call__(self, signum, frame):
        if self.signal is None and self.verbose:
            try:  # os.write, not print: the handler may interrupt a write to stderr (the progress bar's)
                os.write(2, f"\n{signal.Signals(signum).name}: saving a checkpoint at the end of this step, then "
                            "stopping (kill -9 stops at once and loses the steps since the last checkpoint)\n".encode())
            except OSError:
                pass
        self.signal = self.signal or signal.Signals(signum)


def exit_status(result: dict) -> int:
    """The command's exit status for `train`'s result: 0, or 128 + the signal that stopped it (130 Ctrl-C, 143 SIGTERM)."""
    return 128 + result["stopped"] if result["stopped"] else 0


def train(cfg: RunConfig, data, dist: Dist, build_model: Callable[[], GPT], hooks: Hooks | None = None,
          desc: str = "train") -> dict:
    """Run (or resume) training; returns {"step", "stopped" (the signal that stopped it, or None), "last_eval"
    (the log record of the last evaluation: rank 0's; on the other ranks of a resumed run, None until their
    first evaluation)}.

    Raises TrainingError on a bad loss."""
    hooks = hooks or Hooks()
    total = total_steps(cfg, data)
    accum = accumulation_steps(data.rows_per_step, cfg.micro_batch, dist.world_size, cfg.BATCH_FLAG,
                               what=getattr(data, "rows_name", f"sequences of {cfg.seq_len} tokens"))
    with contextlib.ExitStack() as lock:
        with dist.unanimous():
            if dist.is_main:
                try:
                    lock.enter_context(directory_lock(cfg.run_dir))
                except RuntimeError as e:  # another run holds this run folder
                    raise TrainingError(str(e)) from None
                remove_temporaries(Path(cfg.run_dir))  # a killed run's half-written log.jsonl or loss.png
            folder, state, model = _resume(cfg, data, dist, total, hooks.load)
            start = 0
            if model is None:
                torch.manual_seed(cfg.seed)
                model = build_model().to(dist.device).train()
            optimizer = make_optimizer(model, cfg, dist.device)
            if folder is not None:
                load_training_state(folder, optimizer, state)
                start = state["step"]
            if cfg.verify_data and dist.local_rank == 0:  # one reader per node; the other ranks wait below
                verify_data(data, model.config.vocab_size, cfg.progress)
        schedule = _schedule(state, start, total)
        hooks = dataclasses.replace(hooks, state={**hooks.state, **schedule})  # in every checkpoint's state.json
        mine = torch.tensor([start, int(data.manifest_sha256[:12], 16)], dtype=torch.float64, device=dist.device)
        if not dist.same_on_every_rank(mine):
            raise TrainingError(f"ranks disagree on the step to resume from or on the data (rank {dist.rank}: step "
                                f"{start}, {data.dir}/manifest.json sha256 {data.manifest_sha256[:16]}…); every "
                                f"node must see the same {cfg.run_dir} and shards (a shared file system)")
        if dist.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        raw = model
        if dist.enabled:
            model = DDP(model, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None,
                        gradient_as_bucket_view=True)  # gradients live in the all-reduce buckets: no copy
        if cfg.compile:  # after DDP: dynamo then splits the graph at DDP's buckets, overlapping the all-reduces
            model = torch.compile(model, options=compile_options(cfg.compile_mode))
        with dist.unanimous():  # rank 0 rewrites log.jsonl: a failure there stops every rank with its message
            log = RunLog(cfg.run_dir, dist.is_main, start, total, cfg.progress, desc, hooks.plot_metrics)
        log.print(f"{desc}: {dist.world_size} process(es) on {_device_name(dist.device)}, "
                  f"{dtype_name(cfg, dist.device)}{f', compiled ({cfg.compile_mode})' if cfg.compile else ''}, "
                  f"{accum} micro-batch(es) of {cfg.micro_batch} per step and process")
        if folder is not None:
            log.print(f"resumed from {folder} at step {start}")
        if state is not None and total != state["total_steps"]:
            log.print(f"extended from {state['total_steps']} to {total} steps: the learning rate schedule still ends "
                      f"at step {schedule['schedule_steps']}, the steps after it run at {cfg.lr * cfg.min_lr_ratio:g}")
        for notice in _notices(cfg, data, total, schedule["schedule_steps"]) if start < total else ():
            log.print(notice)
        stop = _StopFlag(dist.is_main)
        previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS
                    if signal.getsignal(sig) is not signal.SIG_IGN}  # a job started ignoring Ctrl-C (nohup) still does
        try:
            best = state.get("best") if state else None  # {"step", "val_loss"} of the best checkpoint so far
            return _loop(cfg, data, dist, model, raw, optimizer, log, hooks, start, total, accum, stop,
                         schedule["schedule_steps"], best)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            log.close()


def _notices(cfg: RunConfig, data, total: int, schedule_steps: int) -> list[str]:
    """What a run's start says of settings that are legal but easy to get wrong: a warmup longer than the run (the
    learning rate never reaches --lr), and --steps beyond one epoch (the train rows come again; not of a recipe's
    own steps: the sample recipes run several epochs of the small sample on purpose)."""
    notices = []
    if schedule_steps < cfg.warmup:
        steps = (f"the run's {schedule_steps} steps (lower --warmup, or more --steps)" if schedule_steps == total
                 else f"the {schedule_steps} steps of its learning rate schedule (the run's first total)")
        notices.append(f"notice: the learning rate rises to {lr_at(schedule_steps - 1, cfg, schedule_steps):g} and "
                       f"never reaches --lr {cfg.lr:g}: --warmup {cfg.warmup} is longer than {steps}")
    per_epoch = data.plan.steps_per_epoch
    recipe = type(cfg).RECIPES.get(cfg.recipe)
    if cfg.steps is not None and total > per_epoch and (recipe is None or cfg.steps != recipe.steps):
        notices.append(f"notice: {total:,} steps (--steps) are {total / per_epoch:.2f} epochs of the train split "
                       f"({per_epoch:,} steps each): after the first epoch its rows come again, in a new order "
                       f"each epoch (--epochs N trains whole epochs)")
    return notices


def _eval_record(cfg, data, dist, raw, log, hooks) -> dict:
    record = evaluate(raw, data, dist, cfg, hooks)
    if hooks.extra_eval is not None:
        raw.eval()
        record.update(hooks.extra_eval(raw, dist))
        raw.train()
    if hooks.samples is not None and dist.is_main:
        raw.eval()
        with autocast(cfg, dist.device):
            record["samples"] = hooks.samples(raw)
        raw.train()
    for text in record.get("samples", []) if dist.is_main else []:  # from `samples` or `extra_eval`
        log.print(f"sample: {text!r}")
    return record


def _fetch(data, step: int, dist: Dist, cfg: RunConfig, hooks: Hooks) -> tuple[list, float | None]:
    """This rank's micro-batches of global batch `step`, on the device (from pinned memory, copied without
    waiting, on a GPU), and their number of units (`hooks.count`); as read, and None, for `hooks.prepare`."""
    batches = data.train_batches(step, dist.rank, dist.world_size, cfg.micro_batch)
    if hooks.prepare is not None:  # prepared and counted at the start of their step (_prepare)
        return batches, None
    count = float(sum(hooks.count(b) for b in batches))
    if dist.device.type == "cuda":  # contiguous first: a strided view (pretraining's inputs and targets, of one
        # window buffer) pinned as it is would be copied again, contiguous and pageable, by its copy to the GPU
        batches = [tuple(t.contiguous().pin_memory().to(dist.device, non_blocking=True) for t in b) for b in batches]
    return batches, count


def _prepare(raw: GPT, step: int, batches: list, hooks: Hooks) -> tuple[list, float, dict]:
    """`hooks.prepare`'s micro-batches for step `step`, their number of units, and its record entries."""
    raw.eval()
    batches, record = hooks.prepare(raw, step, batches)
    raw.train()
    return batches, float(sum(hooks.count(b) for b in batches)), record


def _evaluates(step: int, cfg: RunConfig, total: int) -> bool:
    """Whether `step` is an evaluation step: every `eval_every` steps and the last (the loop skips all but the last
    when a stop signal came during the step)."""
    return step == total or step % cfg.eval_every == 0


def _missed_evaluation(cfg: RunConfig, dist: Dist, log: RunLog, start: int, total: int) -> bool:
    """Whether `start`, the step a resumed run starts from, is an evaluation step that its log has no evaluation
    of (a stop signal at that step saved it unevaluated); rank 0 reads its log, and every rank gets its answer."""
    if not _evaluates(start, cfg, total):
        return False
    missed = dist.is_main and not any(r["step"] == start and "val_loss" in r for r in log.records)
    return dist.all_reduce_sum(torch.tensor([float(missed)], device=dist.device)).item() > 0


def _lowers(best: dict | None, evaluation: dict) -> bool:
    """Whether an evaluation's val_loss is the run's best so far (keep_best): below `best`'s, or the first."""
    return best is None or evaluation["val_loss"] < best["val_loss"]


def _schedule(state: dict | None, start: int, total: int) -> dict:
    """The run's schedule, for its state.json: `schedule_steps`, the total its cosine decays over (the first
    run's), and `extensions`, one {"step", "from", "to"} for each --extend that added steps."""
    if state is None:
        schedule = {"schedule_steps": total, "extensions": []}
    else:
        schedule = {"schedule_steps": state.get("schedule_steps", state["total_steps"]),
                    "extensions": state.get("extensions", [])}
        if total != state["total_steps"]:  # a longer run (_resume refused anything else)
            schedule["extensions"] = [*schedule["extensions"], {"step": start, "from": state["total_steps"],
                                                                  "to": total}]
    return schedule


def _loop(cfg, data, dist, model, raw, optimizer, log, hooks, start, total, accum, stop, schedule_steps,
          best) -> dict:
    device, params = dist.device, [p for p in raw.parameters() if p.requires_grad]
    peak = mfu_peak(cfg, device)
    flops_per_token = functools.cache(raw.flops_per_token)  # by sequence width: SFT's widths vary
    last_eval = next((r for r in reversed(log.records) if "val_loss" in r), None)  # rank 0's log
    if start >= total:
        log.print(f"{cfg.run_dir}: already finished ({total} steps); nothing to do (more --steps with --extend "
                  "train it further)")
        with dist.unanimous():  # a run killed in its last save, after `latest` named it, kept older checkpoints
            if dist.is_main:
                finish_pruning(cfg.run_dir)
    if start == 0:
        record = last_eval = {"step": 0, **_eval_record(cfg, data, dist, raw, log, hooks)}
        with dist.unanimous():  # rank 0's log writes, as after each step
            log.write(record)
            log.plot()
    elif _missed_evaluation(cfg, dist, log, start, total):  # evaluated now, as the loop would have before stopping
        values = _eval_record(cfg, data, dist, raw, log, hooks)
        # best["step"] == start: a run killed between marking this step best and amending its log
        marked = hooks.keep_best and (_lowers(best, values) or best["step"] == start)
        if marked:
            best = {"step": start, "val_loss": values["val_loss"]}
        with dist.unanimous():
            if marked and dist.is_main:
                mark_best(cfg.run_dir, start, best, cfg.keep_checkpoints)
            last_eval = log.amend(start, values)
            log.plot()
    step = start
    fetched = _fetch(data, step, dist, cfg, hooks) if step < total else None
    while step < total:
        t0 = time.perf_counter()
        batches, count = fetched
        prepared, prepare_s = {}, 0.0
        if hooks.prepare is not None:
            batches, count, prepared = _prepare(raw, step, batches, hooks)
            prepare_s = time.perf_counter() - t0
        count = dist.all_reduce_sum(torch.tensor([count], device=device)).item()
        if count == 0:
            raise TrainingError(f"step {step + 1}: the global batch has no supervised target")
        scale = dist.world_size / count
        sums = torch.zeros(len(hooks.metrics) + 1, dtype=torch.float64, device=device)  # loss, metrics
        peaks = _no_peaks(hooks, device)
        for i, batch in enumerate(batches):
            sync = model.no_sync() if dist.enabled and i < len(batches) - 1 else contextlib.nullcontext()
            with sync:
                with autocast(cfg, device):
                    loss, batch_sums, batch_peaks = _sums(hooks.loss(model, batch), hooks)
                (loss * scale).backward()
            sums += batch_sums
            peaks = torch.maximum(peaks, batch_peaks)
        tokens = sum(b[0].numel() for b in batches)
        flops = sum(b[0].numel() * flops_per_token(b[0].shape[1]) for b in batches)
        fetched = _fetch(data, step + 1, dist, cfg, hooks) if step + 1 < total else None  # while the GPU computes
        stats = torch.cat([sums, sums.new_tensor([tokens, flops, float(stop.signal is not None)])])
        loss_sum, *metric_sums, tokens, flops, stops = dist.all_reduce_sum(stats).tolist()
        stopped = stops > 0  # a stop signal on any rank: save at once, skip this step's evaluation
        loss = loss_sum / count
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf).item()
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            raise TrainingError(f"step {step + 1}: loss {loss}, grad norm {grad_norm} — stopping; the last good "
                                f"checkpoint is kept under {cfg.run_dir}/ckpt (lower --lr, or check the data)")
        lr = lr_at(step, cfg, schedule_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        # under DDP zeroed in place: set to None, the gradients would no longer be views of its buckets (each backward
        # would make them anew beside the buckets, and DDP copy them in)
        optimizer.zero_grad(set_to_none=not dist.enabled)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step += 1
        dt = time.perf_counter() - t0 - prepare_s  # the learning's
        record = {"step": step, "loss": loss, **{k: v / count for k, v in zip(hooks.metrics, metric_sums)},
                  **_extremes(hooks, dist, peaks), "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tokens / dt,
                  "accumulation": accum}
        if hooks.prepare is not None:
            record.update(prepare_s=prepare_s, learn_s=dt, **prepared)
        if peak is not None:
            record["mfu"] = flops / dt / (peak * dist.world_size)
        if _evaluates(step, cfg, total) and (step == total or not stopped):
            record.update(_eval_record(cfg, data, dist, raw, log, hooks))
            last_eval = record
        improved = hooks.keep_best and "val_loss" in record and _lowers(best, record)
        if improved:  # val_loss is all-reduced: every rank decides the same
            best = {"step": step, "val_loss": record["val_loss"]}
        with dist.unanimous():  # a failed write on rank 0 (disk full) stops every rank with rank 0's message
            log.write(record)
            if "val_loss" in record:
                log.plot()
            if dist.is_main and (step % cfg.save_every == 0 or step == total or stopped or improved):
                save_checkpoint(cfg.run_dir, step, raw, optimizer, {
                    **hooks.state, "total_steps": total, "data_position": data.plan.position(step),
                    "world_size": dist.world_size, "manifest_sha256": data.manifest_sha256,
                    "shards_dir": str(data.dir), "config": cfg.to_dict(), "best": best},
                    cfg.keep_checkpoints, hooks.chat_template)
        if stopped and step < total:
            sig = stop.signal or signal.SIGTERM  # another rank's signal stopped this one
            log.print(f"stopped by {sig.name} after step {step}; checkpoint saved, continue with --resume (RESUME=1)")
            return {"step": step, "stopped": sig, "last_eval": last_eval}
    return {"step": step, "stopped": stop.signal, "last_eval": last_eval}  # a signal during the last step
