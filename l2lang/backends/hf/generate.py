"""`l2lang.generate` on a Hugging Face model: prompts in, texts out, with a strategy attached."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from l2lang.backends.hf.attach import Run
from l2lang.engine.generation import Generation
from l2lang.engine.records import build_report, request_rows
from l2lang.engine.select import candidate_scores, select_outputs
from l2lang.engine.strategy import Strategy
from l2lang.errors import GenerationError


def encode(tokenizer, prompts: list[str], chat: bool | None) -> dict:
    """Left-padded batch (`input_ids`, `attention_mask`) of `prompt_token_ids`. The tokenizer is not changed."""
    return left_padded(prompt_token_ids(tokenizer, prompts, chat), pad_token_id(tokenizer))


def prompt_token_ids(tokenizer, prompts: list[str], chat: bool | None) -> list[list[int]]:
    """Each prompt's tokens, through the chat template when the tokenizer has one (unless chat=False);
    empty prompts, prompts that give no tokens and text that is not text are refused."""
    use_chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
    if use_chat and not getattr(tokenizer, "chat_template", None):
        raise GenerationError.one("--chat: this tokenizer has no chat template", path="<tokenizer>")
    if not prompts:
        raise GenerationError.one("no prompts to generate for", path="<generate>")
    for number, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise GenerationError.one(f"prompt {number} is a {type(prompt).__name__}, not text", path="<generate>")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise GenerationError.one(f"prompt {number} is not valid text: it holds a lone surrogate "
                                      f"({prompt[exc.start]!a}) at character {exc.start + 1}", path="<generate>") from None
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True) if use_chat else p for p in prompts]
    ids = [tokenizer(text, add_special_tokens=not use_chat)["input_ids"] for text in texts]
    for number, row in enumerate(ids):
        if not row:
            raise GenerationError.one(f"prompt {number} ({prompts[number][:40]!r}) gives no tokens: there is nothing "
                                      "to continue", path="<generate>", hint="give the model some text")
    return ids


def left_padded(ids: list[list[int]], pad: int) -> dict:
    """Token rows as one batch (`input_ids`, `attention_mask`), padded on the left with `pad`."""
    width = max(map(len, ids))
    return {"input_ids": torch.tensor([[pad] * (width - len(row)) + row for row in ids], dtype=torch.long),
            "attention_mask": torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in ids],
                                           dtype=torch.long)}


def token_rows(tokenizer, rows: list[list[int]], *, what: str = "prompt") -> list[list[int]]:
    """Token rows given by a caller, refused unless each is a non-empty list of the tokenizer's ids."""
    if not rows:
        raise GenerationError.one(f"no {what}s", path="<generate>")
    size = len(tokenizer)
    for number, row in enumerate(rows):
        if not isinstance(row, (list, tuple)) or not row:
            raise GenerationError.one(f"{what} {number} has no tokens", path="<generate>")
        bad = next((t for t in row if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < size), None)
        if bad is not None:
            raise GenerationError.one(f"{what} {number} holds {bad!r}, which is not a token id of this tokenizer "
                                      f"(0 to {size - 1})", path="<generate>")
    return [list(row) for row in rows]


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad token, else its EOS (what padding is filled with; it is never attended to)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return pad if pad is not None else 0


def generate(model, tokenizer, strategy: Strategy, prompts: list[str], *, seed: int = 0, chat: bool | None = None,
             observe_all: bool = False, **generation_kwargs) -> Generation:
    """Generate for every prompt with `strategy` attached; greedy unless sampling is asked for.

    A strategy with `sample N` generates N candidates per prompt and keeps the one `select` picks.
    `observe_all` records the norm after every layer (for traces), not only the layers the plan reads.
    """
    check_settings(seed, generation_kwargs)
    return generate_batch(model, tokenizer, strategy, encode(tokenizer, prompts, chat), seed=seed,
                          observe_all=observe_all, **generation_kwargs)


def generate_ids(model, tokenizer, strategy: Strategy, prompts: list[list[int]], *, seed: int = 0,
                 stop: Sequence[str] = (), **generation_kwargs) -> Generation:
    """`generate` for prompts given as token ids (fed as they are). With `stop` strings, a sequence also ends
    once the text it generated (not the prompt) contains one of them, or at the tokenizer's end-of-sequence
    token; the rest of its row is that token, so the strategy sees the sequence finish there, as at any end
    of sequence, and its output ends there."""
    check_settings(seed, generation_kwargs)
    batch = left_padded(token_rows(tokenizer, prompts), pad_token_id(tokenizer))
    stop = [s for s in stop if s]
    if stop:
        eos = tokenizer.eos_token_id
        if eos is None:
            raise GenerationError.one("stop strings need a tokenizer with an end-of-sequence token", path="<generate>")
        ends = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        ends = set(ends) if isinstance(ends, (list, tuple)) else {ends} if ends is not None else set()
        criteria = StopStrings(tokenizer, stop, batch["input_ids"].shape[1])
        generation_kwargs.update(stopping_criteria=StoppingCriteriaList([criteria]), pad_token_id=eos,
                                 eos_token_id=sorted(ends | {eos}))
    return generate_batch(model, tokenizer, strategy, batch, seed=seed, **generation_kwargs)


