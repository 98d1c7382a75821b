"""Tokens/s of plain `model.generate` vs strategies, interleaved in one process, median of repeats.

    python benchmarks/throughput.py --model smollm2-135m --batch 1 8 --tokens 64 --repeats 5 \
        --strategies baseline alrr "alrr:warmup=20"

Each configuration runs after the plain baseline in the same round, after one warm-up round; the
printed ratio is strategy tokens/s over plain tokens/s (median over rounds).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from l2lang import load_program
from l2lang.runtime.generate import encode
from l2lang.runtime.models import load_model
from l2lang.runtime.session import Strategy

PROMPT = "Tom has 3 apples and buys 5 more. How many apples does he have now? Think step by step."


def parse_strategy(text: str) -> tuple[str, Strategy]:
    name, _, params = text.partition(":")
    overrides = dict(item.split("=", 1) for item in params.split(",") if item)
    return text, Strategy(load_program(name, overrides))


def timed(model, batch, tokens: int, strategy: Strategy | None, tokenizer) -> tuple[float, int]:
    kwargs = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                  pad_token_id=tokenizer.pad_token_id)
    start = time.perf_counter()
    if strategy is None:
        out = model.generate(**batch, **kwargs)
        passes = 0
    else:
        with strategy.attach(model, tokenizer) as run:
            out = model.generate(**batch, **kwargs)
        passes = run.report().extra_layer_passes
    elapsed = time.perf_counter() - start
    generated = (out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0]
    return generated / elapsed, passes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--strategies", nargs="+", default=["baseline", "alrr", "alrr:warmup=20"])
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    loaded = load_model(args.model)
    strategies = [parse_strategy(s) for s in args.strategies]
    print(f"model {args.model}, {args.tokens} new tokens, median of {args.repeats}, "
          f"torch threads {torch.get_num_threads()}")
    print("| batch | configuration | tokens/s | ratio to plain | extra layer passes / token |")
    print("|---|---|---|---|---|")
    for size in args.batch:
        batch = encode(loaded.tokenizer, [PROMPT] * size, None)
        rows: dict[str, list[tuple[float, float, int]]] = {name: [] for name, _ in strategies}
        plain_runs = []
        for round_index in range(args.repeats + 1):
            for name, strategy in strategies:
                plain, _ = timed(loaded.model, batch, args.tokens, None, loaded.tokenizer)
                speed, passes = timed(loaded.model, batch, args.tokens, strategy, loaded.tokenizer)
                if round_index:  # round 0 warms up
                    rows[name].append((speed, speed / plain, passes))
                    plain_runs.append(plain)
        print(f"| {size} | plain generate | {statistics.median(plain_runs):.1f} | 1.000 | 0 |")
        for name, runs in rows.items():
            speed = statistics.median(r[0] for r in runs)
            ratio = statistics.median(r[1] for r in runs)
            passes = statistics.median(r[2] for r in runs) / (args.tokens - 1)
            print(f"| {size} | {name} | {speed:.1f} | {ratio:.3f} | {passes:.2f} |")


if __name__ == "__main__":
    main()
