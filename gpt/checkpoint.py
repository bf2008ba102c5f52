"""Model checkpoints: `save_model` writes a Hugging Face GPT-2 folder, `load_model` reads it or any other.

Our folder is a transformers GPT-2 folder: `GPT2LMHeadModel.from_pretrained(folder)` and
`AutoTokenizer.from_pretrained(folder)` load it as it is. It holds `model.safetensors` (HF's names and
layout, Conv1D weights [in, out]; the tied `lm_head.weight` and the padding rows of a padded vocabulary are
not written), `vocab.json`, `merges.txt` and `tokenizer_config.json` (the GPT-2 tokenizer, decoding as
tiktoken does), `generation_config.json`, and
`config.json` (GPT2Config plus `"minigpt2": {"format_version": 2, "padded_vocab_size": ...}`), each written
atomically, config.json last: a folder without it is incomplete. Folders of format_version 1 (our tensor
names in `nn.Linear` layout, our own config.json) still load. Nothing is unpickled: HF's
`pytorch_model.bin` is read with `torch.load(weights_only=True)`. A sharded HF folder (what
`save_pretrained(folder, max_shard_size=...)` writes: `model.safetensors.index.json`, or
`pytorch_model.bin.index.json`, and the shard files its `weight_map` names) loads too.

A reward model (gpt.reward.RewardModel) is saved the same way as transformers' `GPT2ForSequenceClassification`
(config.json names that architecture, with one label and `pad_token_id` 0; model.safetensors adds the head,
`score.weight`): `load_reward_model` reads it, and `load_model` refuses it, naming `load_reward_model`.

`load_model` (and `load_config`, the config alone) also takes a training run folder or its `ckpt/`, meaning
the run's best checkpoint (`ckpt/best`, kept by SFT, DPO and the reward model) or without one its latest, or
the `ckpt/latest` or `ckpt/best` pointer, meaning the checkpoint it names (`resolve_checkpoint`): what `CKPT=`
and `INIT=` take. A run keeps its checkpoints in `RUN_DIR/ckpt/step-XXXXXX/`, and `ckpt/latest` names the
newest (train.checkpoint writes them).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from shards.io import atomic_write, write_json
from shards.tokenizer import ENCODER_JSON_SHA256, EOT, VOCAB_BPE_SHA256, packaged_file

from .hf import (REWARD_ARCHITECTURE, SCORE, build, complete_state_dict, config_from_hf, file_state_dict, hf_config,
                 state_dict_from_hf)
from .model import GPT, GPTConfig
from .reward import RewardModel

LATEST = "latest"  # RUN_DIR/ckpt/latest: the name of the newest complete checkpoint folder
BEST = "best"  # RUN_DIR/ckpt/best: the folder of the lowest validation loss (SFT, DPO and the reward model keep it)
STATE = "state.json"  # a training checkpoint's state; a folder without it is incomplete
FORMAT = "minigpt2"  # the key of our own fields in config.json
FORMAT_VERSION = 2
WEIGHTS = "model.safetensors"
HF_PICKLE_WEIGHTS = "pytorch_model.bin"
INDEX = ".index.json"  # a sharded HF folder: WEIGHTS + INDEX (or HF_PICKLE_WEIGHTS + INDEX) maps tensors to files
# transformers' GPT-2 tokenizer files: the packaged files tiktoken's gpt2 encoding is built from
TOKENIZER_FILES = {"vocab.json": ("encoder.json", ENCODER_JSON_SHA256), "merges.txt": ("vocab.bpe", VOCAB_BPE_SHA256)}


def ckpt_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "ckpt"


def _pointed(run_dir: str | Path, pointer: str) -> Path | None:
    """The folder that the pointer file `RUN_DIR/ckpt/<pointer>` names, or None when there is no such file."""
    path = ckpt_root(run_dir) / pointer
    if not path.exists():
        return None
    fix = f"write the name of a complete step-* folder of {ckpt_root(run_dir)} into it"
    try:
        name = path.read_text().strip()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a folder name (binary data); {fix}") from None
    folder = ckpt_root(run_dir) / name
    if not name or not (folder / STATE).is_file():
        raise FileNotFoundError(f"{path} names {name!r}, which is missing or incomplete (no {STATE}); {fix}")
    return folder


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The folder `RUN_DIR/ckpt/latest` names, or None when the run has no checkpoint yet."""
    return _pointed(run_dir, LATEST)


