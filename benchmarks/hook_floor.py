"""What the least per-layer work ALRR needs costs, hand-written, against plain `model.generate`.

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/hook_floor.py --model tiny28 --batch 1

ALRR must, after each of its layers and before the next one runs, take the layer's norm, compare it
with its thresholds and find whether any row recurses. This script wraps the `forward` of layers
L-L/4..L-2 with exactly that (fixed thresholds that never fire: no recursion, no estimator) and
measures three levels, interleaved with plain generate (median of rounds, after a warm-up round):
`wrapper` (the wrapper alone), `norm` (plus the norm), `decide` (plus two comparisons and the empty
check). The gap between `decide` and l2lang's `alrr:blowup=0` is l2lang's own bookkeeping and its P²
estimators (docs/performance.md, issue 16).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from throughput import PROMPT, load


def wrapped(forward, level: str, low: torch.Tensor, high: torch.Tensor):
    def layer_forward(*args, **kwargs):
        output = forward(*args, **kwargs)
        if level == "wrapper":
            return output
        hidden = output[0] if isinstance(output, tuple) else output
        norm = torch.linalg.vector_norm(hidden.view(-1, hidden.shape[-1]), dim=-1, dtype=torch.float32)
        if level == "decide" and bool(((low < norm) & (norm < high)).any()):
            raise AssertionError("the thresholds were meant never to fire")
        return output
    return layer_forward


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny28")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model, tokenizer = load(args.model)
    batch = tokenizer([PROMPT] * args.batch, return_tensors="pt")
    kwargs = dict(max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False,
                  pad_token_id=tokenizer.pad_token_id)
    layers = model.model.layers
    count = len(layers)
    chosen = range(count - count // 4, count - 1)
    low, high = torch.tensor([1e30]), torch.tensor([2e30])  # (tensors, as a request's thresholds are)
    print(f"model {args.model}, batch {args.batch}, layers {chosen.start}..{chosen.stop - 1} wrapped, "
          f"{args.tokens} new tokens, median of {args.repeats}")
    for level in ("wrapper", "norm", "decide"):
        plain, hooked = [], []
        for round_ in range(args.repeats + 1):
            start = time.perf_counter()
            model.generate(**batch, **kwargs)
            middle = time.perf_counter()
            for i in chosen:
                layers[i].forward = wrapped(layers[i].forward, level, low, high)
            try:
                model.generate(**batch, **kwargs)
            finally:
                for i in chosen:
                    del layers[i].forward
            if round_:  # (the first round warms up)
                plain.append(middle - start)
                hooked.append(time.perf_counter() - middle)
        ratio = statistics.median(p / h for p, h in zip(plain, hooked))
        extra = (statistics.median(hooked) - statistics.median(plain)) / args.tokens * 1e3
        print(f"{level:8s} ratio to plain {ratio:.3f}, {extra:.3f} ms per step")


if __name__ == "__main__":
    main()
