"""Mutation testing of the engine: break the code one small way at a time and see whether the tests notice.

    .venv/bin/python scripts/mutate.py --list                      # every mutation site, numbered
    .venv/bin/python scripts/mutate.py --sample 150 --seed 0       # run a reproducible random sample
    .venv/bin/python scripts/mutate.py --only 17 42                # run chosen mutants

Each mutant changes one expression of one module (a comparison or arithmetic operator swapped, a
boolean connective flipped, a `not` dropped, a small integer constant moved by one, True/False
swapped), is written into a scratch copy of the repository, and the semantic tests run against it
(`pytest -x`, so a killed mutant stops at the first failure). A mutant survives when every test
passes; a mutant that makes the tests time out counts as killed (the suite noticed it). The survivors
are printed with their diff line, for a person to kill with a test or to judge equivalent.
"""

from __future__ import annotations

import argparse
import ast
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("l2lang/engine/executor.py", "l2lang/engine/state.py", "l2lang/engine/select.py",
           "l2lang/engine/scores.py", "l2lang/plan/compile.py")
TESTS = ("tests/test_engine_gaps.py", "tests/test_engine_edges.py", "tests/test_semantics.py", "tests/test_state.py",
         "tests/test_interpreter.py", "tests/test_reference.py", "tests/test_faithfulness.py", "tests/test_runtime.py",
         "tests/test_plan.py", "tests/test_scoring.py", "tests/test_golden.py", "tests/test_limits.py",
         "tests/test_errors.py", "tests/test_policies.py",
         "tests/test_vllm.py")  # (vLLM's tests run its engine; they are skipped where vLLM is not installed)
SWAPS: dict[type, type] = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
                           ast.NotEq: ast.Eq, ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
                           ast.And: ast.Or, ast.Or: ast.And, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd,
                           ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}


@dataclass(frozen=True)
class Mutant:
    module: str
    line: int
    col: int      # the expression's UTF-8 byte offsets in its line (as `ast` gives them)
    end_col: int
    before: str   # the source of the changed expression
    after: str


def _mutations(node: ast.AST) -> list[ast.AST]:
    """The one-step mutations of an expression node (not of its children)."""
    import copy

    out: list[ast.AST] = []
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in SWAPS:
        out.append(ast.Compare(node.left, [SWAPS[type(node.ops[0])]()], node.comparators))
    elif isinstance(node, ast.BinOp) and type(node.op) in SWAPS:
        out.append(ast.BinOp(node.left, SWAPS[type(node.op)](), node.right))
    elif isinstance(node, ast.BoolOp):
        out.append(ast.BoolOp(SWAPS[type(node.op)](), node.values))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        out.append(node.operand)
    elif isinstance(node, ast.Constant) and type(node.value) is bool:
        out.append(ast.Constant(not node.value))
    elif isinstance(node, ast.Constant) and type(node.value) is int and 0 <= node.value <= 64:
        out.append(ast.Constant(node.value + 1))
        if node.value:
            out.append(ast.Constant(node.value - 1))
    return [copy.copy(m) for m in out]


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the constant nodes that are docstrings (not mutated)."""
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            found.add(id(body[0].value))
    return found


def _skipped(tree: ast.AST) -> set[int]:
    """ids of nodes inside annotations, error messages and other text nobody tests by meaning."""
    skip = set()
    for node in ast.walk(tree):
        parts: list[ast.AST] = []
        if isinstance(node, (ast.AnnAssign, ast.arg)) and node.annotation is not None:
            parts.append(node.annotation)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
            parts.append(node.returns)
        if isinstance(node, (ast.JoinedStr, ast.Raise)):
            parts.append(node)
        for part in parts:
            skip.update(id(n) for n in ast.walk(part))
    return skip


def sites(module: str) -> list[Mutant]:
    source = (ROOT / module).read_text(encoding="utf-8")
    tree = ast.parse(source)
    skip = _skipped(tree) | _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in skip or not hasattr(node, "end_col_offset") or node.lineno != node.end_lineno:
            continue  # one-line expressions only, so the splice below is a plain text edit
        before = ast.get_source_segment(source, node)
        for mutated in _mutations(node):
            found.append(Mutant(module, node.lineno, node.col_offset, node.end_col_offset, before,
                                ast.unparse(mutated)))
    return sorted(set(found), key=lambda m: (m.module, m.line, m.col, m.end_col, m.after))


def apply(root: Path, mutant: Mutant) -> None:
    path = root / mutant.module
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    line = lines[mutant.line - 1].encode("utf-8")
    assert line[mutant.col:mutant.end_col].decode("utf-8") == mutant.before, mutant
    after = f"({mutant.after})" if " " in mutant.after else mutant.after
    lines[mutant.line - 1] = (line[:mutant.col] + after.encode("utf-8") + line[mutant.end_col:]).decode("utf-8")
    path.write_text("".join(lines), encoding="utf-8")


def run(root: Path, timeout: float, tests: tuple[str, ...] = TESTS) -> str:
    """'killed', 'survived' or 'timeout' for the scratch copy as it stands."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow", *tests]
    try:
        done = subprocess.run(command, cwd=root, capture_output=True, timeout=timeout,
                              env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home()),
                                   "PYTHONPATH": str(root), "TRANSFORMERS_VERBOSITY": "error"})
    except subprocess.TimeoutExpired:
        return "timeout"
    return "survived" if done.returncode == 0 else "killed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--sample", type=int, help="run this many mutants, drawn at random")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", type=int, nargs="*", help="run these numbered mutants")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--tests", nargs="+", default=list(TESTS),
                        help="test files to run (default: the semantic tests; e.g. only new tests, on survivors)")
    args = parser.parse_args()
    everything = [m for module in MODULES for m in sites(module)]
    if args.list:
        for number, m in enumerate(everything):
            print(f"{number:4d} {m.module}:{m.line}:{m.col}  {m.before}  ->  {m.after}")
        return
    chosen = list(range(len(everything)))
    if args.only:
        chosen = args.only
    elif args.sample:
        chosen = sorted(random.Random(args.seed).sample(chosen, min(args.sample, len(chosen))))
    scratch = Path(tempfile.mkdtemp(prefix="l2lang-mutants-"))
    copy = scratch / "repo"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info"))
    tests = tuple(args.tests)
    baseline = run(copy, args.timeout, tests)
    if baseline != "survived":
        sys.exit(f"the tests fail on the unmutated code ({baseline}); fix that first")
    outcomes: dict[str, list[int]] = {"killed": [], "survived": [], "timeout": []}
    print(f"{len(everything)} mutation sites in {', '.join(MODULES)}; running {len(chosen)}", flush=True)
    for number in chosen:
        mutant = everything[number]
        original = (copy / mutant.module).read_text(encoding="utf-8")
        apply(copy, mutant)
        start = time.perf_counter()
        outcome = run(copy, args.timeout, tests)
        (copy / mutant.module).write_text(original, encoding="utf-8")
        outcomes[outcome].append(number)
        print(f"{number:4d} {outcome:8s} {time.perf_counter() - start:5.0f}s  {mutant.module}:{mutant.line}:{mutant.col}  "
              f"{mutant.before}  ->  {mutant.after}", flush=True)
    killed = len(outcomes["killed"]) + len(outcomes["timeout"])
    print(f"\nkilled {killed} of {len(chosen)} ({100 * killed / max(len(chosen), 1):.1f} %); "
          f"survivors: {outcomes['survived']}")
    shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
