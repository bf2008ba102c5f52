"""Inference: batched and padded generation, the KV cache, agreement with transformers, stopping, sampling,
bad input, and the `generate` / `chat` commands."""

import io
import json
import re
import shutil
from collections import Counter
from unittest import mock

import numpy as np
import pytest
import torch

from gpt import EOT, GPT, generate, get_encoding, save_model, stream, tokenize_batch_input
from gpt.__main__ import main
from gpt import inference
from gpt.hf import from_hf, to_hf
from gpt.kernels import compile_options
from gpt.model import KVCache, preset
from gpt.template import CHAT_TEMPLATE
from gpt.template import PROMPT_NO_INPUT as ALPACA_NO_INPUT
from train_shards import one_thread  # noqa: F401 (an autouse fixture)

PROMPTS = ["Hello there, how are", "A", "The quick brown fox jumps over the lazy dog and then", "é 日本"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPT(preset("nano"))
    with torch.no_grad():  # larger weights than GPT-2's init: peaked, varied greedy choices
        for p in m.parameters():
            if p.dim() == 2:
                p.mul_(8)
    return m.eval()


def greedy(model, prompts, steps=12, **kw):
    return generate(model, *tokenize_batch_input(prompts), 0, steps, eot=-1, **kw)


def batch(token_lists):
    """Right-padded (input_ids, attention_masks) for lists of token ids."""
    width = max(map(len, token_lists))
    ids = torch.tensor([t + [0] * (width - len(t)) for t in token_lists])
    return ids, (torch.arange(width)[None] < torch.tensor([len(t) for t in token_lists])[:, None]).long()


def test_tokenize_batch_input_pads_right_with_zero():
    enc = get_encoding()
    ids, masks = tokenize_batch_input(PROMPTS)
    assert ids.dtype == masks.dtype == torch.int64
    assert ids.shape == masks.shape == (len(PROMPTS), max(len(enc.encode_ordinary(p)) for p in PROMPTS))
    for i, p in enumerate(PROMPTS):
        tokens = enc.encode_ordinary(p)
        assert ids[i, :len(tokens)].tolist() == tokens
        assert masks[i].tolist() == [1] * len(tokens) + [0] * (ids.shape[1] - len(tokens))
        assert ids[i, len(tokens):].eq(0).all()
    assert tokenize_batch_input(["<|endoftext|>"])[0][0].tolist() == enc.encode_ordinary("<|endoftext|>")


def test_batched_greedy_equals_one_prompt_at_a_time(model):
    batched = greedy(model, PROMPTS)
    alone = [greedy(model, [p])[0] for p in PROMPTS]
    assert batched == alone
    assert all(len(row) == 12 for row in batched)
    assert len({tuple(r) for r in batched}) == len(PROMPTS) and len(set(batched[0])) > 3


def test_padding_is_read_from_the_mask_not_the_token_values(model):
    ids, masks = tokenize_batch_input(PROMPTS)
    expected = generate(model, ids, masks, 0, 8, eot=-1)
    garbage = ids.masked_fill(masks == 0, EOT)
    assert generate(model, garbage, masks, 0, 8, eot=-1) == expected
    # the same prompts left-padded (as HF tokenizers may give them) mean the same thing
    lengths = masks.sum(1)
    left_ids, left_masks = torch.zeros_like(ids), torch.zeros_like(masks)
    for i, n in enumerate(lengths.tolist()):
        left_ids[i, ids.shape[1] - n:] = ids[i, :n]
        left_masks[i, ids.shape[1] - n:] = 1
    assert generate(model, left_ids, left_masks, 0, 8, eot=-1) == expected


def test_kv_cache_gives_the_same_tokens_and_logits(model):
    assert greedy(model, PROMPTS, use_cache=True) == greedy(model, PROMPTS, use_cache=False)
    ids, masks = tokenize_batch_input(PROMPTS)
    sampled = [generate(model, ids, masks, 1.0, 10, top_k=20, generator=torch.Generator().manual_seed(5),
                        use_cache=c) for c in (True, False)]
    assert sampled[0] == sampled[1]
    # the model's cache, fed in pieces, reproduces the full forward's logits
    x = torch.randint(0, 50257, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(x)
        cache = KVCache(model.config, 2, 20)
        pieces = torch.cat([model(x[:, :7], cache=cache)] + [model(x[:, t:t + 1], cache=cache) for t in range(7, 20)],
                           dim=1)
    torch.testing.assert_close(pieces, full, atol=1e-4, rtol=1e-4)


def test_static_decoding_gives_the_same_tokens(model):
    """The GPU's decoding path (fixed shapes, keys written at a tensor column, every column read through a
    mask), run on the CPU without its CUDA graph: the eager path's tokens, greedy and sampled, for padded
    prompts; its decoder (cache widths in multiples of STATIC_COLUMNS) is reused while the shape holds."""
    from gpt import inference

    expected = greedy(model, PROMPTS, steps=20)
    assert greedy(model, PROMPTS, steps=20, static=True) == expected
    decoder = inference._DECODERS[model]
    columns = min(model.config.block_size, inference.STATIC_COLUMNS)  # the nano model's context is 64
    assert decoder.shape == (len(PROMPTS), columns) and decoder.graph is None
    assert greedy(model, PROMPTS, steps=12, static=True) == [row[:12] for row in expected]
    assert inference._DECODERS[model] is decoder  # same batch, same width bucket
    ids, masks = tokenize_batch_input(PROMPTS)
    sampled = [generate(model, ids, masks, 1.0, 16, top_k=20, generator=torch.Generator().manual_seed(5),
                        eot=-1, static=s) for s in (False, True)]
    assert sampled[0] == sampled[1]
    assert greedy(model, PROMPTS[:1], steps=3, static=True) == [expected[0][:3]]
    assert inference._DECODERS[model].shape == (1, columns)
    with pytest.raises(ValueError, match="static decoding needs the KV cache and no autocast"):
        greedy(model, PROMPTS, static=True, use_cache=False)
    with pytest.raises(ValueError, match="compile=True compiles the static decoder's step"):
        stream(model, ids, masks, static=False, compile=True)  # when called, before the first step
    # max-autotune's CUDA graphs would go inside the decoder's
    with pytest.raises(ValueError, match="compile must be True, False or one of default, tuned, "
                                         "max-autotune-no-cudagraphs, got 'max-autotune'"):
        greedy(model, PROMPTS, static=True, compile="max-autotune")


def test_a_static_decoder_follows_the_models_weights():
    """Weights replaced by other tensors (load_state_dict with assign, a move to another dtype or device) get a
    new decoder: the old one's head and CUDA graph read the old tensors."""
    from gpt import inference

    torch.manual_seed(0)
    model, other = GPT(preset("nano")).eval(), GPT(preset("nano")).eval()
    before = greedy(model, PROMPTS[:2], steps=6, static=True)
    model.load_state_dict(other.state_dict(), assign=True)
    model.lm_head.weight = model.transformer.wte.weight  # tied again
    assert greedy(model, PROMPTS[:2], steps=6, static=True) == greedy(other, PROMPTS[:2], steps=6) != before
    decoder = inference._DECODERS[model]
    model.to(torch.float64)
    assert greedy(model, PROMPTS[:2], steps=6, static=True) == greedy(model, PROMPTS[:2], steps=6)
    assert inference._DECODERS[model] is not decoder


def test_a_static_step_runs_one_cache_write_and_no_mask_conversion_per_layer(model):
    """At batch 1 a GPU step costs about as many kernels as it runs (docs/benchmarks.md): the step writes keys and
    values in one copy per layer, and its additive mask goes to attention as it is (a boolean one is converted
    in every layer, two more kernels each). Counted on the CPU with the profiler, on the aten ops."""
    from torch.profiler import profile

    from gpt.inference import StaticDecoder

    with torch.inference_mode():
        decoder = StaticDecoder(model, 1, 16)
        decoder.start(torch.ones(1, 3, dtype=torch.bool), torch.tensor([3]))
        with profile() as prof:
            decoder.step(torch.tensor([5]))
    ops = Counter(event.name for event in prof.events())
    layers = model.config.n_layer
    assert ops["aten::index_copy_"] == layers and ops["aten::scaled_dot_product_attention"] == layers
    assert ops["aten::where"] == ops["aten::logical_not"] == ops["aten::scalar_tensor"] == 0


def test_a_decoder_on_a_second_gpu_is_captured_on_a_stream_of_that_gpu(monkeypatch):
    """The CUDA graph of a decoder on cuda:1 is captured on a stream of cuda:1, the one its warm-up ran on:
    torch.cuda.graph's default stream is made once per process, on the GPU of the first capture, where a step
    on another GPU is not captured (a model moved from cuda:0 to cuda:1 replayed an empty graph). The CUDA calls
    of the capture are recorded on the CPU."""
    import contextlib
    import types

    from gpt.inference import StaticDecoder

    class Stream:
        def __init__(self, device=None):
            self.device = torch.device(device)

        def wait_stream(self, other):
            pass

    captured = {}

    def graph(cuda_graph, pool=None, stream=None, **kwargs):
        captured["stream"] = stream
        return contextlib.nullcontext()

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream(device))
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: "graph")
    monkeypatch.setattr(torch.cuda, "graph", graph)
    assert StaticDecoder._capture(None, torch.device("cuda", 1), lambda: "logits") == ("graph", "logits")
    assert captured["stream"] is not None and captured["stream"].device == torch.device("cuda", 1)


