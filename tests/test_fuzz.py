"""Arbitrary and mutated input yields l2lang's own errors, with positions inside the file, never a crash."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark
from lark import Lark

from l2lang.errors import L2Error
from l2lang.lang.compose import compose
from l2lang.lang.parser import parse
from l2lang.plan import compile_plan
from l2lang.resources import grammar_text, shipped_strategies

SHIPPED = {name: path.read_text(encoding="utf-8") for name, path in shipped_strategies().items()}
SOURCES = SHIPPED | {"card": (Path(__file__).parents[1] / "examples" / "card.l2").read_text(encoding="utf-8")}
TOKENS = ["if", "recurse", "layers", "layer", "steer", ";", "norm[", "]", "(", ")", "..", "L-4", "twice",
          "times", "up to", "while", "and", "not", "τ", "·", "0.3", "=", "param", "threshold", "adaptive(",
          "for l in", ":", "\n", "#", '"', "streak(", "chance(", "retrieve(", "use", "sample", "select",
          "-", "/", "1e999", "\x00", "\xff", "99", "kv refresh", "mix", "at"]


def run_pipeline(source: str | bytes, layers: int = 28) -> None:
    """Parse, compose, check and compile; only `L2Error` may escape."""
    strategy = parse(source, "fuzz.l2")
    text = source if isinstance(source, str) else source.decode("utf-8")
    program = compose(strategy, "fuzz.l2", text, {})
    compile_plan(program, layers, 896)


def assert_clean_failure(source: str | bytes) -> None:
    try:
        run_pipeline(source)
    except L2Error as exc:
        text = source if isinstance(source, str) else source.decode("utf-8", "replace")
        line_count = text.count("\n") + 1
        for d in exc.diagnostics:
            assert d.message
            if d.span is not None and d.path == "fuzz.l2":
                assert 1 <= d.span.line <= line_count, (d.render(), text)
                line_text = text.split("\n")[d.span.line - 1]
                assert 1 <= d.span.column <= len(line_text) + 1, (d.render(), text)
            assert "Traceback" not in d.render()


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(from_lark(Lark(grammar_text(), parser="lalr")))
def test_text_drawn_from_the_grammar_parses_or_fails_cleanly(text: str) -> None:
    assert_clean_failure(text)


INSERT_CHARS = "()[]{};:.,=<>#\"·τ0-+*/\n\x00x\r\t"
MUTATIONS = st.sampled_from(["delete", "insert", "swap", "delete_token", "insert_token", "swap_tokens"])


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(sorted(SOURCES)), st.lists(st.tuples(MUTATIONS, st.integers(0, 10**6),
                                                            st.integers(0, 10**6)), min_size=1, max_size=4))
def test_mutated_shipped_strategies_fail_only_with_positioned_errors(name: str, mutations) -> None:
    text = SOURCES[name]
    for kind, i, j in mutations:
        text = mutate(text, kind, i, j)
    assert_clean_failure(text)


def mutate(text: str, kind: str, i: int, j: int) -> str:
    if not text:
        return TOKENS[i % len(TOKENS)]
    a, b = i % len(text), j % len(text)
    words = text.split(" ")
    wa, wb = i % len(words), j % len(words)
    match kind:
        case "delete":
            return text[:a] + text[a + 1:]
        case "insert":
            return text[:a] + INSERT_CHARS[j % len(INSERT_CHARS)] + text[a:]
        case "swap":
            chars = list(text)
            chars[a], chars[b] = chars[b], chars[a]
            return "".join(chars)
        case "delete_token":
            return " ".join(words[:wa] + words[wa + 1:])
        case "insert_token":
            return " ".join(words[:wa] + [TOKENS[j % len(TOKENS)]] + words[wa:])
        case _:
            words[wa], words[wb] = words[wb], words[wa]
            return " ".join(words)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_fail_cleanly(data: bytes) -> None:
    assert_clean_failure(data)


def test_not_text_and_oversized_and_deep_inputs_get_clean_errors() -> None:
    cases = {
        b"param a = 1\n\xff\xfe\n": "not UTF-8",
        b"param a = 1\x00\n": "NUL byte",
        b"param a = " + b"1+" * 600_000 + b"1\n": "too large",
        ("param a = " + "(" * 1000 + "1" + "+1)" * 1000 + "\n").encode(): "nested too deeply",
        ("param a = " + "-" * 5000 + "1\n").encode(): "nested too deeply",
        ("param a = " + "+".join(["1"] * 5000) + "\n").encode(): "nested too deeply",
    }
    for data, expected in cases.items():
        try:
            run_pipeline(data)
        except L2Error as exc:
            assert expected in exc.render(), exc.render()
        else:
            raise AssertionError(f"accepted {data[:40]!r}")


def test_a_bounded_mutation_fuzz_run_finds_no_traceback_slow_input_or_misplaced_position(tmp_path: Path) -> None:
    """CI's share of `scripts/fuzz` (docs/language.md gives the counts of the long run)."""
    from tests.fuzzer import run

    summary = run(1500, seed=2026, out=tmp_path)
    assert summary.inputs == 1500 and summary.refused > 0 and summary.accepted > 0
    assert not summary.findings, [(tmp_path / f"{name}.txt").read_text() for name in summary.findings[:3]]
