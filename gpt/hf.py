"""Conversion between our GPT and Hugging Face transformers' GPT-2 (`GPT2LMHeadModel`), both ways (and the config
of a reward model, transformers' `GPT2ForSequenceClassification`: the same tensors and `score.weight`).

The two models hold the same tensors under the same names up to three differences, handled here:
HF's `Conv1D` layers store their weights transposed ([in, out]) where our `nn.Linear` stores [out, in];
HF files may name tensors with or without the `transformer.` prefix and carry the causal-mask buffers
`h.N.attn.bias` / `h.N.attn.masked_bias` of old versions; and our embedding may be padded past
`vocab_size`, which never shows in HF files. gpt.checkpoint.save_model writes, with `file_state_dict`
and `hf_config`, a folder that `transformers.GPT2LMHeadModel.from_pretrained` loads with our logits.
"""

from __future__ import annotations

import dataclasses
import re

import torch

from shards.tokenizer import EOT

from .model import GPT, GPTConfig

# Linear layers that HF implements as Conv1D (weight stored transposed).
_CONV1D = re.compile(r"h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$")
# Causal-mask buffers that old HF checkpoints store; not weights.
_MASK_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)$")
# A reward model's config.json names this architecture; its head is the tensor SCORE, [1, n_embd]
REWARD_ARCHITECTURE = "GPT2ForSequenceClassification"
SCORE = "score.weight"
# What our architecture is, in HF config terms: anything else cannot be converted.
_REQUIRED_HF = {
    "activation_function": ("gelu_new", "gelu_pytorch_tanh"),
    "layer_norm_epsilon": (1e-5,),
    "scale_attn_weights": (True,),
    "scale_attn_by_inverse_layer_idx": (False,),
    "add_cross_attention": (False,),
    "tie_word_embeddings": (True,),
}
# transformers' other names for GPT2Config's sizes (its attribute_map), which a config.json may hold instead
_HF_ALIASES = {"n_embd": "hidden_size", "n_positions": "max_position_embeddings", "n_head": "num_attention_heads",
               "n_layer": "num_hidden_layers"}


def config_from_hf(hf: dict, *, source: str = "config.json", padded_vocab_size: int | None = None) -> GPTConfig:
    """Our GPTConfig for an HF GPT-2 config dict; a clear error naming `source` for anything we cannot represent."""
    if hf.get("model_type") != "gpt2":
        raise ValueError(f"{source}: model_type is {hf.get('model_type')!r}, not 'gpt2'")
    for key, allowed in _REQUIRED_HF.items():
        if key in hf and hf[key] not in allowed:
            raise ValueError(f"{source}: {key}={hf[key]!r} is not supported (GPT-2 uses {allowed[0]!r})")
    n_embd = _hf_size(hf, "n_embd", 768, source)
    if hf.get("n_inner") not in (None, 4 * n_embd):
        raise ValueError(f"{source}: n_inner={hf['n_inner']} is not supported (GPT-2 uses 4 * n_embd)")
    try:
        return GPTConfig(block_size=_hf_size(hf, "n_positions", 1024, source), vocab_size=hf.get("vocab_size", 50257),
                         n_layer=_hf_size(hf, "n_layer", 12, source), n_head=_hf_size(hf, "n_head", 12, source),
                         n_embd=n_embd, padded_vocab_size=padded_vocab_size)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: {e}") from None


def _hf_size(hf: dict, key: str, default: int, source: str):
    """GPT2Config's `key` (e.g. n_head) in `hf`, or under its alias (num_attention_heads), as transformers reads it."""
    alias = _HF_ALIASES[key]
    if key in hf and alias in hf and hf[key] != hf[alias]:
        raise ValueError(f"{source}: {key}={hf[key]!r} and {alias}={hf[alias]!r} disagree")
    return hf.get(key, hf.get(alias, default))


def hf_config(config: GPTConfig, reward: bool = False, dtype: torch.dtype = torch.float32) -> dict:
    """The `config.json` of transformers' GPT2Config for our config and the weights' `dtype`: same architecture,
    no dropout. With `reward`, that of a reward model (gpt.reward): `GPT2ForSequenceClassification` with one
    label, whose `pad_token_id` 0 makes transformers read each row's last token that is not 0, the closing EOT of
    a right-padded row (a 0 inside the row, "!", comes before it and is not read)."""
    head = ({"architectures": [REWARD_ARCHITECTURE], "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0},
             "pad_token_id": 0} if reward else {"architectures": ["GPT2LMHeadModel"]})
    return {
        **head,
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": EOT,
        "eos_token_id": EOT,
        "dtype": str(dtype).removeprefix("torch."),
    }


