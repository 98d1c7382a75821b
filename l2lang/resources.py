"""Files shipped with l2lang: the grammar and the named strategies.

In a wheel they live under `l2lang/_data/`; in a source checkout they are the top-level `grammar/`
and `strategies/` folders. Both layouts are looked up here and nowhere else.
"""

from __future__ import annotations

import functools
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _data_dir(name: str) -> Path:
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"l2lang is installed without its {name}/ folder")


@functools.cache
def grammar_text() -> str:
    return (_data_dir("grammar") / "l2lang.lark").read_text(encoding="utf-8")


def strategies_dir() -> Path:
    return _data_dir("strategies")


def shipped_strategies() -> dict[str, Path]:
    """Shipped strategy names (`alrr`, `erss`, ...) mapped to their files."""
    return {p.stem: p for p in sorted(strategies_dir().glob("*.l2"))}
