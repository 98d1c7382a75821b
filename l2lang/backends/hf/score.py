"""Scoring given token sequences on a Hugging Face model with a strategy attached (for loglikelihoods).

Each sequence is one request read in one forward pass: the prefill step. The strategy's prefill-phase
rules (`during prefill`, `during all`) act at its positions as they would at a prompt's; its
decode-phase rules never act, since no token is generated.
"""

from __future__ import annotations

import torch

from l2lang.backends.hf.attach import Run, plan_for
from l2lang.backends.hf.generate import check_context, check_settings, pad_token_id, token_rows
from l2lang.engine.records import build_report
from l2lang.engine.scores import Scores
from l2lang.engine.strategy import Strategy
from l2lang.errors import GenerationError


@torch.no_grad()
def score(model, tokenizer, strategy: Strategy, sequences: list[list[int]], *, seed: int = 0) -> Scores:
    """For every token after the first of each sequence: its log-probability (float32 log-softmax of the
    logits) given the tokens before it, and whether it was the most likely token there.

    The model reads all but the last token of each sequence (right-padded, one batch). A strategy with
    `sample`/`select` is refused: those choose among generated answers, and scoring generates none.
    """
    check_settings(seed, {})
    plan = plan_for(strategy, model)
    if plan.sample is not None or plan.select is not None:
        raise GenerationError.one(f"{plan.source}: `sample`/`select` choose among generated answers; scoring given "
                                  "text generates none, so this strategy cannot score it", path=plan.source,
                                  hint="score with a strategy without `sample`/`select`")
    rows = token_rows(tokenizer, sequences, what="sequence")
    short = next((n for n, row in enumerate(rows) if len(row) < 2), None)
    if short is not None:
        raise GenerationError.one(f"sequence {short} has one token: there is nothing to score", path="<score>")
    inputs = [row[:-1] for row in rows]
    width = max(map(len, inputs))
    check_context(model, width, 0)
    device = next(model.parameters()).device
    pad = pad_token_id(tokenizer)
    ids = torch.tensor([row + [pad] * (width - len(row)) for row in inputs], dtype=torch.long, device=device)
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in inputs], dtype=torch.long,
                        device=device)
    run = Run(strategy, model, tokenizer, seed)
    with run:
        logits = model(input_ids=ids, attention_mask=mask).logits
    records, uids = run.last_call()
    report = build_report(plan, records, uids, run.executor.warn_nonfinite())
    logprobs, greedy = [], []
    for i, row in enumerate(rows):
        scored = torch.log_softmax(logits[i, : len(row) - 1].float(), dim=-1)
        targets = torch.tensor(row[1:], device=device)
        logprobs.append(scored.gather(-1, targets[:, None]).squeeze(-1).tolist())
        greedy.append((scored.argmax(dim=-1) == targets).tolist())
    return Scores(logprobs, greedy, report, plan, records, uids)
