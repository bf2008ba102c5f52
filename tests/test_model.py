"""The model against transformers' GPT2LMHeadModel, checkpoints (ours and HF folders), export-hf, init, sizes."""

import dataclasses
import json
import re

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from bench import train as bench_train
from gpt import GPT, get_encoding, load_model, preset, save_model
from gpt.__main__ import main as gpt_main
from gpt.hf import from_hf, hf_config, to_hf
from gpt.kernels import DECODE_BLOCK, CrossEntropy, cross_entropy, linear

TINY_HF = dict(n_layer=2, n_embd=64, n_head=4, n_positions=128, vocab_size=50257)


def tiny_hf_model(seed=0):
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**TINY_HF)).eval()


def tiny_gpt(seed=0, **overrides):
    torch.manual_seed(seed)
    config = preset("nano", block_size=128, n_layer=2, n_head=4, n_embd=64, **overrides)
    model = GPT(config).eval()
    with torch.no_grad():  # non-zero biases and LayerNorm parameters, so that a transposed or dropped one shows
        for name, p in model.named_parameters():
            if not name.endswith("wte.weight"):
                p.add_(0.05 * torch.randn_like(p))
    return model


def ids(batch=2, T=24, seed=1):
    return torch.randint(0, 50257, (batch, T), generator=torch.Generator().manual_seed(seed))


