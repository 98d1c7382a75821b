"""Static checks that need no model: names, types, contexts, bounds of constants.

`check_program` walks every unit and collects diagnostics instead of stopping at the first, so one
run of `l2lang check` shows every mistake. Layer bounds need the model's layer count and are checked
when the plan is compiled (`l2lang.plan`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import PurePosixPath

from l2lang.errors import CheckError, Diagnostic, L2Error, Span
from l2lang.lang import ir
from l2lang.lang.compose import Program, Unit, constant
from l2lang.lang.format import expr as show
from l2lang.lang.limits import MAX_BANK_KEEP, MAX_SHOWN_ERRORS

MAX_PASSES = 64
MAX_SAMPLES = 64
MAX_TOP_K = 1_000_000
MAX_WARMUP = 10**9

ADAPTIVE_OPTIONS = {"k": 1.5, "warmup": 500, "scope": "request", "sample": "token", "iqr_floor": 1e-3}
CALIBRATED_OPTIONS = {"q"}
SAMPLE_OPTIONS = {"temperature", "top_p", "top_k"}
RETRIEVE_OPTIONS = {"min_cos": 0.5}
METRICS = {"total": 0, "area": 1, "events": 1, "late_area": 2, "count": 0}  # name -> threshold-like args
PASS_ONLY = {"ratio", "change"}


class Type(Enum):
    NUMBER = "number"
    BOOL = "true/false test"
    VECTOR = "vector"


class Where(Enum):
    """What an expression may read, by the place it stands in."""

    CONDITION = "condition"   # a rule's condition: per-layer observables, thresholds, streak, chance
    STOP = "stop"             # a recursion's while/until: the candidate pass (bare norm, growth, ...)
    ACTION = "action"         # an action's argument: constants and thresholds at the action's layer
    LAYER = "layer"           # a layer index: integers, L, the loop variable, params


@dataclass
class Scope:
    unit: Unit
    where: Where
    loop_var: str | None = None


class Checker:
    def __init__(self, program: Program):
        self.program = program
        self.diagnostics: list[Diagnostic] = []

    # -- reporting -------------------------------------------------------------------------------
    def fail(self, unit: Unit, message: str, span: Span | None, hint: str | None = None) -> None:
        self.diagnostics.append(Diagnostic(message, span, unit.path, unit.source, hint))

    def nearest(self, name: str, candidates: Callable[[], list[str]]) -> str | None:
        """The declared name closest to a mistyped one, for a hint. Only the first errors are shown,
        so past them no suggestion is looked for (each costs a comparison with every declaration)."""
        if len(self.diagnostics) >= MAX_SHOWN_ERRORS:
            return None
        near = difflib.get_close_matches(name, candidates(), n=1)
        return near[0] if near else None

    def guard(self, fn, *args) -> None:
        try:
            fn(*args)
        except L2Error as exc:
            self.diagnostics.extend(exc.diagnostics)

    # -- program ---------------------------------------------------------------------------------
    def run(self) -> None:
        for unit in self.program.units:
            for stmt in unit.strategy.statements:
                self.guard(self.statement, unit, stmt)
        sample, select = self.program.sample, self.program.select
        if select and not sample:
            self.fail(select[0], "`select` needs candidates: add `sample N with temperature=...`", select[1].span)
        if sample and not select:
            self.fail(sample[0], "`sample` without `select` gives N answers and no rule to pick one",
                      sample[1].span, hint="add `select argmax total over L/3..L-1`")

    def statement(self, unit: Unit, stmt: ir.Statement) -> None:
        match stmt:
            case ir.Threshold():
                self.threshold(unit, stmt)
            case ir.Vector(source=ir.LoadSource(path=path)):
                self.relative_path(unit, path, ".safetensors", stmt.span)
            case ir.Vector(source=ir.ContrastSource(positive=pos, negative=neg, layer=layer)):
                if not pos or not neg:
                    self.fail(unit, "`contrast` needs at least one prompt on each side", stmt.span)
                if any(not text.strip() for text in pos + neg):
                    self.fail(unit, "a `contrast` prompt is empty: its state would say nothing about the text",
                              stmt.span, hint="write the text whose state the vector should point towards")
                self.layer_expr(Scope(unit, Where.LAYER), layer)
            case ir.Bank(capacity=capacity):
                self.integer(unit, capacity, "bank capacity", 1, MAX_BANK_KEEP)
            case ir.Observe(layers=layers):
                self.layers(Scope(unit, Where.LAYER), layers)
            case ir.Rule():
                self.rule(Scope(unit, Where.CONDITION), stmt)
            case ir.ForRule(var=var, layers=layers, rule=rule):
                if var in unit.decls or var == "L":
                    self.fail(unit, f"loop variable `{var}` hides a declaration of the same name", stmt.span,
                              hint="use another name, such as `l`")
                self.layers(Scope(unit, Where.LAYER), layers)
                self.rule(Scope(unit, Where.CONDITION, loop_var=var), rule)
            case ir.Sample(count=count, options=options):
                self.integer(unit, count, "sample count", 1, MAX_SAMPLES)
                self.options(unit, options, SAMPLE_OPTIONS, "sample")
                values = {kw.name: constant(kw.value, unit, kw.name) for kw in options}
                if values.get("temperature", 1.0) <= 0:
                    self.fail(unit, "`sample` needs temperature > 0 (sampling, not greedy decoding)", stmt.span)
                if not 0 < values.get("top_p", 1.0) <= 1:
                    self.fail(unit, "top_p must be in (0, 1]", stmt.span)
                top_k = values.get("top_k", 0)
                if not float(top_k).is_integer() or not 0 <= top_k <= MAX_TOP_K:
                    self.fail(unit, f"top_k must be a whole number from 0 to {MAX_TOP_K}, not {top_k:g}", stmt.span,
                              hint="0 keeps every token")
            case ir.Select(metric=metric, layers=layers):
                self.metric(unit, metric)
                self.layers(Scope(unit, Where.LAYER), layers)

    # -- declarations ----------------------------------------------------------------------------
    def threshold(self, unit: Unit, stmt: ir.Threshold) -> None:
        match stmt.source:
            case ir.FixedSource(value=value):
                constant(value, unit, f"threshold `{stmt.name}`")
            case ir.TableSource(entries=entries):
                for layer, value in entries:
                    self.layer_expr(Scope(unit, Where.LAYER), layer)
                    constant(value, unit, f"threshold `{stmt.name}` entry")
            case ir.AdaptiveSource(options=options):
                self.options(unit, options, set(ADAPTIVE_OPTIONS), "adaptive")
                values = adaptive_options(unit, options)
                if values["scope"] not in ("request", "shared"):
                    self.fail(unit, "adaptive scope must be `request` or `shared`", stmt.span)
                if values["sample"] not in ("token", "batch"):
                    self.fail(unit, "adaptive sample must be `token` or `batch`", stmt.span)
                if values["sample"] == "batch" and values["scope"] != "shared":
                    self.fail(unit, "adaptive sample=batch feeds one estimator from the whole batch: "
                              "it needs scope=shared", stmt.span)
                if not float(values["warmup"]).is_integer() or not 5 <= values["warmup"] <= MAX_WARMUP:
                    self.fail(unit, f"adaptive warmup must be a whole number of steps from 5 (the P² estimator "
                              f"needs 5 samples) to {MAX_WARMUP:.0e}, not {values['warmup']:g}", stmt.span)
            case ir.CalibratedSource(profile=profile, options=options):
                self.relative_path(unit, profile, ".json", stmt.span)
                self.options(unit, options, CALIBRATED_OPTIONS, "calibrated")
                names = {kw.name for kw in options}
                if "q" not in names:
                    self.fail(unit, "`calibrated` needs the quantile: add `q=0.95`", stmt.span)
                for kw in options:
                    if kw.name == "q" and not 0 < constant(kw.value, unit, "q") < 1:
                        self.fail(unit, "calibrated q must be in (0, 1)", kw.span)

    def relative_path(self, unit: Unit, path: str, suffix: str, span: Span | None) -> None:
        pure = PurePosixPath(path)
        if not path.endswith(suffix):
            self.fail(unit, f"`{path}`: only {suffix} files can be loaded here", span,
                      hint="vectors load from safetensors only; pickled formats are refused" if suffix ==
                      ".safetensors" else None)
        elif pure.is_absolute() or ".." in pure.parts or "\\" in path:
            self.fail(unit, f"`{path}`: paths must stay inside the strategy's folder", span,
                      hint="write a path relative to the strategy file, without `..`")

    def options(self, unit: Unit, options: tuple[ir.KwArg, ...], allowed: set[str], what: str) -> None:
        seen: set[str] = set()
        for kw in options:
            if kw.name in seen:
                self.fail(unit, f"`{kw.name}` is given twice", kw.span)
            seen.add(kw.name)
            if kw.name not in allowed:
                near = difflib.get_close_matches(kw.name, sorted(allowed), n=1)
                self.fail(unit, f"`{what}` has no option `{kw.name}`", kw.span,
                          hint=f"did you mean `{near[0]}`?" if near else f"options: {', '.join(sorted(allowed))}")

    def metric(self, unit: Unit, metric: ir.Metric) -> None:
        if metric.name not in METRICS:
            near = difflib.get_close_matches(metric.name, sorted(METRICS), n=1)
            self.fail(unit, f"unknown metric `{metric.name}`", metric.span,
                      hint=f"did you mean `{near[0]}`?" if near else f"metrics: {', '.join(METRICS)}")
            return
        wanted = METRICS[metric.name]
        if metric.name == "late_area":
            if len(metric.args) not in (1, 2):
                self.fail(unit, "`late_area(tau, fraction)` takes a threshold and an optional fraction", metric.span)
        elif len(metric.args) != wanted:
            self.fail(unit, f"`{metric.name}` takes {wanted} argument(s)", metric.span)
        for i, arg in enumerate(metric.args):
            if i == 1:
                if not 0 < constant(arg, unit, "late fraction") <= 1:
                    self.fail(unit, "the late fraction must be in (0, 1]", arg.span)
            else:
                self.expect(Scope(unit, Where.ACTION), arg, Type.NUMBER, "a metric threshold")
                self.no_adaptive(unit, arg, "a metric")

    # -- rules -----------------------------------------------------------------------------------
    def rule(self, scope: Scope, rule: ir.Rule) -> None:
        unit = scope.unit
        self.expect(scope, rule.condition, Type.BOOL, "a rule's condition")
        if rule.cooldown is not None:
            self.integer(unit, rule.cooldown, "cooldown", 0, 1_000_000)
        counting = _contains(rule.condition, ir.Streak) or _contains(rule.condition, ir.Rate)
        if rule.phase != "decode" and (rule.cooldown is not None or counting):
            self.fail(unit, "`streak`, `rate` and `cooldown` count decode steps: use them in decode rules only",
                      rule.span)
        recursions = [a for a in rule.actions if isinstance(a, ir.Recurse)]
        if len(recursions) > 1:
            self.fail(unit, "one `recurse` per rule: write a second rule for the second block", recursions[1].span)
        for action in rule.actions:
            self.guard(self.action, scope, rule, action)

    def action(self, scope: Scope, rule: ir.Rule, action) -> None:
        unit = scope.unit
        layer_scope = Scope(unit, Where.LAYER, scope.loop_var)
        act_scope = Scope(unit, Where.ACTION, scope.loop_var)
        if getattr(action, "layers", None) is not None:
            self.layers(layer_scope, action.layers)
        match action:
            case ir.Recurse():
                if rule.phase != "decode":
                    self.fail(unit, "`recurse` acts on decode steps only: drop `during`", action.span)
                if len(action.layers.spans) != 1:
                    self.fail(unit, "`recurse` takes one layer or one contiguous range `a..b`", action.layers.span)
                self.integer(unit, action.count, "recursion bound", 0, MAX_PASSES)
                for stop in action.stops:
                    self.expect(Scope(unit, Where.STOP, scope.loop_var), stop.condition, Type.BOOL,
                                f"a `{stop.mode}` condition")
                if action.damping is not None:
                    value = constant(action.damping, unit, "damping")
                    if not 0 <= value <= 1:
                        self.fail(unit, "damping must be in [0, 1] (1 keeps the new state)", action.damping.span)
            case ir.Steer(amount=amount, mode=mode):
                coefficient, vector = split_steer(amount)
                if vector is None:
                    kind = self.type_of(act_scope, amount)
                    self.fail(unit, f"`steer` needs `c*VECTOR`; `{show(amount)}` is a {kind.value}", amount.span,
                              hint="declare a vector (`vector v = load(...)`) and write `steer 0.5*v`")
                    return
                self.expect(act_scope, coefficient, Type.NUMBER, "a steering strength")
                self.no_adaptive(unit, coefficient, "a steering strength")
                self.vector_atom(act_scope, vector)
                weight = folded(coefficient, unit)
                if mode == "mix" and weight is not None and not 0 <= weight <= 1:
                    self.fail(unit, f"`steer mix c*v` needs c in [0, 1] (a convex mix); here c = {weight:g}",
                              amount.span)
            case ir.Suppress(mode=mode, value=value):
                self.expect(act_scope, value, Type.NUMBER, f"`suppress {mode}`")
                self.no_adaptive(unit, value, "`suppress`")
                bound = folded(value, unit)
                if mode == "clamp" and bound is not None and bound < 0:
                    self.fail(unit, f"`suppress clamp n` bounds the norm: n must be >= 0, not {bound:g}", value.span)
            case ir.Store(bank=bank):
                self.declared(unit, bank, ir.Bank, action.span)

    def vector_atom(self, scope: Scope, vector) -> None:
        if isinstance(vector, ir.Retrieve):
            self.declared(scope.unit, vector.bank, ir.Bank, vector.span)
            self.options(scope.unit, vector.options, set(RETRIEVE_OPTIONS), "retrieve")
            for kw in vector.options:
                if not -1 <= constant(kw.value, scope.unit, "min_cos") <= 1:
                    self.fail(scope.unit, "min_cos must be in [-1, 1]", kw.span)
        else:
            self.declared(scope.unit, vector.name, ir.Vector, vector.span)

    def declared(self, unit: Unit, name: str, kind: type, span: Span | None) -> None:
        decl = unit.decls.get(name)
        word = kind.__name__.lower()
        if decl is None:
            near = self.nearest(name, lambda: [n for n, d in unit.decls.items() if isinstance(d, kind)])
            self.fail(unit, f"unknown {word} `{name}`", span,
                      hint=f"did you mean `{near}`?" if near else f"declare it: `{word} {name} = ...`"
                      if kind is ir.Vector else f"declare it: `bank {name} keep 32`")
        elif not isinstance(decl, kind):
            self.fail(unit, f"`{name}` is a {type(decl).__name__.lower()}, not a {word}", span)

    # -- expressions -----------------------------------------------------------------------------
    def expect(self, scope: Scope, expr, want: Type, what: str) -> None:
        try:
            got = self.type_of(scope, expr)
        except L2Error as exc:
            self.diagnostics.extend(exc.diagnostics)
            return
        if got is not want:
            hint = "compare it: `norm[l] > tau`" if want is Type.BOOL and got is Type.NUMBER else None
            self.fail(scope.unit, f"{what} must be a {want.value}; `{show(expr)}` is a {got.value}",
                      expr.span, hint=hint)

    def type_of(self, scope: Scope, expr) -> Type:
        unit = scope.unit
        match expr:
            case ir.Num():
                return Type.NUMBER
            case ir.Name(name=name):
                return self.name_type(scope, expr)
            case ir.Unary(operand=operand):
                return self.arith(scope, expr, [operand])
            case ir.Binary(left=left, right=right):
                return self.arith(scope, expr, [left, right])
            case ir.Compare(operands=operands):
                for operand in operands:
                    self.expect(scope, operand, Type.NUMBER, "a compared value")
                self.threshold_context(scope, expr)
                return Type.BOOL
            case ir.BoolOp(operands=operands):
                for operand in operands:
                    self.expect(scope, operand, Type.BOOL, f"an operand of `{expr.op}`")
                return Type.BOOL
            case ir.Not(operand=operand):
                self.expect(scope, operand, Type.BOOL, "the operand of `not`")
                return Type.BOOL
            case ir.AtLayer(layer=layer, vector=vector, observable=obs):
                self.readable(scope, expr)
                self.layer_expr(Scope(unit, Where.LAYER, scope.loop_var), layer)
                if vector is not None:
                    if obs != "cos":
                        self.fail(unit, f"`{obs}[l, v]` is not an observable; only `cos[l, v]` takes a vector",
                                  expr.span)
                    self.declared(unit, vector, ir.Vector, expr.span)
                return Type.NUMBER
            case ir.Aggregate(layers=layers):
                self.readable(scope, expr)
                self.layers(Scope(unit, Where.LAYER, scope.loop_var), layers)
                return Type.NUMBER
            case ir.PassObservable(name=name):
                if scope.where is not Where.STOP:
                    hint = f"write `{name}[LAYER]`" if name not in PASS_ONLY else \
                        "use it in a `recurse ... while` or `until` condition"
                    raise unit.error(f"bare `{name}` means the candidate state of a recursion pass; it is "
                                     "only defined inside `while`/`until`", expr.span, hint=hint)
                if name == "cos":
                    raise unit.error("bare `cos` is not a pass observable: use `growth`, `ratio` or `change`",
                                     expr.span)
                return Type.NUMBER
            case ir.Streak(condition=condition) | ir.Rate(condition=condition):
                word = "streak" if isinstance(expr, ir.Streak) else "rate"
                if scope.where is not Where.CONDITION:
                    raise unit.error(f"`{word}` belongs in a rule's condition", expr.span)
                self.expect(scope, condition, Type.BOOL, f"the argument of `{word}`")
                return Type.NUMBER
            case ir.Chance(probability=p):
                if scope.where is not Where.CONDITION:
                    raise unit.error("`chance` belongs in a rule's condition", expr.span)
                self.expect(scope, p, Type.NUMBER, "a chance")
                probability = folded(p, unit)
                if probability is not None and not 0 <= probability <= 1:
                    self.fail(unit, f"a chance must be in [0, 1], not {probability:g}", p.span)
                return Type.BOOL
            case ir.Retrieve():
                raise unit.error("`retrieve(...)` gives a vector: use it in `steer`", expr.span)
        raise unit.error(f"unsupported expression `{show(expr)}`", getattr(expr, "span", None))

    def name_type(self, scope: Scope, expr: ir.Name) -> Type:
        unit, name = scope.unit, expr.name
        if name == "L" or name == scope.loop_var:
            if scope.where is Where.LAYER:
                return Type.NUMBER
            raise unit.error(f"`{name}` is a layer index: use it inside `norm[...]` or a layer range", expr.span)
        decl = unit.decls.get(name)
        if decl is None:
            near = self.nearest(name, lambda: sorted(unit.decls) + ["L"] + ([scope.loop_var] if scope.loop_var else []))
            raise unit.error(f"unknown name `{name}`", expr.span,
                             hint=f"did you mean `{near}`?" if near else "declare it with `param`, "
                             "`threshold` or `vector`")
        if isinstance(decl, ir.Param):
            return Type.NUMBER
        if isinstance(decl, ir.Threshold):
            if scope.where is Where.LAYER:
                raise unit.error(f"threshold `{name}` cannot index a layer", expr.span)
            return Type.NUMBER
        if isinstance(decl, ir.Vector):
            return Type.VECTOR
        raise unit.error(f"`{name}` is a {type(decl).__name__.lower()} and has no value here", expr.span)

    def arith(self, scope: Scope, expr, operands) -> Type:
        for operand in operands:
            self.expect(scope, operand, Type.NUMBER, f"an operand of `{getattr(expr, 'op', '')}`")
        return Type.NUMBER

    def readable(self, scope: Scope, expr) -> None:
        if scope.where in (Where.ACTION, Where.LAYER):
            raise scope.unit.error(f"`{show(expr)}` is an observation: it belongs in a condition", expr.span)
        if scope.where is Where.STOP:
            raise scope.unit.error(f"inside `while`/`until`, read the candidate pass with bare `norm`, "
                                   f"`growth`, `ratio` or `change`, not `{show(expr)}`", expr.span)

    def threshold_context(self, scope: Scope, compare: ir.Compare) -> None:
        """A threshold compares against exactly one observable, whose layer picks its value."""
        unit = scope.unit
        thresholds = [n for o in compare.operands for n in names_in(o) if isinstance(unit.decls.get(n.name), ir.Threshold)]
        if not thresholds:
            return
        observables = [x for o in compare.operands for x in _observables(o)]
        if len({show(x) for x in observables}) != 1:
            raise unit.error(f"threshold `{thresholds[0].name}` needs exactly one observable to compare with "
                             "(its layer picks the threshold's value)", compare.span,
                             hint="write e.g. `norm[l] > tau`")
        obs = observables[0]
        for ref in thresholds:
            source = unit.decls[ref.name].source
            if isinstance(obs, ir.Aggregate) and isinstance(source, (ir.TableSource, ir.CalibratedSource)):
                raise unit.error(f"threshold `{ref.name}` has one value per layer; `{show(obs)}` spans "
                                 "several layers", compare.span, hint="compare a single `norm[l]`")
            if isinstance(obs, ir.PassObservable) and obs.name != "norm" and isinstance(source, ir.AdaptiveSource):
                raise unit.error(f"adaptive threshold `{ref.name}` learns norms; compare it with `norm`, "
                                 f"not `{obs.name}`", compare.span)

    def no_adaptive(self, unit: Unit, expr, what: str) -> None:
        for ref in names_in(expr):
            decl = unit.decls.get(ref.name)
            if isinstance(decl, ir.Threshold) and isinstance(decl.source, ir.AdaptiveSource):
                self.fail(unit, f"adaptive threshold `{ref.name}` has no value outside a comparison; "
                          f"{what} needs a fixed, table or calibrated one", ref.span)

    # -- layers and constants ----------------------------------------------------------------------
    def layers(self, scope: Scope, layers: ir.Layers) -> None:
        for span in layers.spans:
            self.layer_expr(scope, span.start)
            if span.end is not None:
                self.layer_expr(scope, span.end)

    def layer_expr(self, scope: Scope, expr) -> None:
        self.expect(Scope(scope.unit, Where.LAYER, scope.loop_var), expr, Type.NUMBER, "a layer")

    def integer(self, unit: Unit, expr, what: str, low: int, high: int) -> None:
        value = constant(expr, unit, what)
        if not float(value).is_integer():
            self.fail(unit, f"{what} must be a whole number, not {value}", expr.span)
        elif not low <= value <= high:
            self.fail(unit, f"{what} must be between {low} and {high}, not {value:g}", expr.span)


def folded(expr, unit: Unit) -> int | float | None:
    """The value of a constant expression (numbers, arithmetic, params), or None when it is not one.

    Range checks use it so that `(1+1)*v` and `c*v` with `param c = 2` are held to the same bounds
    as a literal; what folds only once a model is known (thresholds) is checked by the compiler.
    """
    if any(not isinstance(unit.params.get(n.name), (int, float)) for n in names_in(expr)) or \
            not all(isinstance(n, (ir.Num, ir.Name, ir.Unary, ir.Binary)) for n in _walk(expr)):
        return None
    try:
        return constant(expr, unit, "a value")
    except L2Error:
        return None


def adaptive_options(unit: Unit, options: tuple[ir.KwArg, ...]) -> dict:
    values = dict(ADAPTIVE_OPTIONS)
    for kw in options:
        if kw.name in ("scope", "sample"):
            values[kw.name] = kw.value.name if isinstance(kw.value, ir.Name) else show(kw.value)
        elif kw.name in values:
            values[kw.name] = constant(kw.value, unit, f"adaptive {kw.name}")
    return values


def split_steer(amount) -> tuple[ir.Expr, ir.Name | ir.Retrieve | None]:
    """`c*v`, `v*c`, `v/c`, `-v`, `v` → (coefficient, vector atom); (amount, None) if not of that shape."""
    match amount:
        case ir.Name() | ir.Retrieve():
            return ir.Num(value=1), amount
        case ir.Unary(op=op, operand=operand):
            coefficient, vector = split_steer(operand)
            return (ir.Unary(op=op, operand=coefficient, span=amount.span), vector) if vector else (amount, None)
        case ir.Binary(op="*", left=left, right=ir.Name() | ir.Retrieve() as vector):
            return left, vector
        case ir.Binary(op="*" | "/", left=ir.Name() | ir.Retrieve() as vector, right=right):
            if amount.op == "/":
                return ir.Binary(op="/", left=ir.Num(value=1), right=right, span=amount.span), vector
            return right, vector
    return amount, None


def _walk(expr, into_streak: bool = True):
    stack = [expr]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ir.Layers) or (isinstance(node, (ir.Streak, ir.Rate)) and not into_streak):
            continue
        for value in node.__dict__.values():
            items = value if isinstance(value, tuple) else (value,)
            stack.extend(v for v in items if isinstance(v, ir.Node))


def names_in(expr) -> list[ir.Name]:
    """Names an expression reads directly (a nested `streak(...)`/`rate(...)` is a condition of its own)."""
    return [n for n in _walk(expr, into_streak=False) if isinstance(n, ir.Name)]


def _observables(expr) -> list:
    kinds = (ir.AtLayer, ir.Aggregate, ir.PassObservable)
    return [n for n in _walk(expr, into_streak=False) if isinstance(n, kinds)]


def _contains(expr, kind: type) -> bool:
    return any(isinstance(n, kind) for n in _walk(expr))


def check_program(program: Program) -> None:
    """Raise `L2Error` with every problem found, or return quietly."""
    checker = Checker(program)
    checker.run()
    if checker.diagnostics:
        raise CheckError(_dedupe(checker.diagnostics))


def _dedupe(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    seen, out = set(), []
    for d in diagnostics:
        key = (d.path, d.span.line if d.span else 0, d.span.column if d.span else 0, d.message)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out
