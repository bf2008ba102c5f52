"""GPT-2 in PyTorch: the model, the tokenizer, checkpoints and inference."""

from .checkpoint import load_model, save_model
from .inference import generate, stream, tokenize_batch_input
from .model import GPT, PRESETS, GPTConfig, KVCache, preset
from .tokenizer import EOT, get_encoding

__all__ = ["EOT", "GPT", "GPTConfig", "KVCache", "PRESETS", "generate", "get_encoding", "load_model", "preset",
           "save_model", "stream", "tokenize_batch_input"]