def state_dict_from_hf(hf_state: dict[str, torch.Tensor], config: GPTConfig, *,
                       source: str = "state dict") -> dict[str, torch.Tensor]:
    """Our state dict (keys of `GPT(config).state_dict()`) from an HF GPT-2 one, with or without `transformer.`.

    Conv1D weights are checked in HF's layout and transposed, mask buffers dropped, the embedding padded
    with zero rows to `config.embedding_rows`. Missing, unexpected or misshapen tensors raise a ValueError naming them and `source`.
    """
    ours: dict[str, torch.Tensor] = {}
    lm_head = None
    for key, tensor in hf_state.items():
        name = key.removeprefix("transformer.")
        if _MASK_BUFFER.search(name):
            continue
        if name == "lm_head.weight":
            lm_head = tensor
            continue
        ours[f"transformer.{name}"] = tensor
    wte = ours.get("transformer.wte.weight")
    if lm_head is not None and wte is not None and not torch.equal(lm_head, wte):
        raise ValueError(f"{source}: lm_head.weight differs from wte.weight; only tied GPT-2 heads are supported")
    return complete_state_dict(ours, config, source, hf_layout=True)


def complete_state_dict(state: dict[str, torch.Tensor], config: GPTConfig, source: str = "state dict", *,
                        hf_layout: bool = False) -> dict[str, torch.Tensor]:
    """Check `state` (our names, no lm_head, wte unpadded or padded) against `GPT(config)`'s tensors, pad wte
    with zero rows to `config.embedding_rows` and add the tied head; errors name `source` and the tensors.
    With `hf_layout`, the Conv1D weights of `state` are [in, out]: checked as such, then transposed."""
    state = dict(state)
    with torch.device("meta"):
        expected = {k: v.shape for k, v in GPT(config).state_dict().items() if k != "lm_head.weight"}
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(f"{source}: " + "; ".join(
            f"{what} tensors: {', '.join(names)}" for what, names in (("missing", missing), ("unexpected", unexpected))
            if names))
    wte = state["transformer.wte.weight"]
    if wte.ndim == 2 and wte.shape[0] == config.vocab_size < config.embedding_rows:
        state["transformer.wte.weight"] = torch.cat([wte, wte.new_zeros(config.embedding_rows - wte.shape[0],
                                                                       wte.shape[1])])
    for name, shape in expected.items():
        transposed = hf_layout and _CONV1D.search(name)
        want = tuple(shape)[::-1] if transposed else tuple(shape)  # as the file holds it
        if tuple(state[name].shape) != want:
            raise ValueError(f"{source}: tensor {name} has shape {tuple(state[name].shape)}, expected {want}")
        if transposed:
            state[name] = state[name].t().contiguous()
    state["lm_head.weight"] = state["transformer.wte.weight"]
    return state


def file_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """`model`'s tensors as HF GPT2LMHeadModel's files hold them: the same `transformer.`-prefixed names,
    Conv1D weights transposed, no padding rows of a padded vocabulary, no `lm_head.weight` (tied to
    `transformer.wte.weight`); contiguous CPU tensors."""
    out = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        if name == "transformer.wte.weight":
            tensor = tensor[:model.config.vocab_size]
        elif _CONV1D.search(name):
            tensor = tensor.t()
        out[name] = tensor.detach().cpu().contiguous()
    return out


def from_hf(hf_model_or_state, config: GPTConfig | dict | None = None, *,
            padded_vocab_size: int | None = None) -> GPT:
    """Our GPT (eval mode) with the weights of a transformers GPT2LMHeadModel, or of an HF state dict + config dict."""
    if isinstance(hf_model_or_state, dict):
        state = hf_model_or_state
        if config is None:
            raise ValueError("from_hf: a state dict needs its config (GPTConfig or HF config dict)")
    else:
        state = hf_model_or_state.state_dict()
        config = config or hf_model_or_state.config.to_dict()
    state = {k: v.detach().clone() for k, v in state.items()}  # our parameters share no storage with the source
    if isinstance(config, dict):
        config = config_from_hf(config, padded_vocab_size=padded_vocab_size)
    elif padded_vocab_size is not None:
        config = dataclasses.replace(config, padded_vocab_size=padded_vocab_size)
    return build(config, state_dict_from_hf(state, config))


def build(config: GPTConfig, state: dict[str, torch.Tensor], device="cpu", dtype=torch.float32) -> GPT:
    """A GPT in eval mode holding `state` (complete, our names), built without a random initialization."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype (e.g. torch.bfloat16), got {dtype!r}")
    with torch.device("meta"):
        model = GPT(config)
    state = {k: v.to(device=device, dtype=dtype).contiguous() for k, v in state.items() if k != "lm_head.weight"}
    state["lm_head.weight"] = state["transformer.wte.weight"]  # one copy of the tied matrix, not two
    model.load_state_dict(state, assign=True)
    model.lm_head.weight = model.transformer.wte.weight  # assign=True made two parameters: tie them again
    return model.eval()


def to_hf(model: GPT):
    """A transformers GPT2LMHeadModel (eval mode, sdpa attention) with our model's weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2LMHeadModel(GPT2Config(**hf_config(model.config)))
    missing, unexpected = hf.load_state_dict(file_state_dict(model), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"to_hf: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return hf.eval()