def max_diff(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("out_features", [DECODE_BLOCK, 3 * DECODE_BLOCK + 17, 50257])
def test_blocked_decoding_product_equals_f_linear(out_features):
    """`linear`'s blocked path (4 to 15 rows without autograd, on a CPU) computes F.linear for every shape,
    including a last partial block, a bias, and leading dimensions; with autograd it is F.linear itself."""
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(out_features, 96, generator=g), torch.randn(out_features, generator=g)
    for shape in [(1, 96), (4, 96), (8, 1, 96), (3, 5, 96), (15, 96), (16, 96)]:
        x = torch.randn(*shape, generator=g)
        expected = torch.nn.functional.linear(x, weight, bias)
        with torch.no_grad():
            got, no_bias = linear(x, weight, bias), linear(x, weight)
        assert got.shape == expected.shape
        assert max_diff(got, expected) < 1e-4 and max_diff(no_bias + bias, expected) < 1e-4
        assert torch.equal(linear(x, weight, bias), expected)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # in autocast's dtype, as F.linear
            assert linear(x, weight, bias).dtype == torch.nn.functional.linear(x, weight, bias).dtype == torch.bfloat16


def test_compile_options_of_each_mode():
    """torch.compile's options for each mode: torch's own for its modes, the default's with coordinate descent
    tuning for "tuned"; a mode that makes CUDA graphs of its own is refused."""
    from gpt.kernels import compile_options

    assert compile_options("default") == {}
    assert compile_options("tuned") == {"coordinate_descent_tuning": True}
    assert compile_options("max-autotune-no-cudagraphs") == {"max_autotune": True, "coordinate_descent_tuning": True}
    with pytest.raises(ValueError, match="compile mode must be one of default, tuned, max-autotune-no-cudagraphs, "
                                         "got 'reduce-overhead'"):
        compile_options("reduce-overhead")


def test_one_rows_product_under_compile_is_traced_apart_from_its_bias():
    """Under torch.compile, one row's product (a decoding step at batch 1) is traced without its bias, added
    after it (inductor can make that one tuned reduction kernel; a product with bias would stay cuBLAS's), with
    F.linear's values and dtype; products of more rows keep their bias."""
    graphs = []

    def record(gm, inputs):
        graphs.append(gm)
        return gm.forward

    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(40, 96, generator=g), torch.randn(40, generator=g)
    biased = {}
    for shape in [(1, 96), (1, 1, 96), (3, 96)]:
        x = torch.randn(*shape, generator=g)
        compiled = torch.compile(linear, backend=record, fullgraph=True, dynamic=False)
        assert max_diff(compiled(x, weight, bias), torch.nn.functional.linear(x, weight, bias)) < 1e-5
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert compiled(x, weight, bias).dtype == torch.bfloat16
        products = [n for n in graphs[-1].graph.nodes if n.target is torch._C._nn.linear]
        assert len(products) == 1
        biased[shape] = len(products[0].args) > 2 or products[0].kwargs.get("bias") is not None
        torch._dynamo.reset()
    assert biased == {(1, 96): False, (1, 1, 96): False, (3, 96): True}


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_rows", [CrossEntropy.CHUNK_ROWS, 5])
def test_cross_entropy_equals_torch_in_value_and_gradient(reduction, dtype, chunk_rows, monkeypatch):
    """Same loss and gradient as F.cross_entropy on float32 logits, for [B, T, V] logits (a padded
    vocabulary's slice included) in float32 or bf16 (whose loss is computed in float32 from the bf16 values),
    converted in one chunk or several; "none" (per target, [B, T]) backpropagates a weight per target."""
    monkeypatch.setattr(CrossEntropy, "CHUNK_ROWS", chunk_rows)
    g = torch.Generator().manual_seed(0)
    padded = (3 * torch.randn(2, 6, 64, generator=g)).to(dtype).requires_grad_()
    logits = padded[..., :50]
    targets = torch.randint(0, 50, (2, 6), generator=g)
    targets[0, 0] = targets[0, 5] = targets[1, 0] = -100
    reference = logits.detach().float().requires_grad_()
    expected = torch.nn.functional.cross_entropy(reference.reshape(-1, 50), targets.reshape(-1),
                                                 reduction=reduction).reshape(-1 if reduction == "none" else ())
    weight = torch.linspace(0.5, 2.5, 12) if reduction == "none" else torch.tensor(2.5)
    (weight * expected).sum().backward()
    loss = CrossEntropy.apply(logits, targets, reduction)
    (weight * loss.reshape(weight.shape)).sum().backward(retain_graph=True)
    assert loss.dtype == torch.float32 and loss.shape == ((2, 6) if reduction == "none" else ())
    assert max_diff(loss.reshape(weight.shape), expected.detach()) < 1e-5
    assert padded.grad.dtype == dtype and padded.grad[..., 50:].eq(0).all()
    tolerance = 1e-6 if dtype == torch.float32 else 1e-2 * reference.grad.abs().max().item()
    assert max_diff(padded.grad[..., :50].float(), reference.grad) <= tolerance
    assert padded.grad[0, 0].eq(0).all() and padded.grad[1, 0].eq(0).all()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.sum().backward()  # the saved log-probabilities became the gradient: no second backward


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_both_loss_paths_give_the_same_loss_and_gradients(reduction, dtype):
    """`cross_entropy`'s two paths (the lean CrossEntropy when eager, F.cross_entropy inside a compiled graph)
    agree in value and gradient, for padded-vocabulary logits in float32 or bf16."""
    g = torch.Generator().manual_seed(1)
    base = (3 * torch.randn(3, 5, 64, generator=g)).to(dtype)
    targets = torch.randint(0, 50, (3, 5), generator=g)
    targets[0, :2] = targets[2, 4] = -100
    results = []
    for compiled in (False, True):
        padded = base.clone().requires_grad_()
        loss = cross_entropy(padded[..., :50], targets, reduction, compiled=compiled)
        (torch.arange(1.0, 16.0).view(3, 5) * loss).sum().backward()  # a weight per target for "none"
        results.append((loss.detach(), padded.grad))
    (eager, eager_grad), (plain, plain_grad) = results
    assert eager.dtype == plain.dtype == torch.float32 and eager.shape == plain.shape
    assert max_diff(eager, plain) <= 1e-5 * max(1.0, plain.abs().max().item())
    assert eager_grad.dtype == plain_grad.dtype == dtype
    tolerance = (1e-6 if dtype == torch.float32 else 1e-2) * plain_grad.float().abs().max().item()
    assert max_diff(eager_grad.float(), plain_grad.float()) <= tolerance
    with pytest.raises(ValueError, match="reduction must be 'mean', 'sum' or 'none'"):
        cross_entropy(base, targets, "max")
    if reduction == "mean":  # nothing supervised: a NaN mean, and no gradient (not NaN) on either path
        for compiled in (False, True):
            logits = base.float().clone().requires_grad_()
            loss = cross_entropy(logits, torch.full_like(targets, -100), reduction, compiled=compiled)
            loss.backward()
            assert loss.isnan() and torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_supervised_only_gives_the_losses_and_gradients_of_the_whole_projection(reduction):
    """SFT's, DPO's and RL's forward projects only the supervised positions: the same loss, the same gradients."""
    torch.manual_seed(0)
    model = GPT(preset("nano", vocab_size=256))
    x = torch.randint(0, 256, (3, 9))
    targets = torch.full((3, 9), -100)
    targets[0, 4:] = torch.randint(0, 256, (5,))
    targets[2, 8] = 7
    weights = torch.arange(27.0).view(3, 9) if reduction == "none" else torch.tensor(3.0)
    grads, losses = [], []
    for supervised_only in (False, True):
        model.zero_grad()
        logits, loss = model(x, targets, reduction=reduction, supervised_only=supervised_only)
        assert (logits is None) == supervised_only and loss.shape == weights.shape
        (weights * loss).sum().backward()
        losses.append(loss.detach())
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()})
    assert torch.allclose(losses[0], losses[1], atol=1e-6) and losses[0].abs().sum() > 1
    if reduction == "none":
        assert (losses[1][targets == -100] == 0).all()
    assert all(max_diff(grads[0][k], grads[1][k]) <= 1e-6 * max(1.0, grads[0][k].abs().max().item()) for k in grads[0])
    with pytest.raises(ValueError, match="supervised_only needs targets"):
        model(x, supervised_only=True)


