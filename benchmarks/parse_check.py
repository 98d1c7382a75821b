"""Parse + check + compile time of each shipped strategy (median of 50), for a model of L layers.

    python benchmarks/parse_check.py --layers 28
"""

from __future__ import annotations

import argparse
import statistics
import time

from l2lang import compile_plan, load_program
from l2lang.lang.parser import _lark
from l2lang.resources import shipped_strategies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    start = time.perf_counter()
    _lark()
    print(f"grammar load (once per process): {(time.perf_counter() - start) * 1000:.0f} ms")
    print("| strategy | bytes | rules after expansion | parse + check + compile (median ms) |")
    print("|---|---|---|---|")
    for name, path in shipped_strategies().items():
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            plan = compile_plan(load_program(name), args.layers, 896)
            times.append(time.perf_counter() - start)
        print(f"| {name} | {path.stat().st_size} | {len(plan.rules)} | {statistics.median(times) * 1000:.2f} |")


if __name__ == "__main__":
    main()
