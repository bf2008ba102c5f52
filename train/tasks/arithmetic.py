"""The built-in verifiable task (`--reward arithmetic`): small integer sums, made from a seed, scored offline.

A problem is the instruction "What is a + b?", a in [0, LARGEST] and b in [0, STEP], its reference the sum:
every such pair (250), shuffled by `seed`; the first VAL_PROBLEMS are held out, the others trained on, so no
held-out problem is ever trained on.

The reward reads the answer's first integer: 1 when it is the sum, else partial credit for a near miss,
`NEAR / (1 + |guess - sum| / SPREAD)`, and 0 for an answer without an integer (or with one of over LONGEST digits).
The partial credit is what lets a tiny chat model that has never seen a sum learn at all: the sample's SFT model
puts a number in about 1 of 60 sampled answers, and none is right, so a group's rewards differ only by whether, and
how near, its answers' numbers are (the group's std scales the advantages: the tiny rewards of far numbers count
too). The sums lie near a (b is small), so copying the prompt's first number already scores about half. What a
short run's rising reward measures is answering with a number, then one in the sums' range: docs/rl.md.
"""

from __future__ import annotations

import re

import numpy as np

from gpt.template import render_prompt
from shards.io import sha256_json
from shards.tokenizer import EOT, get_encoding

LARGEST, STEP = 49, 4  # a in [0, LARGEST], b in [0, STEP]
VAL_PROBLEMS = 20
NEAR, SPREAD = 0.5, 5
INTEGER = re.compile(r"-?\d+")
LONGEST = 40  # digits of an answer's integer that still get partial credit (which is below 1e-38 there)


def problems(seed: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, held-out) problems, each (instruction, reference answer)."""
    pairs = [(a, b) for a in range(LARGEST + 1) for b in range(STEP + 1)]
    order = np.random.default_rng(seed).permutation(len(pairs))
    made = [(f"What is {a} + {b}?", str(a + b)) for a, b in (pairs[i] for i in order)]
    return made[VAL_PROBLEMS:], made[:VAL_PROBLEMS]


def examples(seed: int) -> tuple[list, list, dict]:
    """(train, held-out) rows of (rendered prompt tokens, reference answer tokens + EOT), and the task's
    description (what its rows depend on; `fingerprint` hashes it)."""
    enc = get_encoding()

    def rows(made):
        return [(np.array(enc.encode_ordinary(render_prompt(instruction)), dtype=np.int64),
                 np.array(enc.encode_ordinary(answer) + [EOT], dtype=np.int64)) for instruction, answer in made]

    train, val = problems(seed)
    description = {"task": "arithmetic", "seed": seed, "largest": LARGEST, "step": STEP,
                   "val_problems": VAL_PROBLEMS}
    return rows(train), rows(val), description


def score(reference: str, answer: str) -> float:
    """1 for the right sum as the answer's first integer, partial credit for another integer, else 0."""
    found = INTEGER.search(answer)
    if found is None or len(found.group()) > LONGEST:  # a long run of digits: no credit (and int() refuses 4,300)
        return 0.0
    miss = abs(int(found.group()) - int(reference))
    return 1.0 if miss == 0 else NEAR / (1 + miss / SPREAD)


def reward(prompts: list[str], references: list[str], answers: list[str]) -> list[float]:
    return [score(reference, answer) for reference, answer in zip(references, answers)]


def fingerprint(description: dict) -> str:
    """The "manifest sha256" of the task's rows: a resumed run refuses other problems."""
    return sha256_json(description)
