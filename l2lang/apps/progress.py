"""Progress bars on a terminal, nothing (or, for long jobs, a line now and then) when output is piped."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager


def _on_terminal() -> bool:
    return sys.stderr.isatty()


def progress(items: Iterable, total: int, description: str) -> Iterable:
    if not _on_terminal():
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc=description, file=sys.stderr, leave=False)


@contextmanager
def item_progress(total: int, description: str) -> Iterator[Callable[[int], object]]:
    """For long jobs: a bar with rate and ETA on a terminal, a line every 30 s into a log; yields `advance(n)`.
    Nothing is shown when there is nothing to do (`total` 0)."""
    if total == 0:
        yield lambda n: None
        return
    from tqdm import tqdm

    terminal = _on_terminal()
    bar = tqdm(total=total, desc=description, file=sys.stderr, leave=not terminal,
               mininterval=0.1 if terminal else 30, ascii=not terminal)
    try:
        yield bar.update
    finally:
        bar.close()