@pytest.mark.parametrize("stage", ["pretrain", "sft", "dpo"])
def test_training_forward_with_the_loss_is_one_graph(stage):
    """Under torch.compile the forward and its loss trace into one graph with no break (the custom autograd
    loss broke it, and ran eagerly: a third of a GPU step; so would `supervised_only`'s boolean index), for
    a mean loss over full targets, the loop's summed loss over SFT's masked targets (`supervised_only`, as
    train.sft asks of train.loop.token_loss), and DPO's and RL's losses per target."""
    import torch._dynamo

    torch._dynamo.reset()
    model = GPT(preset("nano", padded_vocab_size=64 * 787)).train()
    x = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(0))
    y = torch.roll(x, -1, dims=1)
    if stage != "pretrain":
        y[:, :5] = -100  # the prompt
        y[1, 12:] = -100  # padding
    options = dict(mean=dict(reduction="mean"), sft=dict(reduction="sum", supervised_only=True),
                   dpo=dict(reduction="none", supervised_only=True))
    explained = torch._dynamo.explain(model)(x, y, **options["mean" if stage == "pretrain" else stage])
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


@torch.no_grad()
def test_import_from_transformers_gives_the_same_logits():
    hf = tiny_hf_model()
    ours = from_hf(hf)
    x = ids()
    assert not ours.training
    assert ours.lm_head.weight is ours.transformer.wte.weight
    assert max_diff(ours(x), hf(x).logits) <= 1e-4
    padded = from_hf(hf, padded_vocab_size=50304)
    assert padded.transformer.wte.weight.shape == (50304, 64)
    logits = padded(x)
    assert logits.shape == (2, 24, 50257)
    assert max_diff(logits, hf(x).logits) <= 1e-4


@torch.no_grad()
def test_export_to_transformers_gives_the_same_logits_and_loss():
    ours = tiny_gpt(padded_vocab_size=50304)
    hf = to_hf(ours)
    assert hf.config.vocab_size == 50257 and hf.config._attn_implementation == "sdpa"
    x = ids()
    y = torch.cat([x[:, 1:], torch.full((2, 1), -100)], dim=1)  # HF shifts labels itself
    logits, loss = ours(x, y)
    out = hf(input_ids=x, labels=x)
    assert max_diff(logits, out.logits) <= 1e-4
    assert abs(loss.item() - out.loss.item()) <= 1e-5


def test_transformers_model_and_ours_share_no_storage():
    """No tensor of ours shares storage with the transformers model, so writing ours leaves it unchanged."""
    hf = tiny_hf_model()
    ours = from_hf(hf)
    theirs = {t.untyped_storage().data_ptr() for t in hf.state_dict().values()}
    assert not theirs & {p.untyped_storage().data_ptr() for p in ours.parameters()}
    before = {name: t.clone() for name, t in hf.state_dict().items()}
    with torch.no_grad():
        ours.transformer.h[0].mlp.c_fc.weight.add_(1.0)
        ours.transformer.wte.weight.add_(1.0)
    assert all(torch.equal(t, before[name]) for name, t in hf.state_dict().items())
    assert ours.transformer.h[0].mlp.c_fc.weight.is_contiguous()


def test_a_bf16_model_is_saved_as_bf16_in_config_and_weights(tmp_path):
    """config.json names the weights' dtype: transformers' dtype="auto" loads a bf16 save in bf16, not float32."""
    save_model(tiny_gpt().to(torch.bfloat16), tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "bf16", dtype="auto")
    assert hf.transformer.wte.weight.dtype == torch.bfloat16


def test_save_and_load_our_checkpoint_strips_and_restores_padding(tmp_path):
    model = tiny_gpt(padded_vocab_size=50304)
    save_model(model, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json", "generation_config.json", "merges.txt", "model.safetensors", "tokenizer_config.json",
        "vocab.json"]
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config == {**hf_config(model.config), "minigpt2": {"format_version": 2, "padded_vocab_size": 50304}}
    assert config["vocab_size"] == 50257 and config["n_layer"] == 2
    with safe_open(tmp_path / "ckpt" / "model.safetensors", "pt") as f:
        assert "lm_head.weight" not in f.keys()
        assert f.get_slice("transformer.wte.weight").get_shape() == [50257, 64]
        assert f.get_slice("transformer.h.0.mlp.c_fc.weight").get_shape() == [64, 256]  # HF's Conv1D [in, out]
    loaded = load_model(tmp_path / "ckpt")
    assert not loaded.training
    assert loaded.config == model.config
    assert loaded.transformer.wte.weight.shape == (50304, 64)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    assert len(list(loaded.parameters())) == len(list(model.parameters()))
    x = ids()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    for name, tensor in model.state_dict().items():  # the padding rows too: zero from init, zero when loaded
        assert torch.equal(loaded.state_dict()[name], tensor), name
    unpadded = load_model(tmp_path / "ckpt", padded_vocab_size=50257)
    assert unpadded.transformer.wte.weight.shape == (50257, 64)


