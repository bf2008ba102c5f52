"""Model checkpoints: `save_model` writes our folder, `load_model` reads it or a Hugging Face GPT-2 folder.

Our folder holds `model.safetensors` (our tensor names; the tied `lm_head.weight` and the padding rows
of a padded vocabulary are not written) and `config.json` (`{"format": "minigpt2", "format_version": 1,
...GPTConfig fields}`), each written atomically, config.json last: a folder without it is incomplete.
Nothing is unpickled: HF's `pytorch_model.bin` is read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from shards.io import atomic_write, write_json

from .hf import build, complete_state_dict, config_from_hf, file_state_dict, state_dict_from_hf
from .model import GPT, GPTConfig

FORMAT = "minigpt2"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
HF_PICKLE_WEIGHTS = "pytorch_model.bin"


def save_model(model: GPT, directory) -> Path:
    """Write `model`'s weights and config to `directory` (created if needed); return the folder."""
    if not isinstance(model, GPT):
        raise TypeError(f"save_model expects a gpt.GPT, got {type(model).__name__} (unwrap DDP / torch.compile first)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_write(directory / WEIGHTS) as f:
        f.write(save(file_state_dict(model), metadata={"format": "pt"}))
    write_json(directory / "config.json", {"format": FORMAT, "format_version": FORMAT_VERSION,
                                           **model.config.to_dict()})
    return directory


def load_model(path, device="cpu", padded_vocab_size: int | None = None, *, dtype=torch.float32) -> GPT:
    """Our GPT, in eval mode on `device`, from our checkpoint folder or a Hugging Face GPT-2 folder.

    `padded_vocab_size` pads the embedding (e.g. 50304 for speed); by default our checkpoints keep the padding
    they were trained with and HF folders get none. Raises FileNotFoundError for a missing folder or file and
    ValueError for a config or tensors that do not fit, naming the file at fault.
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
    if raw.get("format") == FORMAT:
        config = _our_config(raw, config_path, padded_vocab_size)
        weights = folder / WEIGHTS
        tensors = _read_weights(weights, f"{weights}: missing; {folder} holds no weights (incomplete checkpoint?)")
        state = complete_state_dict(tensors, config, str(weights))
    elif raw.get("model_type") == "gpt2":
        config = config_from_hf(raw, source=str(config_path), padded_vocab_size=padded_vocab_size)
        weights = folder / WEIGHTS if (folder / WEIGHTS).is_file() else folder / HF_PICKLE_WEIGHTS
        tensors = _read_weights(weights, f"{folder}: holds neither {WEIGHTS} nor {HF_PICKLE_WEIGHTS}")
        state = state_dict_from_hf(tensors, config, source=str(weights))
    else:
        raise ValueError(f"{config_path}: neither a {FORMAT} checkpoint (no \"format\": \"{FORMAT}\") "
                         f"nor a GPT-2 model (model_type {raw.get('model_type')!r})")
    return build(config, state, device=device, dtype=dtype)


def _our_config(raw: dict, config_path: Path, padded_vocab_size: int | None) -> GPTConfig:
    if raw.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{config_path}: format_version {raw.get('format_version')!r}, "
                         f"this code reads {FORMAT_VERSION}")
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