def test_compiled_decoders_of_many_shapes(monkeypatch):
    """Each decoder compiles its own copy of the step: the graphs of shapes gone do not count towards dynamo's
    limit of 8 per code object (the 9th batch size failed with fullgraph=True)."""
    options, compile = [], torch.compile

    def tracing(fn, **kwargs):  # tracing only: fast
        options.append(kwargs.pop("options"))
        return compile(fn, backend="eager", **kwargs)

    monkeypatch.setattr(torch, "compile", tracing)
    model = GPT(preset("nano")).eval()
    for batch in range(1, 11):
        assert len(greedy(model, PROMPTS[:1] * batch, steps=2, static=True, compile=True)) == batch
    assert options == [compile_options("tuned")] * 10  # compile=True: the mode measured fastest on a GPU


def test_a_models_static_decoder_goes_with_it():
    """The reused decoder (its cache and CUDA graph: GPU memory) does not keep a dropped model alive."""
    import gc
    import weakref

    from gpt import inference

    dropped = GPT(preset("nano")).eval()
    greedy(dropped, PROMPTS[:1], steps=2, static=True)
    assert dropped in inference._DECODERS
    ref = weakref.ref(dropped)
    del dropped
    gc.collect()
    assert ref() is None


def test_interleaved_static_streams_of_one_model_each_give_their_own_tokens(model):
    """Two streams of one model read step by step in turn (two chats served at once, on a GPU where decoding is
    static by default) at the same shape: each keeps its own decoder state, so each gives the eager tokens (the
    second one's prompt overwrote the first one's cache and position). The reused decoder is back once both end."""
    first, second = tokenize_batch_input(PROMPTS[:2]), tokenize_batch_input(PROMPTS[2:])
    expected = [generate(model, *first, 0, 10, eot=-1), generate(model, *second, 0, 10, eot=-1)]
    got = [[[], []], [[], []]]
    for steps in zip(stream(model, *first, 0, 10, eot=-1, static=True),
                     stream(model, *second, 0, 10, eot=-1, static=True)):
        for rows, step in zip(got, steps):
            for row, token in zip(rows, step):
                row.append(token)
    assert got == expected
    decoder = inference._DECODERS[model]
    assert generate(model, *first, 0, 10, eot=-1, static=True) == expected[0]
    assert inference._DECODERS[model] is decoder


