"""The reward model (gpt/reward.py): the reward read at each row's closing EOT whatever the padding, scoring
text as the preference shards encode it, the checkpoint round trip, and transformers' GPT2ForSequenceClassification
giving the same rewards from our folder. The `nano` shape with GPT-2's vocabulary and a random head: seconds."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gpt import RewardModel, load_reward_model
from gpt.checkpoint import is_reward_model, load_model, save_model
from gpt.inference import pad_batch
from gpt.model import GPT, preset
from pipelines.examples import encode_prompt, with_answer
from shards.tokenizer import EOT

ROOT = Path(__file__).resolve().parents[1]
# Rows of one batch, of different lengths; token 0 is "!", a real token inside a row as well as the padding.
ROWS = [[5, 0, 7, 0, EOT], [3, EOT], [0, 0, 0, 9, 11, 13, 17, 0, EOT]]
PROMPTS = ["Say hi!", "Translate: café, naïve, 日本語 🙂", "Count to three"]
ANSWERS = ["Hi!!", " starts with a space", "\n1, 2, 3!"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    reward = RewardModel(GPT(preset("nano", block_size=128)))
    torch.nn.init.normal_(reward.head.weight)  # a random head: rewards differ from row to row
    return reward.eval()


def alone(model, rows):
    """Each row's reward from a forward of that row alone: no padding at all."""
    with torch.no_grad():
        return torch.cat([model(torch.tensor([row]), torch.tensor([len(row)])) for row in rows])


def test_a_new_head_is_zero_and_draws_nothing_from_the_rng():
    torch.manual_seed(3)
    backbone = GPT(preset("nano"))
    state = torch.get_rng_state()
    reward = RewardModel(backbone)
    assert torch.equal(torch.get_rng_state(), state)
    assert not reward.head.weight.any() and reward.head.weight.shape == (1, 32)
    assert reward.score_tokens(ROWS).tolist() == [0.0, 0.0, 0.0]


def test_the_reward_is_read_at_each_rows_last_token_never_at_its_padding(model):
    ids, masks = pad_batch(ROWS)
    lengths = masks.sum(dim=1)
    with torch.no_grad():
        batched = model(ids, lengths)
        repadded = model(ids.masked_fill(masks == 0, 123), lengths)  # other padding: never read
        at_the_end = model(ids, torch.full_like(lengths, ids.shape[1]))  # the last column: padding for rows 0, 1
    assert torch.allclose(batched, alone(model, ROWS), atol=1e-5)
    assert torch.equal(repadded, batched)
    assert not torch.isclose(at_the_end[:2], batched[:2], atol=1e-3).any()  # reading the padding would differ
    assert torch.equal(model.score_tokens(ROWS), model.score_tokens([row[:-1] for row in ROWS]))  # EOT appended
    assert torch.allclose(model.score_tokens(ROWS, batch_size=1), batched, atol=1e-5)
    assert torch.allclose(model.score_tokens(ROWS[::-1], batch_size=2), batched.flip(0), atol=1e-5)


def test_score_encodes_prompt_and_answer_as_the_preference_shards_do(model):
    shards = [with_answer(encode_prompt(p), a).tolist() for p, a in zip(PROMPTS, ANSWERS)]  # pipelines/examples.py
    assert all(row[-1] == EOT for row in shards)
    scores = model.score(PROMPTS, ANSWERS)
    assert scores.dtype == torch.float32 and scores.shape == (3,)
    assert torch.equal(scores, model.score_tokens(shards))
    assert torch.allclose(scores, alone(model, shards), atol=1e-5)
    assert len(set(scores.tolist())) == 3
    assert model.score([], []).shape == (0,)
    with pytest.raises(ValueError, match="2 prompts but 1 answers"):
        model.score(PROMPTS[:2], ANSWERS[:1])
    with pytest.raises(ValueError, match=r"prompts must be a list of strings, got a string \(one pair: score\("):
        model.score("abc", "xyz")  # scored as three one-character prompts, silently
    with pytest.raises(ValueError, match="answers must be a list of strings, got a string"):
        model.score(["Tell me a joke."], "Why did the robot cross the road?")
    with pytest.raises(ValueError, match="sequence 1 has 129 tokens with its EOT, more than the reward model's "
                                         "context of 128"):
        model.score_tokens([[1], [1] * 128])
    with pytest.raises(ValueError, match=r"sequence 0 holds a token outside the vocabulary \[0, 50257\)"):
        model.score_tokens([[50257]])
    for wrong in ([1, 2, 3], torch.tensor([1, 2, 3]), [[1.5, 2.0]], [torch.tensor([[1, 2]])]):
        with pytest.raises(ValueError, match=r"sequence 0 is not a list of integer token ids \(one sequence: "
                                             r"score_tokens\(\[tokens\]\)\)"):
            model.score_tokens(wrong)  # a flat sequence failed with "'int' object is not iterable"; floats truncated
    one = model.score_tokens([[31373, 995]])
    for same in (np.array([[31373, 995]], dtype=np.uint16), torch.tensor([[31373, 995]]), [(31373, 995)]):
        assert torch.equal(model.score_tokens(same), one)
    for size in (0, -1, 2.5):  # -1 scored no batch and returned torch.empty's garbage
        with pytest.raises(ValueError, match=f"batch_size must be an integer >= 1, got {size}"):
            model.score(PROMPTS, ANSWERS, batch_size=size)


