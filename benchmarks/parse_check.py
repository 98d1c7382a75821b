"""Parse + check + compile time of each shipped strategy (median of 50), for a model of L layers, and the
set-up of the executor that runs the plan (done again for every `attach`, so for every generate call).

    python benchmarks/parse_check.py --layers 28
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from l2lang import compile_plan, load_program
from l2lang.engine.backend import Capabilities
from l2lang.engine.executor import Executor
from l2lang.lang.parser import _lark
from l2lang.resources import shipped_strategies

HIDDEN = 896


class Backend:  # (the executor's set-up asks a backend only what it can do)
    capabilities = Capabilities()


def set_up(plan) -> None:
    """What attaching a strategy builds for each generate call: the executor, its compiled expressions and
    its request table."""
    vectors = {name: torch.zeros(HIDDEN) for name in plan.vectors}
    Executor(plan, Backend(), vectors, seed=0, hidden_size=HIDDEN, dtype=torch.float32, device=torch.device("cpu"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    start = time.perf_counter()
    _lark()
    print(f"grammar load (once per process): {(time.perf_counter() - start) * 1000:.0f} ms")
    print("| strategy | bytes | rules after expansion | parse + check + compile (median ms) | executor set-up "
          "(median ms) |")
    print("|---|---|---|---|---|")
    for name, path in shipped_strategies().items():
        times, set_ups = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            plan = compile_plan(load_program(name), args.layers, HIDDEN)
            middle = time.perf_counter()
            set_up(plan)
            times.append(middle - start)
            set_ups.append(time.perf_counter() - middle)
        print(f"| {name} | {path.stat().st_size} | {len(plan.rules)} | {statistics.median(times) * 1000:.2f} | "
              f"{statistics.median(set_ups) * 1000:.2f} |")


if __name__ == "__main__":
    main()