def test_static_prefill_pads_prompts_to_few_widths_and_gives_the_eager_tokens(model):
    """One reused decoder takes prompts of many widths: each goes through the model left-padded to a multiple of
    PREFILL_COLUMNS columns (fewer where the steps need the room), padding left by a wider prompt before cleared,
    and every row gives the eager loop's tokens."""
    g = torch.Generator().manual_seed(0)
    for lengths_in_turn, made in [([[5], [13], [20], [3], [50]], [16, 32, 53]),  # 50: fewer columns, room for 12
                                  ([[7, 12], [12, 2]], [16])]:
        for lengths in lengths_in_turn:  # the lengths of a batch's prompts
            ids, masks = batch([torch.randint(0, 50257, (n,), generator=g).tolist() for n in lengths])
            expected = generate(model, ids, masks, 0, 12, eot=-1, static=False)
            assert generate(model, ids, masks, 0, 12, eot=-1, static=True) == expected
        assert sorted(inference._DECODERS[model].prompts) == made  # one decoder per batch size, its prompt widths


def test_a_prompt_width_is_captured_at_its_second_use_into_one_pool(model, monkeypatch):
    """On a GPU a prompt width's second forward is captured (a CUDA graph, here a stand-in that reruns the forward
    into its first output when replayed), into the pool of the decoder's earlier prompt graphs; a forward of more
    than PREFILL_GRAPH_TOKENS tokens never is. The tokens stay the eager loop's."""
    import contextlib

    captured = []

    class Graph:
        def __init__(self, forward):
            self.forward, self.out = forward, forward()

        def replay(self):
            self.out.copy_(self.forward())

        def pool(self):
            return "pool"

    def capture(decoder, device, forward, pool=None):
        captured.append((forward.args[1].shape[1], pool))
        graph = Graph(forward)
        return graph, graph.out

    monkeypatch.setattr(inference.StaticDecoder, "_capture", capture)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(inference, "PREFILL_GRAPH_TOKENS", 40)
    g = torch.Generator().manual_seed(1)
    decoder = inference._static_decoder(model, 1, 64, False)
    decoder.graphs, decoder.busy = True, False  # the step itself is not captured: a CPU decoder
    for n in (5, 13, 20, 5, 20, 40, 40):  # widths 16 (once, then captured), 32 (captured), 48 (too many tokens)
        ids, masks = batch([torch.randint(0, 50257, (n,), generator=g).tolist()])
        expected = generate(model, ids, masks, 0, 12, eot=-1, static=False)
        assert generate(model, ids, masks, 0, 12, eot=-1, static=True) == expected
        assert inference._DECODERS[model] is decoder
    assert captured == [(16, None), (32, "pool")]


@pytest.mark.parametrize("rows, compile", [(1, True), (2, "default")])
def test_compiled_static_decoding_gives_the_same_tokens(model, rows, compile):
    """The compiled step (inductor on the CPU, as on the GPU before its CUDA graph is captured) with coordinate
    descent tuning (compile=True: "tuned"), whose products at batch 1 are traced apart from their biases, and in
    torch.compile's default mode."""
    prompts = PROMPTS[:rows]
    assert greedy(model, prompts, steps=8, static=True, compile=compile) == greedy(model, prompts, steps=8)


