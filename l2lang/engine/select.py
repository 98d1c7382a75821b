"""Sequence-level selection (docs/semantics.md §7): score each sampled candidate, keep one per prompt."""

from __future__ import annotations

import torch

from l2lang.engine.answers import extract_answer, normalise
from l2lang.engine.records import StepRecord
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


def candidate_scores(records: list[StepRecord], uids: list[int], select: SelectPlan) -> list[float]:
    """The metric of every request in `uids` over its decode steps and the select layers."""
    if select.metric == "count":  # every answer scores 1: `vote count` is a plain majority vote
        return [1.0] * len(uids)
    decode = [r for r in records if r.rows.phase != "prefill"]
    if not decode:
        return [0.0] * len(uids)
    index = {uid: i for i, uid in enumerate(uids)}
    device = decode[0].norms.device
    scratch = len(uids)  # where rows of other requests, and dead rows, are counted
    owners, positions, seen = [], [], torch.zeros(scratch + 1, device=device)
    for record in decode:  # each live decode row: which candidate it belongs to, and its place in it
        of_slot = torch.tensor([index.get(uid, scratch) for uid in record.slot_uids] + [scratch], device=device)
        owner = torch.where(record.rows.live_decode, of_slot[record.rows.slots], scratch)
        seen = seen.index_add(0, owner, torch.ones_like(owner, dtype=seen.dtype))
        owners.append(owner)
        positions.append(seen[owner])
    owner, position = torch.cat(owners), torch.cat(positions)
    live = owner != scratch
    norms = torch.cat([torch.stack([r.norm(layer) for layer in select.layers], dim=-1) for r in decode])
    thresholds = torch.tensor([select.thresholds.get(layer, 0.0) for layer in select.layers], device=device)
    if select.metric == "total":
        per_row = norms
    elif select.metric == "events":
        per_row = (norms > thresholds).float()
    else:
        per_row = (norms - thresholds).clamp(min=0)
    weight = live.float()
    lengths = seen
    if select.metric == "late_area":
        weight = weight * (position > (1 - select.late_fraction) * lengths[owner]).float()
    score = torch.zeros(scratch + 1, device=device).index_add_(0, owner, (per_row * weight[:, None]).sum(dim=-1))
    if select.per_token:
        score = score / lengths.clamp(min=1)
    return score[:-1].tolist()
