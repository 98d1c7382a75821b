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