def test_generation_under_bf16_autocast_caches_keys_and_values_in_bf16(model):
    """As SFT's evaluation runs it on a GPU: the cache holds autocast's dtype (no cast of the whole cache at
    every step), and the last position is projected by the float32 head."""
    made, original = [], KVCache.__init__
    logits, next_tokens = [], inference._next_tokens

    def recording(self, *args, **kwargs):
        made.append(kwargs["dtype"])
        original(self, *args, **kwargs)

    def recording_logits(step_logits, *args):
        logits.append(step_logits.dtype)
        return next_tokens(step_logits, *args)

    with (mock.patch.object(KVCache, "__init__", recording),
          mock.patch.object(inference, "_next_tokens", recording_logits)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert [len(r) for r in greedy(model, PROMPTS, steps=3)] == [3] * len(PROMPTS)
        greedy(model, PROMPTS[:1], steps=2)
    assert made == [torch.bfloat16, torch.float32]
    assert logits == [torch.float32] * 5  # 3 steps under autocast, then 2 without


def test_key_mask_leaves_real_positions_alone_and_padding_finite(model):
    x = torch.randint(0, 50257, (2, 10), generator=torch.Generator().manual_seed(1))
    key_mask = torch.ones(2, 10, dtype=torch.bool)
    key_mask[1, :4] = False  # row 1: four left-padding positions, whose queries see no real key
    positions = (key_mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(x, positions=positions, key_mask=key_mask)
        alone = model(x[1:, 4:])
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0], model(x[:1])[0].detach(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[1, 4:], alone[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("penalty", [1.0, 1.5])
def test_greedy_equals_transformers_generate(penalty):
    """With and without transformers' repetition_penalty (the logits of the tokens of the prompt and answer so
    far divided by it when positive, multiplied when negative), on a batch of prompts of different lengths."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, initializer_range=0.2,
                                    resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)).eval()
    ours = from_hf(hf)
    ids, masks = tokenize_batch_input(PROMPTS)
    got = generate(ours, ids, masks, 0, 15, eot=-1, repetition_penalty=penalty)
    for i, row in enumerate(got):
        prompt = ids[i, :int(masks[i].sum())][None]
        with torch.no_grad():
            out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=15,
                              min_new_tokens=15, pad_token_id=EOT, eos_token_id=None, repetition_penalty=penalty)
        assert row == out[0, prompt.shape[1]:].tolist(), f"prompt {i}"
    if penalty != 1:  # the penalty changed the answers: the test tells it apart from none
        assert got != generate(ours, ids, masks, 0, 15, eot=-1)


def test_repetition_penalty_is_transformers_logits_processor():
    """The penalty itself on random logits of both signs, against RepetitionPenaltyLogitsProcessor; the padding
    of a batch (token 0 here) is not a token the row has seen."""
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    from gpt.inference import _next_tokens

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50257, generator=gen) * 4
    history = [torch.randint(0, 50257, (n,), generator=gen) for n in (1, 7, 30)]
    seen = torch.zeros(3, 50257, dtype=torch.bool)
    for i, tokens in enumerate(history):
        seen[i, tokens] = True
        logits[i, tokens[0]] = -abs(logits[i, tokens[0]]) - 5  # a negative logit among the seen tokens...
        logits[i, tokens[-1]] = abs(logits[i, tokens[-1]]) + 10  # ...and the largest, positive one
    for penalty in (1.3, 0.7, 20.0):
        for i, tokens in enumerate(history):
            expected = RepetitionPenaltyLogitsProcessor(penalty)(tokens[None], logits[i:i + 1].clone())
            want = expected.argmax(-1)
            assert _next_tokens(logits[i:i + 1], 0, None, None, None, penalty, seen[i:i + 1]) == want
            sampled = [_next_tokens(logits[i:i + 1], 1.0, 1, None, torch.Generator().manual_seed(s), penalty,
                                    seen[i:i + 1]) for s in range(3)]  # top_k 1: the processed argmax
            assert all(s == want for s in sampled), (penalty, i)


def test_repetition_penalty_counts_the_rows_own_tokens_not_the_padding():
    torch.manual_seed(0)
    m = GPT(preset("nano")).eval()
    with torch.no_grad():  # the final LayerNorm always outputs e_0: the logit of token v is wte[v, 0]
        m.transformer.ln_f.weight.zero_()
        m.transformer.ln_f.bias.zero_()
        m.transformer.ln_f.bias[0] = 1.0
        m.transformer.wte.weight[0, 0] = 10.0  # "!" (also the padding value) first, then token 7 once "!" is seen
        m.transformer.wte.weight[7, 0] = 5.0
    rows = [[5, 5], [5, 5, 5, 5, 5, 5]]  # the first is padded (with 0) to the width of the second
    assert generate(m, *batch(rows), 0, 3, eot=-1, repetition_penalty=3.0) == [[0, 7, 0]] * 2
    assert generate(m, *batch([[5, 0]]), 0, 2, eot=-1, repetition_penalty=3.0) == [[7, 0]]  # a real "!" counts
    assert generate(m, *batch(rows), 0, 3, eot=-1) == [[0, 0, 0]] * 2


def test_eot_finishes_a_row_and_the_loop(model):
    first = greedy(model, [PROMPTS[0]], steps=20)[0]
    stop_at = next(j for j in range(3, 20) if first[j] not in first[:j])
    eot = first[stop_at]
    # row 1 is row 0 two tokens ahead, so it meets the same end token two steps earlier
    prompt = get_encoding().encode_ordinary(PROMPTS[0])
    ids, masks = batch([prompt, prompt + first[:2]])
    steps = list(stream(model, ids, masks, 0, 20, eot=eot))
    assert len(steps) == stop_at + 1  # the loop ends once every row has finished
    assert [s[0] for s in steps] == first[:stop_at + 1]
    assert [s[1] for s in steps] == first[2:stop_at + 1] + [None, None]
    assert generate(model, ids, masks, 0, 20, eot=eot) == [first[:stop_at + 1], first[2:stop_at + 1]]


def test_stream_leaves_the_callers_grad_mode_alone(model):
    steps = stream(model, *tokenize_batch_input(PROMPTS), 0, 10)
    next(steps)  # a caller that stops early (e.g. an evaluation inside training) and never closes the stream
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    x = torch.ones(2, requires_grad=True)
    (x * 2).sum().backward()
    assert x.grad.tolist() == [2.0, 2.0]


def test_default_eot_stops_generation():
    torch.manual_seed(0)
    m = GPT(preset("nano")).eval()
    with torch.no_grad():  # the final LayerNorm always outputs e_0, and EOT's embedding points there
        m.transformer.ln_f.weight.zero_()
        m.transformer.ln_f.bias.zero_()
        m.transformer.ln_f.bias[0] = 1.0
        m.transformer.wte.weight[EOT, 0] = 100.0
    ids, masks = tokenize_batch_input(PROMPTS)
    assert len(list(stream(m, ids, masks, 0, 30))) == 1
    assert generate(m, ids, masks, 0, 30) == [[EOT]] * len(PROMPTS)
    assert generate(m, ids, masks, 0.7, 30, generator=torch.Generator().manual_seed(0)) == [[EOT]] * len(PROMPTS)


def test_max_steps_and_context_are_respected(model):
    assert [len(r) for r in greedy(model, PROMPTS, steps=5)] == [5] * len(PROMPTS)
    assert greedy(model, PROMPTS, steps=0) == [[]] * len(PROMPTS)
    block = model.config.block_size
    rows = generate(model, *batch([list(range(1000, 1000 + block - 4)), [32]]), 0, 100, eot=-1)
    assert [len(r) for r in rows] == [4, 4]  # the longest prompt plus the new tokens fill the context


def test_overlong_prompt_is_refused_or_left_truncated(model):
    tokens = list(range(2000, 2000 + model.config.block_size + 6))
    for n in (64, 70):
        with pytest.raises(ValueError, match=f"prompt 2 of 2 has {n} tokens: it leaves no room in the model's "
                                             "context of 64 \\(truncate=True, or --truncate, keeps its last 54 tokens\\)"):
            generate(model, *batch([[32], tokens[:n]]), 0, 10)
    truncated = generate(model, *batch([[32], tokens]), 0, 10, eot=-1, truncate=True)
    assert truncated[1] == generate(model, *batch([tokens[-54:]]), 0, 10, eot=-1)[0]
    assert [len(r) for r in truncated] == [10, 10]


def test_truncate_keeps_room_for_one_token_at_max_steps_0(model):
    """max_steps=0 with truncate=True: a prompt that fills the context is cut to block_size - 1 tokens, as with
    max_steps=1, not refused with a message that offers truncate=True."""
    tokens = list(range(2000, 2000 + model.config.block_size))
    assert generate(model, *batch([tokens]), 0, 0, truncate=True) == [[]]
    assert list(stream(model, *batch([tokens, [32]]), 0, 0, truncate=True)) == []


def test_seeded_sampling_is_reproducible(model):
    ids, masks = tokenize_batch_input(PROMPTS)

    def sample(seed, **kw):
        return generate(model, ids, masks, 1.0, 12, eot=-1, generator=torch.Generator().manual_seed(seed), **kw)

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)
    assert sample(7, top_k=3, top_p=0.9) == sample(7, top_k=3, top_p=0.9)
    greedy_rows = generate(model, ids, masks, 0, 12, eot=-1)
    assert sample(7, top_k=1) == greedy_rows
    assert sample(3, top_p=1e-6) == greedy_rows


def test_top_k_and_top_p_restrict_the_choices():
    torch.manual_seed(0)
    model = GPT(preset("nano")).eval()  # GPT-2's init: nearly flat next-token distributions
    ids, masks = tokenize_batch_input(["Hello"])
    with torch.no_grad():
        logits = model(ids)[0, -1]
    top2 = set(logits.topk(2).indices.tolist())
    gen = torch.Generator().manual_seed(0)
    firsts = {generate(model, ids, masks, 1.0, 1, top_k=2, generator=gen)[0][0] for _ in range(40)}
    assert firsts == top2
    probs = logits.softmax(-1).sort(descending=True).values
    p = float(probs[:2].sum() + probs[2] / 2)  # the nucleus is the top 3 tokens
    firsts = {generate(model, ids, masks, 1.0, 1, top_p=p, generator=gen)[0][0] for _ in range(60)}
    assert firsts <= set(logits.topk(3).indices.tolist()) and len(firsts) >= 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-0.5), "temperature must be a finite number >= 0"),
    (dict(temperature=float("nan")), "temperature must be a finite number >= 0"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(top_k=0), "top_k must be an integer >= 1"),
    (dict(max_steps=-1), "max_steps must be an integer >= 0"),
    (dict(repetition_penalty=0.0), "repetition_penalty must be a finite number > 0"),
    (dict(repetition_penalty=float("inf")), "repetition_penalty must be a finite number > 0"),
])
def test_bad_options_are_refused(model, kwargs, message):
    ids, masks = tokenize_batch_input(["Hi"])
    options = dict(temperature=1.0, max_steps=4) | kwargs
    with pytest.raises(ValueError, match=message):
        generate(model, ids, masks, **options)
    with pytest.raises(ValueError, match=message):
        stream(model, ids, masks, **options)  # checked at the call, not at the first step


def test_numpy_scalars_are_numbers_as_options(model):
    """Options from numpy (a sweep's np.linspace, an int64 from a config array) sample as the Python numbers do,
    as transformers' generate accepts them; a bool is not taken for a number."""
    ids, masks = tokenize_batch_input(PROMPTS[:2])
    options = dict(top_k=5, top_p=0.75, repetition_penalty=1.25)  # exact in float32
    want = generate(model, ids, masks, 0.5, 6, generator=torch.Generator().manual_seed(3), **options)
    as_numpy = {k: (np.int64 if isinstance(v, int) else np.float32)(v) for k, v in options.items()}
    assert generate(model, ids, masks, np.float32(0.5), np.int64(6), generator=torch.Generator().manual_seed(3),
                    **as_numpy) == want
    with pytest.raises(ValueError, match="max_steps must be an integer >= 0, got True"):
        generate(model, ids, masks, 0.0, True)


def test_bad_prompts_are_refused(model):
    with pytest.raises(ValueError, match="the prompt list is empty"):
        tokenize_batch_input([])
    with pytest.raises(ValueError, match="prompt 2 of 2 is empty"):
        tokenize_batch_input(["Hi", ""])
    with pytest.raises(ValueError, match="prompts must be a list of strings"):
        tokenize_batch_input("Hi")
    ids, masks = tokenize_batch_input(["Hi there", "Hi"])
    with pytest.raises(ValueError, match=r"prompt 2 of 2 is empty \(its attention mask has no 1\)"):
        generate(model, ids, masks * torch.tensor([[1], [0]]), 0, 4)
    with pytest.raises(ValueError, match="no prompts: the batch is empty"):
        generate(model, ids[:0], masks[:0], 0, 4)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(model, ids + 50257, masks, 0, 4)
    with pytest.raises(ValueError, match="attention_masks must hold only 0 and 1"):
        generate(model, ids, masks * 2, 0, 4)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, model):
    root = tmp_path_factory.mktemp("ckpt")
    plain = save_model(model, root / "plain")
    run = root / "sft-run"  # a training run folder: --ckpt takes its latest checkpoint
    sft = save_model(model, run / "ckpt" / "step-000010")
    (sft / "state.json").write_text(json.dumps({"step": 10, "sft": True}))
    (run / "ckpt" / "latest").write_text("step-000010\n")
    exported = save_model(model, root / "sft-export", chat_template=CHAT_TEMPLATE)  # no state.json
    return plain, run, exported


@pytest.mark.parametrize("flags, options", [
    ([], dict(temperature=0.7, top_p=0.9)),  # sampling by default, seed 0
    (["--temperature", "0"], dict(temperature=0)),
    (["--top-p", "1", "--seed", "3"], dict(temperature=0.7, top_p=1.0, seed=3)),
])
def test_generate_command_prints_completions(checkpoints, model, capsys, flags, options):
    plain, *_ = checkpoints
    assert main(["generate", "--ckpt", str(plain), "--prompt", "Hello there, how are", "--prompt", "A",
                 "--max-steps", "6", *flags]) == 0
    out = capsys.readouterr().out
    enc = get_encoding()
    seed = options.pop("seed", 0)
    ids, masks = tokenize_batch_input(["Hello there, how are", "A"])
    rows = generate(model, ids, masks, max_steps=6, generator=torch.Generator().manual_seed(seed), **options)
    for i, row in enumerate(rows, 1):
        assert EOT not in row
        assert f"=== prompt {i}: " in out and enc.decode(row) in out
    assert out.count("(6 tokens, cut)") == 2
    assert (rows == generate(model, ids, masks, 0, 6)) == (options["temperature"] == 0)  # sampled: not greedy


def test_generate_and_chat_pass_their_sampling_options(checkpoints, monkeypatch):
    from gpt import chat

    for command, function in (("generate", "generate"), ("chat", "stream")):
        monkeypatch.setattr("sys.stdin", io.StringIO("Hi\n"))
        with mock.patch.object(chat, function, wraps=getattr(chat, function)) as called:
            extra = ["--prompt", "Hi"] if command == "generate" else []
            assert main([command, "--ckpt", str(checkpoints[0]), "--max-steps", "2", "--repetition-penalty", "1.5",
                         "--top-k", "5", *extra]) == 0
        options = called.call_args.kwargs
        assert (options["temperature"], options["top_p"], options["top_k"]) == (0.7, 0.9, 5)
        assert (options["repetition_penalty"], options["max_steps"]) == (1.5, 2)


def test_generate_command_reports_bad_input(checkpoints, tmp_path):
    plain, *_ = checkpoints
    with pytest.raises(SystemExit, match="generate: temperature must be"):
        main(["generate", "--ckpt", str(plain), "--prompt", "Hi", "--temperature", "-1"])
    with pytest.raises(SystemExit, match="generate: prompt 1 of 1 is empty"):
        main(["generate", "--ckpt", str(plain), "--prompt", ""])
    sft = checkpoints[1]  # with the Alpaca template too, though the templated prompt is not empty
    with pytest.raises(SystemExit, match="generate: prompt 2 of 2 is empty"):
        main(["generate", "--ckpt", str(sft), "--prompt", "Hi", "--prompt", ""])
    with pytest.raises(SystemExit, match=r"generate: --device cuda:1: this machine has 1 CUDA device\(s\)"):
        with mock.patch("torch.cuda.device_count", return_value=1):
            main(["generate", "--ckpt", str(plain), "--prompt", "Hi", "--device", "cuda:1"])
    with pytest.raises(SystemExit, match=r"generate: --device cuda: this machine has 0 CUDA device\(s\)"):
        with mock.patch("torch.cuda.device_count", return_value=0):
            main(["generate", "--ckpt", str(plain), "--prompt", "Hi", "--device", "cuda"])
    with pytest.raises(SystemExit, match=r"generate: --device 'gpu' is not a device \(cpu, cuda, cuda:1, ...\)"):
        main(["generate", "--ckpt", str(plain), "--prompt", "Hi", "--device", "gpu"])
    with pytest.raises(SystemExit, match=f"generate: {tmp_path / 'nowhere'}: no such checkpoint folder"):
        main(["generate", "--ckpt", str(tmp_path / "nowhere"), "--prompt", "Hi"])
    broken = shutil.copytree(plain, tmp_path / "broken")
    (broken / "tokenizer_config.json").write_text("[1, 2]")
    with pytest.raises(SystemExit, match=r"generate: .*broken/tokenizer_config\.json: not a JSON object; pass "
                                         r"--template alpaca or none"):
        main(["generate", "--ckpt", str(broken), "--prompt", "Hi"])
    assert main(["generate", "--ckpt", str(broken), "--prompt", "Hi", "--template", "none", "--max-steps", "1"]) == 0
    with pytest.raises(SystemExit, match=r"export-hf: .*broken/tokenizer_config\.json: not a JSON object$"):
        main(["export-hf", str(broken), str(tmp_path / "out")])


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "-1"], "temperature must be"),
    (["--top-p", "0"], "top_p must be"),
    (["--top-k", "0"], "top_k must be"),
    (["--max-steps", "-1"], "max_steps must be"),
    (["--repetition-penalty", "0"], "repetition_penalty must be"),
    (["--seed", str(2 ** 64)], r"--seed must be an integer from -2\*\*63 to 2\*\*64 - 1, got 18446744073709551616"),
])
def test_a_bad_option_stops_chat_before_the_first_prompt(checkpoints, monkeypatch, capsys, flags, message):
    """As `generate` does: a chat does not refuse every line it reads, one by one, with exit status 0."""
    stdin = io.StringIO("Hi\nHello\n")
    monkeypatch.setattr("sys.stdin", stdin)
    with pytest.raises(SystemExit, match=f"^chat: {message}"):
        main(["chat", "--ckpt", str(checkpoints[0]), *flags])
    assert stdin.tell() == 0 and "error:" not in capsys.readouterr().out
    with pytest.raises(SystemExit, match=f"^generate: {message}"):
        main(["generate", "--ckpt", str(checkpoints[0]), "--prompt", "Hi", *flags])


