"""Text → IR: the Lark parser, the tree → IR transformer and syntax errors a person can act on."""

from __future__ import annotations

import difflib
import functools
import re
import unicodedata
from collections.abc import Iterator

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)

from l2lang.errors import L2Error, Span, StrategySyntaxError
from l2lang.lang import ir
from l2lang.lang.limits import MAX_DEPTH, MAX_FILE_BYTES
from l2lang.resources import grammar_text

MAX_INTEGER = 10**15

ACTION_WORDS = {"recurse", "steer", "suppress", "store", "mark"}

# Examples of common mistakes, matched against the parser state of a failure (Lark's
# `match_examples`): each label becomes a named message with a fix.
MISSING_SEMICOLON = "missing `;` between two actions of a rule; join actions with `;`"
UNBOUNDED_RECURSION = ("unbounded recursion: `recurse` needs a bound: `once`, `twice`, `thrice`, `N times` "
                       "or `up to N times`")
NAMED_ERRORS: dict[str, tuple[str, list[str]]] = {
    "threshold-without-source": (
        "threshold has no source: write `= NUMBER`, `= table {LAYER: VALUE, ...}`, `= adaptive(...)` or "
        "`= calibrated(\"profile.json\", q=...)`",
        ["threshold t\n", "threshold t", "threshold t =\n", "threshold t ="],
    ),
    "param-without-value": (
        "param has no default value: write `param NAME = VALUE`",
        ["param t\n", "param t", "param t =\n", "param t ="],
    ),
    "rule-without-action": (
        "rule has no action: add `recurse`, `steer`, `suppress`, `store` or `mark` after the condition",
        ["if a < 1\n", "if a < 1", "if a < 1 cooldown 3\n", "if a < 1 during decode\n",
         "if a < 1 cooldown 3", "if a < 1 during decode"],
    ),
}

TERMINAL_NAMES = {
    "_NL": "end of line", "$END": "end of file", "NAME": "a name", "NUMBER": "a number",
    "STRING": "a string", "SEMICOLON": "`;`", "COMMA": "`,`", "COLON": "`:`", "LPAR": "`(`",
    "RPAR": "`)`", "LSQB": "`[`", "RSQB": "`]`", "LBRACE": "`{`", "RBRACE": "`}`", "EQUAL": "`=`",
    "COMPARE_OP": "a comparison", "ADD_OP": "`+` or `-`", "MUL_OP": "`*`, `·` or `/`",
}


@functools.cache
def _lark() -> Lark:
    return Lark(grammar_text(), parser="lalr", propagate_positions=True, maybe_placeholders=True)


@functools.cache
def keywords() -> frozenset[str]:
    """Words the grammar reserves; they cannot be names."""
    return frozenset(t.pattern.value for t in _lark().terminals
                     if t.pattern.type == "str" and t.pattern.value.isidentifier())


def parse(text: str | bytes, path: str = "<string>") -> ir.Strategy:
    """Parse one strategy file; raise `L2Error` (with file, line and column) on any problem."""
    source = decode_source(text, path)
    try:
        tree = _lark().parse(source)
    except UnexpectedInput as exc:
        raise _syntax_error(exc, source, path) from None
    _check_depth(tree, source, path)
    comments = _collect_comments(source)
    try:
        strategy = _ToIR(comments, source.count("\n") + 1).transform(tree)
    except VisitError as exc:
        if isinstance(exc.orig_exc, L2Error):
            raise exc.orig_exc.located(path, source) from None
        raise
    return strategy


