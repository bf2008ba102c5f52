"""GPT-2 in PyTorch: the model, the reward model, checkpoints, inference and the chat template (the tokenizer
re-exported).

The names load lazily, so that a process which needs only the tokenizer or the template (a pipeline
worker) does not import torch. The tokenizer lives in shards.tokenizer (the vocabulary is what shards
store); `gpt.EOT` and `gpt.get_encoding` are the same objects.
"""

import importlib

_EXPORTS = {
    "EOT": "shards.tokenizer", "get_encoding": "shards.tokenizer",
    "GPT": ".model", "GPTConfig": ".model", "KVCache": ".model", "PRESETS": ".model", "preset": ".model",
    "load_model": ".checkpoint", "save_model": ".checkpoint", "load_reward_model": ".checkpoint",
    "RewardModel": ".reward",
    "generate": ".inference", "stream": ".inference", "tokenize_batch_input": ".inference",
    "CHAT_TEMPLATE": ".template", "render_prompt": ".template",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gpt' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