def test_chat_streams_answers_with_the_template_of_sft_models(checkpoints, model, monkeypatch, capsys):
    plain, sft, exported = checkpoints
    enc = get_encoding()
    for ckpt, template in ((plain, False), (sft, True), (exported, True)):
        monkeypatch.setattr("sys.stdin", io.StringIO("Name a colour.\n\nSay hi\n/quit\nnever read\n"))
        assert main(["chat", "--ckpt", str(ckpt), "--max-steps", "5", "--temperature", "0"]) == 0
        lines = capsys.readouterr().out.splitlines()
        prompts = [ALPACA_NO_INPUT.format(instruction=q) if template else q for q in ("Name a colour.", "Say hi")]
        answers = [enc.decode(generate(model, *tokenize_batch_input([p]), 0, 5)[0]) for p in prompts]
        assert ("Alpaca template, with history" in lines[0]) == template
        # the nano model's 64-token context holds one Alpaca turn: the first is left out of the second's prompt
        dropped = ["(the 1 oldest turn(s) left out: the conversation no longer fits the context of 64 tokens with "
                   "--max-steps 5)"] if template else []
        assert lines[1:] == answers[:1] + dropped + answers[1:]
    monkeypatch.setattr("sys.stdin", io.StringIO("Say hi"))  # EOF ends the loop too
    assert main(["chat", "--ckpt", str(plain), "--max-steps", "3", "--template", "alpaca"]) == 0
    assert "Alpaca template" in capsys.readouterr().out


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """An SFT checkpoint with a context of 256 tokens: room for a few Alpaca turns."""
    torch.manual_seed(0)
    m = GPT(preset("nano", block_size=256)).eval()
    return m, save_model(m, tmp_path_factory.mktemp("chat") / "sft", chat_template=CHAT_TEMPLATE)


