"""Progress bars on a terminal, nothing when output is piped."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from torch import nn


def _on_terminal() -> bool:
    return sys.stderr.isatty()


def progress(items: Iterable, total: int, description: str) -> Iterable:
    if not _on_terminal():
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc=description, file=sys.stderr, leave=False)


@contextmanager
def decode_progress(model: nn.Module, total: int, description: str) -> Iterator[None]:
    """A bar that advances with each forward pass of `model` (one per generated token)."""
    if not _on_terminal():
        yield
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc=description, unit="tok", file=sys.stderr, leave=False)

    def tick(*_) -> None:  # a forward hook must return None, or it replaces the output
        bar.update(1)

    handle = model.register_forward_hook(tick)
    try:
        yield
    finally:
        handle.remove()
        bar.close()
