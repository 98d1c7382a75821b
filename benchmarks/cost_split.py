"""Where a strategy that never acts spends its time per decode step, by switching parts of the executor off.

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/cost_split.py --model tiny28 --batch 1 \
        --strategy "alrr:blowup=0,warmup=5"

Each round runs plain `model.generate`, then the strategy with every part of the executor on (`all`),
then with the rules' decisions off (`no decisions`: no condition is evaluated, so no action runs), with
the estimators' updates off (`no estimators`), and with both off (what is left: observing, the layer
wrappers, the step boundaries). Each figure is the median over rounds (after a warm-up round) of the
extra milliseconds per decode step over plain generate in the same round. Switching a part off changes
what a strategy does, so this is only meaningful for one whose rules never fire (its thresholds out of
reach, as `alrr:blowup=0`): the script refuses one that intervened.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import ExitStack
from unittest import mock

import torch
from throughput import PROMPT, load, parse_strategy

from l2lang.backends.hf.attach import Run
from l2lang.backends.hf.generate import encode
from l2lang.engine.executor import Executor

PARTS = {"decisions": ("_decide", lambda self, rule: None),
         "estimators": ("_feed_estimators", lambda self, live: None)}
VARIANTS = {"all": (), "no decisions": ("decisions",), "no estimators": ("estimators",),
            "neither": ("decisions", "estimators")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny28")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--strategy", default="alrr:blowup=0,warmup=5")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model, tokenizer = load(args.model)
    name, strategy = parse_strategy(args.strategy)
    batch = encode(tokenizer, [PROMPT] * args.batch, None)
    kwargs = dict(max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False,
                  pad_token_id=tokenizer.pad_token_id)

    def seconds(variant: str | None) -> float:
        start = time.perf_counter()
        if variant is None:
            model.generate(**batch, **kwargs)
            return time.perf_counter() - start
        with ExitStack() as stack:
            for part in VARIANTS[variant]:
                stack.enter_context(mock.patch.object(Executor, *PARTS[part]))
            run = stack.enter_context(Run(strategy, model, tokenizer, 0))
            model.generate(**batch, **kwargs)
        elapsed = time.perf_counter() - start
        if run.report().total():
            raise SystemExit(f"{name} intervened: switching its parts off would change what it does")
        return elapsed

    plain: list[float] = []
    extra: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for round_ in range(args.repeats + 1):
        base = seconds(None)
        timed = {variant: seconds(variant) for variant in VARIANTS}
        if round_:  # (the first round warms up)
            plain.append(base)
            for variant, value in timed.items():
                extra[variant].append((value - base) / args.tokens * 1e3)
    step = statistics.median(plain) / args.tokens * 1e3
    print(f"model {args.model}, batch {args.batch}, {name}, {args.tokens} new tokens, median of {args.repeats}; "
          f"plain decode step {step:.2f} ms")
    for variant, values in extra.items():
        cost = statistics.median(values)
        print(f"{variant:14s} +{cost:.3f} ms per step (ratio to plain {step / (step + cost):.3f})")


if __name__ == "__main__":
    main()