def chat_prompts(monkeypatch):
    """Record what the chat feeds the model: (prompt tokens, answer tokens without EOT) per answer."""
    from gpt import chat

    calls, real = [], chat.stream

    def recording(model, input_ids, attention_masks, **options):
        steps = real(model, input_ids, attention_masks, **options)  # bad input raises here, as in stream
        calls.append((input_ids[0][attention_masks[0].bool()].tolist(), []))
        return answer(steps, calls[-1][1])

    def answer(steps, tokens):
        for step in steps:
            if step[0] not in (None, EOT):
                tokens.append(step[0])
            yield step

    monkeypatch.setattr(chat, "stream", recording)
    return calls


def test_chat_keeps_the_conversation_as_the_chat_template_renders_it(chat_model, monkeypatch, capsys):
    from transformers import AutoTokenizer

    model, sft = chat_model
    calls = chat_prompts(monkeypatch)
    questions = ["Name a colour.", "And another one?", "Why?", "Thanks."]
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(q + "\n" for q in questions)))
    assert main(["chat", "--ckpt", str(sft), "--max-steps", "40"]) == 0  # sampled: 40 tokens, no EOT
    out = capsys.readouterr().out
    enc = get_encoding()
    prompts = [enc.encode_ordinary(ALPACA_NO_INPUT.format(instruction=q)) for q in questions]
    turns = [prompt + answer + [EOT] for prompt, (_, answer) in zip(prompts, calls)]
    assert [len(answer) for _, answer in calls] == [40] * 4
    assert [prompt for prompt, _ in calls[:3]] == [prompts[0], turns[0] + prompts[1], turns[0] + turns[1] + prompts[2]]
    # 3 turns and a prompt would leave less than --max-steps of the 256 tokens: the oldest turn is dropped
    assert len(turns[0] + turns[1] + turns[2] + prompts[3]) > 256 - 40
    assert calls[3][0] == turns[1] + turns[2] + prompts[3]
    assert out.count("(the 1 oldest turn(s) left out") == 1
    # the same text as transformers renders from the checkpoint's chat template
    messages = [m for q, (_, answer) in zip(questions, calls) for m in (
        {"role": "user", "content": q}, {"role": "assistant", "content": enc.decode(answer)})]
    rendered = AutoTokenizer.from_pretrained(sft).apply_chat_template(messages[:5], tokenize=False)
    assert enc.decode(calls[2][0]) == rendered


