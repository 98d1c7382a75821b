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


def test_committed_results_are_scored_under_the_current_answer_convention() -> None:
    """docs/results.md is made from these records: re-score them (`l2lang eval ... --rescore`) when the
    answer convention changes."""
    import json

    from l2lang.apps.tasks import load_task
    from l2lang.engine.answers import ANSWER_CONVENTION, extract_answer

    folders = sorted(p.parent for p in (DOCS / "results").rglob("settings.json"))
    assert len(folders) == 5
    for folder in folders:
        settings = json.loads((folder / "settings.json").read_text())
        records = [json.loads(line) for line in (folder / "results.jsonl").read_text(encoding="utf-8").splitlines()]
        task = load_task(settings["task"], 1 + max(int(r["item"]) for r in records), settings["seed"])
        for r in records:
            assert r["convention"] == ANSWER_CONVENTION and r["extracted"] == extract_answer(r["text"]), folder
            assert r["score"] == task.score(int(r["item"]), r["extracted"]) and r["correct"] == (r["score"] >= 1.0)
