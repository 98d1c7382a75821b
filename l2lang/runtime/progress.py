"""A progress bar on a terminal, nothing when output is piped."""

from __future__ import annotations

import sys
from collections.abc import Iterable


def progress(items: Iterable, total: int, description: str) -> Iterable:
    if not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc=description, file=sys.stderr, leave=False)
