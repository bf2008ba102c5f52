"""Fast paths beside the reference model (gpt/model.py), each computing what its plain PyTorch twin computes.

- `linear`: `F.linear`, with a blocked product for batched decoding on a CPU (MKL reads the weight at half the
  machine's bandwidth for 4 to 15 rows; small blocks that stay in cache run near the bound), and, under
  torch.compile, one row's product and bias apart, which inductor can then fuse into one bandwidth-bound kernel.
- `cross_entropy`: the training loss. Eager, it is `CrossEntropy`, which holds one float32 [N, V] buffer where
  `F.cross_entropy(logits.float())` holds three (a 124M model on a CPU, bf16 logits of micro-batch 32 on a GPU
  whose log_softmax would first copy them whole: 6.6 GB). Under `torch.compile` it is `F.cross_entropy` itself,
  traced into the same graph as the model, where inductor fuses the float32 conversion into the softmax: the
  custom autograd function would break the graph and run eagerly, a third of a GPU step (docs/benchmarks.md).
- `native_bf16`: whether a device computes in bf16 natively, for the trainers' autocast and chat's weights.
- `compile_options`: inductor's options for each of COMPILE_MODES, for the trainers and the decoding step.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

# Rows of weight per block in `linear`'s decoding path: a [64, 768] fp32 block (192 KiB) stays in L2.
DECODE_BLOCK = 64
# torch.compile's modes for training runs and the decoding step, and "tuned": the default mode with inductor's
# coordinate descent tuning of its kernels. torch's modes that make CUDA graphs of their own are left out: the
# decoder captures its own, and a training step varies (evaluations, checkpoints, DDP's all-reduces).
COMPILE_MODES = ("default", "tuned", "max-autotune-no-cudagraphs")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, with a faster product for batched decoding on a CPU, and one row's product under
    torch.compile as a product and an addition (see below).

    Without autograd, on a CPU, 4 to 15 rows of `x` (a decoding step of 4 to 15 sequences) are multiplied by
    blocks of DECODE_BLOCK rows of `weight` in one `bmm`. For such skinny products MKL's sgemm reads the
    weight at about 12 GB/s, half the machine's bandwidth, where small blocks that stay in cache run at
    22 to 26 GB/s: 1.5x to 2.9x faster per product on the 2-core Xeon of docs/benchmarks.md. Other row
    counts (one row, prefill, training) go to `F.linear`, already near the bandwidth or compute bound.
    """
    rows = x.numel() // x.shape[-1] if x.dim() else 0
    if rows == 1 and bias is not None and torch.compiler.is_compiling():
        # with coordinate descent tuning (compile_options), inductor makes a one-row product without bias a
        # reduction kernel that can read the weight at the memory's bandwidth, the addition fused into it;
        # one with bias (addmm) stays an extern product (cuBLAS's; max-autotune's Triton templates took 4 to 9 us
        # each at batch 1 on an H100, where reading the weight takes 0.4 to 1.6 us)
        y = F.linear(x, weight)
        return y + bias.to(y.dtype)
    if (x.device.type != "cpu" or not 4 <= rows < 16 or torch.is_grad_enabled() or not weight.is_contiguous()
            or weight.shape[0] < DECODE_BLOCK):
        return F.linear(x, weight, bias)
    out_features, in_features = weight.shape
    whole = out_features - out_features % DECODE_BLOCK
    x2 = x.reshape(1, rows, in_features)
    blocks = weight[:whole].view(-1, DECODE_BLOCK, in_features)
    y = torch.bmm(x2.expand(len(blocks), rows, in_features), blocks.transpose(1, 2))  # [blocks, rows, BLOCK]
    y = y.transpose(0, 1).reshape(rows, whole)
    if whole < out_features:  # the last rows of a vocabulary such as 50257 = 785 * 64 + 17
        y = torch.cat([y, F.linear(x2[0], weight[whole:])], dim=1)
    if bias is not None:
        y = y + bias.to(y.dtype)  # under autocast y is bf16, as F.linear's would be
    return y.view(*x.shape[:-1], out_features)