def test_our_checkpoint_is_a_transformers_folder(tmp_path):
    from train.checkpoint import save_checkpoint

    model = tiny_gpt(padded_vocab_size=50304)
    folder = save_checkpoint(tmp_path / "run", 3, model, torch.optim.AdamW(model.parameters()), {}, keep=1)
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    x = ids()
    with torch.no_grad():
        assert max_diff(hf(x).logits, model(x)) <= 1e-4
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    text = "Hello , world !  It's 2026.<|endoftext|>"
    ids_ = get_encoding().encode(text, allowed_special="all")
    assert tokenizer.encode(text) == ids_ and tokenizer.decode(ids_) == text
    assert tokenizer.model_max_length == 128 and tokenizer.eos_token_id == 50256


def test_an_sft_checkpoint_carries_the_alpaca_prompt_as_its_chat_template(tmp_path):
    from gpt.template import CHAT_TEMPLATE, render_prompt

    save_model(tiny_gpt(), tmp_path / "sft", chat_template=CHAT_TEMPLATE)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "sft")
    chat = [{"role": "user", "content": "Name a colour."}]
    assert tokenizer.apply_chat_template(chat, tokenize=False) == render_prompt("Name a colour.")
    chat += [{"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another?"}]
    assert tokenizer.apply_chat_template(chat, tokenize=False) == \
        render_prompt("Name a colour.") + "Blue.<|endoftext|>" + render_prompt("Another?")
    assert gpt_main(["export-hf", str(tmp_path / "sft"), str(tmp_path / "hf")]) == 0  # the export keeps it
    assert json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATE
    save_model(tiny_gpt(), tmp_path / "plain")
    assert "chat_template" not in json.loads((tmp_path / "plain" / "tokenizer_config.json").read_text())


def test_a_format_version_1_checkpoint_still_loads(tmp_path):
    """Our folders before they were transformers folders: our names, nn.Linear layout, our config.json."""
    model = tiny_gpt(padded_vocab_size=50304)
    folder = tmp_path / "v1"
    folder.mkdir()
    state = model.state_dict()
    save_file({k: v[:50257] if k.endswith("wte.weight") else v for k, v in state.items() if k != "lm_head.weight"},
              folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"format": "minigpt2", "format_version": 1,
                                                    **dataclasses.asdict(model.config)}))
    loaded = load_model(folder)
    assert loaded.config == model.config
    x = ids()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    (folder / "config.json").write_text(json.dumps({"format": "minigpt2", "format_version": 3}))
    with pytest.raises(ValueError, match=r"config\.json: minigpt2 format_version 3, this code reads 2"):
        load_model(folder)


