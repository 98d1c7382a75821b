"""The answer convention: where a reply states its final answer, and the form answers are compared in.

`select vote` groups sampled answers by it, and `l2lang eval` scores with it (docs/evaluation.md).
"""

from __future__ import annotations

import re

_ANSWER_LINE = re.compile(r"answer\s*(?:is)?\s*[:：]\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def extract_answer(text: str) -> str:
    """The convention: the text after the last `Answer:`, else the last number, else the whole text.

    Markdown emphasis, `$`, `\\boxed{…}` and a trailing full stop are removed from what is found.
    """
    found = _ANSWER_LINE.findall(text)
    if found:
        return _clean(found[-1])
    numbers = _NUMBER.findall(text.replace(",", ""))
    return numbers[-1] if numbers else _clean(text)


def _clean(answer: str) -> str:
    answer = re.sub(r"\\boxed\{(.*)\}", r"\1", answer)
    return answer.replace("**", "").replace("$", "").strip().rstrip(".").strip()


def normalise(answer: str) -> str:
    """Case-folded, punctuation and surrounding space removed, numbers written canonically ("4.0" → "4")."""
    text = re.sub(r"[^\w\s.\-]", "", answer.casefold()).strip().rstrip(".").strip()
    try:
        number = float(text)
    except ValueError:
        return " ".join(text.split())
    return str(int(number)) if number.is_integer() else repr(number)
