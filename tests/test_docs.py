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


def test_the_readme_python_example_runs_as_written() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 (our own README)
    assert namespace["result"].texts[0].strip() and namespace["run"].report().fingerprint


def test_only_backends_and_integrations_import_inference_engines() -> None:
    """The language, plan, engine, applications and CLI reach transformers, vLLM or lm-eval only
    through a backend (docs/architecture.md)."""
    import ast

    package = Path(__file__).parents[1] / "l2lang"
    engines = {"transformers", "vllm", "lm_eval"}
    for path in package.rglob("*.py"):
        part = path.relative_to(package).parts[0]
        if part in ("backends", "integrations"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] in engines for n in names), f"{path} imports {names}"


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
