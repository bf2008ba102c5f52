"""The rewards of the RL stage (`python -m train rl --reward ...`), one module each, one signature:

    reward(prompts: list[str], references: list[str], answers: list[str]) -> list[float]

`prompts` are the rendered prompts the policy saw, `references` their reference answers (from the task or the
shards), `answers` the sampled answers as text (without their closing EOT); one reward per answer.

- `arithmetic` (train/tasks/arithmetic.py): the built-in task, offline, for the demo and the tests; it also
  makes its own prompts (`examples`).
- `gsm8k` (train/tasks/gsm8k.py): exact match of the final number after `####`, on the gsm8k SFT shards'
  prompts (`make sft-shards SFT_DATASET=gsm8k`).
- `rm:PATH` (train/tasks/reward_model.py): the score of a reward model (`make rm`), on the prompts of the
  preference or SFT shards.

Adding a verifiable task is one module here with `reward` (and `examples` and `fingerprint`, what a resume
checks, when it makes its own prompts, else its prompts come from SFT shards), named in TASKS.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType

TASKS = ("arithmetic", "gsm8k")  # the modules of this package; `rm:PATH` names a reward model
MODEL = "rm:"

Reward = Callable[[list[str], list[str], list[str]], list[float]]


def task(spec: str) -> ModuleType | None:
    """The module of a --reward that names a task (None for a reward model)."""
    if spec.startswith(MODEL):
        return None
    if spec not in TASKS:
        raise ValueError(f"--reward {spec!r}: choose {', '.join(TASKS)} or {MODEL}PATH (a reward model)")
    return importlib.import_module(f".{spec}", __name__)


def load_reward(spec: str, device) -> Reward:
    """The reward function of a --reward: a task's `reward`, or a reward model's scores (on `device`)."""
    module = task(spec)
    if module is not None:
        return module.reward
    from .reward_model import load
    return load(spec[len(MODEL):], device)
