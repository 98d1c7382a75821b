"""Loading strategies and composing them: `use`, namespaces and parameter overrides.

A program is the root file plus every file it `use`s (transitively), each a `Unit` with its own
namespace. Names in a unit refer to that unit's declarations only; a used unit's rules act where its
`use` statement stands. Parameter values resolve as: `--set` > `use ... with` > the `param` default.
Every file is read through `l2lang.lang.files`, confined to the root strategy's folder (or bundle).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path

from l2lang.errors import CheckError, L2Error, Span
from l2lang.lang import ir
from l2lang.lang.bundle import Bundle, is_bundle_path, open_bundle
from l2lang.lang.files import FileRef, FileRefused, file_argument, shipped_file
from l2lang.lang.format import expr as format_expr
from l2lang.lang.limits import MAX_PROGRAM_BYTES, MAX_UNITS, MAX_USE_DEPTH
from l2lang.lang.parser import ascii_name, command_line_number, decode_source, parse
from l2lang.resources import shipped_strategies

Value = int | float


@dataclass
class Unit:
    """One file inside a program."""

    namespace: str  # "" for the root, "alrr." for `use alrr`, "a.b." when nested
    path: str       # as shown in messages
    source: str
    strategy: ir.Strategy
    file: FileRef   # where it was read from: the files it names are read next to it
    params: dict[str, Value] = field(default_factory=dict)
    decls: dict[str, ir.Statement] = field(default_factory=dict)

    def error(self, message: str, span: Span | None, hint: str | None = None) -> L2Error:
        return CheckError.one(message, span, hint=hint, path=self.path, source=self.source)


@dataclass
class Program:
    """The composed strategy: units, and the rules and sequence statements in acting order."""

    units: list[Unit]
    rules: list[tuple[Unit, ir.Rule | ir.ForRule]]
    observes: list[tuple[Unit, ir.Observe]]
    sample: tuple[Unit, ir.Sample] | None
    select: tuple[Unit, ir.Select] | None
    overrides: dict[str, Value]
    files: dict[str, FileRef] = field(default_factory=dict)  # data files resolved so far, by display path
    bundle: Bundle | None = None  # set when loaded from a bundle
    # each file is read and parsed once, however often it is used (by file identity)
    parsed: dict[str, tuple[str, ir.Strategy]] = field(default_factory=dict, repr=False)
    size: int = 0  # bytes of source over every unit, a used file counted at each `use`

    @property
    def root(self) -> Unit:
        return self.units[0]

    def resolve(self, unit: Unit, relative: str) -> FileRef:
        """The data file `relative` names from `unit` (a profile, a vector file), remembered by its display path
        so that the plan can name it and the runtime read it; `FileRefused` if it leaves the root."""
        ref = unit.file.sibling(relative)
        self.files[ref.display] = ref
        return ref

    @property
    def fingerprint(self) -> str:
        """Hash of every unit's canonical IR and the resolved parameters: layout never changes it."""
        parts = [u.namespace + ir.canonical_json(u.strategy) for u in self.units]
        parts += [f"{u.namespace}{k}={v!r}" for u in self.units for k, v in sorted(u.params.items())]
        return ir.fingerprint_of(*parts)


def read_strategy(file: FileRef) -> tuple[str, ir.Strategy]:
    """Read and parse one strategy file; unreadable files are `L2Error`s naming the file."""
    try:
        raw = file.read("strategy")
    except FileRefused as exc:
        raise CheckError.one(f"the strategy file {exc.reason}", hint=exc.hint, path=file.display) from None
    source = decode_source(raw, file.display)
    return source, parse(source, file.display)


def target_file(target: str | Path) -> FileRef | None:
    """A strategy named on the command line: a `.l2` path that exists, or a shipped name (else None)."""
    target = str(target)
    if target.endswith(".l2"):
        return file_argument(target) if os.path.lexists(target) else None
    return shipped_file(target)


