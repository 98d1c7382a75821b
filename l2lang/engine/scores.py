"""The result of scoring given token sequences with a strategy attached, whatever the backend."""

from __future__ import annotations

from dataclasses import dataclass, field

from l2lang.engine.records import Report, StepRecord
from l2lang.plan import Plan


@dataclass
class Scores:
    """Per sequence, for every token after the first: its log-probability given the tokens before it and
    whether it was the most likely token there; with the report (one request per sequence), the plan and
    the step records."""

    logprobs: list[list[float]]
    greedy: list[list[bool]]
    report: Report
    plan: Plan
    records: list[StepRecord] = field(repr=False)
    uids: list[int] = field(repr=False)  # each sequence's request, in sequence order
