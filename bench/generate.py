"""`make bench-generate`: new tokens/s of our `generate` against transformers' `generate`, same run.

Both models hold the same weights (ours at random init, converted with `gpt.hf.to_hf`; 124M fp32 by
default; the preset's context grown where the longest prompt and its new tokens would overrun it), get the
same prompts (batch 1: the first one; batch 8: prompts of different lengths, right-padded for ours,
left-padded for transformers as it requires) and threads, and decode greedily with a KV cache for
exactly `new_tokens` tokens (neither has an end token: EOT is a token like any other), prefill included.
The greedy tokens are checked equal. Runs alternate between the two in rounds, after a warmup, so that load
from other processes hits both alike; the median gives tokens/s.

At batch 1 decoding reads every weight once per token, so the machine's read bandwidth bounds it: the
bound is (read bandwidth: the best of sums over a buffer far larger than the caches, measured between the
rounds) / (bytes of weights read per token: every parameter but the position table, of which one row is read).
A step of batch B reads the weights once for its B rows, so B times that bound is printed for each batch too.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from dataclasses import dataclass

import torch

from bench import cpu_name, require_positive
from gpt.hf import to_hf
from gpt.inference import generate, tokenize_batch_input
from gpt.model import GPT, preset
from shards import cli
from shards.tokenizer import EOT

PROMPTS = [
    "The history of the printing press begins in",
    "Once upon a time",
    "In a shocking finding, scientists discovered a herd of unicorns living in a remote, previously unexplored "
    "valley in the Andes Mountains.",
    "Here is a recipe for bread:",
    "The three laws of thermodynamics are",
    "Q: What is the capital of France?\nA:",
    "def fibonacci(n):",
    "My favourite book is",
]


@dataclass
class BenchConfig:
    model: str = "gpt2"
    new_tokens: int = 64
    batch_sizes: str = "1,8"
    warmup: int = 1
    rounds: int = 3  # timed runs per model and batch size, alternating
    threads: int = 0  # 0 = torch's default
    bandwidth_mib: int = 1024  # buffer summed to measure read bandwidth
    seed: int = 0


def parse_args(argv=None) -> BenchConfig:
    cfg = cli.parse(BenchConfig, argv, "python -m bench.generate", __doc__.splitlines()[0])
    require_positive(cfg, "bench.generate", "new_tokens", "rounds")
    return cfg


def read_bandwidth(buffer: torch.Tensor, repeats: int = 3) -> float:
    """Bytes/s of the best of `repeats` sums over `buffer` (far larger than the caches), on torch's threads."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - t0)
    return buffer.numel() * 4 / best


def left_padded(input_ids, masks):
    """The same prompts, their real tokens moved to the right end (transformers' batched generation)."""
    ids, left = torch.full_like(input_ids, EOT), torch.zeros_like(masks)
    width = input_ids.shape[1]
    for i, n in enumerate(masks.sum(1).tolist()):
        ids[i, width - n:] = input_ids[i, :n]
        left[i, width - n:] = 1
    return ids, left


def hf_greedy(hf, input_ids, masks, new_tokens: int) -> list[list[int]]:
    """transformers' greedy continuations of our right-padded prompts: exactly `new_tokens` per row, EOT a token
    like any other, as ours with eot=-1 (min_new_tokens would instead forbid EOT until the last token)."""
    ids, left = left_padded(input_ids, masks)
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=left, do_sample=False, max_new_tokens=new_tokens, pad_token_id=EOT,
                          eos_token_id=None)
    return out[:, ids.shape[1]:].tolist()


def run(cfg: BenchConfig) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    longest = tokenize_batch_input(PROMPTS)[0].shape[1]  # a context for every prompt and all its new tokens
    ours = GPT(preset(cfg.model, block_size=max(preset(cfg.model).block_size, longest + cfg.new_tokens))).eval()
    hf = to_hf(ours)
    buffer = torch.ones(cfg.bandwidth_mib * 2**20 // 4)
    bandwidths = [read_bandwidth(buffer)]
    result = {"config": dataclasses.asdict(cfg), "device": f"{cpu_name()}, {torch.get_num_threads()} threads",
              "tokens_per_s": {}, "same_tokens": {}}
    for batch in (int(b) for b in cfg.batch_sizes.split(",")):
        prompts = (PROMPTS * (batch // len(PROMPTS) + 1))[:batch]
        input_ids, masks = tokenize_batch_input(prompts)
        runs = {"ours": lambda: generate(ours, input_ids, masks, 0, cfg.new_tokens, eot=-1),
                "transformers": lambda: hf_greedy(hf, input_ids, masks, cfg.new_tokens)}
        outputs = {name: fn() for name, fn in runs.items()}  # warmup, and the tokens compared
        for _ in range(cfg.warmup - 1):
            for fn in runs.values():
                fn()
        times = {name: [] for name in runs}
        for _ in range(cfg.rounds):
            for name, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
            bandwidths.append(read_bandwidth(buffer))  # the best of the run: load varies
        result["tokens_per_s"][batch] = {n: batch * cfg.new_tokens / statistics.median(t) for n, t in times.items()}
        result["same_tokens"][batch] = outputs["ours"] == outputs["transformers"]
    result["bandwidth"] = max(bandwidths)
    result["weight_bytes"] = 4 * (ours.num_params() - ours.transformer.wpe.weight.numel())
    result["bound_tokens_per_s"] = result["bandwidth"] / result["weight_bytes"]
    result["load_average"] = os.getloadavg()[0]  # other processes on the machine skew every figure
    return result


def main(argv=None) -> int:
    cfg = parse_args(argv)
    r = run(cfg)
    print(f"bench-generate: {cfg.model} fp32, greedy, KV cache, {cfg.new_tokens} new tokens per row, on {r['device']}")
    for batch, tps in r["tokens_per_s"].items():
        ratio = tps["ours"] / tps["transformers"]
        print(f"  batch {batch}: ours {tps['ours']:8.1f} new tokens/s, transformers {tps['transformers']:8.1f}; "
              f"ratio {ratio:.2f} (goal >= 1.5); same tokens: {r['same_tokens'][batch]}")
    print(f"  read bandwidth {r['bandwidth'] / 1e9:.2f} GB/s, weights read per token {r['weight_bytes'] / 1e6:.0f} MB: "
          f"bound {r['bound_tokens_per_s']:.1f} tokens/s at batch 1")
    print(f"  load average during the run: {r['load_average']:.1f} on {os.cpu_count()} cores")
    for batch, tps in r["tokens_per_s"].items():  # a step reads every weight once for all its rows
        goal = " (goal >= 70%)" if batch == 1 else ""
        print(f"  batch {batch}: ours at {tps['ours'] / (batch * r['bound_tokens_per_s']):.0%} of the bound "
              f"({batch} x {r['bound_tokens_per_s']:.1f} tokens/s){goal}")
    if not all(r["same_tokens"].values()):
        raise SystemExit("bench-generate: the two models generated different tokens; the comparison is void")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
