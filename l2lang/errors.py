"""Positions in source files and the errors l2lang reports against them.

Every error a user can cause is an `L2Error`: one or more diagnostics, each a message, the place it
points at and an optional hint. `render()` gives the `FILE:LINE:COL: error: MESSAGE` form with the
source line and a caret. Subclasses say which stage refused the input, so a caller can catch what
it means:

    L2Error
    ├── StrategySyntaxError   the file does not parse (or is not UTF-8 text)
    ├── CheckError            names, types, ranges, `use`, params: wrong before any model is known
    ├── CompileError          wrong for this model: layers out of range, profiles, vectors
    ├── UnsupportedError      the model family or the backend cannot run what the plan needs
    └── GenerationError       bad generation settings or inputs (prompts, sampling, cache)

A warning is a `Diagnostic` with severity "warning"; it is reported, never raised.
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict

from l2lang.lang.limits import MAX_SHOWN_ERRORS

SHOWN_COLUMNS = 100  # a longer source line is shown as a window of this many columns around the caret
SHOWN_MESSAGE = 240  # a longer message (one quoting a huge name, say) is cut in the middle


class Span(BaseModel):
    """A 1-based line/column range in one source file (end column exclusive)."""

    model_config = ConfigDict(frozen=True)

    line: int
    column: int
    end_line: int
    end_column: int

    @classmethod
    def at(cls, line: int, column: int, width: int = 1) -> Span:
        return cls(line=line, column=column, end_line=line, end_column=column + max(width, 1))


@dataclass
class Diagnostic:
    """One problem: what is wrong, where, and (when we know it) how to fix it."""

    message: str
    span: Span | None = None
    path: str = "<string>"
    source: str | None = None
    hint: str | None = None
    severity: str = "error"

    def render(self) -> str:
        message, hint = printable(_cut(self.message)), printable(_cut(self.hint)) if self.hint else None
        path = printable(self.path)
        if self.span is None:
            out = [f"{path}: {self.severity}: {message}"]
            return "\n".join(out + ([f"  hint: {hint}"] if hint else []))
        line, column = self.span.line, self.span.column
        out = [f"{path}:{line}:{column}: {self.severity}: {message}"]
        if self.span and self.source is not None:
            lines = _lines(self.source)
            if 0 < line <= len(lines):
                text = printable(lines[line - 1].removesuffix("\r"))
                width = 1
                if self.span.end_line == line:
                    width = max(1, self.span.end_column - column)
                width = min(width, max(1, len(text) - column + 1))
                text, column, width = _window(text, column, width)
                out.append(f"  {text}")
                out.append("  " + " " * (column - 1) + "^" * width)
        if hint:
            out.append(f"  hint: {hint}")
        return "\n".join(out)


def printable(text: str) -> str:
    """`text` safe to print on a terminal, one character per column: a tab becomes a space, control
    and format characters (escape sequences, bidi overrides, a stray CR) and lone surrogates (a file
    name that is not UTF-8) become `�`."""
    if text.isprintable():
        return text
    return "".join(" " if c == "\t" else "\ufffd" if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") else c
                   for c in text)


def printable_lines(text: str) -> str:
    """`printable` for each line of a text of several."""
    return "\n".join(printable(line) for line in text.split("\n"))


def _cut(text: str) -> str:
    if len(text) <= SHOWN_MESSAGE:
        return text
    half = SHOWN_MESSAGE // 2
    return f"{text[:half]} … {text[-half:]}"


@functools.lru_cache(maxsize=8)
def _lines(source: str) -> list[str]:
    """The source's lines, as the lexer counts them; split once per source, not once per diagnostic."""
    return source.split("\n")


def _window(text: str, column: int, width: int) -> tuple[str, int, int]:
    """At most `SHOWN_COLUMNS` columns of a long line around the caret, cut ends marked with `…`."""
    if len(text) <= SHOWN_COLUMNS:
        return text, column, width
    start = max(0, min(column - 1 - SHOWN_COLUMNS // 2, len(text) - SHOWN_COLUMNS))
    shown = text[start:start + SHOWN_COLUMNS]
    prefix = "…" if start else ""
    suffix = "…" if start + SHOWN_COLUMNS < len(text) else ""
    column = column - start + len(prefix)
    return prefix + shown + suffix, column, min(width, max(1, len(prefix) + len(shown) - column + 1))


@dataclass
class L2Error(Exception):
    """One or more diagnostics; raised for every user-facing failure."""

    diagnostics: list[Diagnostic] = field(default_factory=list)

    @classmethod
    def one(cls, message: str, span: Span | None = None, *, hint: str | None = None,
            path: str = "<string>", source: str | None = None) -> L2Error:
        return cls([Diagnostic(message, span, path, source, hint)])

    def located(self, path: str, source: str | None) -> L2Error:
        """Fill in the file for diagnostics that do not know it yet."""
        for d in self.diagnostics:
            if d.path == "<string>":
                d.path = path
                if d.source is None:
                    d.source = source
        return self

    @property
    def first(self) -> Diagnostic:
        return self.diagnostics[0]

    def render(self) -> str:
        """Every diagnostic, or the first `MAX_SHOWN_ERRORS` and a count of the rest."""
        shown = [d.render() for d in self.diagnostics[:MAX_SHOWN_ERRORS]]
        hidden = len(self.diagnostics) - len(shown)
        if hidden:
            shown.append(f"... and {hidden} more error{'s' if hidden > 1 else ''}")
        return "\n".join(shown)

    def __str__(self) -> str:
        return self.render()


class StrategySyntaxError(L2Error):
    """The strategy file does not parse."""


class CheckError(L2Error):
    """The program is wrong whatever the model: names, types, ranges, composition."""


class CompileError(L2Error):
    """The program does not fit this model: layer indices, profiles, vectors."""


class UnsupportedError(L2Error):
    """The model family or the backend cannot run what the plan asks for."""


class GenerationError(L2Error):
    """Generation settings or inputs that cannot be run."""
