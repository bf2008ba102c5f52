"""Generation: prompts to a padded batch, and continuations sampled with a KV cache, streamed or collected.

`tokenize_batch_input` turns prompts into `(input_ids, attention_masks)`, right-padded with 0.
`stream` yields the new token of every row at each step; `generate` collects them. Internally the
real tokens of each row are moved to the right end of the batch (left padding), so every row appends
its next token at the same cache column; each row's positions count only its real tokens, and padding
keys are masked out, so a row generates exactly what it would generate alone (greedily: sampled rows share the
generator, so a batch draws other tokens than each row alone with the same seed).

The result of `generate` is one list of new tokens per row, EOT included when the row produced it (so
`row[-1] == EOT` tells a finished answer from one cut by `max_steps` or the context).
"""

from __future__ import annotations

import functools
import math
import numbers
import types
import weakref
from collections.abc import Iterator, Sequence

import torch
from tqdm import tqdm

from shards.tokenizer import EOT, get_encoding

from .kernels import COMPILE_MODES, compile_options, linear
from .model import GPT, KVCache

# The mode of `compile=True`: on an H100 (docs/benchmarks.md) it decodes 2,347 new tokens/s at batch 1, where
# torch.compile's default mode decodes 1,834; the same at batch 64 (about 61,500).
DECODE_COMPILE_MODE = "tuned"