def test_scoring_leaves_no_gradient_and_the_mode_as_it_was(model):
    model.train()
    try:
        scores = model.score_tokens(ROWS)
        assert not scores.requires_grad and model.training
    finally:
        model.eval()


def test_save_and_load_give_the_same_rewards_and_each_loader_keeps_to_its_kind(model, tmp_path):
    folder = save_model(model, tmp_path / "rm")
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["GPT2ForSequenceClassification"] and config["pad_token_id"] == 0
    assert config["id2label"] == {"0": "LABEL_0"} and is_reward_model(folder)
    loaded = load_reward_model(folder)
    assert isinstance(loaded, RewardModel) and not loaded.training
    assert torch.equal(loaded.score(PROMPTS, ANSWERS), model.score(PROMPTS, ANSWERS))
    assert torch.equal(loaded.head.weight, model.head.weight)
    with pytest.raises(ValueError, match="a reward model .GPT2ForSequenceClassification.; load it with "
                                         "gpt.load_reward_model"):
        load_model(folder)
    lm = save_model(model.backbone, tmp_path / "lm")
    assert not is_reward_model(lm)
    with pytest.raises(ValueError, match="not a reward model .architectures .'GPT2LMHeadModel'.*gpt.load_model "
                                         "loads it"):
        load_reward_model(lm)


def test_export_hf_writes_a_reward_model_as_one(model, tmp_path):
    save_model(model, tmp_path / "rm")
    proc = subprocess.run([sys.executable, "-m", "gpt", "export-hf", str(tmp_path / "rm"), str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "transformers.GPT2ForSequenceClassification.from_pretrained" in proc.stdout
    assert torch.equal(load_reward_model(tmp_path / "out").score_tokens(ROWS), model.score_tokens(ROWS))


def test_transformers_reads_our_folder_as_gpt2_for_sequence_classification_with_the_same_rewards(model, tmp_path):
    transformers = pytest.importorskip("transformers")
    folder = save_model(model, tmp_path / "rm")
    hf = transformers.GPT2ForSequenceClassification.from_pretrained(folder).eval()
    assert hf.config.num_labels == 1 and hf.config.pad_token_id == 0
    rows = ROWS + [with_answer(encode_prompt(p), a).tolist() for p, a in zip(PROMPTS, ANSWERS)]
    ids, masks = pad_batch(rows)  # right-padded with 0: transformers reads each row's last token that is not 0
    with torch.no_grad():
        logits = hf(input_ids=ids, attention_mask=masks).logits
    assert logits.shape == (len(rows), 1)
    assert torch.allclose(logits[:, 0], model.score_tokens(rows), atol=1e-5)


@pytest.mark.parametrize("pad", [None, EOT])
def test_a_transformers_reward_model_loads_with_its_rewards_or_is_refused_for_its_pad_token(tmp_path, pad):
    """GPT-2 has no pad token, so transformers users set pad_token_id to EOT: GPT2ForSequenceClassification then reads
    the reward at the last token that is not EOT, where we read it at the closing EOT; such a folder loaded and gave
    other rewards than transformers."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, num_labels=1, pad_token_id=pad)
    hf = transformers.GPT2ForSequenceClassification(config).eval()
    torch.nn.init.normal_(hf.score.weight)
    hf.save_pretrained(tmp_path / "rm")
    if pad is not None:
        with pytest.raises(ValueError, match=f"rm/config.json: pad_token_id={EOT} is not supported: transformers reads "
                                             f"the reward at each row's last token that is not {EOT}"):
            load_reward_model(tmp_path / "rm")
        return
    with torch.no_grad():  # without a pad token transformers reads each (unpadded) row's last token, our EOT
        rewards = [hf(torch.tensor([row])).logits.item() for row in ROWS]
    assert torch.allclose(load_reward_model(tmp_path / "rm").score_tokens(ROWS), torch.tensor(rewards), atol=1e-5)


def test_a_sharded_transformers_reward_model_loads_with_its_rewards(tmp_path):
    """GPT2ForSequenceClassification saved in shards (save_pretrained(max_shard_size=...)) was refused as holding no
    weights."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, num_labels=1, pad_token_id=None)
    hf = transformers.GPT2ForSequenceClassification(config).eval()
    torch.nn.init.normal_(hf.score.weight)
    hf.save_pretrained(tmp_path / "rm", max_shard_size="50KB")
    assert (tmp_path / "rm" / "model.safetensors.index.json").is_file()
    assert not (tmp_path / "rm" / "model.safetensors").exists()
    with torch.no_grad():
        rewards = [hf(torch.tensor([row])).logits.item() for row in ROWS]
    assert is_reward_model(tmp_path / "rm")
    assert torch.allclose(load_reward_model(tmp_path / "rm").score_tokens(ROWS), torch.tensor(rewards), atol=1e-5)
