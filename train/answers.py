"""Answers to validation prompts (greedy, or sampled), shown by the SFT and preference stages at each evaluation and at the end."""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from gpt.inference import generate, pad_batch
from gpt.model import GPT
from shards.tokenizer import EOT, get_encoding


# Generation inside a training run decodes with the eager loop, whatever the dtype: under bf16 autocast it does so
# anyway, and a float32 run on a GPU would otherwise capture CUDA graphs of the static decoder between steps (the
# capture synchronizes, collects garbage and empties the allocator's cache; under DDP, beside NCCL's watchdog) and
# keep the last one's KV cache and graphs for the rest of the run.
TRAINING_DECODING = {"static": False}


def answers_to(model: GPT, prompts: list[np.ndarray], max_steps: int, batch: int, progress: bool = False,
               temperature: float = 0.0, **sampling) -> list[list[int]]:
    """New tokens for each prompt, greedy or sampled (`temperature` and `sampling`: generate's top_p, generator...),
    generated `batch` prompts at a time (similar lengths together), by the eager loop (`TRAINING_DECODING`)."""
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[list[int]] = [[] for _ in prompts]
    for start in tqdm(range(0, len(order), batch), desc="eval answers", unit="batch", leave=False,
                      disable=None if progress else True):  # None: not outside a terminal
        group = order[start:start + batch]
        ids, masks = pad_batch([prompts[i] for i in group])
        for i, new in zip(group, generate(model, ids.to(device), masks.to(device), temperature, max_steps,
                                          **TRAINING_DECODING, **sampling)):
            answers[i] = new
    return answers


def instruction(prompt: str) -> str:
    """The instruction (and input) of an Alpaca prompt, for display."""
    body = prompt.split("### Instruction:\n", 1)[-1]
    return body.removesuffix("\n\n### Response:\n").replace("\n\n### Input:\n", " | ")


def ended(answer: list[int]) -> bool:
    """Whether generated tokens end with EOT (a finished answer, not one cut by max_steps)."""
    return bool(answer) and answer[-1] == EOT


def without_eot(answer: list[int]) -> list[int]:
    """Generated tokens without their closing EOT, if any."""
    return answer[:-1] if ended(answer) else answer


def answer_text(answer: list[int]) -> str:
    """Generated tokens as text: without their closing EOT, or marked "[no EOT]" when they have none."""
    return get_encoding().decode(without_eot(answer)) + ("" if ended(answer) else " [no EOT]")