class StopStrings(StoppingCriteria):
    """Each row ends once the text generated after `start` contains one of the strings (decoded from its last
    tokens: the longest string's token count and two more, as lm-evaluation-harness looks back)."""

    def __init__(self, tokenizer, strings: list[str], start: int):
        self.tokenizer, self.strings, self.start = tokenizer, strings, start
        self.lookback = max(len(tokenizer.encode(s, add_special_tokens=False)) for s in strings) + 2

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        tails = self.tokenizer.batch_decode(input_ids[:, self.start:][:, -self.lookback:])
        return torch.tensor([any(s in tail for s in self.strings) for tail in tails], dtype=torch.bool,
                            device=input_ids.device)


@torch.no_grad()
def generate_batch(model, tokenizer, strategy: Strategy, batch: dict, *, seed: int, observe_all: bool = False,
                   **generation_kwargs) -> Generation:
    """Generate for a left-padded batch (`input_ids`, `attention_mask`) with `strategy` attached."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    check_context(model, batch["input_ids"].shape[1], generation_kwargs.get("max_new_tokens"))
    run = Run(strategy, model, tokenizer, seed, observe_all=observe_all, caller_selects=True)
    plan = run.plan
    kwargs = {"do_sample": False, **generation_kwargs}
    if plan.sample is not None:
        kwargs.update(do_sample=True, num_return_sequences=plan.sample.count, temperature=plan.sample.temperature,
                      top_p=plan.sample.top_p, top_k=plan.sample.top_k or None)
    elif not kwargs.get("do_sample") and any(k in generation_kwargs for k in ("temperature", "top_p", "top_k")):
        raise GenerationError.one("temperature/top_p/top_k need sampling: pass do_sample=True (or --temperature > 0)",
                                  path="<generate>")
    if kwargs.get("pad_token_id") is None:
        kwargs["pad_token_id"] = pad_token_id(tokenizer)
    torch.manual_seed(seed)
    with run, decode_progress(model, kwargs.get("max_new_tokens") or 0, "generating"):
        sequences = model.generate(**batch, **kwargs)
    records, uids = run.last_call()
    report = build_report(plan, records, uids, run.executor.warn_nonfinite())
    per_request = request_rows(records, uids)
    rows = [per_request[uid] for uid in uids]
    new_tokens = sequences[:, batch["input_ids"].shape[1]:]
    outputs = [_output(tokenizer, row) for row in new_tokens]
    lengths = [len(o["token_ids"]) for o in outputs]
    if plan.select is not None:
        outputs = select_outputs(outputs, candidate_scores(rows, plan.select), plan)
    prompt_ids = [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
    return Generation(outputs, report, plan, rows, uids, prompt_ids, lengths)


MAX_SEED = 2**64 - 1  # what torch.manual_seed takes


def check_settings(seed: int, kwargs: dict) -> None:
    """Refuse generation settings transformers or torch would fail on later with a traceback."""
    def refuse(message: str) -> GenerationError:
        return GenerationError.one(message, path="<generate>")

    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise refuse(f"the seed must be a whole number from 0 to 2**64-1, not {str(seed)[:30]}")
    tokens = kwargs.get("max_new_tokens")
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1):
        raise refuse(f"max_new_tokens must be a whole number of at least 1, not {tokens!r}")
    temperature = kwargs.get("temperature")
    if temperature is not None and not (isinstance(temperature, (int, float)) and 0 < temperature < float("inf")):
        raise refuse(f"temperature must be a finite number above 0, not {temperature!r}")
    top_p = kwargs.get("top_p")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise refuse(f"top_p must be in (0, 1], not {top_p!r}")
    top_k = kwargs.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise refuse(f"top_k must be a whole number of at least 1 (or None: every token), not {top_k!r}")


def context_length(model) -> int | None:
    """The positions the model has (its config's `max_position_embeddings` or `n_positions`), if it says."""
    config = getattr(model, "config", None)
    text = getattr(config, "text_config", None) or config
    limit = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)
    return limit if isinstance(limit, int) else None


def check_context(model, prompt_tokens: int, new_tokens: int | None) -> None:
    """Refuse a prompt and budget longer than the positions the model has (GPT-2's position table
    would fail with an index error; a rotary model would run past what it was trained for)."""
    limit = context_length(model)
    if limit is not None and new_tokens is not None and prompt_tokens + new_tokens > limit:
        raise GenerationError.one(f"the prompt ({prompt_tokens} tokens) and max_new_tokens ({new_tokens}) go past the "
                                  f"model's {limit} positions", path="<generate>",
                                  hint=f"ask for at most {max(limit - prompt_tokens, 0)} new tokens")


def _output(tokenizer, row: torch.Tensor) -> dict:
    ids = row.tolist()
    eos = tokenizer.eos_token_id
    if eos in ids:
        ids = ids[: ids.index(eos) + 1]
    pad = tokenizer.pad_token_id
    while ids and ids[-1] == pad and pad != eos:
        ids.pop()
    return {"text": tokenizer.decode(ids, skip_special_tokens=True), "token_ids": ids}


@contextmanager
def decode_progress(model: torch.nn.Module, total: int, description: str) -> Iterator[None]:
    """A bar that advances with each forward pass of `model` (one per generated token)."""
    if not _on_terminal():
        yield
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc=description, unit="tok", file=sys.stderr, leave=False)

    def tick(*_) -> None:  # a forward hook must return None, or it replaces the output
        bar.update(1)

    handle = model.register_forward_hook(tick)
    try:
        yield
    finally:
        handle.remove()
        bar.close()


def _on_terminal() -> bool:
    return sys.stderr.isatty()
