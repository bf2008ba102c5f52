"""The GSM8K reward (`--reward gsm8k`): exact match of the final number, as nanochat's GSM8K task scores it.

A GSM8K answer ends with `#### <number>`; the reference is that of the gsm8k SFT shards' answer (`make sft-shards
SFT_DATASET=gsm8k`: openai/gsm8k, config main, pinned and verified by pipelines.hub). An answer scores 1 when the
first number after its last `####` equals the reference's (commas dropped: `#### 1,234` is 1234; `18.0` equals
`18`; a minus sign, `-` or the Unicode `−`, before or after a `$` makes it negative: `-$5`, `$-5` and `−5` are
-5), else 0; an answer without `####` and a number after it scores 0.
"""

from __future__ import annotations

import re
from decimal import Decimal

MARK = "####"
MINUS = "-\u2212"  # the hyphen-minus and the Unicode minus sign
# 1,234 and 18.50; .5 is 0.5, never 5; the sign before or after a dollar sign: -$5 and $-5 are -5
NUMBER = re.compile(rf"(?P<sign>[{MINUS}]?)\$?(?P<after>[{MINUS}]?)(?P<digits>\d[\d,]*(?:\.\d+)?|\.\d+)")


def final_number(text: str) -> Decimal | None:
    """The first number after the last `####` of `text` (commas dropped, its sign kept), or None."""
    at = text.rfind(MARK)
    found = NUMBER.search(text, at + len(MARK)) if at >= 0 else None
    if found is None:
        return None
    number = Decimal(found["digits"].replace(",", ""))  # digits, commas and one point: always a number
    return -number if found["sign"] or found["after"] else number


def reward(prompts: list[str], references: list[str], answers: list[str]) -> list[float]:
    """1.0 where the answer's final number is the reference's, else 0.0."""
    scores = []
    for reference, answer in zip(references, answers):
        expected, got = final_number(reference), final_number(answer)
        scores.append(float(got is not None and got == expected))
    return scores