def decode_source(text: str | bytes, path: str) -> str:
    """Reject what is not a strategy file as text: too large, not UTF-8, NUL bytes."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if len(raw) > MAX_FILE_BYTES:
        raise StrategySyntaxError.one(f"file is too large ({len(raw)} bytes; the limit is {MAX_FILE_BYTES})",
                          Span.at(1, 1), path=path)
    try:
        source = raw.decode("utf-8") if isinstance(text, bytes) else text.encode("utf-8").decode("utf-8")
    except UnicodeError as exc:
        offset = getattr(exc, "start", 0)
        prefix = raw[:offset].decode("utf-8", "replace")
        line = prefix.count("\n") + 1
        column = len(prefix) - (prefix.rfind("\n") + 1) + 1
        raise StrategySyntaxError.one(f"file is not UTF-8 text (invalid byte at offset {offset})",
                          Span.at(line, column), path=path, hint="strategy files are UTF-8 text") from None
    if source.startswith("\ufeff"):
        source = source[1:]
    if "\0" in source:
        raise StrategySyntaxError.one("file contains a NUL byte: it is not a text file",
                                      _span_at(source, source.index("\0")), path=path, source=source)
    hidden = _HIDDEN_CONTROL.search(source)
    if hidden:
        char = hidden.group()
        raise StrategySyntaxError.one(
            f"character U+{ord(char):04X} ({unicodedata.name(char, 'a control character')}) is not allowed, not "
            "even in strings or comments: it can make a file display otherwise than it reads",
            _span_at(source, hidden.start()), path=path, source=source, hint="delete it")
    return source


def _span_at(source: str, offset: int) -> Span:
    line = source.count("\n", 0, offset) + 1
    return Span.at(line, offset - (source.rfind("\n", 0, offset) + 1) + 1)


# Control characters but tab, newline, CR and form feed, and the bidirectional-text controls (the
# "Trojan Source" characters): text a terminal or an editor shows otherwise than the parser reads it.
_HIDDEN_CONTROL = re.compile("[\x01-\x08\x0b\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _syntax_error(exc: UnexpectedInput, source: str, path: str) -> StrategySyntaxError:
    line, column = max(exc.line, 1), max(exc.column, 1)
    if isinstance(exc, UnexpectedEOF):
        line, column = _end_position(source)
    label = None
    if isinstance(exc, UnexpectedToken):
        label = exc.match_examples(_lark().parse, {k: v[1] for k, v in NAMED_ERRORS.items()},
                                   use_accepts=True)
    expected = (exc.accepts or exc.expected) if isinstance(exc, UnexpectedToken) else set()
    if isinstance(exc, UnexpectedToken) and str(exc.token) in ACTION_WORDS and "SEMICOLON" in expected:
        message, hint = MISSING_SEMICOLON, None
    elif isinstance(exc, UnexpectedToken) and "ONCE" in expected:
        message, hint = UNBOUNDED_RECURSION, None
    elif label:
        message, hint = NAMED_ERRORS[label][0], None
    elif isinstance(exc, UnexpectedCharacters):
        char = source[exc.pos_in_stream] if exc.pos_in_stream < len(source) else "?"
        message = f"unexpected character {char!r}"
        hint = lookalike_hint(char) or _expected_hint(exc.allowed or set())
    elif isinstance(exc, UnexpectedToken):
        token = exc.token
        shown = "end of line" if token.type == "_NL" else "end of file" if token.type == "$END" \
            else f"`{token}`"
        message = f"unexpected {shown}"
        if token.type == "$END":
            line, column = _end_position(source)
        lookalike = lookalike_hint(str(token)) if token.type != "STRING" else None
        hint = lookalike or _expected_hint(exc.accepts or exc.expected)
        if token.type == "NAME" and not lookalike:
            words = [w.strip("`") for w in (_keyword(t) for t in exc.accepts or exc.expected) if w.startswith("`")]
            near = difflib.get_close_matches(str(token), words, n=1)
            if near:
                hint = f"did you mean `{near[0]}`?"
    else:
        message, hint = "unexpected end of file", None
    width = len(str(getattr(exc, "token", "") or " ").splitlines()[0] or " ") \
        if isinstance(exc, UnexpectedToken) and exc.token.type not in ("_NL", "$END") else 1
    return StrategySyntaxError.one(message, Span.at(line, column, width), hint=hint, path=path, source=source)


def lookalike_hint(text: str) -> str | None:
    """A hint naming the first character of `text` that only looks like what the grammar wants:
    `;` (U+037E GREEK QUESTION MARK) for `;`, a Cyrillic `а` for `a`, a non-breaking space."""
    for char in text:
        if char.isascii() or char == "·" or _greek_letter(char):
            continue
        name = unicodedata.name(char, "an unnamed character")
        plain = unicodedata.normalize("NFKC", char)
        if plain.isascii() and plain.strip():
            return f"{char!r} is {name} (U+{ord(char):04X}), not the ASCII `{plain}`: type `{plain}`"
        if char.isspace():
            return f"{char!r} is {name} (U+{ord(char):04X}): use an ordinary space"
        if char.isdigit():
            return f"{char!r} is {name} (U+{ord(char):04X}): write numbers with the digits 0-9"
        return (f"{char!r} is {name} (U+{ord(char):04X}); outside strings and comments l2lang reads ASCII, "
                "`·` and Greek letters")
    return None


def _greek_letter(char: str) -> bool:
    words = unicodedata.name(char, "").split()
    return len(words) >= 4 and words[:3] in (["GREEK", "SMALL", "LETTER"], ["GREEK", "CAPITAL", "LETTER"])


def _end_position(source: str) -> tuple[int, int]:
    """The last line that has text, and the column after its end."""
    lines = source.rstrip("\n").split("\n")
    return len(lines), len(lines[-1].rstrip("\r")) + 1


def _expected_hint(expected: set[str]) -> str | None:
    names = sorted({TERMINAL_NAMES.get(t, _keyword(t)) for t in expected})
    if not names:
        return None
    if len(names) > 8:
        names = names[:8] + ["..."]
    return "expected " + ", ".join(names)


def _keyword(terminal: str) -> str:
    pattern = None
    for t in _lark().terminals:
        if t.name == terminal:
            pattern = t.pattern
    if pattern is not None and pattern.type == "str":
        return f"`{pattern.value}`"
    return terminal.lower()


def _check_depth(tree: Tree, source: str, path: str) -> None:
    """Reject pathologically nested input before the recursive transformer sees it."""
    stack: list[tuple[Tree | Token, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, Tree):
            continue
        width = len(node.children) // 2 if node.data in ("sum", "product", "compare") else 1
        depth += width
        if depth > MAX_DEPTH:
            meta = node.meta
            span = Span.at(getattr(meta, "line", 1), getattr(meta, "column", 1))
            raise StrategySyntaxError.one(f"expression is nested too deeply (more than {MAX_DEPTH} levels)", span,
                              path=path, source=source, hint="split it with params or simplify it")
        stack.extend((child, depth) for child in node.children)


def _collect_comments(source: str) -> dict[int, str]:
    """Comments by line number; a `#` inside a string does not start a comment."""
    comments: dict[int, str] = {}
    for number, line in enumerate(source.split("\n"), start=1):
        in_string = False
        for i, char in enumerate(line):
            if char == '"':
                in_string = not in_string
            elif char == "#" and not in_string:
                comments[number] = line[i:].rstrip()  # (a `\r` ends up stripped here)
                break
    return comments


# Greek letters that look like Latin ones: in a name they would make two names look the same.
LATIN_LOOKALIKES = dict(zip("\u0391\u0392\u0395\u0396\u0397\u0399\u039a\u039c\u039d\u039f\u03a1\u03a4\u03a5\u03a7"
                            "\u03bf\u037f", "ABEZHIKMNOPTYXoJ"))


def ascii_name(name: str) -> str:
    """`τ` → `tau`: Greek letters in names are spelled out, so both spellings name one thing."""
    out = []
    for char in name:
        if char.isascii():
            out.append(char)
            continue
        if not _greek_letter(char):
            raise StrategySyntaxError.one(f"character {char!r} cannot be part of a name", hint=lookalike_hint(char))
        if char in LATIN_LOOKALIKES:
            raise StrategySyntaxError.one(
                f"character {char!r} ({unicodedata.name(char)}) looks like the Latin `{LATIN_LOOKALIKES[char]}`",
                hint=f"write `{LATIN_LOOKALIKES[char]}`, or spell the Greek letter out (`{_spelled(char)}`)")
        out.append(_spelled(char))
    return "".join(out)


def _spelled(letter: str) -> str:
    """A Greek letter's name: `τ` → `tau`, `Δ` → `Delta`."""
    words = unicodedata.name(letter).split()
    spelled = "_".join(words[3:]).lower().replace("lamda", "lambda")
    return spelled.capitalize() if words[1] == "CAPITAL" else spelled