def load_program(target: str | Path, overrides: dict[str, str] | None = None, *,
                 allow_other_model: bool = False) -> Program:
    """Load a strategy by shipped name, `.l2` path or bundle, with `--set` overrides (`name` or `ns.name`).

    A bundle's params are frozen when it is packed; `allow_other_model` lets it run on weights other
    than those it was packed for (the run records that).
    """
    if is_bundle_path(str(target)):
        bundle = open_bundle(str(target), allow_other_model=allow_other_model)
        if overrides:
            raise CheckError.one(f"--set {next(iter(overrides))}: a bundle's params are frozen when it is packed",
                                 hint="pack the strategy again with `l2lang pack ... --set NAME=VALUE`",
                                 path="<command line>")
        source, strategy = read_strategy(bundle.entry)
        program = compose(strategy, bundle.entry.display, source, dict(bundle.manifest.overrides), bundle.entry)
        program.bundle = bundle
        bundle.verify_fingerprint(program.fingerprint)
        return program
    file = target_file(target)
    if file is None:
        names = ", ".join(shipped_strategies())
        raise CheckError.one(f"no strategy file or shipped strategy named {str(target)!r}",
                             hint=f"shipped strategies: {names}", path=str(target))
    source, strategy = read_strategy(file)
    return compose(strategy, str(target) if str(target).endswith(".l2") else file.display, source,
                   overrides or {}, file)


def compose(strategy: ir.Strategy, path: str, source: str, overrides: dict[str, str],
            file: FileRef | None = None) -> Program:
    """The program of `strategy` (shown as `path`, read from `file`; by default the file `path` names)."""
    file = file or file_argument(path)
    parsed = {_qualified_override(k): _parse_value(k, v) for k, v in overrides.items()}
    program = Program(units=[], rules=[], observes=[], sample=None, select=None, overrides=parsed)
    _add_unit(program, Unit("", path, source, strategy, file), {}, stack=[file.identity])
    _check_overrides_used(program)
    return program


def _qualified_override(key: str) -> str:
    try:
        return ".".join(ascii_name(part.strip()) for part in key.split("."))
    except L2Error:
        raise CheckError.one(f"--set {key}: not a parameter name", path="<command line>") from None


def _parse_value(key: str, text: str) -> Value:
    try:
        return command_line_number(text)
    except ValueError as exc:
        raise CheckError.one(f"--set {key}={text}: {exc}", path="<command line>") from None


def constant(expr: ir.Expr, unit: Unit, what: str) -> Value:
    """Fold a constant expression: numbers, arithmetic and the unit's params declared so far."""
    match expr:
        case ir.Num(value=value):
            return value
        case ir.Name(name=name) if name in unit.params:
            return unit.params[name]
        case ir.Name(name=name):
            kind = type(unit.decls[name]).__name__.lower() if name in unit.decls else None
            why = f"`{name}` is a {kind}, not a number" if kind and kind != "param" else \
                f"`{name}` is not a param declared before this line" if kind else _unknown(name, unit)
            raise unit.error(f"{what} must be a constant: {why}", expr.span)
        case ir.Unary(op=op, operand=operand):
            value = constant(operand, unit, what)
            return -value if op == "-" else value
        case ir.Binary(op=op, left=left, right=right):
            a, b = constant(left, unit, what), constant(right, unit, what)
            if op == "/" and b == 0:
                raise unit.error(f"{what}: division by zero", expr.span)
            result = {"+": a + b, "-": a - b, "*": a * b}[op] if op != "/" else a / b
            if abs(result) > 1e300:
                raise unit.error(f"{what}: the value is too large", expr.span)
            return result
    raise unit.error(f"{what} must be a constant number, not `{_describe(expr)}`", expr.span)


def _unknown(name: str, unit: Unit) -> str:
    near = difflib.get_close_matches(name, sorted(unit.decls) + ["L"], n=1)
    return f"unknown name `{name}`" + (f" (did you mean `{near[0]}`?)" if near else "")


def _describe(expr: ir.Expr) -> str:
    return format_expr(expr)


def _add_unit(program: Program, unit: Unit, use_overrides: dict[str, Value], stack: list[str]) -> None:
    program.units.append(unit)
    program.size += len(unit.source.encode("utf-8", "surrogatepass"))
    _collect_declarations(unit)
    _resolve_params(unit, use_overrides, program.overrides)
    for stmt in unit.strategy.statements:
        match stmt:
            case ir.Use():
                _add_used(program, unit, stmt, stack)
            case ir.Rule() | ir.ForRule():
                program.rules.append((unit, stmt))
            case ir.Observe():
                program.observes.append((unit, stmt))
            case ir.Sample() | ir.Select():
                slot = "sample" if isinstance(stmt, ir.Sample) else "select"
                previous = getattr(program, slot)
                if previous is not None:
                    where = f"{previous[0].path}:{previous[1].span.line}" if previous[1].span else previous[0].path
                    raise unit.error(f"a second `{slot}` statement (the first is at {where})", stmt.span,
                                     hint=f"a program picks its answers once: keep one `{slot}`")
                setattr(program, slot, (unit, stmt))


