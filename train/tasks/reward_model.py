"""A reward model as the RL stage's reward (`--reward rm:PATH`): its score of each prompt + answer.

The model comes from `gpt.load_reward_model(path, device)` (issue 15's reward model, `make rm`), an object whose
`score_tokens(sequences, batch_size)` returns one float per sequence of tokens, the rendered prompt then the
answer (it appends the closing EOT when missing, so an answer cut at --max-new is scored as if it ended there).
Prompt and answer are tokenized apart and joined, as the preference shards the reward model learned from are.
"""

from __future__ import annotations

from shards.tokenizer import get_encoding


class ModelReward:
    """`reward(prompts, references, answers)` from a scorer with `score_tokens` (references are not used)."""

    def __init__(self, scorer, batch_size: int = 32):
        self.scorer, self.batch_size = scorer, batch_size

    def __call__(self, prompts: list[str], references: list[str], answers: list[str]) -> list[float]:
        enc = get_encoding()
        sequences = [enc.encode_ordinary(p) + enc.encode_ordinary(a) for p, a in zip(prompts, answers)]
        return self.scorer.score_tokens(sequences, batch_size=self.batch_size).float().cpu().tolist()


def load(path: str, device) -> ModelReward:
    """The reward model of `path` on `device` (gpt.load_reward_model)."""
    import gpt
    return ModelReward(gpt.load_reward_model(path, device))
