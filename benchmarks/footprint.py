"""Memory a strategy holds over a long generation: per-step records (the trace), banks, estimators.

    python benchmarks/footprint.py [--model smollm2-135m] [--batch 1] [--tokens 1000] [--strategies ...]

Counts the bytes of every tensor the executor keeps for the generate call (walking its state), and
the process's resident memory before and after (and its peak), from /proc/self/status.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from throughput import PROMPT, load, parse_strategy  # noqa: E402

from l2lang.backends.hf.attach import Run  # noqa: E402
from l2lang.backends.hf.generate import encode  # noqa: E402

STRATEGIES = ["baseline", "alrr:warmup=5", "erss:warmup=5,streak_length=4"]


def tensors_in(value) -> list[torch.Tensor]:
    if torch.is_tensor(value):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in tensors_in(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in tensors_in(v)]
    if hasattr(value, "__dict__"):
        return tensors_in(vars(value))
    return []


def megabytes(tensors: list[torch.Tensor]) -> float:
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values()) / 2**20


def rss_mb(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m", help="an alias, a folder, or `tiny`")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model, tokenizer = load(args.model)
    batch = encode(tokenizer, [PROMPT] * args.batch, None)
    print(f"model {args.model}, batch {args.batch}, {args.tokens} new tokens")
    print("| configuration | records MB | banks MB | estimators and counters MB | tensors held | RSS growth MB "
          "| peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    kwargs = dict(max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False,
                  pad_token_id=tokenizer.pad_token_id)
    before = rss_mb()
    model.generate(**batch, **kwargs)
    print(f"| plain generate | — | — | — | — | {rss_mb() - before:.1f} | {rss_mb('VmHWM'):.0f} |", flush=True)
    for text in args.strategies:
        name, strategy = parse_strategy(text)
        before = rss_mb()
        with Run(strategy, model, tokenizer, 0, caller_selects=True) as run:
            model.generate(**batch, **kwargs)
        state = run.executor.table
        records = tensors_in(run.executor.records)
        banks = tensors_in(state.banks)
        rest = [t for k, v in vars(state).items() if k not in ("banks", "plan") for t in tensors_in(v)]
        held = len(records) + len(banks) + len(rest)
        print(f"| {name} | {megabytes(records):.2f} | {megabytes(banks):.2f} | {megabytes(rest):.3f} | {held} "
              f"| {rss_mb() - before:.1f} | {rss_mb('VmHWM'):.0f} |", flush=True)
        del run, state


if __name__ == "__main__":
    main()