def _span(meta) -> Span | None:
    if getattr(meta, "empty", True):
        return None
    return Span(line=meta.line, column=meta.column, end_line=meta.end_line, end_column=meta.end_column)


def _token_span(token: Token) -> Span:
    return Span(line=token.line, column=token.column, end_line=token.end_line or token.line,
                end_column=token.end_column or token.column + len(token))


def _string(token: Token) -> str:
    return str(token)[1:-1]


def _number(token: Token) -> int | float:
    text = str(token)
    if "." not in text and "e" not in text.lower():
        # compare digit counts first: `int()` of a literal of thousands of digits is refused by Python
        if len(text.lstrip("0")) > len(str(MAX_INTEGER)) or int(text) > MAX_INTEGER:
            raise StrategySyntaxError.one(f"number {_shorten(text)} is too large (integers are at most 1e15)",
                                          _token_span(token))
        return int(text)
    value = float(text)
    problem = _magnitude_problem(text, value)
    if problem:
        raise StrategySyntaxError.one(f"number {_shorten(text)} is {problem}", _token_span(token))
    return value


def _magnitude_problem(text: str, value: float) -> str | None:
    """Why the number written `text` (read as `value`) is out of l2lang's range, or None: beyond 1e300, or
    below 1e-300 without being 0 (where a float would silently turn it into 0 or lose its digits)."""
    if not abs(value) <= 1e300:
        return "too large (at most 1e300)"
    if abs(value) < 1e-300 and text.lower().split("e")[0].strip("+-0.") != "":
        return "too small (apart from 0, at least 1e-300)"
    return None


