"""Work is bounded: every input at the limits of docs/language.md is checked quickly, and each bound
refuses what is past it with a positioned error (tests/errors holds one golden case per bound)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from l2lang.cli.main import main
from l2lang.errors import CompileError, L2Error
from l2lang.lang.compose import compose, load_program
from l2lang.lang.limits import MAX_BANK_BYTES, MAX_LAYERS, MAX_SHOWN_ERRORS
from l2lang.lang.parser import parse
from l2lang.plan import compile_plan
from tests.worst_cases import LAYERS, cases, write

CPU_SECONDS = 1.5  # in-process (no interpreter start-up); `l2lang check` adds about 0.5 s of imports


@pytest.mark.parametrize("name", sorted(cases()))
def test_checking_an_input_at_the_limits_takes_bounded_time(name: str, tmp_path: Path, capsys) -> None:
    root = write(cases()[name], tmp_path)
    start = time.process_time()
    status = main(["check", str(root), "--layers", str(LAYERS)])
    used = time.process_time() - start
    out, err = capsys.readouterr()
    assert status in (0, 1) and "Traceback" not in err
    assert used < CPU_SECONDS, f"{name}: {used:.2f} CPU s"
    assert len(err) < 20_000  # errors are counted past the first few, long lines cut


def test_only_the_first_errors_are_shown_and_the_rest_counted() -> None:
    text = "".join(f"observe nowhere{i}\n" for i in range(500))
    with pytest.raises(L2Error) as error:
        compile_plan(compose(parse(text, "many.l2"), "many.l2", text, {}), 28)
    rendered = error.value.render()
    assert rendered.count(": error: ") == MAX_SHOWN_ERRORS
    assert rendered.endswith(f"... and {500 - MAX_SHOWN_ERRORS} more errors")


def test_banks_are_bounded_in_bytes_per_request(tmp_path: Path) -> None:
    strategy = tmp_path / "banks.l2"
    strategy.write_text("bank b keep 4096\nfor l in 0..7: if norm[l] > 1 store in b\n")
    program = load_program(str(strategy))
    assert 4096 * 896 * 4 * 8 > MAX_BANK_BYTES  # 112 MiB at hidden size 896
    with pytest.raises(CompileError, match="banks would hold 112 MiB per request"):
        compile_plan(program, 28, 896)
    compile_plan(program, 28, 64)  # 8 MiB on a narrow model
    compile_plan(program, 28)  # no hidden size known: `check --layers` cannot tell


def test_models_deeper_than_the_limit_are_refused(capsys) -> None:
    assert main(["check", "baseline", "--layers", str(MAX_LAYERS + 1)]) == 1
    assert f"a model has from 1 to {MAX_LAYERS} layers, not {MAX_LAYERS + 1}" in capsys.readouterr().err


def test_a_used_file_is_parsed_once_however_often_it_is_used(tmp_path: Path, monkeypatch) -> None:
    from l2lang.lang import compose as composing

    (tmp_path / "leaf.l2").write_text("param a = 1\n")
    (tmp_path / "root.l2").write_text("".join(f'use "leaf.l2" as u{i}\n' for i in range(20)))
    parses = []
    parse = composing.parse
    monkeypatch.setattr(composing, "parse", lambda source, path: parses.append(path) or parse(source, path))
    program = composing.load_program(str(tmp_path / "root.l2"))
    assert len(program.units) == 21 and len(parses) == 2  # the root and the leaf, once each
