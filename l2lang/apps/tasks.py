"""Evaluation items and their scorers, from three sources (docs/evaluation.md):

- `reasoning_gym:NAME[:k=v,...]` (or a bare NAME): the reasoning-gym package's seeded generators,
  scored by the task's own `score_answer` (optional extra: `pip install 'l2lang[tasks]'`);
- a BIG-bench `task.json` file: its `examples`, scored by normalised exact match against the
  target(s), or against the best-scoring option of `target_scores`;
- a JSONL file with one `{"question": ..., "answer": ...}` per line, scored like BIG-bench.

Every prompt is the question followed by `INSTRUCTION`; `extract_answer` (l2lang.engine.answers) reads the reply.
"""

from __future__ import annotations

import difflib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from l2lang.engine.answers import normalise, same_number
from l2lang.errors import L2Error
from l2lang.lang.files import read_text_file
from l2lang.lang.parser import command_line_number

INSTRUCTION = "Think step by step, then end with a final line 'Answer: <answer>'."


@dataclass(frozen=True)
class Item:
    id: str                  # stable within its source: the generator index or the example's line/index
    question: str
    answers: tuple[str, ...]  # accepted answers (the first is shown in reports)
    prompt: str


@dataclass
class Task:
    spec: str
    items: list[Item]
    scorer: Callable[[int, str], float] = field(repr=False)  # the task's own: (item index, extracted answer) → [0, 1]

    def score(self, index: int, extracted: str) -> float:
        """The score l2lang reports: the task's own, or full credit where the answer is the expected number
        written in another form ("-4.0" for "-4"), which a task's scorer may give partial credit
        (docs/evaluation.md, "Scores")."""
        own = self.own_score(index, extracted)
        if own < 1.0 and any(same_number(extracted, answer) for answer in self.items[index].answers):
            return 1.0
        return own

    def own_score(self, index: int, extracted: str) -> float:
        """The task's own score of the extracted answer (reasoning-gym's `score_answer`, or normalised match)."""
        return float(self.scorer(index, extracted))


def load_task(spec: str, n: int, seed: int = 0) -> Task:
    """n items of the task named by `spec` (a file path ending .json/.jsonl, else a reasoning-gym task)."""
    if n < 1:
        raise L2Error.one(f"--n {n}: ask for at least one item", path="<command line>")
    if spec.endswith((".json", ".jsonl")):
        path = Path(spec)
        examples = _bigbench_examples(path) if spec.endswith(".json") else _jsonl_examples(path)
        items = []
        for i in _choose(len(examples), n, seed):
            question, answers = examples[i]
            items.append(Item(str(i), question, answers, _prompt(question)))
        return Task(spec, items, lambda index, text: float(matches(text, items[index].answers)))
    return _reasoning_gym(spec, n, seed)


def task_items(spec: str, n: int, seed: int = 0) -> list[dict]:
    """n prompts of a task as dicts (for `calibrate --task`)."""
    items = load_task(spec, n, seed).items
    return [{"question": i.question, "answer": i.answers[0], "prompt": i.prompt} for i in items]


def _prompt(question: str) -> str:
    return f"{question}\n{INSTRUCTION}"


def _choose(total: int, n: int, seed: int) -> list[int]:
    """The first n of a seeded shuffle: asking for more items later keeps the ones already drawn."""
    order = list(range(total))
    random.Random(seed).shuffle(order)
    return order[:n]


def parse_task(spec: str) -> tuple[str, dict]:
    """`reasoning_gym:chain_sum:min_terms=2,max_terms=3` → ("chain_sum", {"min_terms": 2, "max_terms": 3})."""
    parts = spec.split(":")
    if parts[0] == "reasoning_gym":
        parts = parts[1:]
    if not parts or not parts[0] or len(parts) > 2:
        raise L2Error.one(f"--task {spec}: write reasoning_gym:NAME[:k=v,...], a task.json or a .jsonl file",
                          path="<command line>")
    config = {}
    for item in (parts[1].split(",") if len(parts) == 2 and parts[1] else []):
        key, sep, value = item.partition("=")
        if not sep:
            raise L2Error.one(f"--task {spec}: `{item}` is not k=v", path="<command line>")
        try:
            config[key] = command_line_number(value)
        except ValueError:
            config[key] = value
    return parts[0], config


