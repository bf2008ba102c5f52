"""GPT-2 in PyTorch: the model, the tokenizer, checkpoints and inference."""

from .model import GPT, PRESETS, GPTConfig, KVCache, preset
from .tokenizer import EOT, get_encoding

__all__ = ["EOT", "GPT", "GPTConfig", "KVCache", "PRESETS", "get_encoding", "preset"]