def compile_options(mode: str) -> dict:
    """inductor's options for `mode`, one of COMPILE_MODES, as torch.compile's `options` (in place of its `mode`).

    "tuned" times a few launch settings of each generated kernel around inductor's choice (coordinate descent
    tuning, as gpt-fast decodes; max-autotune-no-cudagraphs does it too, and also times Triton's matrix products
    against cuBLAS's, minutes for a training step). Under it inductor also makes a one-row product without bias
    (every product of a decoding step at batch 1: `linear` traces it so) a reduction kernel tuned to the memory's
    bandwidth, the bias added in it, where cuBLAS's matrix-vector kernels are bound by their latency."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    options = dict(torch._inductor.list_mode_options("default" if mode == "tuned" else mode))
    if mode == "tuned":
        options["coordinate_descent_tuning"] = True
    return options


@functools.cache
def native_bf16(device: torch.device) -> bool:
    """Whether `device` is a GPU with native bf16 (Ampere and later), whichever GPU is current; asked once each."""
    if device.type != "cuda":
        return False
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


class Linear(nn.Linear):
    """`nn.Linear` computed by `linear` (the same function; faster when decoding a few rows on a CPU)."""

    def forward(self, x):
        return linear(x, self.weight, self.bias)


class CrossEntropy(torch.autograd.Function):
    """`F.cross_entropy(logits [..., V], targets [...], ignore_index=-100, reduction)`: summed or averaged over
    the supervised targets, or per target ("none": [...], 0 where ignored; DPO sums it per sequence), computed in float32 whatever the logits' dtype, with a leaner backward: the saved
    log-probabilities become the gradient in place (softmax minus one-hot, as llm.c's fused classifier does).
    The loss holds one float32 [N, V] buffer where `F.cross_entropy(logits.float())` holds three: bf16 logits
    are converted CHUNK_ROWS rows at a time into it (log_softmax copies the whole input to float32 first for
    any input but CUDA half). A second backward through the same graph is refused by autograd (the saved
    buffer was modified)."""

    CHUNK_ROWS = 2048

    @staticmethod
    def forward(ctx, logits, targets, reduction: str):
        ctx.logits_shape, ctx.logits_dtype = logits.shape, logits.dtype
        rows = logits.reshape(-1, logits.shape[-1])  # a view, also of the unpadded part of padded logits
        logp = torch.empty(rows.shape, dtype=torch.float32, device=rows.device)
        with torch.autocast(logits.device.type, enabled=False):
            for i in range(0, len(rows), CrossEntropy.CHUNK_ROWS):
                chunk = slice(i, i + CrossEntropy.CHUNK_ROWS)
                torch.log_softmax(rows[chunk].float(), dim=-1, out=logp[chunk])
        shape, targets = targets.shape, targets.reshape(-1)
        supervised = targets != -100
        index = targets.clamp(min=0).unsqueeze(1)
        losses = -logp.gather(1, index).squeeze(1).masked_fill(~supervised, 0)
        loss = losses.view(shape) if reduction == "none" else losses.sum()
        scale = supervised.to(logp.dtype)  # d(loss)/d(picked log-probability), negated
        if reduction == "mean":
            count = supervised.sum()
            loss, scale = loss / count, scale / count.clamp(min=1)  # nothing supervised: a NaN loss, 0 gradients
        ctx.save_for_backward(logp, index, scale)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        logp, index, scale = ctx.saved_tensors
        grad = logp.exp_()  # softmax
        grad.scatter_add_(1, index, torch.full_like(index, -1, dtype=grad.dtype))
        grad.mul_((scale * grad_loss.reshape(-1)).unsqueeze(1))  # ignored rows: 0
        return grad.reshape(ctx.logits_shape).to(ctx.logits_dtype), None, None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean",
                  compiled: bool | None = None) -> torch.Tensor:
    """`F.cross_entropy(logits [..., V].float(), targets [...], ignore_index=-100, reduction)` (reduction "mean",
    "sum" or "none": the loss of each target [...], 0 where ignored): the one place that
    picks the loss's path. `compiled` (default: whether torch.compile is tracing this call) selects plain
    `F.cross_entropy` inside the graph; otherwise the leaner `CrossEntropy`. Both give the same loss and
    gradients (tests/test_model.py)."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if compiled is None:
        compiled = torch.compiler.is_compiling()
    if not compiled:
        return CrossEntropy.apply(logits, targets, reduction)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                           reduction=reduction)
    return loss.view(targets.shape) if reduction == "none" else loss
