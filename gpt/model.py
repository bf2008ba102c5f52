"""GPT-2: the model, its configuration and presets, with an optional KV cache for generation.

Exactly GPT-2's architecture (learned positions, pre-LayerNorm blocks with eps 1e-5, tanh GELU, tied
token embedding and output head) with attention through `scaled_dot_product_attention`, which runs
flash attention on a GPU. The embedding may be padded (`padded_vocab_size`, e.g. 50304) for speed;
the padding rows never show in logits, checkpoints or exports. The fast paths it calls (a CPU decoding
product, a lean loss) live in gpt/kernels.py, each beside the reason it exists.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .kernels import Linear, cross_entropy


@dataclass
class GPTConfig:
    block_size: int = 1024  # context window
    vocab_size: int = 50257  # GPT-2 tokenizer
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    padded_vocab_size: int | None = None  # embedding rows allocated (>= vocab_size); None = vocab_size

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.padded_vocab_size is not None and self.padded_vocab_size < self.vocab_size:
            raise ValueError(f"padded_vocab_size={self.padded_vocab_size} < vocab_size={self.vocab_size}")

    @property
    def embedding_rows(self) -> int:
        return self.padded_vocab_size or self.vocab_size


PRESETS: dict[str, GPTConfig] = {
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": GPTConfig(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": GPTConfig(n_layer=48, n_head=25, n_embd=1600),
    # CPU presets: `tiny` for the demo on the built-in sample, `nano` for tests.
    "tiny": GPTConfig(block_size=256, n_layer=4, n_head=4, n_embd=128),
    "nano": GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=32),
}


def preset(name: str, **overrides) -> GPTConfig:
    """A copy of the named preset with fields overridden, e.g. `preset("gpt2", padded_vocab_size=50304)`."""
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


class KVCache:
    """Keys and values of every layer for up to `max_len` positions of a batch, filled left to right: one
    [2, B, H, max_len, D] tensor per layer, keys then values (a compiled decoding step then updates each in place,
    where slices of one tensor for all layers were copied whole at every step; a step writes both in one copy)."""

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int, device=None, dtype=torch.float32):
        head_dim = config.n_embd // config.n_head
        shape = (2, batch_size, config.n_head, max_len, head_dim)
        self.kv = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.length = 0  # positions filled so far

    @property
    def max_len(self) -> int:
        return self.kv[0].shape[3]

    def update(self, layer: int, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the keys and values [2, B, H, T, D] of `layer` after the `length` filled positions; return every
        key and value filled so far (`length` advances once all layers are done: see GPT.hidden_states)."""
        start, end = self.length, self.length + kv.shape[3]
        self.kv[layer][:, :, :, start:end] = kv
        return self.kv[layer][0, :, :, :end], self.kv[layer][1, :, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = Linear(config.n_embd, config.n_embd)
        self.c_proj.residual = True  # scaled init

    def forward(self, x, layer: int, mask=None, cache=None):
        B, T, C = x.shape
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head)
        q, kv = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1:].permute(2, 0, 3, 1, 4)  # [B, H, T, D], [2, B, H, T, D]
        k, v = cache.update(layer, kv) if cache is not None else kv.unbind(0)
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd)
        self.c_proj.residual = True

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=1e-5)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=1e-5)
        self.mlp = MLP(config)

    def forward(self, x, layer: int, mask=None, cache=None):
        x = x + self.attn(self.ln_1(x), layer, mask, cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.embedding_rows, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, eps=1e-5),
        ))
        self.lm_head = Linear(config.n_embd, config.embedding_rows, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied
        self.apply(self._init_weights)
        with torch.no_grad():  # padding rows: never looked up nor in the logits; zero, as a checkpoint loads them
            self.transformer.wte.weight[config.vocab_size:].zero_()

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            std = 0.02 * (2 * self.config.n_layer) ** -0.5 if getattr(module, "residual", False) else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward and backward), as in the PaLM appendix: 6N + 12*L*H*Q*T."""
        c = self.config
        return 6 * self.num_params(non_embedding=True) + 12 * c.n_layer * c.n_embd * seq_len

    def hidden_states(self, idx, *, positions=None, key_mask=None, cache: KVCache | None = None):
        """The final LayerNorm's output [B, T, n_embd] (what `forward` projects onto the vocabulary).

        Arguments as in `forward`. With a `key_mask`, every query also sees its own key, so a padding
        position whose keys are all masked stays finite (real positions are unaffected: their own key is
        real); generation uses this to project only the positions it samples from.
        """
        B, T = idx.shape
        past = cache.length if cache is not None else 0
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of {past + T} tokens exceeds the context of {self.config.block_size}")
        if cache is not None and past + T > cache.max_len:
            raise ValueError(f"KV cache holds {cache.max_len} positions, {past + T} needed")
        if positions is None:
            positions = torch.arange(past, past + T, device=idx.device).unsqueeze(0)
        x = self.transformer.wte(idx) + self.transformer.wpe(positions)
        mask = None
        if key_mask is not None or past > 0:
            causal = torch.ones(T, past + T, dtype=torch.bool, device=idx.device).tril(diagonal=past)
            mask = causal[None, None]
            if key_mask is not None:
                keys = torch.arange(past + T, device=idx.device)
                own = keys[None, :] == keys[past:, None]  # [T, past + T]: query t's own key
                mask = mask & (key_mask[:, None, None, :].bool() | own[None, None])
        for layer, block in enumerate(self.transformer.h):
            x = block(x, layer, mask, cache)
        if cache is not None:
            cache.length += T
        return self.transformer.ln_f(x)

    def forward(self, idx, targets=None, *, positions=None, key_mask=None, cache: KVCache | None = None,
                reduction: str = "mean", supervised_only: bool = False):
        """Logits [B, T, vocab_size] for tokens `idx` [B, T], and the loss when `targets` are given.

        Training passes only `idx` and `targets` (-100 = ignored). Generation may pass `positions` [B, T]
        (per-row position ids), `key_mask` [B, cache.length + T] (False on padding keys) and a `cache`
        that this call appends its keys and values to. `reduction="sum"` returns the summed loss, "none" the loss
        of each target [B, T] (0 where ignored). `supervised_only` (with targets) returns (None, the loss) and,
        run eagerly, projects onto the vocabulary only the positions whose target is supervised: the same loss
        for a fraction of the head's cost when most targets are ignored (SFT, DPO and RL rows are mostly prompt
        and padding). Under torch.compile it projects every position, as without it: a boolean index has a
        data-dependent shape, which would break the graph and run the head and the loss eagerly.
        """
        x = self.hidden_states(idx, positions=positions, key_mask=key_mask, cache=cache)
        if supervised_only:
            if targets is None:
                raise ValueError("supervised_only needs targets")
            if torch.compiler.is_compiling():
                return None, self._loss(x, targets, reduction)
            keep = targets != -100
            loss = self._loss(x[keep], targets[keep], reduction)
            if reduction == "none":
                loss = torch.zeros(targets.shape, dtype=loss.dtype, device=x.device).masked_scatter(keep, loss)
            return None, loss
        logits = self.lm_head(x)[..., :self.config.vocab_size]
        if targets is None:
            return logits
        return logits, cross_entropy(logits, targets, reduction)

    def _loss(self, x, targets, reduction: str) -> torch.Tensor:
        """The loss of hidden states x [..., n_embd] against targets [...], the logits not kept."""
        return cross_entropy(self.lm_head(x)[..., :self.config.vocab_size], targets, reduction)
