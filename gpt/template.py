"""The Stanford Alpaca prompt: the interface of an SFT model, used by the SFT pipeline, the trainer and chat.

The two templates are Stanford Alpaca's (one for examples with an input, one without), with the
newline after `### Response:` that the `text` column of `tatsu-lab/alpaca` has. SFT shards hold
prompts rendered by `render_prompt` (pipelines/sft.py), SFT checkpoints carry `CHAT_TEMPLATE`, and
`python -m gpt chat` wraps prompts in it. Torch-free: a pipeline worker imports it.
"""

from __future__ import annotations

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