_COMMAND_LINE_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def command_line_number(text: str) -> int | float:
    """A number given outside a strategy file (`--set k=V`, an arm's `name:k=V`, numeric options), read as
    strategy files read numbers: ASCII digits only (no other script's digits, no `_`, no `nan`), finite,
    not so small that it would be 0, and a whole number when written without a point or an exponent.
    Raises `ValueError` saying why not."""
    if len(text) > 400 or not _COMMAND_LINE_NUMBER.fullmatch(text):
        raise ValueError("it is not a number (digits 0-9, an optional point and exponent)")
    value = float(text)
    problem = _magnitude_problem(text, value)
    if problem:
        raise ValueError(f"it is {problem}")
    return int(text) if text.lstrip("+-").isdigit() else value


def _shorten(text: str, keep: int = 24) -> str:
    """A long literal as its first and last digits, for a message."""
    return text if len(text) <= keep else f"{text[:keep // 2]}…{text[-keep // 2:]} ({len(text)} characters)"


def _pairs(items: list) -> Iterator[tuple]:
    return zip(items[0::2], items[1::2])


@v_args(meta=True)
class _ToIR(Transformer):
    """Builds IR nodes from Lark's parse tree, attaching spans and comments."""

    def __init__(self, comments: dict[int, str], line_count: int):
        super().__init__()
        self.comments = comments
        self.line_count = line_count

    def _gap(self, first: int, last: int) -> tuple[str, ...]:
        """Comment lines between statements; runs of blank lines become one empty string."""
        out: list[str] = []
        for n in range(first, last + 1):
            text = self.comments.get(n, "")
            if text or not out or out[-1]:
                out.append(text)
        return tuple(out)

    # -- file ----------------------------------------------------------------------------------
    def start(self, meta, children):
        statements = []
        previous_end = 0
        for stmt in children:
            if stmt is None:
                continue
            before = self._gap(previous_end + 1, stmt.span.line - 1)
            statements.append(stmt.model_copy(update={
                "comments_before": before, "comment_after": self.comments.get(stmt.span.end_line)}))
            previous_end = stmt.span.end_line
        trailing = self._gap(previous_end + 1, self.line_count)
        while trailing and not trailing[-1]:
            trailing = trailing[:-1]
        return ir.Strategy(statements=tuple(statements), trailing_comments=trailing, span=_span(meta))

    # -- declarations ---------------------------------------------------------------------------
    def param(self, meta, c):
        return ir.Param(name=self._declared(c[0], "param"), value=c[1], span=_span(meta))

    def threshold(self, meta, c):
        return ir.Threshold(name=self._declared(c[0], "threshold"), source=c[1], span=_span(meta))

    def fixed_source(self, meta, c):
        return ir.FixedSource(value=c[0], span=_span(meta))

    def table_source(self, meta, c):
        return ir.TableSource(entries=tuple(c), span=_span(meta))

    def entry(self, meta, c):
        return (c[0], c[1])

    def adaptive_source(self, meta, c):
        return ir.AdaptiveSource(options=c[0] or (), span=_span(meta))

    def calibrated_source(self, meta, c):
        return ir.CalibratedSource(profile=_string(c[0]), options=c[1] or (), span=_span(meta))

    def vector(self, meta, c):
        return ir.Vector(name=self._declared(c[0], "vector"), source=c[1], span=_span(meta))

    def vector_source(self, meta, c):  # only reached if the grammar grows an unaliased form
        return c[0]

    def load_source(self, meta, c):
        return ir.LoadSource(path=_string(c[0]), key=_string(c[1]) if c[1] else None, span=_span(meta))

    def contrast_source(self, meta, c):
        return ir.ContrastSource(positive=c[0], negative=c[1], layer=c[2], span=_span(meta))

    def strings(self, meta, c):
        return tuple(_string(t) for t in c)

    def bank(self, meta, c):
        return ir.Bank(name=self._declared(c[0], "bank"), capacity=c[1], span=_span(meta))

    def use(self, meta, c):
        target = _string(c[0]) if c[0].type == "STRING" else str(c[0])
        alias = self._declared(c[1], "`use` alias") if c[1] else None
        return ir.Use(target=target, alias=alias, overrides=c[2] or (), span=_span(meta))

    def assignments(self, meta, c):
        return tuple(c)

    def assignment(self, meta, c):
        return ir.KwArg(name=self._name(c[0]), value=c[1], span=_span(meta))

    def observe(self, meta, c):
        return ir.Observe(layers=c[0], span=_span(meta))

    # -- rules ----------------------------------------------------------------------------------
    def for_rule(self, meta, c):
        return ir.ForRule(var=self._declared(c[0], "`for` variable"), layers=c[1], rule=c[2], span=_span(meta))

    def rule(self, meta, c):
        condition, rest = c[0], c[1:]
        fields: dict = {}
        actions = []
        for item in rest:
            if isinstance(item, tuple) and item and item[0] in ("phase", "cooldown"):
                key, value, span = item
                if key in fields:
                    word = "during" if key == "phase" else "cooldown"
                    raise StrategySyntaxError.one(f"rule has two `{word}` options; keep one", span)
                fields[key] = value
            else:
                actions.append(item)
        return ir.Rule(condition=condition, actions=tuple(actions), span=_span(meta), **fields)

    def during(self, meta, c):
        return ("phase", str(c[0]), _span(meta))

    def cooldown(self, meta, c):
        return ("cooldown", c[0], _span(meta))

    def phase(self, meta, c):
        return c[0]

    def recurse(self, meta, c):
        layers, count, *rest = c
        stops = tuple(x for x in rest if isinstance(x, ir.Stop))
        kv = next((x[1] for x in rest if isinstance(x, tuple) and x[0] == "kv"), "frozen")
        damping = next((x[1] for x in rest if isinstance(x, tuple) and x[0] == "damping"), None)
        return ir.Recurse(layers=layers, count=count, stops=stops, kv=kv, damping=damping, span=_span(meta))

    def once(self, meta, c):
        return ir.Num(value=1, span=_span(meta))

    def twice(self, meta, c):
        return ir.Num(value=2, span=_span(meta))

    def thrice(self, meta, c):
        return ir.Num(value=3, span=_span(meta))

    def times(self, meta, c):
        return c[0]

    def while_stop(self, meta, c):
        return ir.Stop(mode="while", condition=c[0], span=_span(meta))

    def until_stop(self, meta, c):
        return ir.Stop(mode="until", condition=c[0], span=_span(meta))

    def kv(self, meta, c):
        return ("kv", str(c[0]))

    def kv_mode(self, meta, c):
        return c[0]

    def damping(self, meta, c):
        return ("damping", c[0])

    def steer(self, meta, c):
        return ir.Steer(mode=str(c[0]) if c[0] else "add", amount=c[1], layers=c[2], span=_span(meta))

    def steer_mode(self, meta, c):
        return c[0]

    def suppress(self, meta, c):
        return ir.Suppress(mode=str(c[0]), value=c[1], layers=c[2], span=_span(meta))

    def suppress_mode(self, meta, c):
        return c[0]

    def store(self, meta, c):
        return ir.Store(bank=self._name(c[0]), layers=c[1], span=_span(meta))

    def mark(self, meta, c):
        return ir.Mark(label=_string(c[0]), layers=c[1], span=_span(meta))

    # -- sequence level -------------------------------------------------------------------------
    def sample(self, meta, c):
        return ir.Sample(count=c[0], options=c[1] or (), span=_span(meta))

    def select(self, meta, c):
        return ir.Select(mode=str(c[0]), metric=c[1], layers=c[2], per_token=c[3] is not None,
                         span=_span(meta))

    def select_mode(self, meta, c):
        return c[0]

    def metric(self, meta, c):
        args = tuple(x for x in c[1:] if x is not None)
        return ir.Metric(name=self._name(c[0]), args=args, span=_span(meta))

    def per_token(self, meta, c):
        return True

    # -- layers and expressions -----------------------------------------------------------------
    def layers(self, meta, c):
        return ir.Layers(spans=tuple(c), span=_span(meta))

    def span(self, meta, c):
        return ir.LayerSpan(start=c[0], end=c[1], span=_span(meta))

    def kwargs(self, meta, c):
        return tuple(c)

    def kwarg(self, meta, c):
        return ir.KwArg(name=self._name(c[0]), value=c[1], span=_span(meta))

    def or_expr(self, meta, c):
        return ir.BoolOp(op="or", operands=tuple(c), span=_span(meta))

    def and_expr(self, meta, c):
        return ir.BoolOp(op="and", operands=tuple(c), span=_span(meta))

    def not_(self, meta, c):
        return ir.Not(operand=c[0], span=_span(meta))

    def compare(self, meta, c):
        return ir.Compare(operands=tuple(c[0::2]), ops=tuple(str(t) for t in c[1::2]), span=_span(meta))

    def sum(self, meta, c):
        return self._fold(meta, c)

    def product(self, meta, c):
        return self._fold(meta, c)

    def _fold(self, meta, c):
        node = c[0]
        for op, right in _pairs(c[1:]):
            op = "*" if op == "·" else str(op)
            left_span = node.span or _span(meta)
            span = Span(line=left_span.line, column=left_span.column,
                        end_line=right.span.end_line if right.span else left_span.end_line,
                        end_column=right.span.end_column if right.span else left_span.end_column)
            node = ir.Binary(op=op, left=node, right=right, span=span)
        return node

    def signed(self, meta, c):
        return ir.Unary(op=str(c[0]), operand=c[1], span=_span(meta))

    def number(self, meta, c):
        return ir.Num(value=_number(c[0]), span=_token_span(c[0]))

    def name(self, meta, c):
        return ir.Name(name=self._name(c[0]), span=_token_span(c[0]))

    def at_layer(self, meta, c):
        vector = self._name(c[2]) if c[2] else None
        return ir.AtLayer(observable=str(c[0]), layer=c[1], vector=vector, span=_span(meta))

    def observable(self, meta, c):
        return c[0]

    def aggregate(self, meta, c):
        return ir.Aggregate(fn=str(c[0]), observable=str(c[1]), layers=c[2], span=_span(meta))

    def aggregate_fn(self, meta, c):
        return c[0]

    def pass_observable(self, meta, c):
        return ir.PassObservable(name=str(c[0]), span=_span(meta))

    def streak(self, meta, c):
        return ir.Streak(condition=c[0], span=_span(meta))

    def rate(self, meta, c):
        return ir.Rate(condition=c[0], span=_span(meta))

    def chance(self, meta, c):
        return ir.Chance(probability=c[0], span=_span(meta))

    def retrieve(self, meta, c):
        return ir.Retrieve(bank=self._name(c[0]), options=c[1] or (), span=_span(meta))

    @classmethod
    def _declared(cls, token: Token, what: str) -> str:
        """A name a declaration gives: not a reserved word (in a declaration the grammar would take one)."""
        name = cls._name(token)
        if name in keywords():
            raise StrategySyntaxError.one(f"`{name}` is a reserved word: it cannot name a {what}", _token_span(token),
                                          hint=f"choose another name, such as `{name}_`")
        return name

    @staticmethod
    def _name(token: Token) -> str:
        try:
            return ascii_name(str(token))
        except L2Error as exc:
            exc.first.span = _token_span(token)
            raise
