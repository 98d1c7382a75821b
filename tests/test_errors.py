"""Golden tests: each common mistake gets its named, positioned message (tests/errors/NAME.l2 → NAME.err).

Regenerate after an intended change with `L2LANG_UPDATE_GOLDEN=1 pytest tests/test_errors.py`, then
read the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from l2lang.cli.main import main

ERRORS = Path(__file__).parent / "errors"
CASES = sorted(p.stem for p in ERRORS.glob("*.l2"))


@pytest.mark.parametrize("name", CASES)
def test_error_message_matches_golden(name: str, monkeypatch, capsys) -> None:
    monkeypatch.chdir(ERRORS)
    status = main(["check", f"{name}.l2", "--layers", "28"])
    out, err = capsys.readouterr()
    assert status == 1, out
    assert "Traceback" not in err
    expected = ERRORS / f"{name}.err"
    if os.environ.get("L2LANG_UPDATE_GOLDEN"):
        expected.write_text(err, encoding="utf-8")
    assert err == expected.read_text(encoding="utf-8")
