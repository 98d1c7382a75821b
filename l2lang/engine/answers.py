"""The answer convention: where a reply states its final answer, and the one form answers are compared in.

`select vote` groups sampled answers by `normalise(extract_answer(text))`, and `l2lang eval` scores with
the same two functions (docs/evaluation.md states the rules with examples; tests/data/answers_corpus.jsonl
holds real replies with the answer a careful reader finds in each). `ANSWER_CONVENTION` numbers the rules:
`l2lang eval` records it with every score, and re-scores records made under an older one.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Callable

ANSWER_CONVENTION = 2
"""1: the text after the last `answer:` (across newlines), else the last number. 2: the rules below."""

LAST_LINES = 5
"""How many of a reply's last non-empty lines are searched for a `\\boxed{}` answer."""

_LABEL = re.compile(r"\banswer(?:[ \t]+is)?[*_ \t]*[:：]", re.IGNORECASE)
_NESTED = re.compile(r"\banswer[ \t]+is\b[ \t:：]*", re.IGNORECASE)
_LEADING_MATH = re.compile(r"[\s*_]*(?:\\\((.*?)\\\)|\\\[(.*?)\\\]|\$\$(.*?)\$\$|\$(.*?)\$)")
_BOXED = re.compile(r"\\+(?:boxed|fbox)[ \t]*\{")
_WRAPPING_COMMAND = re.compile(r"\\+(?:boxed|fbox|text|textbf|textrm|mathrm|mathbf|operatorname)[ \t]*\{([^{}]*)\}")
_OPEN_COMMAND = re.compile(r"\\+(?:boxed|fbox|text|textbf|textrm|mathrm|mathbf|operatorname)[ \t]*\{")
_MATH_DELIMITER = re.compile(r"\\[()\[\]]|\$")
_LATEX_SPACE = re.compile(r"\\[,;:! ]")
_STRAY_BACKSLASH = re.compile(r"\\+(?=[-−\d])")
_ANSWER_TAG = re.compile(r"</?answer>", re.IGNORECASE)
_GROUPED = re.compile(r"(?<![\d,.])[-−]?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,]*\d)")
_NUMBER = re.compile(r"(?:(?<![\w)\]}])[-−])?\d+(?:\.\d+)?")
_LIST_MARKER = re.compile(r"^[ \t]*(?:[-*+][ \t]+)?\d+[.)][ \t]", re.MULTILINE)  # the 2 of "2. Add …"
_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
_TRAILING = ".,;:!?。，、"
_AROUND = "*_`'\"“”‘’ "  # emphasis, code and quote marks standing at either end of an answer
_CLOSING = {")": "(", "]": "[", "}": "{"}