def _reasoning_gym(spec: str, n: int, seed: int) -> Task:
    name, config = parse_task(spec)
    try:
        import reasoning_gym
    except ImportError:
        raise L2Error.one("reasoning-gym tasks need the reasoning-gym package: pip install 'l2lang[tasks]'",
                          path="<command line>") from None
    from reasoning_gym.factory import DATASETS

    if name not in DATASETS:
        near = difflib.get_close_matches(name, sorted(DATASETS), n=5, cutoff=0.5)
        raise L2Error.one(f"--task {spec}: reasoning-gym has no task {name!r}", path="<command line>",
                          hint=f"did you mean {', '.join(near)}?" if near else
                          f"its {len(DATASETS)} tasks include {', '.join(sorted(DATASETS)[:8])}, ...")
    try:  # (reasoning-gym raises ValueError, TypeError, KeyError, OverflowError, ... for values it cannot use)
        dataset = reasoning_gym.create_dataset(name, size=n, seed=seed, **config)
        entries = list(dataset)
    except Exception as exc:
        raise L2Error.one(f"--task {spec}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                          path="<command line>") from None
    items = [Item(str(i), e["question"], (str(e["answer"]),), _prompt(e["question"])) for i, e in enumerate(entries)]
    return Task(spec, items, lambda index, text: dataset.score_answer(text, entries[index]))


def _bigbench_examples(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """(question, accepted answers) from a BIG-bench task.json; options listed for multiple choice."""
    try:
        examples = json.loads(read_text_file(str(path), "the task file"))["examples"]
    except (ValueError, KeyError, TypeError, IndexError, RecursionError):
        raise L2Error.one('not a BIG-bench task.json: expected an object with "examples"', path=str(path)) from None
    if not isinstance(examples, list):
        raise L2Error.one(f'"examples" must be a list of objects, not {_kind(examples)}', path=str(path))
    out = []
    for number, example in enumerate(examples):
        wrong = L2Error.one(f'example {number} needs a text "input" and a "target" (text, number or list of them) '
                            'or "target_scores" (an object of option: score)', path=str(path))
        if not isinstance(example, dict) or not isinstance(example.get("input"), str):
            raise wrong
        question = example["input"]
        if example.get("target_scores"):
            scores = example["target_scores"]
            if not isinstance(scores, dict) or not all(_is_number(v) for v in scores.values()):
                raise wrong
            best = max(scores.values())
            question += "\nOptions: " + "; ".join(scores)
            answers = tuple(k for k, v in scores.items() if v == best)
        else:
            answers = _answers(example.get("target"))
            if not answers:
                raise wrong
        out.append((question, answers))
    if not out:
        raise L2Error.one("the task has no examples", path=str(path))
    return out


def _jsonl_examples(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    out = []
    for number, line in enumerate(read_text_file(str(path), "the task file").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except (ValueError, RecursionError):
            item = None
        answers = _answers(item.get("answer")) if isinstance(item, dict) else ()
        if not isinstance(item, dict) or not isinstance(item.get("question"), str) or not answers:
            raise L2Error.one('each line must be a JSON object with a text "question" and an "answer" (text, number '
                              'or a list of them)', path=f"{path}:{number}")
        out.append((item["question"], answers))
    if not out:
        raise L2Error.one("no items in the file", path=str(path))
    return out


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _answers(value) -> tuple[str, ...]:
    """Accepted answers from a JSON value: a text or a number, or a non-empty list of them; () otherwise."""
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) or _is_number(v) for v in values):
        return ()
    return tuple(str(v) for v in values)


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string"}.get(type(value), type(value).__name__)


def matches(extracted: str, answers: tuple[str, ...]) -> bool:
    """Normalised exact match of the extracted answer against any accepted answer."""
    got = normalise(extracted)
    return any(got == normalise(a) for a in answers)
