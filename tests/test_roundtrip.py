"""Format → parse is the identity on IR; formatting is idempotent; fingerprints ignore layout."""

from __future__ import annotations

from hypothesis import given, settings

from l2lang.lang import ir
from l2lang.lang.format import format_strategy
from l2lang.lang.parser import parse
from l2lang.resources import shipped_strategies
from tests.ir_strategies import EXPRS, STRATEGIES


@settings(max_examples=400, deadline=None)
@given(STRATEGIES)
def test_generated_ir_survives_format_and_parse(strategy: ir.Strategy) -> None:
    text = format_strategy(strategy)
    reparsed = parse(text)
    assert reparsed == strategy, text
    assert format_strategy(reparsed) == text
    assert reparsed.fingerprint == strategy.fingerprint


@settings(max_examples=300, deadline=None)
@given(EXPRS)
def test_generated_expressions_round_trip_inside_a_param(expression) -> None:
    strategy = ir.Strategy(statements=(ir.Param(name="p", value=expression),))
    assert parse(format_strategy(strategy)) == strategy


def test_shipped_files_are_canonical_and_round_trip() -> None:
    for name, path in shipped_strategies().items():
        source = path.read_text(encoding="utf-8")
        strategy = parse(source, str(path))
        assert format_strategy(strategy) == source, f"{name} is not in canonical form: run `l2lang fmt`"


def test_comments_and_blank_lines_are_kept() -> None:
    source = "# head\n\nparam a = 1  # why\n# about b\nparam b = 2\n\n# tail\n"
    assert format_strategy(parse(source)) == source


def test_unicode_and_ascii_spellings_are_the_same_program() -> None:
    unicode = parse("param τ = 1\nvector v = load(\"v.safetensors\")\nif norm[L-4] < τ steer +0.3·v\n")
    ascii = parse("param tau = 1\nvector v = load(\"v.safetensors\")\nif norm[L-4] < tau steer +0.3*v\n")
    assert unicode == ascii
    assert unicode.fingerprint == ascii.fingerprint


def test_layout_never_changes_the_fingerprint_but_meaning_does() -> None:
    base = parse("param a = 1\nif norm[3] > a steer 0.5*v at 3\n")
    spaced = parse("# comment\nparam   a=1\n\n\nif norm[ 3 ]>a    steer 0.5 * v at 3   # trailing\n")
    changed = parse("param a = 1\nif norm[3] > a steer 0.6*v at 3\n")
    assert base.fingerprint == spaced.fingerprint
    assert base.fingerprint != changed.fingerprint