def test_export_hf_folder_loads_in_transformers_with_the_same_logits(tmp_path, capsys):
    model = tiny_gpt(padded_vocab_size=50304)
    save_model(model, tmp_path / "ckpt")
    assert gpt_main(["export-hf", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    assert "from_pretrained" in capsys.readouterr().out
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["activation_function"] == "gelu_new"
    assert config["n_positions"] == config["n_ctx"] == 128 and config["vocab_size"] == 50257
    assert config["layer_norm_epsilon"] == 1e-5 and config["bos_token_id"] == config["eos_token_id"] == 50256
    assert config["tie_word_embeddings"] is True
    assert load_file(tmp_path / "hf" / "model.safetensors")["transformer.wte.weight"].shape == (50257, 64)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    x = ids()
    with torch.no_grad():
        assert max_diff(hf(x).logits, model(x)) <= 1e-4
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tokenizer.encode("Hello world!") == [15496, 995, 0]


def test_load_a_transformers_safetensors_folder(tmp_path):
    hf = tiny_hf_model(seed=3)
    hf.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf")
    x = ids()
    with torch.no_grad():
        assert max_diff(ours(x), hf(x).logits) <= 1e-4
    assert load_model(tmp_path / "hf", padded_vocab_size=50304).transformer.wte.weight.shape == (50304, 64)


def test_a_config_with_transformers_other_names_for_the_sizes_loads_as_transformers_reads_it(tmp_path):
    """num_attention_heads for n_head (GPT2Config's attribute_map): the default of 12 heads was taken instead, and with
    n_embd 48 the model loaded with other logits (no tensor's shape tells the heads apart)."""
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=4, n_embd=48, n_positions=32)).eval()
    hf.save_pretrained(tmp_path / "hf")
    path = tmp_path / "hf" / "config.json"
    config = json.loads(path.read_text())
    for ours, alias in [("n_head", "num_attention_heads"), ("n_embd", "hidden_size"), ("n_layer", "num_hidden_layers"),
                        ("n_positions", "max_position_embeddings")]:
        config[alias] = config.pop(ours)
    path.write_text(json.dumps(config))
    ours = load_model(tmp_path / "hf")
    assert (ours.config.n_head, ours.config.n_embd, ours.config.n_layer, ours.config.block_size) == (4, 48, 2, 32)
    x = ids(T=16)
    with torch.no_grad():
        assert max_diff(ours(x), transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf")(x).logits) <= 1e-4
    path.write_text(json.dumps({**config, "n_head": 12}))
    with pytest.raises(ValueError, match=r"config\.json: n_head=12 and num_attention_heads=4 disagree"):
        load_model(tmp_path / "hf")


def test_a_folder_with_another_tokenizer_than_gpt2s_is_refused(tmp_path):
    """A GPT-2 model of another tokenizer (one for another language, say) loaded without a word, and every token id
    was then read and written as GPT-2's. transformers' own GPT-2 tokenizer files (vocab.json, tokenizer.json) pass."""
    hf = tiny_hf_model(seed=3)
    hf.save_pretrained(tmp_path / "hf")
    save_model(load_model(tmp_path / "hf"), tmp_path / "ours")  # our folder: GPT-2's tokenizer files
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "ours")
    tokenizer.save_pretrained(tmp_path / "hf")  # tokenizer.json, as transformers writes it
    for name in ("vocab.json", "merges.txt"):  # and the slow tokenizer's files, as openai-community/gpt2 holds them
        (tmp_path / "hf" / name).write_bytes((tmp_path / "ours" / name).read_bytes())
    load_model(tmp_path / "hf")
    for name in ("tokenizer.json", "vocab.json"):
        path = tmp_path / "hf" / name
        raw = json.loads(path.read_text())
        vocab = raw["model"]["vocab"] if name == "tokenizer.json" else raw
        vocab["Hello"], vocab["Hi"] = vocab["Hi"], vocab["Hello"]  # two ids swapped: another tokenizer
        path.write_text(json.dumps(raw))
        with pytest.raises(ValueError, match=re.escape(f"{path}: a tokenizer other than GPT-2's (50,257 tokens, not "
                                                       "GPT-2's 50,257 of the same ids)")):
            load_model(tmp_path / "hf")
        vocab["Hello"], vocab["Hi"] = vocab["Hi"], vocab["Hello"]
        path.write_text(json.dumps(raw))
    load_model(tmp_path / "hf")


@pytest.mark.parametrize("layout", ["transformer-prefixed with lm_head", "unprefixed with mask buffers"])
def test_load_a_pytorch_model_bin_folder(tmp_path, layout):
    """As transformers wrote with safe_serialization=False, and as the original openai-community/gpt2 files are."""
    hf = tiny_hf_model(seed=4)
    state = hf.state_dict()
    if layout.startswith("unprefixed"):
        state = {k.removeprefix("transformer."): v for k, v in state.items() if k != "lm_head.weight"}
        for i in range(TINY_HF["n_layer"]):
            state[f"h.{i}.attn.bias"] = torch.ones(1, 1, 128, 128).tril()
            state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    folder = tmp_path / "hf"
    folder.mkdir()
    torch.save(state, folder / "pytorch_model.bin")
    hf.config.to_json_file(folder / "config.json")
    ours = load_model(folder)
    x = ids()
    with torch.no_grad():
        assert max_diff(ours(x), hf(x).logits) <= 1e-4


