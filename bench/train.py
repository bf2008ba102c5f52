"""`make bench-train`: training tokens/s of our GPT against transformers' GPT2LMHeadModel, same run.

Both models get the same config (124M by default), the same weights (HF's converted from ours with
`gpt.hf.to_hf`, dropout 0 so both compute the same function: the first losses are checked equal), the same
batch, threads and AdamW (fused); a step is forward + backward + optimizer step. The HF model keeps its default
attention (sdpa). Steps alternate between the two models in rounds, after warmup steps, so that load from
other processes hits both alike. Tokens/s is the throughput of the timed steps (their tokens over their
time, what a training run sees); the fastest step of each is printed too (the least disturbed by other
processes, and for transformers the step that lost least to page faults: see docs/benchmarks.md). With CUDA
available, a second run on the GPU: bf16 autocast, TF32, fused AdamW, sequence 1024, padded vocabulary, and
MFU against the GPU's peak dense bf16 FLOP/s.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import ClassVar

import torch

from bench import cpu_name, require_positive
from gpt.hf import from_hf, to_hf
from gpt.kernels import COMPILE_MODES, compile_options
from gpt.model import GPT, preset
from shards import cli
from train.loop import peak_bf16_flops
from train.model import PADDED_VOCAB_CUDA



@dataclass
class BenchConfig:
    CHOICES: ClassVar[dict] = {"device": ("cpu", "cuda"), "compile_mode": COMPILE_MODES}

    model: str = "gpt2"
    batch: int = 4
    seq_len: int = 256
    warmup: int = 2
    rounds: int = 8  # timed steps per model, alternating
    threads: int = 0  # 0 = torch's default
    padded_vocab_size: int | None = None  # ours only; None = the same vocabulary as HF
    device: str = "cpu"  # cpu or cuda
    compile: bool = False  # torch.compile both models
    compile_mode: str = "default"  # its mode
    gpu: bool = True  # when CUDA is available, also run --gpu-batch x 1024 tokens on it in bf16
    gpu_batch: int = 16
    seed: int = 0


def parse_args(argv=None) -> BenchConfig:
    cfg = cli.parse(BenchConfig, argv, "python -m bench.train", __doc__.splitlines()[0])
    require_positive(cfg, "bench.train", "batch", "seq_len", "rounds")
    return cfg


class Trainer:
    """One model, its AdamW, and a timed training step on a fixed batch."""

    def __init__(self, name: str, model, ours: bool, cfg: BenchConfig):
        self.name, self.ours, self.cfg = name, ours, cfg
        self.model = model.to(cfg.device).train()
        self.step_fn = torch.compile(self.model, options=compile_options(cfg.compile_mode)) if cfg.compile else \
            self.model
        # Fused AdamW (one pass over the parameters) is also ~3x faster than the default on a CPU.
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=6e-4, betas=(0.9, 0.95), eps=1e-8,
                                     weight_decay=0.1, fused=True)
        self.times: list[float] = []  # whole steps
        self.fb_times: list[float] = []  # forward + backward only

    def loss(self, x, y):
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cfg.device == "cuda")
        with autocast:
            if self.ours:
                return self.step_fn(x, y)[1]
            # HF shifts labels itself: labels = x gives the same targets as our y (last position ignored).
            return self.step_fn(input_ids=x, labels=x).loss

    def step(self, x, y, timed: bool) -> float:
        sync = torch.cuda.synchronize if self.cfg.device == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        loss = self.loss(x, y)
        loss.backward()
        sync()
        t1 = time.perf_counter()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        sync()
        if timed:
            self.times.append(time.perf_counter() - t0)
            self.fb_times.append(t1 - t0)
        return loss.item()


def run(cfg: BenchConfig, baseline: bool = True) -> dict:
    """Time both models (ours alone without `baseline`); tokens/s, fastest steps, ratios and, on a GPU, MFU."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed)
    config = preset(cfg.model, block_size=max(preset(cfg.model).block_size, cfg.seq_len))
    ours = GPT(config)
    hf = to_hf(ours)  # same weights, dropout 0, sdpa attention
    if cfg.padded_vocab_size:
        ours = from_hf(hf, padded_vocab_size=cfg.padded_vocab_size)
    x = torch.randint(0, config.vocab_size, (cfg.batch, cfg.seq_len), generator=torch.Generator().manual_seed(1))
    y = torch.cat([x[:, 1:], torch.full((cfg.batch, 1), -100)], dim=1)
    x, y = x.to(cfg.device), y.to(cfg.device)
    trainers = [Trainer("ours", ours, True, cfg)] + [Trainer("transformers", hf, False, cfg)] * baseline
    first, first_s = [], []
    for t in trainers:
        t0 = time.perf_counter()
        first.append(t.step(x, y, timed=False))
        first_s.append(time.perf_counter() - t0)  # with compile: its compilation
    for _ in range(cfg.warmup - 1):
        for t in trainers:
            t.step(x, y, timed=False)
    for _ in range(cfg.rounds):
        for t in trainers:
            t.step(x, y, timed=True)
    tokens = cfg.batch * cfg.seq_len
    result = {"config": dataclasses.asdict(cfg), "threads": torch.get_num_threads(),
              "first_loss": dict(zip((t.name for t in trainers), first)),
              "first_step_s": dict(zip((t.name for t in trainers), first_s)),
              "tokens_per_s": {t.name: tokens * len(t.times) / sum(t.times) for t in trainers},
              "tokens_per_s_fastest": {t.name: tokens / min(t.times) for t in trainers},
              "forward_backward_tokens_per_s": {t.name: tokens * len(t.fb_times) / sum(t.fb_times) for t in trainers}}
    for key, prefix in (("tokens_per_s", ""), ("tokens_per_s_fastest", "fastest_"),
                        ("forward_backward_tokens_per_s", "forward_backward_")):
        if baseline:
            result[prefix + "ratio"] = result[key]["ours"] / result[key]["transformers"]
    if cfg.device == "cuda":
        name = torch.cuda.get_device_name()
        peak = peak_bf16_flops(name)
        result["device"] = name
        if peak:
            flops = trainers[0].model.flops_per_token(cfg.seq_len)
            result["mfu"] = {t.name: flops * result["tokens_per_s"][t.name] / peak for t in trainers}
    else:
        result["device"] = f"{cpu_name()}, {torch.get_num_threads()} threads"
    return result


