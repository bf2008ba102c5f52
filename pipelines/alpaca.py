"""The Stanford Alpaca prompt templates and how an example is rendered and tokenized.

The two templates are Stanford Alpaca's (one for examples with an input, one without), with the
newline after `### Response:` that the `text` column of `tatsu-lab/alpaca` has. The prompt and the
answer are tokenized separately and concatenated, so the boundary between them is exact:
the prompt tokens decode to the rendered prompt, the supervised tokens to `output` plus one EOT.
"""

from __future__ import annotations

import numpy as np

from gpt.tokenizer import EOT, get_encoding
from shards.io import sha256_json

PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
TEMPLATE_SHA256 = sha256_json({"prompt_input": PROMPT_INPUT, "prompt_no_input": PROMPT_NO_INPUT})
# The no-input prompt as a transformers chat template (SFT checkpoints carry it in tokenizer_config.json): a
# user message is the instruction, rendered up to "### Response:\n"; an assistant message is an answer + EOT.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    + PROMPT_NO_INPUT.replace("{instruction}", "{{ message['content'] }}")
    + "{% elif message['role'] == 'assistant' %}{{ message['content'] }}<|endoftext|>{% endif %}{% endfor %}"
)


def render_prompt(instruction: str, input: str = "") -> str:
    """The prompt the model sees: the template with input when `input` is non-empty, else the other one."""
    if input:
        return PROMPT_INPUT.format(instruction=instruction, input=input)
    return PROMPT_NO_INPUT.format(instruction=instruction)


def encode_example(instruction: str, input: str, output: str) -> tuple[np.ndarray, int]:
    """Tokens (uint16) of prompt + answer + EOT, and the prompt length: mask is 1 from there to the end."""
    enc = get_encoding()
    prompt = enc.encode_ordinary(render_prompt(instruction, input))
    answer = enc.encode_ordinary(output)
    tokens = np.empty(len(prompt) + len(answer) + 1, dtype=np.uint16)
    tokens[: len(prompt)] = prompt
    tokens[len(prompt): -1] = answer
    tokens[-1] = EOT
    return tokens, len(prompt)
