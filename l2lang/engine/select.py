"""Sequence-level selection (docs/semantics.md §7): score each sampled candidate, keep one per prompt."""

from __future__ import annotations

import torch

from l2lang.engine.answers import extract_answer, normalise
from l2lang.engine.records import RequestRows
from l2lang.plan import Plan, SelectPlan


def select_outputs(outputs: list[dict], scores: list[float], plan: Plan) -> list[dict]:
    """Keep one of each prompt's `plan.sample.count` consecutive candidates by the plan's `select`."""
    select, per = plan.select, plan.sample.count
    chosen = []
    for p in range(len(outputs) // per):
        group = list(range(p * per, (p + 1) * per))
        if select.mode == "vote":
            answers = {i: normalise(extract_answer(outputs[i]["text"])) for i in group}  # `\(-4\)` is -4
            totals: dict[str, float] = {}
            for i, answer in answers.items():  # insertion order: ties go to the answer seen first
                totals[answer] = totals.get(answer, 0.0) + scores[i]
            winner = max(totals, key=totals.__getitem__)
            best = next(i for i in group if answers[i] == winner)
        else:
            values = [scores[i] for i in group]
            best = group[values.index(max(values) if select.mode == "argmax" else min(values))]
        chosen.append({**outputs[best], "candidates": [{"text": outputs[i]["text"], "score": scores[i]}
                                                        for i in group], "chosen": best - p * per})
    return chosen


def candidate_scores(rows: list[RequestRows], select: SelectPlan) -> list[float]:
    """The metric of every candidate over its decode steps and the select layers (docs/semantics.md §7)."""
    if select.metric == "count":  # every answer scores 1: `vote count` is a plain majority vote
        return [1.0] * len(rows)
    scores = []
    for mine in rows:
        decode = [i for i, phase in enumerate(mine.phases) if phase == "decode"]
        norms = mine.norms[decode][:, [mine.layers.index(layer) for layer in select.layers]]  # [steps, layers]
        thresholds = torch.tensor([select.thresholds.get(layer, 0.0) for layer in select.layers])
        if select.metric == "total":
            per_step = norms
        elif select.metric == "events":
            per_step = (norms > thresholds).float()
        else:
            per_step = (norms - thresholds).clamp(min=0)
        if select.metric == "late_area":  # only the last `late_fraction` of the steps
            position = torch.arange(1, len(decode) + 1)
            per_step = per_step * (position > (1 - select.late_fraction) * len(decode))[:, None]
        score = float(per_step.sum())
        scores.append(score / max(len(decode), 1) if select.per_token else score)
    return scores