def best_checkpoint(run_dir: str | Path) -> Path | None:
    """The folder `RUN_DIR/ckpt/best` names (the lowest validation loss, kept by SFT, DPO and the reward model), or
    None."""
    return _pointed(run_dir, BEST)


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder a user means by `path`: a run folder or its `ckpt/` stands for its best checkpoint
    (`ckpt/best`), or without one its latest; the `ckpt/latest` and `ckpt/best` pointer files for the folder
    each names; any other path is taken as it is."""
    path = Path(path)
    if path.name in (LATEST, BEST) and path.is_file() and path.resolve().parent.name == "ckpt":
        return _pointed(path.resolve().parent.parent, path.name)
    run = path.parent if path.name == "ckpt" else path
    return best_checkpoint(run) or latest_checkpoint(run) or path


def save_model(model: GPT | RewardModel, directory, chat_template: str | None = None) -> Path:
    """Write `model` to `directory` (created if needed) as a transformers GPT-2 folder, a reward model as a
    `GPT2ForSequenceClassification` one (its backbone's tensors and `score.weight`); return the folder.
    `chat_template` (a Jinja template, e.g. SFT's Alpaca prompt) goes into tokenizer_config.json."""
    if not isinstance(model, (GPT, RewardModel)):
        raise TypeError(f"save_model expects a gpt.GPT or gpt.RewardModel, got {type(model).__name__} (unwrap DDP / "
                        "torch.compile first)")
    reward = isinstance(model, RewardModel)
    tensors = ({**file_state_dict(model.backbone), SCORE: model.head.weight.detach().cpu().contiguous()} if reward
               else file_state_dict(model))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_write(directory / WEIGHTS) as f:
        f.write(save(tensors, metadata={"format": "pt"}))
    for name, (packaged, sha256) in TOKENIZER_FILES.items():
        with atomic_write(directory / name) as f, open(packaged_file(packaged, sha256), "rb") as src:
            shutil.copyfileobj(src, f)
    write_json(directory / "tokenizer_config.json", tokenizer_config(model.config.block_size, chat_template))
    write_json(directory / "generation_config.json", {"bos_token_id": EOT, "eos_token_id": EOT})
    dtype = tensors["transformer.wte.weight"].dtype
    write_json(directory / "config.json", {**hf_config(model.config, reward, dtype), FORMAT: {
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
    """Our GPT, in eval mode on `device`, from our checkpoint folder or a Hugging Face GPT-2 folder, or a run
    folder's checkpoint (its best, else its latest; or the one a `ckpt/` pointer names: `resolve_checkpoint`).

    `padded_vocab_size` pads the embedding (e.g. 50304 for speed); by default our checkpoints keep the padding
    they were trained with and other HF folders get none. Raises FileNotFoundError for a missing folder or
    file and ValueError for a file given as the folder or a config or tensors that do not fit, naming the file at
    fault.
    """
    folder = resolve_checkpoint(path)
    config, raw = _read_config(folder, padded_vocab_size)
    if _is_reward(raw):
        raise ValueError(f"{folder}: a reward model ({REWARD_ARCHITECTURE}); load it with gpt.load_reward_model")
    tensors, weights = _read_folder_weights(folder, raw)
    if raw.get("format") == FORMAT:  # format_version 1: our names and layout
        state = complete_state_dict(tensors, config, str(weights))
    else:
        state = state_dict_from_hf(tensors, config, source=str(weights))
    return build(config, state, device=device, dtype=dtype)


def load_reward_model(path, device="cpu", padded_vocab_size: int | None = None, *,
                      dtype=torch.float32) -> RewardModel:
    """A reward model (gpt.reward), in eval mode on `device`, from a folder `save_model` wrote it to (or a run
    folder: `resolve_checkpoint`), or a transformers `GPT2ForSequenceClassification` GPT-2 folder with one
    label and `pad_token_id` 0 or none (transformers then reads the reward at the closing EOT too); arguments and
    errors as `load_model`'s."""
    folder = resolve_checkpoint(path)
    config, raw = _read_config(folder, padded_vocab_size)
    if not _is_reward(raw):
        raise ValueError(f"{folder / 'config.json'}: not a reward model (architectures {raw.get('architectures')!r}, "
                         f"not [{REWARD_ARCHITECTURE!r}]); gpt.load_model loads it")
    if raw.get("pad_token_id") not in (0, None):  # ours say 0; with none, transformers reads the last token too
        raise ValueError(f"{folder / 'config.json'}: pad_token_id={raw['pad_token_id']!r} is not supported: "
                         f"transformers reads the reward at each row's last token that is not {raw['pad_token_id']!r}, "
                         "this reward model at the row's closing EOT (pad_token_id 0 or none)")
    tensors, weights = _read_folder_weights(folder, raw)
    head = tensors.pop(SCORE, None)
    if head is None or tuple(head.shape) != (1, config.n_embd):
        found = "missing" if head is None else f"of shape {tuple(head.shape)}"
        raise ValueError(f"{weights}: tensor {SCORE} {found}, expected (1, {config.n_embd}): one reward per sequence")
    model = RewardModel(build(config, state_dict_from_hf(tensors, config, source=str(weights)), device, dtype))
    with torch.no_grad():
        model.head.weight.copy_(head)
    return model.eval()


def is_reward_model(path) -> bool:
    """Whether the checkpoint `path` means (`resolve_checkpoint`) is a reward model, from its config.json."""
    return _is_reward(_read_config(resolve_checkpoint(path), None)[1])


def _is_reward(raw: dict) -> bool:
    return raw.get("architectures") == [REWARD_ARCHITECTURE]


def _read_folder_weights(folder: Path, raw: dict) -> tuple[dict[str, torch.Tensor], Path]:
    """The tensors of checkpoint `folder`, whose config.json is `raw`, and the file they come from: ours, or an HF
    folder's model.safetensors, else its pytorch_model.bin, either whole or sharded (the `.index.json` then), in
    transformers' order (its tokenizer files first checked: `_check_tokenizer`)."""
    ours = raw.get("format") == FORMAT or FORMAT in raw
    if not ours:  # ours hold GPT-2's tokenizer files as save_model copied them
        _check_tokenizer(folder)
    names = ((WEIGHTS,) if raw.get("format") == FORMAT  # format_version 1: our one file
             else (WEIGHTS, WEIGHTS + INDEX) if ours  # transformers shards ours when it saves them again
             else (WEIGHTS, WEIGHTS + INDEX, HF_PICKLE_WEIGHTS, HF_PICKLE_WEIGHTS + INDEX))
    weights = next((folder / name for name in names if (folder / name).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{folder / WEIGHTS}: missing; {folder} holds no weights (incomplete checkpoint?)"
                                if ours else f"{folder}: holds neither {WEIGHTS} nor {HF_PICKLE_WEIGHTS} (nor a "
                                f"sharded one's {WEIGHTS + INDEX} or {HF_PICKLE_WEIGHTS + INDEX})")
    if weights.name.endswith(INDEX):
        return _read_shards(weights), weights
    return _read_weights(weights), weights


def _read_shards(index: Path) -> dict[str, torch.Tensor]:
    """The tensors of a sharded HF folder: those of each file that its `index`'s `weight_map` names, each tensor of
    the map found in the file it names; errors name the index or the shard file at fault."""
    try:
        raw = json.loads(index.read_text())
    except ValueError as e:  # UnicodeDecodeError too
        raise damaged(index, f"not valid JSON ({e})") from None
    weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(
            isinstance(name, str) and name and Path(name).name == name for name in weight_map.values()):
        raise damaged(index, "no \"weight_map\" of tensor names to shard file names")
    tensors, found = {}, {}
    for name in dict.fromkeys(weight_map.values()):  # each file once, in the index's order
        path = index.parent / name
        if not path.is_file():
            raise damaged(path, f"missing, though {index.name} names it")
        shard = _read_weights(path)
        found.update(dict.fromkeys(shard, name))
        tensors.update(shard)
    if stray := sorted(key for key, name in weight_map.items() if found.get(key) != name):
        raise damaged(index, f"tensor {stray[0]} is not in {weight_map[stray[0]]}, the file it names"
                              + (f" ({len(stray) - 1} more tensors neither)" if len(stray) > 1 else ""))
    return tensors


def load_config(path, padded_vocab_size: int | None = None) -> GPTConfig:
    """The GPTConfig of the model `load_model(path)` returns, from its config.json alone (no weights read)."""
    return _read_config(resolve_checkpoint(path), padded_vocab_size)[0]


def _read_config(folder: Path, padded_vocab_size: int | None) -> tuple[GPTConfig, dict]:
    """The GPTConfig of checkpoint `folder` and its raw config.json."""
    if folder.is_file():
        raise ValueError(f"{folder}: a file, not a checkpoint folder; pass the folder that holds config.json and the "
                         f"weights ({folder.parent}?)")
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such checkpoint folder")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: missing; {folder} is not a checkpoint folder or is incomplete")
    try:
        raw = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{config_path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{config_path}: not a JSON object")
    if raw.get("format") == FORMAT:  # format_version 1: our own config
        return _v1_config(raw, config_path, padded_vocab_size), raw
    if raw.get("model_type") == "gpt2":
        saved_padding = _saved_padding(raw[FORMAT], config_path) if FORMAT in raw else None
        padded_vocab_size = saved_padding if padded_vocab_size is None else padded_vocab_size
        return config_from_hf(raw, source=str(config_path), padded_vocab_size=padded_vocab_size), raw
    raise ValueError(f"{config_path}: neither a GPT-2 model (model_type {raw.get('model_type')!r}) "
                     f"nor a {FORMAT} checkpoint")


@functools.cache
def _gpt2_vocab() -> dict:
    return json.loads(Path(packaged_file("encoder.json", ENCODER_JSON_SHA256)).read_text(encoding="utf-8"))


def _check_tokenizer(folder: Path) -> None:
    """Refuse a Hugging Face folder whose tokenizer files (`vocab.json`, `tokenizer.json`) hold another vocabulary
    than GPT-2's: its model's token ids would be read and written as GPT-2's (our shards, generate, chat, export)."""
    for name in ("vocab.json", "tokenizer.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            vocab = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:  # UnicodeDecodeError too
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if name == "tokenizer.json":
            vocab = (vocab.get("model") or {}).get("vocab") if isinstance(vocab, dict) else None
        if vocab != _gpt2_vocab():
            size = f"{len(vocab):,} tokens" if isinstance(vocab, dict) else "no vocabulary"
            raise ValueError(f"{path}: a tokenizer other than GPT-2's ({size}, not GPT-2's 50,257 of the same ids); "
                             "this project reads and writes GPT-2's tokens only")


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


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, or of a pickled torch file read with `weights_only=True`."""
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # SafetensorError, OSError; torch's UnpicklingError, RuntimeError, EOFError...
        raise damaged(path, f"cannot read weights ({type(e).__name__}: {e})") from None


def damaged(path: Path, what: str, run: bool | None = None) -> ValueError:
    """The error for the file `path` of a checkpoint folder that cannot be read: `what` is wrong, and what a user can
    do: a run's checkpoint (RUN_DIR/ckpt/step-N; `run` default: whether its state.json is there; the pointers to
    move are those that name it, ckpt/best too, which a run folder stands for first) or a folder that was downloaded,
    copied or exported."""
    folder = path.parent
    if run is None:
        run = (folder / STATE).is_file()
    if run:
        pointers = [folder.parent / name for name in (LATEST, BEST) if _names(folder.parent / name, folder)]
        point = " and ".join(map(str, pointers or [folder.parent / LATEST]))
        return ValueError(f"{path}: {what}; the checkpoint {folder.name} is damaged (load an earlier step-* folder of "
                          f"{folder.parent}, or point {point} at one, or start a new --run-dir)")
    return ValueError(f"{path}: {what}; {folder} is damaged or incomplete (an interrupted download or copy?): "
                      "download, copy or export it again")


def _names(pointer: Path, folder: Path) -> bool:
    """Whether the pointer file `pointer` (ckpt/latest, ckpt/best) names `folder`."""
    try:
        return pointer.read_text().strip() == folder.name
    except (OSError, UnicodeDecodeError):  # none, or not a pointer
        return False