def sharded(hf, folder, pickled=False):
    """`hf` saved as transformers saves a large model (gpt2-xl, or any with a small max_shard_size): shard files and
    the index of their tensors; `pickled`: the pytorch_model-*.bin shards and index that transformers before 5 wrote
    with safe_serialization=False, made from the safetensors ones. The shard files, in the index's order."""
    hf.save_pretrained(folder, max_shard_size="100KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    files = list(dict.fromkeys(index["weight_map"].values()))
    assert len(files) >= 3 and not (folder / "model.safetensors").exists()
    if pickled:
        names = {name: name.replace("model-", "pytorch_model-").replace(".safetensors", ".bin") for name in files}
        for name in files:
            torch.save(load_file(folder / name), folder / names[name])
            (folder / name).unlink()
        index["weight_map"] = {key: names[name] for key, name in index["weight_map"].items()}
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
        (folder / "model.safetensors.index.json").unlink()
        files = list(names.values())
    return [folder / name for name in files]


@pytest.mark.parametrize("pickled", [False, True], ids=["safetensors", "pytorch_model.bin"])
def test_load_a_sharded_transformers_folder(tmp_path, pickled):
    """model.safetensors.index.json and model-0000k-of-0000N.safetensors, as save_pretrained(max_shard_size=...)
    writes them: such a folder was refused (\"holds neither model.safetensors nor pytorch_model.bin\")."""
    hf = tiny_hf_model(seed=5)
    sharded(hf, tmp_path / "hf", pickled)
    ours = load_model(tmp_path / "hf")
    for name, tensor in hf.state_dict().items():  # every tensor as transformers holds it, bit for bit
        mine = ours.state_dict()[name]
        assert torch.equal(mine.t() if re.search(r"c_(attn|proj|fc)\.weight$", name) else mine, tensor), name
    x = ids()
    with torch.no_grad():
        assert max_diff(ours(x), hf(x).logits) <= 1e-4
        if not pickled:  # what transformers itself loads from the folder
            assert max_diff(ours(x), transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf")(x).logits) <= 1e-4
    assert gpt_main(["export-hf", str(tmp_path / "hf"), str(tmp_path / "out")]) == 0
    with torch.no_grad():
        assert max_diff(load_model(tmp_path / "out")(x), ours(x)) == 0


def test_a_damaged_sharded_folder_names_the_file(tmp_path):
    """A shard that its index names missing (an interrupted download), a tensor not in the shard the index names,
    a truncated shard, an index that is not one: each named, with what to do."""
    folder = tmp_path / "hf"
    files = sharded(tiny_hf_model(seed=5), folder)
    index = folder / "model.safetensors.index.json"
    fix = f"{folder} is damaged or incomplete (an interrupted download or copy?): download, copy or export it again"
    good, data = index.read_text(), files[1].read_bytes()
    files[1].unlink()
    with pytest.raises(ValueError, match=re.escape(f"{files[1]}: missing, though "
                                                          f"model.safetensors.index.json names it; {fix}")):
        load_model(folder)
    files[1].write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=re.escape(f"{files[1]}: cannot read weights (") + ".*" + re.escape(fix)):
        load_model(folder)
    files[1].write_bytes(data)
    raw = json.loads(good)
    moved = next(key for key, name in raw["weight_map"].items() if name == files[0].name)
    raw["weight_map"][moved] = files[1].name
    index.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=re.escape(f"{index}: tensor {moved} is not in {files[1].name}, the file it "
                                                   f"names; {fix}")):
        load_model(folder)
    for text, says in [(good[:len(good) // 2], "not valid JSON"), ("[]", 'no "weight_map"'),
                       (json.dumps({"weight_map": {moved: "../model.safetensors"}}), 'no "weight_map"')]:
        index.write_text(text)
        with pytest.raises(ValueError, match=re.escape(f"{index}: {says}") + ".*" + re.escape(fix)):
            load_model(folder)
    index.write_text(good)
    load_model(folder)


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nope'}: no such checkpoint folder"):
        load_model(tmp_path / "nope")


def test_a_dtype_that_is_not_a_float_torch_dtype_is_refused(tmp_path):
    """dtype="bfloat16" failed deep in torch's to(); dtype=torch.int64 silently made a model of truncated weights."""
    folder = save_model(GPT(preset("nano")), tmp_path / "m")
    for dtype in ("bfloat16", torch.int64):
        with pytest.raises(TypeError, match=re.escape(f"dtype must be a floating-point torch.dtype (e.g. "
                                                      f"torch.bfloat16), got {dtype!r}")):
            load_model(folder, dtype=dtype)
    assert next(load_model(folder, dtype=torch.bfloat16).parameters()).dtype == torch.bfloat16


def test_a_file_given_for_the_folder_is_named_as_such(tmp_path):
    """The weights file (or config.json) passed instead of its folder: the error said \"no such checkpoint folder\"
    of a file that exists."""
    weights = save_model(tiny_gpt(), tmp_path / "ckpt") / "model.safetensors"
    with pytest.raises(ValueError, match=re.escape(f"{weights}: a file, not a checkpoint folder; pass the folder that "
                                                   f"holds config.json and the weights ({tmp_path / 'ckpt'}?)")):
        load_model(weights)


def test_an_incomplete_checkpoint_names_the_missing_file(tmp_path):
    save_model(tiny_gpt(), tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"ckpt/model\.safetensors: missing"):
        load_model(tmp_path / "ckpt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty/config\.json: missing"):
        load_model(tmp_path / "empty")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps(hf_config(tiny_gpt().config)))
    with pytest.raises(FileNotFoundError, match="holds neither model.safetensors nor pytorch_model.bin"):
        load_model(tmp_path / "hf")


def test_missing_unexpected_and_misshapen_tensors_are_named(tmp_path):
    save_model(tiny_gpt(), tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    good = load_file(weights)
    state = dict(good)
    del state["transformer.h.1.mlp.c_fc.bias"]
    state["transformer.h.9.attn.c_attn.weight"] = torch.zeros(3)
    save_file(state, weights)
    with pytest.raises(ValueError, match=r"model\.safetensors: missing tensors: transformer\.h\.1\.mlp\.c_fc\.bias; "
                                         r"unexpected tensors: transformer\.h\.9\.attn\.c_attn\.weight"):
        load_model(tmp_path / "ckpt")
    state = dict(good)
    state["transformer.h.0.mlp.c_fc.weight"] = torch.zeros(64, 128)  # shapes as the file holds them: [in, out]
    save_file(state, weights)
    with pytest.raises(ValueError, match=r"tensor transformer\.h\.0\.mlp\.c_fc\.weight has shape \(64, 128\), "
                                         r"expected \(64, 256\)"):
        load_model(tmp_path / "ckpt")
    state["transformer.h.0.mlp.c_fc.weight"] = torch.zeros(64, 256, 1)
    save_file(state, weights)
    with pytest.raises(ValueError, match=r"c_fc\.weight has shape \(64, 256, 1\), expected \(64, 256\)"):
        load_model(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    for ours, message in [(2, '"minigpt2" is 2, not an object'),
                          ({"format_version": 3}, "minigpt2 format_version 3, this code reads 2"),
                          ({"format_version": 2, "padded_vocab_size": "50304"}, "padded_vocab_size '50304' is not"),
                          ({"format_version": 2, "padded_vocab_size": 100}, "padded_vocab_size=100 < vocab_size")]:
        (tmp_path / "ckpt" / "config.json").write_text(json.dumps({**config, "minigpt2": ours}))
        with pytest.raises(ValueError, match=rf"config\.json: .*{re.escape(message)}"):
            load_model(tmp_path / "ckpt")


def test_a_truncated_weights_file_and_a_foreign_config_are_named(tmp_path):
    save_model(tiny_gpt(), tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"model\.safetensors: cannot read"):
        load_model(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match=r"config\.json: neither a GPT-2 model \(model_type 'llama'\) nor a minigpt2"):
        load_model(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({**hf_config(tiny_gpt().config),
                                                               "activation_function": "relu"}))
    with pytest.raises(ValueError, match=r"config\.json: activation_function='relu' is not supported"):
        load_model(tmp_path / "ckpt")
    for text in ("[1, 2]", "null", '"gpt2"'):  # valid JSON, not an object: named, not an AttributeError
        (tmp_path / "ckpt" / "config.json").write_text(text)
        with pytest.raises(ValueError, match=r"config\.json: not a JSON object"):
            load_model(tmp_path / "ckpt")
        with pytest.raises(SystemExit, match=r"export-hf: .*config\.json: not a JSON object"):
            gpt_main(["export-hf", str(tmp_path / "ckpt"), str(tmp_path / "out")])


def test_a_truncated_weights_file_says_what_to_do(tmp_path):
    """A truncated download or copy was named with the reader's error alone, no word of what to do about it."""
    hf = tiny_hf_model(seed=3)
    hf.save_pretrained(tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match=re.escape(f"{weights}: cannot read weights (") + ".*" + re.escape(
            f"; {tmp_path / 'hf'} is damaged or incomplete (an interrupted download or copy?): download, copy or "
            "export it again")):
        load_model(tmp_path / "hf")


def test_a_damaged_best_checkpoint_names_the_pointer_that_fixes_it(tmp_path):
    """A run folder stands for its ckpt/best (SFT, DPO, the reward model): a damaged best checkpoint said to point
    ckpt/latest at an earlier one, which left `load_model(run)` (make chat, INIT=) on the same damaged folder; the
    message names the pointers that name it, and following it loads the run."""
    run, model = tmp_path / "run", tiny_gpt()
    for step in (1, 2, 3):
        folder = save_model(model, run / "ckpt" / f"step-{step:06d}")
        (folder / "state.json").write_text(json.dumps({"step": step}))
    (run / "ckpt" / "best").write_text("step-000002\n")
    (run / "ckpt" / "latest").write_text("step-000003\n")
    weights = run / "ckpt" / "step-000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match=re.escape(f"(load an earlier step-* folder of {run / 'ckpt'}, or point "
                                                   f"{run / 'ckpt' / 'best'} at one, or start a new --run-dir)")):
        load_model(run)
    (run / "ckpt" / "latest").write_text("step-000002\n")  # both name it
    with pytest.raises(ValueError, match=re.escape(f"or point {run / 'ckpt' / 'latest'} and {run / 'ckpt' / 'best'} "
                                                   "at one")):
        load_model(run)
    (run / "ckpt" / "best").write_text("step-000001\n")
    load_model(run)


def test_export_hf_cli_reports_a_bad_checkpoint_without_a_traceback(tmp_path):
    with pytest.raises(SystemExit, match=f"export-hf: {tmp_path / 'nope'}: no such checkpoint folder"):
        gpt_main(["export-hf", str(tmp_path / "nope"), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_init_scales_residual_projections():
    torch.manual_seed(0)
    n_layer = 8
    model = GPT(preset("nano", n_layer=n_layer, n_head=4, n_embd=256))
    block = model.transformer.h[3]
    residual_std = 0.02 * (2 * n_layer) ** -0.5
    for linear, std in [(block.attn.c_proj, residual_std), (block.mlp.c_proj, residual_std),
                        (block.attn.c_attn, 0.02), (block.mlp.c_fc, 0.02)]:
        assert linear.weight.std().item() == pytest.approx(std, rel=0.03)
        assert torch.count_nonzero(linear.bias) == 0
    assert model.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert model.transformer.wpe.weight.std().item() == pytest.approx(0.02, rel=0.03)


def test_gpt2_preset_has_124m_parameters():
    with torch.device("meta"):
        model = GPT(preset("gpt2"))
    assert model.num_params() == 124_439_808  # tied head counted once


def test_bench_train_runs_and_both_models_agree():
    cfg = bench_train.BenchConfig(model="nano", batch=2, seq_len=32, warmup=1, rounds=1)
    result = bench_train.run(cfg)
    assert result["first_loss"]["ours"] == pytest.approx(result["first_loss"]["transformers"], abs=1e-5)
    assert set(result["tokens_per_s"]) == {"ours", "transformers"} and result["ratio"] > 0


def test_bench_gpu_profile_sorts_kernels_by_kind():
    """`bench.gpu --parts profile` sums a training step's CUDA kernels by kind; the names are those an H100 profile
    of our compiled 124M step showed (torch 2.11: cuBLAS, cuDNN attention, inductor, fused AdamW)."""
    from types import SimpleNamespace

    from bench import gpu

    names = {"nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT": "matrix products",
             "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64": "matrix products",
             "triton_tem_fused_addmm_gelu_t_view_8": "matrix products",  # max-autotune's template
             "cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64x64x64": "attention",
             "pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4>>": "attention",
             "fmha_cutlassF_bf16_aligned_64x64_rf_sm80": "attention",
             "triton_poi_fused__log_softmax__log_softmax_backward_data__to_copy_add_arange_eq": "fused (inductor)",
             "triton_per_fused__to_copy_add_native_layer_norm_backward_view_10": "fused (inductor)",
             "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedOptimizerTensorListMetadata>":
                 "optimizer",
             "Memcpy DtoD (Device -> Device)": "other"}
    assert {name: gpu.kernel_kind(name) for name in names} == names
    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU
    events = [SimpleNamespace(key="nvjet_a", device_type=cuda, self_device_time_total=3000, count=4),
              SimpleNamespace(key="aten::mm", device_type=cpu, self_device_time_total=9000, count=4),  # not a kernel
              SimpleNamespace(key="nvjet_b", device_type=cuda, self_device_time_total=1000, count=2),
              SimpleNamespace(key="triton_poi_fused_gelu", device_type=cuda, self_device_time_total=6000, count=8)]
    assert gpu.kernel_breakdown(events, steps=2) == {"fused (inductor)": {"ms": 3.0, "kernels": 4.0},
                                                    "matrix products": {"ms": 2.0, "kernels": 3.0}}


def test_bench_gpu_profile_part_dry_runs_on_a_cpu(capsys):
    from bench import gpu

    assert gpu.main(["--device", "cpu", "--model", "nano", "--seq-len", "32", "--train-batches", "2",
                     "--parts", "profile"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"profile, micro-batch 2 x 32, compiled \(default\): a step \(forward, backward, AdamW\) takes "
                     r"[\d.]+ ms, [\d,]+ tokens/s", out)
    assert "profile: no CUDA kernels (a dry run on the CPU)" in out


def test_export_hf_of_a_run_folder_uses_its_latest_checkpoint(tmp_path):
    from train.checkpoint import save_checkpoint

    model = tiny_gpt()
    save_checkpoint(tmp_path / "run", 3, model, torch.optim.AdamW(model.parameters()), {}, keep=1)
    assert gpt_main(["export-hf", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == [  # the model without the training state
        "config.json", "generation_config.json", "merges.txt", "model.safetensors", "tokenizer_config.json",
        "vocab.json"]
    with pytest.raises(SystemExit, match=f"export-hf: {tmp_path / 'hf'} exists; choose another OUT"):
        gpt_main(["export-hf", str(tmp_path / "run"), str(tmp_path / "hf")])
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    x = ids()
    with torch.no_grad():
        assert max_diff(hf(x).logits, model(x)) <= 1e-4


def test_native_bf16_asks_the_gpu_it_is_given(monkeypatch):
    """Whether a GPU computes bf16 natively is asked of that GPU (`make chat --device cuda:1` on a machine whose GPU 0
    is older), not of whichever GPU is current; a CPU never is."""
    import contextlib

    from gpt.kernels import native_bf16

    current = [0]

    @contextlib.contextmanager
    def device(d):
        before, current[0] = current[0], torch.device(d).index
        yield
        current[0] = before

    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: current[0] == 1)
    native_bf16.cache_clear()
    try:
        assert native_bf16(torch.device("cuda", 1)) and not native_bf16(torch.device("cuda", 0))
        assert not native_bf16(torch.device("cpu"))
    finally:
        native_bf16.cache_clear()
