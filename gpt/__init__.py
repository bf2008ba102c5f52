"""GPT-2 in PyTorch: the model, the tokenizer, checkpoints and inference.

The names load lazily, so that a process which needs only the tokenizer (a pipeline worker) does not
import torch.
"""

import importlib

_EXPORTS = {
    "EOT": "tokenizer", "get_encoding": "tokenizer",
    "GPT": "model", "GPTConfig": "model", "KVCache": "model", "PRESETS": "model", "preset": "model",
    "load_model": "checkpoint", "save_model": "checkpoint",
    "generate": "inference", "stream": "inference", "tokenize_batch_input": "inference",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gpt' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