def tokenize_batch_input(prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """GPT-2 tokens of `prompts` as int64 `input_ids` [B, T] right-padded with 0, and `attention_masks`
    [B, T] (1 on real tokens, 0 on padding). Special-token text such as "<|endoftext|>" stays text."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise ValueError(f"prompts must be a list of strings, got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise ValueError("no prompts: the prompt list is empty")
    for i, prompt in enumerate(prompts, 1):
        if not isinstance(prompt, str):
            raise ValueError(f"prompt {i} of {len(prompts)} is a {type(prompt).__name__}, not a string")
        if not prompt:
            raise ValueError(f"prompt {i} of {len(prompts)} is empty")
    return pad_batch(get_encoding().encode_ordinary_batch(list(prompts)))


def pad_batch(token_lists: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists (or arrays) as int64 `input_ids` [B, T] right-padded with 0, and their `attention_masks`."""
    width = max(len(t) for t in token_lists)
    input_ids = torch.zeros(len(token_lists), width, dtype=torch.int64)
    attention_masks = torch.zeros(len(token_lists), width, dtype=torch.int64)
    for i, t in enumerate(token_lists):
        input_ids[i, :len(t)] = torch.tensor(t, dtype=torch.int64)
        attention_masks[i, :len(t)] = 1
    return input_ids, attention_masks


def _real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _integer(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def check_options(temperature, max_steps, top_k, top_p, repetition_penalty) -> tuple:
    """The options as Python numbers (numpy's scalars are numbers too), or a ValueError naming the one at fault."""
    if not _real(temperature) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if not _integer(max_steps) or max_steps < 0:
        raise ValueError(f"max_steps must be an integer >= 0, got {max_steps!r}")
    if top_k is not None and (not _integer(top_k) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1 (or None), got {top_k!r}")
    if top_p is not None and not (_real(top_p) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1] (or None), got {top_p!r}")
    if not _real(repetition_penalty) or not math.isfinite(repetition_penalty) or repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be a finite number > 0 (1 = none), got {repetition_penalty!r}")
    return (float(temperature), int(max_steps), None if top_k is None else int(top_k),
            None if top_p is None else float(top_p), float(repetition_penalty))


def _prompt_rows(model: GPT, input_ids, attention_masks, max_steps: int, truncate: bool) -> list[torch.Tensor]:
    """The real tokens of each row, checked against the vocabulary and the context."""
    if not torch.is_tensor(input_ids) or input_ids.dim() != 2 or input_ids.dtype.is_floating_point:
        raise ValueError("input_ids must be an integer tensor [B, T]")
    if not torch.is_tensor(attention_masks) or attention_masks.shape != input_ids.shape:
        raise ValueError(f"attention_masks must be a tensor of the same shape as input_ids {tuple(input_ids.shape)}")
    if input_ids.shape[0] == 0:
        raise ValueError("no prompts: the batch is empty")
    input_ids = input_ids.long()  # int16 or uint16 (the shards' dtype) ids compare wrongly with the vocabulary size
    if not ((attention_masks == 0) | (attention_masks == 1)).all():
        raise ValueError("attention_masks must hold only 0 and 1")
    block, vocab = model.config.block_size, model.config.vocab_size
    keep = max(1, block - max(max_steps, 1))  # with truncate: room for max_steps new tokens (at least one)
    rows, n = [], input_ids.shape[0]
    for i in range(n):
        row, which = input_ids[i][attention_masks[i].bool()], f"prompt {i + 1} of {n}"
        if row.numel() == 0:
            raise ValueError(f"{which} is empty (its attention mask has no 1)")
        if row.min() < 0 or row.max() >= vocab:
            raise ValueError(f"{which} holds token ids outside the vocabulary [0, {vocab})")
        if truncate and row.numel() > keep:
            row = row[-keep:]
        elif row.numel() >= block:
            raise ValueError(f"{which} has {row.numel()} tokens: it leaves no room in the model's context of "
                             f"{block} (truncate=True, or --truncate, keeps its last {keep} tokens)")
        rows.append(row)
    return rows


def _next_tokens(logits, temperature, top_k, top_p, generator, repetition_penalty=1.0, seen=None) -> torch.Tensor:
    """One token per row from logits [B, V]: argmax at temperature 0, else a sample from the
    temperature-scaled distribution restricted to the top_k tokens and the top_p nucleus. First, with a
    `repetition_penalty` other than 1, the logits of the tokens in `seen` (a bool mask [B, V] of each row's
    prompt and answer so far) are divided by it where positive and multiplied by it where negative, as in
    transformers' RepetitionPenaltyLogitsProcessor (the CTRL paper's penalty)."""
    if repetition_penalty != 1:
        penalized = torch.where(logits < 0, logits * repetition_penalty, logits / repetition_penalty)
        logits = torch.where(seen, penalized, logits)
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p is not None and top_p < 1:
        ordered, order = logits.sort(dim=-1, descending=True)
        probs = ordered.softmax(dim=-1)
        outside = probs.cumsum(dim=-1) - probs >= top_p  # the mass before this token already reaches top_p
        ordered = ordered.masked_fill(outside, -math.inf)
        logits = torch.full_like(logits, -math.inf).scatter(-1, order, ordered)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def stream(model: GPT, input_ids: torch.Tensor, attention_masks: torch.Tensor, temperature: float = 0.0,
           max_steps: int = 64, *, top_k: int | None = None, top_p: float | None = None,
           generator: torch.Generator | None = None, eot: int = EOT, use_cache: bool = True,
           truncate: bool = False, repetition_penalty: float = 1.0, static: bool | None = None,
           compile: bool | str = False) -> Iterator[list[int | None]]:
    """Generate step by step: each item is a list with, for every row, its new token, or None once the
    row has finished (it produced `eot`). Stops when every row has finished, after `max_steps` steps, or
    when the longest prompt plus the new tokens fill the model's context (`block_size`).

    `input_ids` and `attention_masks` are [B, T] (as `tokenize_batch_input` returns; the real tokens of a
    row are those with mask 1, in order). `temperature` 0 is greedy; otherwise logits are divided by it
    and sampled (with `generator` when given), after keeping the `top_k` most likely tokens and the
    smallest set whose probability reaches `top_p`. `repetition_penalty` (1 = none; HF's, e.g. 1.2) first
    divides the positive logits, and multiplies the negative ones, of every token already in the row's prompt
    or answer, at any temperature. A prompt that fills the context is refused, or, with
    `truncate=True`, every prompt longer than `block_size - max_steps` (at least 1, at most `block_size - 1`)
    keeps its last tokens.
    `use_cache=False` recomputes the whole sequence at each step (the reference the cache is tested against).
    `static` decodes with a `StaticDecoder` (fixed shapes; a CUDA graph on a GPU); by default it does so on a
    GPU without autocast, and `compile` also compiles its step (True: DECODE_COMPILE_MODE, "tuned"; or one of
    `gpt.kernels.COMPILE_MODES`). Arguments are checked here, when `stream` is called.
    """
    if not isinstance(getattr(model, "_orig_mod", model), GPT):  # torch.compile's wrapper reads through to it
        raise TypeError(f"model must be a gpt.GPT, got {type(model).__name__} (unwrap DDP first: model.module)")
    temperature, max_steps, top_k, top_p, repetition_penalty = check_options(temperature, max_steps, top_k, top_p,
                                                                             repetition_penalty)
    static = _static_decoding(model, use_cache, static, compile)
    rows = _prompt_rows(model, input_ids, attention_masks, max_steps, truncate)
    return _steps(model, rows, temperature, max_steps, top_k, top_p, generator, eot, use_cache, repetition_penalty,
                  static, compile)


def _static_decoding(model: GPT, use_cache: bool, static: bool | None, compile: bool | str) -> bool:
    """Whether to decode with a StaticDecoder (`static`; by default on a GPU without autocast, as autocast is when
    `stream` is called); a ValueError for options that do not go together."""
    device = next(model.parameters()).device
    autocast = torch.is_autocast_enabled(device.type)
    if static is None:
        static = device.type == "cuda" and use_cache and not autocast
    if static and (autocast or not use_cache):
        raise ValueError("static decoding needs the KV cache and no autocast (load the model in the dtype to run)")
    if not isinstance(compile, bool) and compile not in COMPILE_MODES:
        raise ValueError(f"compile must be True, False or one of {', '.join(COMPILE_MODES)}, got {compile!r}")
    if compile and not static:
        raise ValueError(f"compile={compile!r} compiles the static decoder's step: it needs static decoding")
    return static


class StaticDecoder:
    """The decoding step of a batch at fixed shapes: on a GPU, one CUDA graph replay per new token.

    Keys and values go to a cache of `max_len` columns; a step writes its keys at column `column` (a tensor,
    not a Python int) and attends to every column through the additive mask `bias` (0 on the keys a row sees,
    -inf elsewhere: a boolean mask would be converted to it in every layer, two more kernels each), so no shape
    depends on the step. The step reads its inputs from, and advances, tensors it owns (`token`, `position`,
    `column`, `bias`); `prefill` puts the prompts through the model into the cache and sets them. With
    `compile` (True, or one of COMPILE_MODES), the step is compiled first (inductor fuses LayerNorm, GELU and
    the residual adds; "tuned" also makes each product at batch 1 one bandwidth-bound kernel: `compile_options`).
    On a GPU the step is captured once as a CUDA graph, so a step costs one launch instead of ~200 (at batch 1
    the Python and launch overhead, not the GPU, bounded the eager loop: docs/benchmarks.md), and so is the
    prompts' forward, once per width. Keys, values and logits are in the weights' dtype: the graph is not used
    under autocast, whose cast weights would be cached outside the graph.
    """

    def __init__(self, model: GPT, batch: int, max_len: int, compile: bool | str = False):
        param = next(model.parameters())
        device = param.device
        # the modules, not the model: _DECODERS holds decoders weakly by model, so none may refer to its key
        self.transformer, self.shape, self.compiled = model.transformer, (batch, max_len), compile
        self.weights = _weights(model)
        self.cache = KVCache(model.config, batch, max_len, device=device, dtype=param.dtype)
        self.token = torch.zeros(batch, 1, dtype=torch.int64, device=device)
        self.position = torch.zeros(batch, 1, dtype=torch.int64, device=device)
        self.column = torch.zeros(1, dtype=torch.int64, device=device)
        self.bias = torch.full((batch, 1, 1, max_len), -math.inf, dtype=param.dtype, device=device)
        self.head = model.lm_head.weight[:model.config.vocab_size]
        self._step = self._forward
        if compile:
            # torch.compile keeps a function's graphs on its code object, at most 8 (then fails, with fullgraph):
            # each decoder compiles a copy of it, whose graphs go with the decoder instead of piling up per shape
            own = types.FunctionType(StaticDecoder._forward.__code__.replace(), globals(), "_forward")
            self._step = torch.compile(types.MethodType(own, self), fullgraph=True, dynamic=False,
                                       options=compile_options(DECODE_COMPILE_MODE if compile is True else compile))
        self.graph, self.busy = None, False  # busy: a stream is decoding with it
        self.prompts: dict[int, tuple] = {}  # prompt width: its inputs, and its forward's graph and logits
        self.pool = None  # the memory pool the prompts' graphs share
        self.graphs = device.type == "cuda"  # whether to capture CUDA graphs
        if self.graphs:
            self.graph, self.logits = self._capture(device, self._step)

    def _forward(self) -> torch.Tensor:
        """Logits [B, V] of `token` at `position`, keys written at `column`; then `position` and `column` advance."""
        t = self.transformer
        self.bias.index_fill_(3, self.column, 0.0)  # the new token sees itself and every earlier real key
        x = t.wte(self.token) + t.wpe(self.position)
        cache = _ColumnWrites(self.cache, self.column)
        for layer, block in enumerate(t.h):
            x = block(x, layer, self.bias, cache)
        logits = linear(t.ln_f(x)[:, -1], self.head)
        self.position.add_(1)
        self.column.add_(1)
        return logits

    def _capture(self, device, forward, pool=None):
        """A CUDA graph of `forward()` (its memory from `pool`, when given), and its output."""
        with torch.cuda.device(device):  # capture on the model's GPU (cuda:1 too), whichever is current
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):  # warm-up (and compilation) outside the graph, as CUDA graphs require
                for _ in range(3):
                    forward()
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # captured on `side`: torch.cuda.graph's own stream is one for the whole process, made on the GPU of
            # the first capture, where a later decoder's step on another GPU would not be captured
            with torch.cuda.graph(graph, pool=pool, stream=side):
                out = forward()
        return graph, out

    def prefill(self, model: GPT, tokens: torch.Tensor, positions: torch.Tensor, visible: torch.Tensor,
                room: int) -> torch.Tensor:
        """Logits [B, V] after the prompts, whose `tokens`, `positions` and `visible` keys [B, width] (left-padded:
        every row's real tokens end at the last column) go through `model` into the cache; then `start`. They are
        left-padded further to a multiple of PREFILL_COLUMNS columns (while `room` columns stay for the steps), so
        that few widths are ever made. On a GPU, a width's second forward of up to PREFILL_GRAPH_TOKENS tokens is
        captured as a CUDA graph, replayed from then on (the eager forward of a short prompt took ~7 ms at batch 1
        on an H100, the time of 13 graphed steps, in ~200 launches; a capture costs about four: a width seen once,
        as most of a growing chat's, is not captured). The graphs share one memory pool: each replay's logits
        are read before the next prompt's forward."""
        batch, width = tokens.shape
        columns = min(-(-width // PREFILL_COLUMNS) * PREFILL_COLUMNS, self.shape[1] - room)
        seen = columns in self.prompts  # a width's second forward is captured
        if not seen:
            inputs = (torch.zeros(batch, columns, dtype=torch.int64, device=tokens.device),
                      torch.zeros(batch, columns, dtype=torch.int64, device=tokens.device),
                      torch.zeros(batch, columns, dtype=torch.bool, device=tokens.device))
            self.prompts[columns] = inputs, None, None
        inputs, graph, logits = self.prompts[columns]
        for buffer, given in zip(inputs, (tokens, positions, visible)):
            buffer[:, :columns - width] = 0  # padding: keys not visible
            buffer[:, columns - width:] = given
        forward = functools.partial(self._prompt_forward, model, *inputs)
        if graph is None and seen and self.graphs and batch * columns <= PREFILL_GRAPH_TOKENS:
            graph, logits = self._capture(tokens.device, forward, self.pool)
            self.pool = graph.pool()
            self.prompts[columns] = inputs, graph, logits
        if graph is None:
            logits = forward()
        else:
            with torch.cuda.device(tokens.device):
                graph.replay()
        self.start(inputs[2], positions[:, -1] + 1)
        return logits

    def _prompt_forward(self, model, tokens, positions, visible) -> torch.Tensor:
        self.cache.length = 0
        hidden = model.hidden_states(tokens, positions=positions, key_mask=visible, cache=self.cache)
        return linear(hidden[:, -1], self.head)

    def start(self, visible: torch.Tensor, next_position: torch.Tensor) -> None:
        """Set the state after a prompt of `visible.shape[1]` columns (`visible`: its real keys [B, width]) went
        through the model with `self.cache`; the next token goes to that column, at positions `next_position` [B]."""
        width = visible.shape[1]
        self.bias.fill_(-math.inf)
        self.bias[:, 0, 0, :width].masked_fill_(visible, 0.0)
        self.position.copy_(next_position.view(-1, 1))
        self.column.fill_(width)
        self.cache.length = width

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Logits [B, V] (in the weights' dtype) for the new tokens [B], one column after the last."""
        self.token.copy_(token.view(-1, 1))
        if self.graph is None:
            return self._step()
        with torch.cuda.device(self.token.device):  # replayed on the current stream of the graph's GPU
            self.graph.replay()
        return self.logits


class _ColumnWrites:
    """A KVCache as a static decoding step sees it: keys and values go to column `column` (a tensor), and
    attention reads every column (the step's mask hides those not yet written)."""

    def __init__(self, cache: KVCache, column: torch.Tensor):
        self.cache, self.column = cache, column

    def update(self, layer: int, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.cache.kv[layer].index_copy_(3, self.column, kv)
        return self.cache.kv[layer].unbind(0)


# The last StaticDecoder of each model, reused while the batch and cache shape stay the same (its CUDA graph
# and compiled step are then made once, for all of a chat's answers) and no stream is still decoding with it
# (a stream read while another is unfinished gets a decoder of its own); cache widths come in multiples of
# STATIC_COLUMNS, so that few shapes are ever made.
_DECODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
STATIC_COLUMNS = 128
# A decoder's prompt widths are multiples of PREFILL_COLUMNS; a prompt forward of more tokens than
# PREFILL_GRAPH_TOKENS runs without a graph (its ~200 launches are then a small part of its time).
PREFILL_COLUMNS, PREFILL_GRAPH_TOKENS = 16, 4096


def _weights(model: GPT) -> tuple:
    """What a decoder's step reads its weights from (their device and address): a model moved to another device or
    dtype, or given other tensors (`load_state_dict(assign=True)`), needs a new decoder."""
    return tuple((p.device, p.data_ptr()) for p in model.parameters())


def _static_decoder(model: GPT, batch: int, columns: int, compile: bool | str) -> StaticDecoder:
    max_len = min(model.config.block_size, -(-columns // STATIC_COLUMNS) * STATIC_COLUMNS)
    decoder = _DECODERS.get(model)
    if decoder is None or decoder.busy or decoder.shape != (batch, max_len) or decoder.compiled != compile or \
            decoder.weights != _weights(model):
        _DECODERS.pop(model, None)  # its GPU memory is free before the next one takes its own (unless busy)
        decoder = _DECODERS[model] = StaticDecoder(model, batch, max_len, compile)
    decoder.busy = True  # until the stream ends: a stream read meanwhile gets a decoder of its own
    return decoder


def _steps(model, rows, temperature, max_steps, top_k, top_p, generator, eot, use_cache, repetition_penalty, static,
           compile):
    param = next(model.parameters())
    device, batch = param.device, len(rows)
    lengths = [len(r) for r in rows]
    width = max(lengths)
    steps = min(max_steps, model.config.block_size - width)
    if steps == 0:
        return
    # Left-pad: row i's real tokens end at column width - 1; every row then appends at the same column.
    tokens = torch.zeros(batch, width + steps, dtype=torch.int64, device=device)
    real = torch.zeros(batch, width + steps, dtype=torch.bool, device=device)
    for i, row in enumerate(rows):
        tokens[i, width - len(row):width] = row.to(device)
        real[i, width - len(row):] = True
    key_mask = real if min(lengths) != width else None  # equal lengths need no mask
    positions = (real.cumsum(dim=1) - 1).clamp(min=0)  # each row counts only its real tokens
    head = model.lm_head.weight[:model.config.vocab_size]
    autocast = torch.is_autocast_enabled(device.type)  # keys and values are then made in its dtype
    cache_dtype = torch.get_autocast_dtype(device.type) if autocast else param.dtype
    finished = [False] * batch
    seen = None  # for the repetition penalty: the tokens of each row's prompt and answer so far
    if repetition_penalty != 1:
        seen = torch.zeros(batch, model.config.vocab_size, dtype=torch.bool, device=device)
        for i, row in enumerate(rows):
            seen[i, row.to(device)] = True
    # On a GPU each step's tokens go to pinned memory, their copy queued before the next step: the host waits for
    # the copy alone, then reads them, checks for EOT and yields while the GPU runs that step (`tolist` would wait
    # for all the work queued, the next step's too, and the GPU would idle through the host's work).
    host = torch.empty(batch, dtype=torch.int64, pin_memory=True) if device.type == "cuda" else None
    copied = torch.cuda.Event() if host is not None else None
    with torch.inference_mode():
        decoder = _static_decoder(model, batch, width + steps, compile) if static else None
    try:  # the decoder is this stream's until it ends
        cache = KVCache(model.config, batch, width + steps - 1, device=device, dtype=cache_dtype) \
            if use_cache and decoder is None else None  # the decoder has its own
        for step in range(steps):
            end = width + step  # columns filled so far
            with torch.inference_mode():  # not across the yield: the caller's code runs in its own mode
                if decoder is not None and step > 0:
                    logits = queued
                elif decoder is not None:
                    logits = decoder.prefill(model, tokens[:, :end], positions[:, :end], real[:, :end], steps - 1)
                else:
                    start = end - 1 if cache is not None and step > 0 else 0  # with the cache, only the new token
                    hidden = model.hidden_states(tokens[:, start:end], positions=positions[:, start:end],
                                                 key_mask=None if key_mask is None else key_mask[:, :end], cache=cache)
                    # the head in the weights' dtype, as without autocast
                    with torch.autocast(device.type, enabled=False):
                        logits = linear(hidden[:, -1].to(head.dtype), head)  # only the last position is projected
                new = _next_tokens(logits, temperature, top_k, top_p, generator, repetition_penalty, seen)
                tokens[:, end] = new
                if seen is not None:
                    seen.scatter_(1, new[:, None], True)
                if host is not None:
                    host.copy_(new, non_blocking=True)
                    copied.record(torch.cuda.current_stream(device))  # the copy's stream: that of new's GPU
                if decoder is not None and step + 1 < steps:
                    queued = decoder.step(new)  # queued behind this step's tokens: stream order keeps it exact
            if host is not None:
                copied.synchronize()  # the copy alone, not the step queued after it
                new = host
            new = new.tolist()
            yield [None if done else token for token, done in zip(new, finished)]
            finished = [done or token == eot for token, done in zip(new, finished)]
            if all(finished):
                return
    finally:
        if decoder is not None:
            decoder.busy = False  # another stream may take it


def generate(model: GPT, input_ids: torch.Tensor, attention_masks: torch.Tensor, temperature: float = 0.0,
             max_steps: int = 64, *, top_k: int | None = None, top_p: float | None = None,
             generator: torch.Generator | None = None, eot: int = EOT, use_cache: bool = True,
             truncate: bool = False, repetition_penalty: float = 1.0, static: bool | None = None,
             compile: bool | str = False, progress: bool = False) -> list[list[int]]:
    """The new tokens of every row (EOT included when the row produced it); arguments as in `stream`;
    `progress` shows a bar over the steps on a terminal."""
    out: list[list[int]] = [[] for _ in range(input_ids.shape[0] if torch.is_tensor(input_ids) else 0)]
    steps = stream(model, input_ids, attention_masks, temperature, max_steps, top_k=top_k, top_p=top_p,
                   generator=generator, eot=eot, use_cache=use_cache, truncate=truncate,
                   repetition_penalty=repetition_penalty, static=static, compile=compile)
    for step in tqdm(steps, total=max_steps, desc="generate", unit="step", leave=False,
                     disable=None if progress else True):
        for row, token in zip(out, step):
            if token is not None:
                row.append(token)
    return out
