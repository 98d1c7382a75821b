"""Per decode step: aten ops, host reads of tensor values, and Python calls in l2lang, at batch 1 and 16.

    python benchmarks/dispatch_counts.py [--model tiny] [--tokens 24] [--strategies ...]

The CPU stand-in for a GPU sync check. Every host read of a tensor value (`.item()`, `bool(t)`,
`int(t)`: what blocks a GPU stream) dispatches `aten::_local_scalar_dense`, and every data-dependent
shape (`nonzero`, masked selection) waits for the device too; a `TorchDispatchMode` counts both.
The columns are per decode step, with the strategy attached minus plain `model.generate`, so what
generate itself does (its stopping check reads one value per step) cancels. A per-row loop shows up as
counts that grow with the batch; vectorised work has the same counts at batch 1 and 16.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).parent))
from throughput import PROMPT, load, parse_strategy  # noqa: E402

from l2lang.backends.hf.attach import Run, plan_for
from l2lang.backends.hf.generate import encode
from l2lang.engine.select import candidate_scores  # noqa: E402

SYNCING = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.masked_select.default",
           "aten._unique2.default", "aten.repeat_interleave.Tensor"}
STRATEGIES = ["baseline", "alrr", "alrr:warmup=5", "erss:warmup=5,streak_length=4", "suppress-high:warmup=5",
              "suppress-random:warmup=5", "lrs:n=4"]


class Counting(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def count(model, tokenizer, batch, tokens: int, strategy=None) -> tuple[int, int, int]:
    """(aten ops, syncing ops, l2lang Python calls) over one generate call."""
    kwargs = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    plan = plan_for(strategy, model) if strategy else None
    if plan is not None and plan.sample is not None:
        kwargs.update(do_sample=True, num_return_sequences=plan.sample.count, temperature=plan.sample.temperature)
    calls = 0
    root = str(Path(__file__).parents[1] / "l2lang")

    def profile(frame, event, arg):
        nonlocal calls
        if event == "call" and frame.f_code.co_filename.startswith(root):
            calls += 1

    mode = Counting()
    torch.manual_seed(0)
    sys.setprofile(profile)
    try:
        with mode:
            if strategy is None:
                model.generate(**batch, **kwargs)
            else:
                with Run(strategy, model, tokenizer, 0, caller_selects=True) as run:
                    model.generate(**batch, **kwargs)
                if plan.select is not None:
                    candidate_scores(*run.last_call(), plan.select)
    finally:
        sys.setprofile(None)
    syncs = sum(n for op, n in mode.ops.items() if op in SYNCING)
    return sum(mode.ops.values()), syncs, calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model, tokenizer = load(args.model)
    steps = args.tokens - 1
    print(f"model {args.model}, {args.tokens} new tokens; per decode step, strategy minus plain generate")
    print("| configuration | aten ops b1 | aten ops b16 | host reads/syncs b1 | host reads/syncs b16 "
          "| l2lang calls b1 | l2lang calls b16 |")
    print("|---|---|---|---|---|---|---|")
    for text in args.strategies:
        name, strategy = parse_strategy(text)
        cells = []
        for size in (1, 16):
            batch = encode(tokenizer, [PROMPT] * size, None)
            plain = count(model, tokenizer, batch, args.tokens)
            mine = count(model, tokenizer, batch, args.tokens, strategy)
            cells.append([(m - p) / steps for m, p in zip(mine, plain)])
        (ops1, sync1, calls1), (ops16, sync16, calls16) = cells
        print(f"| {name} | {ops1:.1f} | {ops16:.1f} | {sync1:.2f} | {sync16:.2f} | {calls1:.1f} | {calls16:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