def extract_answer(text: str) -> str:
    """The final answer a careful grader reads in `text` (docs/evaluation.md, "Answer convention"):

    1. the last line with an `Answer:` (or `answer is:`) label that states something after it on that
       line (never across a newline; `_stated` reads it);
    2. else the last `\\boxed{…}` in the last `LAST_LINES` non-empty lines;
    3. else the last number in the reply, list markers ("2. ") not counted;
    4. else the last non-empty line.
    What is found is cleaned (`clean_answer`): LaTeX delimiters, `\\boxed`, `\\text{}`, markdown
    emphasis, `<answer>` tags, trailing punctuation, thousands separators and a unicode minus go.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        labels = list(_LABEL.finditer(line))
        if labels:
            found = _stated(line[labels[-1].end():])
            if found:
                return found
    boxed = _last_boxed("\n".join(lines[-LAST_LINES:]))
    if boxed:
        return boxed
    numbers = _NUMBER.findall(_LIST_MARKER.sub(" ", _ungrouped(text)))
    if numbers:
        return numbers[-1].replace("−", "-")
    return clean_answer(lines[-1]) if lines else ""


def _stated(rest: str) -> str:
    """The answer in what follows an `Answer:` label on its line (rules 1a–1e of docs/evaluation.md), or ""."""
    nested = list(_NESTED.finditer(rest))  # "Answer: The final answer is 0." states 0
    if nested:
        rest = rest[nested[-1].end():]
    boxed = _last_boxed(rest)
    if boxed:
        return boxed
    span = _LEADING_MATH.match(rest)  # `Answer: \(-8\)ация` states -8; `Answer: \(3+4\) = 7` states 7
    if span and not re.search(r"[=\d]", rest[span.end():]):
        answer = _result(clean_answer(next(part for part in span.groups() if part is not None)))
        if re.search(r"\w", answer):
            return answer
    answer = _result(clean_answer(_before_unmatched_bracket(rest)))
    return answer if re.search(r"\w", answer) else ""  # `Answer: <answer>'.` echoes the instruction


def _result(answer: str) -> str:
    """The number after the last `=` of an equation ("57 + 87 + 70 = 214" → "214"), else `answer`."""
    left, equals, right = answer.rpartition("=")
    right = clean_answer(right)
    return right if equals and left.strip() and _PLAIN_NUMBER.fullmatch(right) else answer


def _last_boxed(text: str) -> str:
    """The cleaned contents of the last `\\boxed{…}` in `text` (to the end of the text if unclosed), or ""."""
    starts = list(_BOXED.finditer(text))
    if not starts:
        return ""
    start, depth = starts[-1].end(), 1
    for end in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if depth == 0:
            return _result(clean_answer(text[start:end]))
    return _result(clean_answer(text[start:]))


def _before_unmatched_bracket(text: str) -> str:
    """`text` up to its first closing bracket that closes nothing opened in `text`."""
    opened: list[str] = []
    for at, char in enumerate(text):
        if char in "([{":
            opened.append(char)
        elif char in _CLOSING:
            if not opened or opened[-1] != _CLOSING[char]:
                if text[at - 1:at] != "\\":  # `\)` and `\]` are LaTeX delimiters, not brackets
                    return text[:at]
            else:
                opened.pop()
    return text


def clean_answer(answer: str) -> str:
    """`answer` without its wrappers: `<answer>` tags, `\\boxed{}`/`\\text{}` (and similar) around it,
    LaTeX math delimiters `\\( \\) \\[ \\] $ $$`, markdown `**`/`__`, and `*`, `_`, backticks and quotes
    at its ends, brackets around a lone number, trailing punctuation; with a unicode minus written `-`
    and thousands separators removed from a lone number ("1,234" → "1234")."""
    return _settle(_clean_once, answer)


def _clean_once(text: str) -> str:
    text = _ANSWER_TAG.sub(" ", text)
    text = _settle(lambda t: _WRAPPING_COMMAND.sub(r"\1", t), text)
    text = _OPEN_COMMAND.sub(" ", text)  # an unclosed `\boxed{` of a reply cut short
    text = _MATH_DELIMITER.sub(" ", text)
    text = _LATEX_SPACE.sub("", text)
    text = _STRAY_BACKSLASH.sub("", text)
    text = text.replace("**", " ").replace("__", " ").replace("−", "-")
    text = " ".join(text.split()).rstrip(_TRAILING + _AROUND).lstrip(":：" + _AROUND)
    if len(text) >= 2 and text[0] + text[-1] in ("()", "[]") and _PLAIN_NUMBER.fullmatch(text[1:-1].strip()):
        text = text[1:-1]
    if _GROUPED.fullmatch(text):
        text = text.replace(",", "")
    return text.strip()


def _ungrouped(text: str) -> str:
    """`text` with the thousands separators of its numbers removed ("1,234,567" → "1234567")."""
    return _GROUPED.sub(lambda m: m.group().replace(",", ""), text)


def normalise(answer: str) -> str:
    """The form answers are compared in: cleaned (`clean_answer`), case-folded, punctuation other than
    `. - + * / ^ = < > %` removed, spaces collapsed, numbers written canonically ("4.0", "+4", "4." → "4";
    "-0" → "0"; "0.50" → "0.5"). Idempotent: normalise(normalise(a)) == normalise(a)."""
    return _settle(_normalise_once, answer)


def _normalise_once(answer: str) -> str:
    text = clean_answer(answer).casefold()
    text = re.sub(r"[^\w\s.+\-*/^=<>%]", " ", text)
    text = " ".join(text.split()).rstrip(".").strip()
    if _PLAIN_NUMBER.fullmatch(text):
        number = Decimal(text)
        return "0" if number.is_zero() else format(number.normalize(), "f")
    return text


def same_number(answer: str, expected: str) -> bool:
    """Whether both are numbers, and equal once normalised ("-4.0" and "−4", "1,500" and "1500")."""
    got, want = normalise(answer), normalise(expected)
    return got == want and _PLAIN_NUMBER.fullmatch(got) is not None


def _settle(step: Callable[[str], str], text: str) -> str:
    """`step` applied until it changes nothing (each of the steps above only removes or rewrites
    finitely often), so that cleaning and normalising are idempotent by construction."""
    while (following := step(text)) != text:
        text = following
    return text