def test_a_windows_line_ending_is_not_part_of_the_prompt(chat_model, monkeypatch, capsys):
    """Lines piped from a file saved on Windows end in CRLF: the chat kept the CR, so an SFT model read
    "...?\r\n\n### Response:\n", a prompt it was never trained on, instead of the shards' prompt."""
    model, sft = chat_model
    calls = chat_prompts(monkeypatch)
    monkeypatch.setattr("sys.stdin", io.StringIO("Name a colour.\r\nSay hi 🙂\r\n"))
    assert main(["chat", "--ckpt", str(sft), "--max-steps", "3", "--template", "none"]) == 0
    enc = get_encoding()
    assert [prompt for prompt, _ in calls] == [enc.encode_ordinary(q) for q in ("Name a colour.", "Say hi 🙂")]
    calls.clear()
    monkeypatch.setattr("sys.stdin", io.StringIO("Name a colour.\r\n"))
    assert main(["chat", "--ckpt", str(sft), "--max-steps", "3"]) == 0
    assert calls[0][0] == enc.encode_ordinary(ALPACA_NO_INPUT.format(instruction="Name a colour."))


def test_chat_commands_reset_and_help_and_ctrl_d(chat_model, checkpoints, monkeypatch, capsys):
    from gpt import chat

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    model, sft = chat_model
    calls = chat_prompts(monkeypatch)
    monkeypatch.setattr("sys.stdin", Terminal("Hi\n/reset\nHello\n /help \n"))
    assert main(["chat", "--ckpt", str(sft), "--max-steps", "3"]) == 0
    out = capsys.readouterr().out
    prompts = [get_encoding().encode_ordinary(ALPACA_NO_INPUT.format(instruction=q)) for q in ("Hi", "Hello")]
    assert [prompt for prompt, _ in calls] == prompts  # /reset: the second prompt comes without the first turn
    assert "> (conversation reset)\n" in out and f"> {chat.HELP}\n" in out
    assert "/help lists the commands" in out.splitlines()[0]
    assert out.endswith("> \n")  # Ctrl-D (EOF) at the prompt ends its line
    # without the template (a pretrained model) every line is a prompt of its own
    calls.clear()
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi\nHello\n"))
    assert main(["chat", "--ckpt", str(checkpoints[0]), "--max-steps", "3"]) == 0
    assert [prompt for prompt, _ in calls] == [get_encoding().encode_ordinary(q) for q in ("Hi", "Hello")]
    assert "plain completion, no history" in capsys.readouterr().out


