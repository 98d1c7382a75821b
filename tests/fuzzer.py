"""A mutation fuzzer for the checker: hostile variations of real strategy files, run in-process.

Seeds are the shipped strategies, the examples and the golden error cases (tests/errors/*.l2). Each
input is one seed with one to four mutations stacked: byte flips, inserted and deleted bytes, splices
from another seed, huge numbers, deep nesting, long lines, repeated lines (`for` rules over every
layer), CRLF line ends and byte-order marks, Unicode confusables and inserted keywords. Every input
goes through what `l2lang check --layers 28` does (parse → compose → check → compile for a model of
28 layers, hidden size 896) and its error is rendered. Findings:

- crash: any exception other than `L2Error` (a traceback for the user);
- slow: more than the time limit (CPU seconds, so a busy machine does not count) for one input;
- position: a diagnostic pointing outside the file.

Each finding is written to the output folder as `KIND-HASH.l2` (the input) and `KIND-HASH.txt`
(what went wrong). `scripts/fuzz [N]` runs it; tests/test_fuzz.py runs a bounded number in CI.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from l2lang.errors import L2Error
from l2lang.lang.compose import compose
from l2lang.lang.limits import MAX_FILE_BYTES
from l2lang.lang.parser import decode_source, parse
from l2lang.plan import compile_plan
from l2lang.resources import shipped_strategies

ROOT = Path(__file__).parents[1]
ERRORS = ROOT / "tests" / "errors"
PATH = str(ERRORS / "fuzz.l2")  # a `use "cycle.l2"` in an input resolves among the golden cases
LAYERS, HIDDEN = 28, 896
LIMIT_S = 1.0

HUGE_NUMBERS = [b"9" * 5000, b"1" + b"0" * 4400, b"1e999", b"1e309", b"1e300", b"1e-400", b"0." + b"0" * 3000 + b"1",
                b"1000000000000001", b"1000000000000000", b"18446744073709551616", b"4096", b"4097", b"65", b"1e19",
                b"99999999999999999999.5", b"0", b"00000000000000000000000000000001"]
CONFUSABLES = {
    "a": "а", "e": "е", "o": "ο", "p": "р", "c": "с", "x": "х", "i": "і", "l": "ⅼ", "n": "ո", "s": "ѕ",
    "t": "τ", "r": "г", "0": "О", "1": "𝟏", "-": "−", "*": "∗", "=": "＝", ";": "\u037e", ":": "\u0387",
    " ": "\u00a0", '"': "“", "(": "（", ")": "）", "[": "［", ".": "\u2024", "<": "‹", ">": "›", "/": "∕",
}
KEYWORDS = [b"if ", b"for l in 0..L-1: ", b" at 0..L-1", b" at L", b"recurse layers 0..L-1 64 times ",
            b"steer mix ", b"steer 1e300*", b"suppress clamp -1", b"suppress scale 1e300", b"bank b keep 4096\n",
            b"store in b at 0..L-1", b"use alrr\n", b'use "cycle.l2"\n', b"use erss as e with tau = 1\n",
            b"sample 64 with temperature=1, top_k=1e19\n", b"select vote count over 0..L-1\n", b"streak(",
            b"rate(", b"chance(", b"retrieve(b, min_cos=2)", b"mean(norm[0..L-1])", b"cos[3, v]", b"norm[",
            b"]", b"(", b")", b"..", b";", b",", b":", b"=", b"table {0: 1, L: 2}", b"adaptive(warmup=1e300)",
            b'calibrated("../p.json", q=0.95)', b'load("x.safetensors")', b'contrast([""], ["x"]) at 3',
            b"param ", b"threshold ", b"vector ", b"observe ", b"twice", b"up to ", b"times", b"while ",
            b"until ", b"kv refresh", b"damping 2", b"cooldown 1000001", b"during prefill", b"not ", b"and ",
            b"or ", b"1/0", b"L/0", b"-", b"\xce\xb2", b"\xcf\x84", b"#", b'"', b"\\", b"\n", b"\r", b"\t", b"\x0c"]
NESTINGS = [10, 63, 64, 65, 200, 3000]


@dataclass
class Summary:
    """Counts of one fuzzing run."""

    inputs: int = 0
    refused: int = 0      # an `L2Error`: a clean, positioned message
    accepted: int = 0     # checked and compiled
    crashes: int = 0
    slow: int = 0
    positions: int = 0
    slowest_s: float = 0.0
    seconds: float = 0.0
    findings: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"{self.inputs} inputs in {self.seconds:.0f} s: {self.refused} refused with an error, "
                f"{self.accepted} accepted; {self.crashes} tracebacks, {self.slow} over the limit, "
                f"{self.positions} misplaced positions; slowest input {self.slowest_s:.3f} CPU s")


COUNTERS = {"accepted": "accepted", "refused": "refused", "crash": "crashes", "slow": "slow",
            "position": "positions"}


class SlowInput(BaseException):
    """Raised by the CPU-time alarm; a BaseException so that no `except Exception` swallows it."""


def seeds() -> list[bytes]:
    files = list(shipped_strategies().values()) + sorted((ROOT / "examples").glob("*.l2")) + sorted(ERRORS.glob("*.l2"))
    return [path.read_bytes() for path in files]


# ---- mutations -----------------------------------------------------------------------------------

def _position(rng: random.Random, data: bytes) -> int:
    return rng.randrange(len(data) + 1)


def flip(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    if not data:
        return bytes([rng.randrange(256)])
    i = rng.randrange(len(data))
    return data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1:]


def insert_bytes(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    i = _position(rng, data)
    return data[:i] + junk + data[i:]


def delete(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    i = _position(rng, data)
    return data[:i] + data[i + rng.randint(1, 64):]


def duplicate(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    i, j = sorted((_position(rng, data), _position(rng, data)))
    k = _position(rng, data)
    return data[:k] + data[i:j] + data[k:]


def splice(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    other = rng.choice(corpus)
    i, j = sorted((_position(rng, other), _position(rng, other)))
    k, m = sorted((_position(rng, data), _position(rng, data)))
    return data[:k] + other[i:j] + (data[m:] if rng.random() < 0.5 else data[k:])


def huge_number(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    digits = [i for i, b in enumerate(data) if 48 <= b <= 57]
    number = rng.choice(HUGE_NUMBERS)
    if not digits:
        i = _position(rng, data)
        return data[:i] + number + data[i:]
    i = j = rng.choice(digits)
    while i > 0 and 48 <= data[i - 1] <= 57:
        i -= 1
    while j < len(data) and (48 <= data[j] <= 57 or data[j] in b".eE"):
        j += 1
    return data[:i] + number + data[j:]


def nest(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    depth = rng.choice(NESTINGS)
    atoms = [i for i, b in enumerate(data) if 48 <= b <= 57 or b in b"tnL"] or [_position(rng, data)]
    i = rng.choice(atoms)
    wrapper = rng.choice([(b"(" * depth, b")" * depth), (b"-" * depth, b""), (b"not " * depth, b""),
                          (b"1+" * depth, b""), (b"streak(" * depth, b" > 0)" * depth), (b"[" * depth, b"]" * depth)])
    return data[:i] + wrapper[0] + data[i:i + 1] + wrapper[1] + data[i + 1:]


def long_line(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    lines = data.split(b"\n")
    n = rng.randrange(len(lines))
    size = rng.choice([200, 4000, MAX_FILE_BYTES - len(data) - 16, MAX_FILE_BYTES])
    kind = rng.randrange(3)
    if kind == 0 and lines[n]:
        piece = b"; " + lines[n].split(b" ", 3)[-1]
        lines[n] += piece * max(1, size // max(len(piece), 1))
    elif kind == 1:
        lines[n] = b"param " + b"a" * size + b" = 1"
    else:
        lines[n] += b' mark "' + b"x" * size + b'"'
    return b"\n".join(lines)


def repeat_line(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    lines = data.split(b"\n")
    n = rng.randrange(len(lines))
    line = lines[n] + b"\n"
    budget = MAX_FILE_BYTES - len(data)
    times = rng.choice([2, 10, 100, max(1, budget // max(len(line), 1))])
    lines[n] = (line * times).rstrip(b"\n")
    return b"\n".join(lines)


def line_ends(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:
        return data.replace(b"\n", b"\r\n")
    if kind == 1:
        return b"\xef\xbb\xbf" + data
    if kind == 2:
        i = _position(rng, data)
        return data[:i] + b"\xef\xbb\xbf" + data[i:]
    if kind == 3:
        return data.replace(b"\n", b"\r")
    return data.replace(b"\n", b"\n\x0c\t ")


def confusable(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    text = data.decode("utf-8", "surrogateescape")
    spots = [i for i, c in enumerate(text) if c in CONFUSABLES]
    if not spots:
        return data
    for i in rng.sample(spots, min(len(spots), rng.randint(1, 3))):
        text = text[:i] + CONFUSABLES[text[i]] + text[i + 1:]
    return text.encode("utf-8", "surrogateescape")


def keyword(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    i = _position(rng, data)
    return data[:i] + rng.choice(KEYWORDS) + data[i:]


def truncate(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    return data[:_position(rng, data)]


MUTATIONS: list[Callable[[random.Random, bytes, list[bytes]], bytes]] = [
    flip, insert_bytes, delete, duplicate, splice, huge_number, nest, long_line, repeat_line, line_ends,
    confusable, keyword, truncate]


def mutant(rng: random.Random, corpus: list[bytes]) -> bytes:
    data = rng.choice(corpus)
    for _ in range(rng.randint(1, 4)):
        data = rng.choice(MUTATIONS)(rng, data, corpus)[: 2 * MAX_FILE_BYTES]
    return data


# ---- running -------------------------------------------------------------------------------------

def check_input(data: bytes) -> tuple[str, str]:
    """What `l2lang check --layers 28` does to `data`: ("accepted", "") or ("refused", "") when it passes
    or fails cleanly, ("position", the error) when a diagnostic points outside the file."""
    try:
        source = decode_source(data, PATH)
        program = compose(parse(source, PATH), PATH, source, {})
        compile_plan(program, LAYERS, HIDDEN)
        return "accepted", ""
    except L2Error as exc:
        exc.render()
        lines = data.decode("utf-8", "replace").lstrip("\ufeff").split("\n")
        for d in exc.diagnostics:
            if d.span is not None and d.path == PATH and not (
                    1 <= d.span.line <= len(lines) and 1 <= d.span.column <= len(lines[d.span.line - 1]) + 1):
                return "position", d.render()
        return "refused", ""


def _alarm(signum, frame) -> None:
    raise SlowInput()


def run(count: int, seed: int = 0, out: Path | None = None, limit_s: float = LIMIT_S,
        report: Callable[[Summary], None] | None = None) -> Summary:
    """Check `count` mutants; write findings to `out` (when given); return the counts."""
    rng = random.Random(seed)
    corpus = seeds()
    summary = Summary()
    previous = signal.signal(signal.SIGPROF, _alarm)
    start = time.perf_counter()
    try:
        for number in range(count):
            data = mutant(rng, corpus)
            began = time.process_time()
            try:
                signal.setitimer(signal.ITIMER_PROF, limit_s)
                try:
                    outcome, detail = check_input(data)
                finally:
                    signal.setitimer(signal.ITIMER_PROF, 0)
            except SlowInput:  # (also when the alarm rings just as the input finishes)
                outcome, detail = "slow", f"over {limit_s} CPU s"
            except Exception:  # noqa: BLE001 - a traceback is exactly what this looks for
                outcome, detail = "crash", traceback.format_exc()
            used = time.process_time() - began
            summary.inputs += 1
            if outcome in ("accepted", "refused"):
                summary.slowest_s = max(summary.slowest_s, used)
            else:
                summary.findings.append(_record(outcome, data, detail, out))
            setattr(summary, COUNTERS[outcome], getattr(summary, COUNTERS[outcome]) + 1)
            if report and (number + 1) % 1000 == 0:
                summary.seconds = time.perf_counter() - start
                report(summary)
    finally:
        signal.signal(signal.SIGPROF, previous)
    summary.seconds = time.perf_counter() - start
    return summary


def _record(kind: str, data: bytes, detail: str, out: Path | None) -> str:
    name = f"{kind}-{hashlib.sha256(data).hexdigest()[:12]}"
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.l2").write_bytes(data)
        (out / f"{name}.txt").write_text(detail, encoding="utf-8")
    return name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("count", nargs="?", type=int, default=10_000, help="inputs to try (default 10000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="fuzz-findings", help="folder for crashing or slow inputs")
    parser.add_argument("--limit", type=float, default=LIMIT_S, help=f"CPU seconds per input (default {LIMIT_S})")
    args = parser.parse_args(argv)
    summary = run(args.count, args.seed, Path(args.out), args.limit,
                  report=lambda s: print(s.line(), file=sys.stderr, flush=True))
    print(summary.line())
    for name in summary.findings:
        print(f"  {args.out}/{name}.l2")
    return 1 if summary.findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