def _declared_name(stmt: ir.Statement) -> str | None:
    if isinstance(stmt, (ir.Param, ir.Threshold, ir.Vector, ir.Bank)):
        return stmt.name
    if isinstance(stmt, ir.Use):
        return stmt.alias or _namespace_of(stmt.target)
    return None


def _collect_declarations(unit: Unit) -> None:
    for stmt in unit.strategy.statements:
        name = _declared_name(stmt)
        if name is None:
            continue
        if name == "L":
            raise unit.error("`L` is the model's number of layers and cannot be declared", stmt.span)
        if name in unit.decls:
            first = unit.decls[name].span
            raise unit.error(f"`{name}` is already declared" + (f" at line {first.line}" if first else ""),
                             stmt.span, hint="give it another name")
        unit.decls[name] = stmt


def _namespace_of(target: str) -> str:
    stem = Path(target).stem if target.endswith(".l2") else target
    return "".join(c if c.isalnum() or c == "_" else "_" for c in stem)


def _resolve_params(unit: Unit, use_overrides: dict[str, Value], cli: dict[str, Value]) -> None:
    for stmt in unit.strategy.statements:
        if isinstance(stmt, ir.Param):
            value = constant(stmt.value, unit, f"param `{stmt.name}`")
            qualified = unit.namespace + stmt.name
            value = cli.get(qualified, use_overrides.get(stmt.name, value))
            unit.params[stmt.name] = value


def _add_used(program: Program, unit: Unit, stmt: ir.Use, stack: list[str]) -> None:
    try:
        file = unit.file.use_target(stmt.target)
    except FileRefused as exc:
        raise unit.error(f"`use {stmt.target}`: the path {exc.reason}", stmt.span, hint=exc.hint) from None
    if file is None:
        shipped = list(shipped_strategies())
        near = difflib.get_close_matches(stmt.target, shipped, n=1)
        hint = f"did you mean `{near[0]}`?" if near else f"shipped strategies: {', '.join(shipped)}"
        raise unit.error(f"`use {stmt.target}`: no such strategy file or shipped strategy", stmt.span, hint=hint)
    if file.identity in stack:
        raise unit.error(f"`use {stmt.target}` makes a cycle: a file cannot use itself", stmt.span)
    if len(stack) >= MAX_USE_DEPTH:
        raise unit.error(f"`use` is nested more than {MAX_USE_DEPTH} deep", stmt.span)
    if len(program.units) >= MAX_UNITS:
        raise unit.error(f"the program uses too many files: more than {MAX_UNITS} units (a file counts once per "
                         "`use`, including the uses inside used files)", stmt.span)
    if file.identity not in program.parsed:
        try:
            raw = file.read("strategy")
        except FileRefused as exc:
            raise unit.error(f"`use {stmt.target}`: {file.display} {exc.reason}", stmt.span, hint=exc.hint) from None
        source = decode_source(raw, file.display)
        program.parsed[file.identity] = (source, parse(source, file.display))
    source, strategy = program.parsed[file.identity]
    size = len(source.encode("utf-8", "surrogatepass"))
    if program.size + size > MAX_PROGRAM_BYTES:
        raise unit.error(f"the program is too large: with `{stmt.target}` its files hold more than "
                         f"{MAX_PROGRAM_BYTES} bytes (a file counts once per `use`)", stmt.span)
    namespace = unit.namespace + (stmt.alias or _namespace_of(stmt.target)) + "."
    child = Unit(namespace, file.display, source, strategy, file)
    overrides = {kw.name: constant(kw.value, unit, f"override `{kw.name}`") for kw in stmt.overrides}
    declared = {s.name for s in strategy.statements if isinstance(s, ir.Param)}
    for kw in stmt.overrides:
        if kw.name not in declared:
            near = difflib.get_close_matches(kw.name, sorted(declared), n=1)
            raise unit.error(f"`{stmt.target}` has no param `{kw.name}`", kw.span,
                             hint=f"did you mean `{near[0]}`?" if near else
                             f"its params: {', '.join(sorted(declared)) or 'none'}")
    _add_unit(program, child, overrides, stack + [file.identity])


def _check_overrides_used(program: Program) -> None:
    known = {u.namespace + name for u in program.units for name in u.params}
    for key in program.overrides:
        if key not in known:
            near = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"did you mean `{near[0]}`?" if near else f"params: {', '.join(sorted(known)) or 'none'}"
            raise CheckError.one(f"--set {key}: the strategy has no param `{key}`", hint=hint, path="<command line>")