def main(argv=None) -> int:
    cfg = parse_args(argv)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    report(cfg)
    if cfg.device == "cpu" and cfg.gpu and torch.cuda.is_available():
        report(dataclasses.replace(cfg, device="cuda", batch=cfg.gpu_batch, seq_len=1024, warmup=max(cfg.warmup, 3),
                                   rounds=max(cfg.rounds, 10), padded_vocab_size=cfg.padded_vocab_size or PADDED_VOCAB_CUDA))
    return 0


def report(cfg: BenchConfig) -> None:
    r = run(cfg)
    print(f"bench-train: {cfg.model}, batch {cfg.batch} x seq {cfg.seq_len}, "
          f"{'bf16 autocast' if cfg.device == 'cuda' else 'fp32'}, on {r['device']}")
    print(f"  first loss: ours {r['first_loss']['ours']:.6f}, transformers {r['first_loss']['transformers']:.6f}")
    for name, tps in r["tokens_per_s"].items():
        mfu = f"   MFU {r['mfu'][name]:.1%}" if "mfu" in r else ""
        print(f"  {name:<13} {tps:10.1f} tokens/s over {cfg.rounds} steps "
              f"(fastest step: {r['tokens_per_s_fastest'][name]:.1f}){mfu}")
    print(f"  ratio ours/transformers: {r['ratio']:.2f}  (goal >= 1.3 on CPU); fastest steps: "
          f"{r['fastest_ratio']:.2f}; forward + backward only: {r['forward_backward_ratio']:.2f}")
    tolerance = 1e-3 if cfg.device == "cpu" else 5e-2  # bf16 autocast rounds differently in the two models
    if abs(r["first_loss"]["ours"] - r["first_loss"]["transformers"]) > tolerance:
        raise SystemExit("bench-train: the two models disagree on the first loss; the comparison is void")


if __name__ == "__main__":
    raise SystemExit(main())
