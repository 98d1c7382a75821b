"""Per decode step: tensor operations, host reads of tensor values, and Python calls in l2lang.

    python benchmarks/dispatch_counts.py [--model tiny28] [--tokens 24] [--batch 1 16] [--strategies ...]

The CPU stand-in for what a GPU pays per step. Columns, per decode step, with the strategy attached
minus plain `model.generate` (so what generate itself does cancels):

- `aten ops`: every operator dispatched (`TorchDispatchMode`), views included: the figure the issue's
  "before" was measured in;
- `kernels`: operators that would launch work on a GPU (views, reshapes and other metadata-only
  operators left out), counted by the profiler at the top level, a compiled region counting once —
  shown twice: as l2lang runs on a CPU, and with the adaptive-threshold estimators compiled
  (L2LANG_COMPILE=1, what a GPU gets);
- `host reads`: reads of a tensor value by the host (`.item()`, `bool(t)`, data-dependent shapes: what
  stalls a GPU), on a CPU and under the GPU policy (no "skip when the mask is empty" reads);
- `l2lang calls`: Python calls into l2lang.
A per-row loop shows up as counts that grow with the batch; vectorised work has the same counts at
every batch size.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).parent))
from throughput import PROMPT, load, parse_strategy  # noqa: E402

from l2lang.backends.hf.attach import Run, plan_for  # noqa: E402
from l2lang.backends.hf.generate import encode  # noqa: E402
from l2lang.engine.records import request_rows  # noqa: E402
from l2lang.engine.select import candidate_scores  # noqa: E402

SYNCING = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "repeat_interleave", "item"}
METADATA = {"view", "_unsafe_view", "reshape", "slice", "select", "unsqueeze", "squeeze", "expand", "expand_as",
            "as_strided", "alias", "unbind", "split", "t", "transpose", "permute", "detach", "lift_fresh",
            "empty", "empty_strided", "resolve_conj", "resolve_neg", "result_type", "is_nonzero", "narrow",
            "numpy_T", "_reshape_alias", "split_with_sizes", "chunk", "to"}  # (`to` counts when it copies, below)
STRATEGIES = ["baseline", "alrr", "alrr:blowup=0,warmup=5", "erss:warmup=5,streak_length=4", "suppress-high:warmup=5",
              "suppress-random:warmup=5", "lrs:n=4"]


class Counting(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.__name__.split(".")[0]] += 1
        return func(*args, **(kwargs or {}))


def generate(model, tokenizer, batch, tokens: int, strategy=None, gpu_policy: bool = False, sampled=None) -> None:
    kwargs = dict(max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=tokenizer.pad_token_id)
    plan = plan_for(strategy, model) if strategy else None
    sampled = sampled or {"do_sample": False}
    if plan is not None:
        sampled = sampling(plan)
    torch.manual_seed(0)
    if strategy is None:  # plain generate, sampling as `sampled` would
        model.generate(**batch, **kwargs, **sampled)
        return
    with Run(strategy, model, tokenizer, 0, caller_selects=True) as run:
        run.executor.skip_idle = not gpu_policy
        model.generate(**batch, **kwargs, **sampled)
    if plan.select is not None:
        candidate_scores(list(request_rows(*run.last_call()).values()), plan.select)


def sampling(plan) -> dict:
    """How a plan decodes: greedy, or sampling N return sequences (plain generate is compared doing the same)."""
    if plan.sample is None:
        return {"do_sample": False}
    return {"do_sample": True, "num_return_sequences": plan.sample.count, "temperature": plan.sample.temperature}


def count_dispatched(*args, **kwargs) -> tuple[int, int]:
    """(operators dispatched, l2lang Python calls) over one generate call."""
    calls = 0
    root = str(Path(__file__).parents[1] / "l2lang")

    def tracer(frame, event, arg):
        nonlocal calls
        if event == "call" and frame.f_code.co_filename.startswith(root):
            calls += 1

    mode = Counting()
    sys.setprofile(tracer)
    try:
        with mode:
            generate(*args, **kwargs)
    finally:
        sys.setprofile(None)
    return sum(mode.ops.values()), calls


def count_profiled(*args, **kwargs) -> tuple[int, int]:
    """(top-level operators that launch work, host reads) over one generate call, from the profiler."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        generate(*args, **kwargs)
    kernels = reads = 0
    for event in prof.events():
        name = event.name
        parent = event.cpu_parent
        nested = parent is not None and (parent.name.startswith("aten::") or "Compiled" in parent.name)
        if name.startswith("aten::"):
            op = name[len("aten::"):]
            reads += op in SYNCING
            copies = op == "_to_copy" and parent is not None and parent.name == "aten::to"  # a `to` that copies
            kernels += copies or (not nested and op not in METADATA and op not in SYNCING)
        elif name.startswith("## Call CompiledFxGraph"):
            kernels += 1
    return kernels, reads


def per_step(fn, model, tokenizer, batch, tokens: int, strategy, **kwargs) -> list[float]:
    mine = fn(model, tokenizer, batch, tokens, strategy, **kwargs)
    plain = fn(model, tokenizer, batch, tokens, sampled=sampling(plan_for(strategy, model)))
    return [(m - p) / (tokens - 1) for m, p in zip(mine, plain)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny28")
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model, tokenizer = load(args.model)
    print(f"model {args.model}, {args.tokens} new tokens; per decode step, strategy minus plain generate; "
          f"batches {args.batch}")
    print("| configuration | aten ops | kernels (CPU) | kernels (compiled estimators) | host reads (CPU) "
          "| host reads (GPU policy) | l2lang calls |")
    print("|---|---|---|---|---|---|---|")
    for text in args.strategies:
        name, strategy = parse_strategy(text)
        cells: list[list[str]] = [[] for _ in range(6)]
        for size in args.batch:
            batch = encode(tokenizer, [PROMPT] * size, None)
            ops, calls = per_step(count_dispatched, model, tokenizer, batch, args.tokens, strategy)
            kernels, reads = per_step(count_profiled, model, tokenizer, batch, args.tokens, strategy)
            _, gpu_reads = per_step(count_profiled, model, tokenizer, batch, args.tokens, strategy, gpu_policy=True)
            os.environ["L2LANG_COMPILE"] = "1"
            try:
                per_step(count_profiled, model, tokenizer, batch, args.tokens, strategy)  # compiles
                compiled, _ = per_step(count_profiled, model, tokenizer, batch, args.tokens, strategy)
            finally:
                os.environ.pop("L2LANG_COMPILE")
            for cell, value in zip(cells, (ops, kernels, compiled, reads, gpu_reads, calls)):
                cell.append(f"{value:.1f}" if cell is not cells[3] and cell is not cells[4] else f"{value:.2f}")
        print(f"| {name} | " + " | ".join(" / ".join(cell) for cell in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
