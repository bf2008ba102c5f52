"""Model checkpoints: `save_model` writes a Hugging Face GPT-2 folder, `load_model` reads it or any other.

Our folder is a transformers GPT-2 folder: `GPT2LMHeadModel.from_pretrained(folder)` and
`AutoTokenizer.from_pretrained(folder)` load it as it is. It holds `model.safetensors` (HF's names and
layout, Conv1D weights [in, out]; the tied `lm_head.weight` and the padding rows of a padded vocabulary are
not written), `vocab.json`, `merges.txt` and `tokenizer_config.json` (the GPT-2 tokenizer, decoding as
tiktoken does), `generation_config.json`, and
`config.json` (GPT2Config plus `"minigpt2": {"format_version": 2, "padded_vocab_size": ...}`), each written
atomically, config.json last: a folder without it is incomplete. Folders of format_version 1 (our tensor
names in `nn.Linear` layout, our own config.json) still load. Nothing is unpickled: HF's
`pytorch_model.bin` is read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from shards.io import atomic_write, write_json

from .hf import build, complete_state_dict, config_from_hf, file_state_dict, hf_config, state_dict_from_hf
from .model import GPT, GPTConfig
from .tokenizer import ENCODER_JSON_SHA256, EOT, VOCAB_BPE_SHA256, packaged_file

FORMAT = "minigpt2"  # the key of our own fields in config.json
FORMAT_VERSION = 2
WEIGHTS = "model.safetensors"
HF_PICKLE_WEIGHTS = "pytorch_model.bin"
# transformers' GPT-2 tokenizer files: the packaged files tiktoken's gpt2 encoding is built from
TOKENIZER_FILES = {"vocab.json": ("encoder.json", ENCODER_JSON_SHA256), "merges.txt": ("vocab.bpe", VOCAB_BPE_SHA256)}


def save_model(model: GPT, directory, chat_template: str | None = None) -> Path:
    """Write `model` to `directory` (created if needed) as a transformers GPT-2 folder; return the folder.
    `chat_template` (a Jinja template, e.g. SFT's Alpaca prompt) goes into tokenizer_config.json."""
    if not isinstance(model, GPT):
        raise TypeError(f"save_model expects a gpt.GPT, got {type(model).__name__} (unwrap DDP / torch.compile first)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_write(directory / WEIGHTS) as f:
        f.write(save(file_state_dict(model), metadata={"format": "pt"}))
    for name, (packaged, sha256) in TOKENIZER_FILES.items():
        with atomic_write(directory / name) as f, open(packaged_file(packaged, sha256), "rb") as src:
            shutil.copyfileobj(src, f)
    write_json(directory / "tokenizer_config.json", tokenizer_config(model.config.block_size, chat_template))
    write_json(directory / "generation_config.json", {"bos_token_id": EOT, "eos_token_id": EOT})
    write_json(directory / "config.json", {**hf_config(model.config), FORMAT: {
        "format_version": FORMAT_VERSION, "padded_vocab_size": model.config.padded_vocab_size}})
    return directory


def tokenizer_config(context: int, chat_template: str | None = None) -> dict:
    """transformers' GPT2Tokenizer settings: the context as model_max_length, <|endoftext|> as bos/eos/unk,
    decoding exactly as tiktoken's (no clean-up of spaces before punctuation), and the chat template if any."""
    eot = "<|endoftext|>"
    config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": context, "bos_token": eot, "eos_token": eot,
              "unk_token": eot, "add_prefix_space": False, "clean_up_tokenization_spaces": False}
    return {**config, "chat_template": chat_template} if chat_template else config


def saved_chat_template(folder) -> str | None:
    """The chat template in `folder`'s tokenizer_config.json, if it has one."""
    path = Path(folder) / "tokenizer_config.json"
    try:
        return json.loads(path.read_text()).get("chat_template") if path.is_file() else None
    except (ValueError, AttributeError):
        raise ValueError(f"{path}: not a JSON object") from None


def load_model(path, device="cpu", padded_vocab_size: int | None = None, *, dtype=torch.float32) -> GPT:
    """Our GPT, in eval mode on `device`, from our checkpoint folder or a Hugging Face GPT-2 folder.

    `padded_vocab_size` pads the embedding (e.g. 50304 for speed); by default our checkpoints keep the padding
    they were trained with and other HF folders get none. Raises FileNotFoundError for a missing folder or
    file and ValueError for a config or tensors that do not fit, naming the file at fault.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such checkpoint folder")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: missing; {folder} is not a checkpoint folder or is incomplete")
    try:
        raw = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{config_path}: not valid JSON ({e})") from None
    ours = raw.get("format") == FORMAT or FORMAT in raw
    weights = folder / WEIGHTS if ours or (folder / WEIGHTS).is_file() else folder / HF_PICKLE_WEIGHTS
    missing = (f"{weights}: missing; {folder} holds no weights (incomplete checkpoint?)" if ours
               else f"{folder}: holds neither {WEIGHTS} nor {HF_PICKLE_WEIGHTS}")
    if raw.get("format") == FORMAT:  # format_version 1: our names and layout, our config
        config = _v1_config(raw, config_path, padded_vocab_size)
        state = complete_state_dict(_read_weights(weights, missing), config, str(weights))
    elif raw.get("model_type") == "gpt2":
        saved_padding = _saved_padding(raw[FORMAT], config_path) if FORMAT in raw else None
        padded_vocab_size = saved_padding if padded_vocab_size is None else padded_vocab_size
        config = config_from_hf(raw, source=str(config_path), padded_vocab_size=padded_vocab_size)
        state = state_dict_from_hf(_read_weights(weights, missing), config, source=str(weights))
    else:
        raise ValueError(f"{config_path}: neither a GPT-2 model (model_type {raw.get('model_type')!r}) "
                         f"nor a {FORMAT} checkpoint")
    return build(config, state, device=device, dtype=dtype)


def _saved_padding(fields: dict, config_path: Path) -> int | None:
    """The padded_vocab_size in our `"minigpt2"` fields of an HF config.json, after checking their version."""
    if not isinstance(fields, dict):
        raise ValueError(f"{config_path}: \"{FORMAT}\" is {fields!r}, not an object")
    if fields.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{config_path}: {FORMAT} format_version {fields.get('format_version')!r}, "
                         f"this code reads {FORMAT_VERSION}")
    padded = fields.get("padded_vocab_size")
    if padded is not None and (not isinstance(padded, int) or isinstance(padded, bool)):
        raise ValueError(f"{config_path}: {FORMAT} padded_vocab_size {padded!r} is not an integer")
    return padded


def _v1_config(raw: dict, config_path: Path, padded_vocab_size: int | None) -> GPTConfig:
    """The GPTConfig of a format_version 1 config.json: {"format": "minigpt2", "format_version": 1, fields}."""
    if raw.get("format_version") != 1:
        raise ValueError(f"{config_path}: {FORMAT} format_version {raw.get('format_version')!r}, "
                         f"this code reads {FORMAT_VERSION} (and 1)")
    fields = {k: v for k, v in raw.items() if k not in ("format", "format_version")}
    known = {f.name for f in dataclasses.fields(GPTConfig)}
    if unknown := sorted(fields.keys() - known):
        raise ValueError(f"{config_path}: unknown GPTConfig fields {', '.join(unknown)}")
    if padded_vocab_size is not None:
        fields["padded_vocab_size"] = padded_vocab_size
    try:
        return GPTConfig(**fields)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{config_path}: {e}") from None


def _read_weights(path: Path, missing: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, or of a pickled torch file read with `weights_only=True`."""
    if not path.is_file():
        raise FileNotFoundError(missing)
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # SafetensorError, OSError; torch's UnpicklingError, RuntimeError, EOFError...
        raise ValueError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from None
