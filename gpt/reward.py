"""The reward model: GPT-2's hidden states and a scalar head, the reward of a sequence read at its last token.

`RewardModel(backbone)` puts a head `Linear(n_embd, 1, bias=False)` (transformers' `score` of
`GPT2ForSequenceClassification`; zero at first, so every reward starts at 0) on a `GPT`'s final hidden states.
A sequence is a rendered Alpaca prompt, an answer and its closing EOT, as the preference shards hold them
(pipelines/examples.py); its reward is the head's output at that EOT, the last real token of the row. Rows are
right-padded with 0, which is also a real token ("!"), so the position comes from the rows' lengths, never from
token values; attention is causal, so the padding after a row's last token cannot change its reward.

`score(prompts, answers)` and `score_tokens(sequences)` score batches without gradient, in eval mode, on the
model's device. gpt.checkpoint saves a reward model (`save_model`) as a transformers
`GPT2ForSequenceClassification` folder (one label, `pad_token_id` 0: transformers then reads the last token
that is not 0, our EOT) and `load_reward_model` loads it.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
import torch.nn as nn

from shards.tokenizer import EOT, get_encoding

from .inference import pad_batch
from .model import GPT, GPTConfig
from .template import render_prompt


class RewardModel(nn.Module):
    """A GPT backbone (its `lm_head` unused) and a scalar head; `forward(idx, lengths)` gives the rewards [B]."""

    def __init__(self, backbone: GPT):
        super().__init__()
        self.backbone = backbone
        weight = backbone.transformer.wte.weight
        # skip_init: no random draw (the head is zero), so building one leaves the RNG as it was
        self.head = nn.utils.skip_init(nn.Linear, backbone.config.n_embd, 1, bias=False, device=weight.device,
                                       dtype=weight.dtype)
        with torch.no_grad():
            self.head.weight.zero_()

    @property
    def config(self) -> GPTConfig:
        return self.backbone.config

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: the backbone's, less its vocabulary projection, plus the head's."""
        backbone = self.backbone
        return backbone.flops_per_token(seq_len) - 6 * backbone.lm_head.weight.numel() + 6 * self.config.n_embd

    def forward(self, idx: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The float32 reward [B] of each row of `idx` [B, T], read at its last real token, position
        `lengths - 1` (what follows it, padding, is never read)."""
        hidden = self.backbone.hidden_states(idx)
        last = hidden[torch.arange(len(idx), device=idx.device), lengths - 1]
        return self.head(last).squeeze(-1).float()

    @torch.no_grad()
    def score_tokens(self, sequences: list[Sequence[int]], batch_size: int = 32) -> torch.Tensor:
        """The float32 reward [n] of each token sequence (rendered-prompt tokens, then answer tokens), with one EOT
        appended when it does not already end with EOT; the reward is read at that EOT. Sequences are scored
        `batch_size` at a time, similar lengths together."""
        if not isinstance(batch_size, numbers.Integral) or batch_size < 1:  # else no batch ran: garbage returned
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        rows = []
        for i, s in enumerate(sequences):
            row = torch.as_tensor(s)  # float ids were truncated by int(), one flat sequence failed in iteration
            if row.dim() != 1 or (row.numel() and (row.dtype.is_floating_point or row.dtype == torch.bool)):
                raise ValueError(f"sequence {i} is not a list of integer token ids (one sequence: "
                                 f"score_tokens([tokens]))")
            rows.append(row.tolist())
        rows = [row if row and row[-1] == EOT else [*row, EOT] for row in rows]
        for i, row in enumerate(rows):
            if len(row) > self.config.block_size:
                raise ValueError(f"sequence {i} has {len(row)} tokens with its EOT, more than the reward model's "
                                 f"context of {self.config.block_size}")
            if not 0 <= min(row) <= max(row) < self.config.vocab_size:
                raise ValueError(f"sequence {i} holds a token outside the vocabulary [0, {self.config.vocab_size})")
        device = self.head.weight.device
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        rewards = torch.empty(len(rows), dtype=torch.float32)
        training = self.training
        self.eval()
        try:
            for start in range(0, len(order), batch_size):
                group = order[start:start + batch_size]
                ids, masks = pad_batch([rows[i] for i in group])
                rewards[group] = self(ids.to(device), masks.sum(dim=1).to(device)).cpu()
        finally:
            self.train(training)
        return rewards

    def score(self, prompts: list[str], answers: list[str], batch_size: int = 32) -> torch.Tensor:
        """The float32 reward [n] of each (prompt, answer): the prompt rendered with the Alpaca template
        (`render_prompt`), prompt and answer tokenized apart and joined, then EOT, as the preference shards
        encode a pair's side."""
        for name, texts in (("prompts", prompts), ("answers", answers)):
            if isinstance(texts, str):  # a string is a sequence too: each of its characters would be scored
                raise ValueError(f"{name} must be a list of strings, got a string (one pair: "
                                 f"score([prompt], [answer]))")
        if len(prompts) != len(answers):
            raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
        enc = get_encoding()
        return self.score_tokens([enc.encode_ordinary(render_prompt(p)) + enc.encode_ordinary(a)
                                  for p, a in zip(prompts, answers)], batch_size)
