"""`l2lang.generate`: prompts in, texts out, with a strategy attached and a manifest of what happened."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from l2lang.diagnostics import L2Error
from l2lang.runtime.progress import decode_progress
from l2lang.runtime.session import Report, Strategy


@dataclass
class Generation:
    outputs: list[dict]     # per prompt: text, token_ids (and candidates with scores under `select`)
    report: Report
    plan: object
    state: object           # the executor's per-request state, with its per-step records
    input_ids: torch.Tensor  # the (left-padded) prompt batch


def encode(tokenizer, prompts: list[str], chat: bool | None) -> dict:
    """Left-padded batch; the chat template is applied when the tokenizer has one (unless chat=False)."""
    use_chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
    if use_chat and not getattr(tokenizer, "chat_template", None):
        raise L2Error.one("--chat: this tokenizer has no chat template", path="<tokenizer>")
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True) if use_chat else p for p in prompts]
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not use_chat)


@torch.no_grad()
def generate(model, tokenizer, strategy: Strategy, prompts: list[str], *, seed: int = 0, chat: bool | None = None,
             observe_all: bool = False, **generation_kwargs) -> Generation:
    """Generate for every prompt with `strategy` attached; greedy unless sampling is asked for.

    `observe_all` records the norm after every layer (for traces), not only the layers the plan reads.
    """
    batch = encode(tokenizer, prompts, chat).to(next(model.parameters()).device)
    run = strategy.attach(model, tokenizer, seed, observe_all=observe_all)
    plan = run.plan
    kwargs = {"do_sample": False, **generation_kwargs}
    if plan.sample is not None:
        kwargs.update(do_sample=True, num_return_sequences=plan.sample.count, temperature=plan.sample.temperature,
                      top_p=plan.sample.top_p, top_k=plan.sample.top_k or None)
    elif not kwargs.get("do_sample") and any(k in generation_kwargs for k in ("temperature", "top_p", "top_k")):
        raise L2Error.one("temperature/top_p/top_k need sampling: pass do_sample=True (or --temperature > 0)",
                          path="<generate>")
    if kwargs.get("pad_token_id") is None:
        kwargs["pad_token_id"] = tokenizer.pad_token_id
    torch.manual_seed(seed)
    with run, decode_progress(model, kwargs.get("max_new_tokens") or 0, "generating"):
        sequences = model.generate(**batch, **kwargs)
    report = run.report()
    new_tokens = sequences[:, batch["input_ids"].shape[1]:]
    outputs = [_output(tokenizer, row) for row in new_tokens]
    if plan.select is not None:
        outputs = select_outputs(outputs, run, plan, len(prompts))
    return Generation(outputs, report, plan, run.executor.history[-1], batch["input_ids"])


def _output(tokenizer, row: torch.Tensor) -> dict:
    ids = row.tolist()
    eos = tokenizer.eos_token_id
    if eos in ids:
        ids = ids[: ids.index(eos) + 1]
    pad = tokenizer.pad_token_id
    while ids and ids[-1] == pad and pad != eos:
        ids.pop()
    return {"text": tokenizer.decode(ids, skip_special_tokens=True), "token_ids": ids}


def select_outputs(outputs: list[dict], run, plan, prompts: int) -> list[dict]:
    """Keep one candidate per prompt by the plan's `select` (docs/semantics.md §7)."""
    select, per = plan.select, plan.sample.count
    scores = candidate_scores(run, select)
    chosen = []
    for p in range(prompts):
        group = list(range(p * per, (p + 1) * per))
        if select.mode == "vote":
            answers = {i: extract_answer(outputs[i]["text"]) for i in group}
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


def candidate_scores(run, select) -> list[float]:
    state = run.executor.history[-1]
    decode = [r for r in state.records if r["phase"] == "decode"]
    rows = state.keys.shape[0]
    if not decode:
        return [0.0] * rows
    norms = torch.stack([torch.stack([r["norms"][layer][:, -1] for layer in select.layers], dim=-1)
                         for r in decode])  # [steps, rows, layers]
    thresholds = torch.tensor([select.thresholds.get(layer, 0.0) for layer in select.layers], device=norms.device)
    live = torch.stack([r["valid"][:, -1] for r in decode])  # [steps, rows]
    weight = live[..., None].float()
    if select.metric == "total":
        per_step = norms
    elif select.metric == "events":
        per_step = (norms > thresholds).float()
    else:
        per_step = (norms - thresholds).clamp(min=0)
    if select.metric == "late_area":
        lengths = live.sum(dim=0)
        position = torch.cumsum(live.long(), dim=0)
        weight = weight * (position > (1 - select.late_fraction) * lengths)[..., None].float()
    score = (per_step * weight).sum(dim=(0, 2))
    if select.per_token:
        score = score / live.sum(dim=0).clamp(min=1)
    return score.tolist()


def extract_answer(text: str) -> str:
    """The last `Answer: X` line, else the last number, else the stripped text."""
    found = re.findall(r"answer\s*[:：]\s*(.+)", text, flags=re.IGNORECASE)
    if found:
        return found[-1].strip().rstrip(".")
    numbers = re.findall(r"-?\d+(?:\.\d+)?", text.replace(",", ""))
    return numbers[-1] if numbers else text.strip()
