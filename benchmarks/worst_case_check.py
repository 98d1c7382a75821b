"""`l2lang check` on the costliest inputs at the limits we know of (tests/worst_cases.py), as a user runs it:
one process per case, wall-clock and CPU seconds (interpreter start-up included), for a model of 1024 layers.

    python benchmarks/worst_case_check.py
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.worst_cases import LAYERS, cases, write  # noqa: E402


def main() -> None:
    print(f"| input (`l2lang check root.l2 --layers {LAYERS}`) | bytes | exit | wall s | CPU s |")
    print("|---|---|---|---|---|")
    worst = 0.0
    for name, files in cases().items():
        with tempfile.TemporaryDirectory() as folder:
            root = write(files, Path(folder))
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            run = subprocess.run([sys.executable, "-m", "l2lang.cli.main", "check", str(root), "--layers", str(LAYERS)],
                                 capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        if "Traceback" in run.stderr:
            raise SystemExit(f"{name}: traceback\n{run.stderr}")
        size = sum(len(text.encode("utf-8")) for text in files.values())
        worst = max(worst, wall)
        print(f"| {name} | {size} | {run.returncode} | {wall:.2f} | {cpu:.2f} |")
    print(f"\nslowest: {worst:.2f} s wall")


if __name__ == "__main__":
    main()
