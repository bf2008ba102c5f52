"""A reward model as the RL stage's reward (`--reward rm:PATH`): its score of each prompt + answer.

The model comes from `gpt.load_reward_model(path, device)` (issue 15's reward model, `make rm`): an object with
a `config.block_size`, whose `score_tokens(sequences, batch_size)` returns one float per sequence of tokens, the
rendered prompt then the answer (it appends the closing EOT when missing, so an answer cut at --max-new is scored
as if it ended there). Prompt and answer are tokenized apart and joined, as the preference shards the reward
model learned from are. A sequence that would not fit in the reward model's context with its EOT (the answer
re-tokenized from text may be longer than sampled; the reward model's context may be shorter than the
policy's) is cut to fit, as if the answer ended there.
"""

from __future__ import annotations

from shards.tokenizer import get_encoding


class ModelReward:
    """`reward(prompts, references, answers)` from a scorer with `score_tokens` (references are not used)."""

    def __init__(self, scorer, batch_size: int = 32, context: int | None = None):
        self.scorer, self.batch_size = scorer, batch_size
        self.longest = None if context is None else context - 1  # tokens before the EOT score_tokens appends

    def __call__(self, prompts: list[str], references: list[str], answers: list[str]) -> list[float]:
        enc = get_encoding()
        sequences = [(enc.encode_ordinary(p) + enc.encode_ordinary(a))[:self.longest] for p, a in zip(prompts, answers)]
        return self.scorer.score_tokens(sequences, batch_size=self.batch_size).float().cpu().tolist()


def load(path: str, device) -> ModelReward:
    """The reward model of `path` on `device` (gpt.load_reward_model)."""
    import gpt
    model = gpt.load_reward_model(path, device)
    return ModelReward(model, context=model.config.block_size)
