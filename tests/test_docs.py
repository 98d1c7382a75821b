"""The docs state what the code does: reserved words and shipped strategy names."""

from __future__ import annotations

import re
from pathlib import Path

from l2lang.lang.parser import keywords
from l2lang.resources import shipped_strategies

DOCS = Path(__file__).parents[1] / "docs"


def test_reserved_words_in_the_reference_are_the_grammars() -> None:
    text = (DOCS / "language.md").read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| reserved words"))
    assert set(re.findall(r"[a-z]+", row.split("|")[2])) == set(keywords())


def test_every_shipped_strategy_is_documented() -> None:
    text = (DOCS / "language.md").read_text(encoding="utf-8")
    for name in shipped_strategies():
        assert f"`{name}`" in text, name


def test_the_limits_in_the_reference_are_the_codes() -> None:
    from l2lang.lang import limits

    text = " ".join((DOCS / "language.md").read_text(encoding="utf-8").split())
    for phrase in (f"{limits.MAX_FILE_BYTES // 1024} KiB of UTF-8 text",
                   f"{limits.MAX_PROGRAM_BYTES // 1024} KiB of source and {limits.MAX_UNITS} units",
                   f"`use` nested at most {limits.MAX_USE_DEPTH} deep", f"nested at most {limits.MAX_DEPTH} deep",
                   f"at most {limits.MAX_PLAN_ITEMS:,} items", f"at most {limits.MAX_LAYERS} layers",
                   f"at most {limits.MAX_BANK_BYTES // 2**20} MiB per request", f"K whole in 1–{limits.MAX_BANK_KEEP}",
                   f"the first {limits.MAX_SHOWN_ERRORS} are printed"):
        assert phrase in text, phrase
    assert "WORST_" not in text and "FUZZ_RESULT" not in text  # measured figures are filled in
