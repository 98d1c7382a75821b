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

from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict


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
        if self.span is None:
            out = [f"{self.path}: {self.severity}: {self.message}"]
            return "\n".join(out + ([f"  hint: {self.hint}"] if self.hint else []))
        line, column = self.span.line, self.span.column
        out = [f"{self.path}:{line}:{column}: {self.severity}: {self.message}"]
        if self.span and self.source is not None:
            lines = self.source.split("\n")  # as the lexer counts lines
            if 0 < line <= len(lines):
                text = lines[line - 1].replace("\t", " ")
                width = 1
                if self.span.end_line == line:
                    width = max(1, self.span.end_column - column)
                width = min(width, max(1, len(text) - column + 1))
                out.append(f"  {text}")
                out.append("  " + " " * (column - 1) + "^" * width)
        if self.hint:
            out.append(f"  hint: {self.hint}")
        return "\n".join(out)


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
        return "\n".join(d.render() for d in self.diagnostics)

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