def test_a_refused_prompt_leaves_the_conversation_as_it_was(chat_model, monkeypatch, capsys):
    """A line too long for the context is answered with its error only: the earlier turns, which it would have
    pushed out, are still read before the next prompt (they were dropped, and said to be, for a prompt refused)."""
    model, sft = chat_model
    calls = chat_prompts(monkeypatch)
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi\n" + "word " * 300 + "\nHello\n"))
    assert main(["chat", "--ckpt", str(sft), "--max-steps", "3", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert "error: prompt 1 of 1 has" in out and "left out" not in out
    enc = get_encoding()
    first, last = (enc.encode_ordinary(ALPACA_NO_INPUT.format(instruction=q)) for q in ("Hi", "Hello"))
    assert len(calls) == 2  # the refused prompt was never generated from
    assert calls[1][0] == first + calls[0][1] + [EOT] + last


def test_ctrl_c_stops_an_answer_then_ends_the_chat(checkpoints, monkeypatch, capsys):
    from gpt import chat

    class Keyboard(io.StringIO):
        def readline(self):
            return super().readline() or _raise(KeyboardInterrupt)

    def _raise(error):
        raise error

    def interrupted(*args, **kwargs):  # the answer " hello", then Ctrl-C
        yield from ([t] for t in get_encoding().encode(" hello"))
        raise KeyboardInterrupt

    monkeypatch.setattr(chat, "stream", interrupted)
    monkeypatch.setattr("sys.stdin", Keyboard("Say hi\n"))
    assert main(["chat", "--ckpt", str(checkpoints[0]), "--max-steps", "5"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [" hello [stopped]", ""]
    # a stopped answer is left out of the history, with its prompt
    prompts = []
    monkeypatch.setattr(chat, "stream", lambda model, ids, masks, **kw: prompts.append(ids[0].tolist()) or interrupted())
    monkeypatch.setattr("sys.stdin", Keyboard("Say hi\nSay hello\n"))
    assert main(["chat", "--ckpt", str(checkpoints[1]), "--max-steps", "5"]) == 0
    assert prompts[1] == get_encoding().encode_ordinary(ALPACA_NO_INPUT.format(instruction="Say hello"))


def test_bench_generate_runs_and_both_models_generate_the_same_tokens(capsys):
    """`make bench-generate` on the nano model: batch 8 goes through the blocked decoding product."""
    from bench import generate as bench_generate

    pytest.importorskip("transformers")
    assert bench_generate.main(["--model", "nano", "--new-tokens", "6", "--rounds", "1", "--bandwidth-mib", "8"]) == 0
    out = capsys.readouterr().out
    assert "same tokens: True" in out and "batch 8: ours at" in out and "(goal >= 70%)" in out


def test_bench_generate_runs_past_the_presets_context(capsys):
    """The nano preset's context is 64 tokens: a prompt plus the default 64 new tokens overran it (transformers'
    position table raised an IndexError, and our decoding stopped early while tokens/s counted every token)."""
    from bench import generate as bench_generate

    pytest.importorskip("transformers")
    assert bench_generate.main(["--model", "nano", "--new-tokens", "60", "--batch-sizes", "1", "--rounds", "1",
                                "--bandwidth-mib", "8"]) == 0
    assert "same tokens: True" in capsys.readouterr().out


def test_the_benchmarks_transformers_greedy_is_ours_when_eot_is_chosen():
    """The benchmarks compare our greedy tokens (eot=-1) with transformers': with an EOT that wins some steps, both
    emit it and go on (transformers' min_new_tokens would have forbidden it, and the comparison failed)."""
    from bench.generate import hf_greedy

    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = GPT(preset("nano")).eval()
    with torch.no_grad():
        model.transformer.wte.weight[EOT] *= 30
    ids, masks = batch([[1, 2, 3], [4, 5]])
    ours = generate(model, ids, masks, 0, 12, eot=-1)
    assert EOT in ours[0] and ours[0][0] != EOT  # EOT wins some steps, not all
    assert hf_greedy(to_hf(model).eval(), ids, masks, 12) == ours


def test_bench_gpu_decoding_part_runs_on_a_cpu(capsys):
    """`make bench-gpu`'s decoding part, dry-run on the CPU with the nano model: the decoders it times (static,
    eager, transformers'; the compiled one is tested above, without a second compilation) give the eager
    path's tokens. The compiled one is timed only at --compiled-batches."""
    from bench import gpu

    pytest.importorskip("transformers")
    assert gpu.main(["--device", "cpu", "--model", "nano", "--parts", "decode", "--new-tokens", "4",
                     "--decode-batches", "2", "--decoders", "graph,graph+compile", "--compiled-batches", "1"]) == 0
    out = capsys.readouterr().out
    assert "decode, batch 2, 4 new tokens" in out
    assert re.search(r"; eager [\d,]+ tokens/s \([\d.]+x transformers\), ", out)
    # each decoder against the eager one's tokens, and against transformers' speed but transformers itself
    assert re.search(r"\bgraph [\d,]+ tokens/s \([\d.]+x transformers\), 100% tokens as eager, first call [\d.]+ s",
                     out)
    assert re.search(r"; transformers [\d,]+ tokens/s, 100% tokens as eager", out)
    assert "graph+compile" not in out


def test_bench_gpu_takes_cuda_or_cpu_as_its_device(capsys):
    """bench.gpu compares --device with "cuda" (synchronized timings, bf16, the card's name, the trainer's
    --device): another name such as cuda:1 is refused, not timed without synchronizing."""
    from bench import gpu

    with pytest.raises(SystemExit):
        gpu.parse_args(["--device", "cuda:1"])
    assert "invalid choice: 'cuda:1'" in capsys.readouterr().err
    assert gpu.parse_args(["--device", "cpu"]).device == "cpu"


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint16])
def test_token_ids_of_any_integer_dtype_generate_as_int64(model, dtype):
    """uint16 is the shards' token dtype (torch.from_numpy of open_tokens); int16 ids were refused as outside the
    vocabulary (50257 wraps in an int16 comparison), uint16 ones crashed in torch ("min_all" not implemented)."""
    ids, masks = tokenize_batch_input(["Hi there", "Hello"])
    want = generate(model, ids, masks, 0, 4)
    assert generate(model, ids.to(dtype), masks, 0, 4) == want


def test_a_model_other_than_a_gpt_is_refused_naming_the_argument(model, monkeypatch):
    """A DDP-wrapped model or a reward model failed deep inside with "object has no attribute 'config'"."""
    from gpt import RewardModel
    ids, masks = tokenize_batch_input(["Hi there"])
    for wrong in (torch.nn.Module(), RewardModel(model)):
        with pytest.raises(TypeError, match=f"model must be a gpt.GPT, got {type(wrong).__name__}"):
            generate(wrong, ids, masks, 0, 2)
    assert generate(torch.compile(model), ids, masks, 0, 2) == generate(model, ids, masks, 0, 2)
