"""Checked program + model shape → the executor graph the runtime runs.

Compiling resolves every layer expression to an index (bounds checked against the model), expands
`for` rules, folds params and fixed/table/calibrated thresholds into numbers, decides at which layer
each rule's condition is read and where each action acts, and orders the work per layer (the
schedule). The plan is plain data: JSON-serialisable and printable by `l2lang explain`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from l2lang.errors import CompileError, Diagnostic, L2Error, Span
from l2lang.lang import ir
from l2lang.lang.check import (
    RETRIEVE_OPTIONS,
    adaptive_options,
    check_program,
    names_in,
    split_steer,
)
from l2lang.lang.compose import Program, Unit, constant
from l2lang.lang.files import FileRef, FileRefused
from l2lang.lang.format import expr as show
from l2lang.lang.limits import MAX_BANK_BYTES, MAX_HIDDEN_SIZE, MAX_LAYERS, MAX_PLAN_ITEMS
from l2lang.plan.datafiles import (
    Profile,
    parse_profile,
    parse_safetensors,
    vector_entry,
)
from l2lang.plan.nodes import (
    QUANTILE_KEYS,
    ActionPlan,
    AdaptiveRef,
    Arith,
    ChanceOf,
    Cmp,
    Const,
    EstimatorPlan,
    LayerStep,
    Logic,
    MarkPlan,
    Observe,
    PassValue,
    Plan,
    PlanExpr,
    RateOf,
    RecursePlan,
    Reduce,
    RulePlan,
    SamplePlan,
    SelectPlan,
    SteerPlan,
    StorePlan,
    StreakOf,
    SuppressPlan,
    ThresholdPlan,
    VectorPlan,
    _children,
    walk,
)


@dataclass
class _Context:
    """Where an expression is being resolved: its unit, loop binding and layer for thresholds."""

    unit: Unit
    bindings: dict[str, int] = field(default_factory=dict)
    layer: int | None = None        # the layer thresholds resolve at, outside comparisons
    pass_layer: int | None = None   # inside `while`/`until`: the recursed block's last layer
    phase: str = "decode"


class PlanTooLarge(Exception):
    """The program expands past `MAX_PLAN_ITEMS`; carries the one error that stops compilation."""

    def __init__(self, error: L2Error):
        super().__init__(error.first.message)
        self.error = error


class Compiler:
    def __init__(self, program: Program, layers: int, hidden_size: int | None, weights_sha256: str | None = None):
        self.program = program
        self.L = layers
        self.hidden = hidden_size
        self.weights_sha256 = weights_sha256
        self.diagnostics: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []
        self.thresholds: dict[str, ThresholdPlan] = {}
        self.estimators: dict[tuple[str, str, str], EstimatorPlan] = {}
        self.streaks = 0
        self.rates = 0
        self.chances = 0
        self.tables: dict[str, dict[int, float]] = {}  # table and calibrated thresholds, resolved once each
        self.items = 0  # plan items made so far (see `spend`)
        self.unit: Unit | None = None  # where the statement being compiled stands, for the size error
        self.span: Span | None = None

    def fail(self, unit: Unit, message: str, span: Span | None, hint: str | None = None) -> L2Error:
        return CompileError([Diagnostic(message, span, unit.path, unit.source, hint)])

    def spend(self, count: int) -> None:
        """Count `count` more plan items (rule instances, actions, layers of a set, expression nodes)
        and stop once the program has made more than `MAX_PLAN_ITEMS`: `for` rules over every
        layer, each acting at every layer, grow with the square of the layer count."""
        self.items += count
        if self.items > MAX_PLAN_ITEMS and self.unit is not None:
            raise PlanTooLarge(self.fail(self.unit, f"the program expands to more than {MAX_PLAN_ITEMS} plan items "
                                         f"(rules × layers × actions) for {self.L} layers; it stops here",
                                         self.span, hint="act on fewer layers, or write fewer `for` rules"))

    def at(self, unit: Unit, span: Span | None) -> None:
        """The statement being compiled (named by the error `spend` raises)."""
        self.unit, self.span = unit, span

    # -- entry -----------------------------------------------------------------------------------
    def compile(self) -> Plan:
        try:
            return self._compile()
        except PlanTooLarge as exc:
            raise CompileError(self.diagnostics + exc.error.diagnostics) from None

    def _compile(self) -> Plan:
        rules: list[RulePlan] = []
        vectors, banks, observe = {}, {}, set()
        for unit in self.program.units:
            for stmt in unit.strategy.statements:
                self.at(unit, stmt.span)
                try:
                    if isinstance(stmt, ir.Vector):
                        vectors[unit.namespace + stmt.name] = self.vector(unit, stmt)
                    elif isinstance(stmt, ir.Bank):
                        banks[unit.namespace + stmt.name] = int(constant(stmt.capacity, unit, "bank"))
                    elif isinstance(stmt, ir.Observe):
                        observe.update(self.layer_set(_Context(unit), stmt.layers))
                except L2Error as exc:
                    self.diagnostics.extend(exc.diagnostics)
        for unit, stmt in self.program.rules:
            self.at(unit, stmt.span)
            try:
                rules.extend(self.rule_instances(unit, stmt, start_id=len(rules)))
            except L2Error as exc:
                self.diagnostics.extend(exc.diagnostics)
        sample = select = None
        try:
            sample = self.sample()
            select = self.select()
        except L2Error as exc:
            self.diagnostics.extend(exc.diagnostics)
        if not self.diagnostics:
            self.bank_memory(banks, rules)
        if self.diagnostics:
            raise CompileError(self.diagnostics)
        for rule in rules:
            observe.update(_layers_read(rule.condition))
        if select is not None:
            observe.update(select.layers)
        params = {u.namespace + k: float(v) for u in self.program.units for k, v in u.params.items()}
        return Plan(
            fingerprint=self.program.fingerprint, source=self.program.root.path, layers=self.L,
            hidden_size=self.hidden, params=params, thresholds=dict(sorted(self.thresholds.items())),
            estimators=tuple(self.estimators.values()), vectors=vectors, banks=banks,
            observe=tuple(sorted(observe)), rules=tuple(rules), schedule=schedule(rules),
            streak_slots=self.streaks, rate_slots=self.rates, chance_slots=self.chances, sample=sample, select=select,
            warnings=tuple(w.render() for w in self.warnings))

    # -- layers ----------------------------------------------------------------------------------
    def layer(self, ctx: _Context, expr) -> int:
        value = self.layer_value(ctx, expr)
        if not 0 <= value < self.L:
            raise self.fail(ctx.unit, f"layer {value} (`{show(expr)}`) is out of range: the model has "
                            f"{self.L} layers, 0..{self.L - 1}", expr.span,
                            hint="the last layer is `L-1`" if value == self.L else None)
        return value

    def layer_value(self, ctx: _Context, expr) -> int:
        match expr:
            case ir.Num(value=value):
                if not float(value).is_integer():
                    raise self.fail(ctx.unit, f"a layer must be a whole number, not {value}", expr.span)
                return int(value)
            case ir.Name(name="L"):
                return self.L
            case ir.Name(name=name) if name in ctx.bindings:
                return ctx.bindings[name]
            case ir.Name(name=name):
                value = ctx.unit.params.get(name)
                if value is None or not float(value).is_integer():
                    raise self.fail(ctx.unit, f"`{name}` is not a whole-number param: it cannot be a layer",
                                    expr.span)
                return int(value)
            case ir.Unary(op=op, operand=operand):
                value = self.layer_value(ctx, operand)
                return -value if op == "-" else value
            case ir.Binary(op=op, left=left, right=right):
                a, b = self.layer_value(ctx, left), self.layer_value(ctx, right)
                if op == "/":
                    if b == 0:
                        raise self.fail(ctx.unit, "division by zero in a layer", expr.span)
                    return a // b  # layers round down: L/3 with L = 28 is 9
                return {"+": a + b, "-": a - b, "*": a * b}[op]
        raise self.fail(ctx.unit, f"`{show(expr)}` is not a layer", getattr(expr, "span", None))

    def layer_set(self, ctx: _Context, layers: ir.Layers) -> list[int]:
        out: dict[int, None] = {}  # duplicates dropped
        for span in layers.spans:
            start = self.layer(ctx, span.start)
            end = self.layer(ctx, span.end) if span.end is not None else start
            if end < start:
                raise self.fail(ctx.unit, f"reversed range {start}..{end} (`{show(span.start)}..{show(span.end)}`)",
                                span.span, hint=f"write `{end}..{start}`")
            self.spend(end - start + 1)
            out.update(dict.fromkeys(range(start, end + 1)))
        return sorted(out)  # `for` rules expand, and actions list their layers, in ascending order

    # -- declarations ----------------------------------------------------------------------------
    def vector(self, unit: Unit, stmt: ir.Vector) -> VectorPlan:
        name = unit.namespace + stmt.name
        match stmt.source:
            case ir.LoadSource(path=path, key=key):
                file = self.data_file(unit, stmt, path)
                key = self.vector_key(unit, stmt, path, file, key)
                return VectorPlan(name=name, source="load", path=file.display, key=key)
            case ir.ContrastSource(positive=pos, negative=neg, layer=layer):
                bundle = self.program.bundle
                stored = bundle.derived_file(name, self.weights_sha256) if bundle else None
                if stored is None:
                    return VectorPlan(name=name, source="contrast", positive=pos, negative=neg,
                                      layer=self.layer(_Context(unit), layer))
                self.program.files[stored.display] = stored
                packed = bundle.manifest.model
                key = self.vector_key(unit, stmt, stored.display, stored, "vector",
                                      hint=f"the bundle stores it as computed on {packed.id}" if packed else None)
                return VectorPlan(name=name, source="contrast", positive=pos, negative=neg,
                                  layer=self.layer(_Context(unit), layer), path=stored.display, key=key)
        raise TypeError(stmt.source)

    def data_file(self, unit: Unit, stmt: ir.Statement, relative: str) -> FileRef:
        """The file `relative` names from `unit`, refused (at `stmt`) if it leaves the strategy's folder."""
        try:
            return self.program.resolve(unit, relative)
        except FileRefused as exc:
            raise self.fail(unit, f"`{relative}` {exc.reason}", stmt.span, hint=exc.hint) from None

    def read(self, unit: Unit, stmt: ir.Statement, relative: str, file: FileRef, kind: str, parse):
        """`parse(bytes)` of the file, every refusal an error at `stmt` naming the file as written."""
        try:
            return parse(file.read(kind))
        except FileRefused as exc:
            raise self.fail(unit, f"`{relative}` {exc.reason}", stmt.span, hint=exc.hint) from None

    def vector_key(self, unit: Unit, stmt: ir.Vector, relative: str, file: FileRef, key: str | None,
                   hint: str | None = None) -> str:
        """The key of the vector in a safetensors file, its shape checked against the model's hidden size."""
        tensors = self.read(unit, stmt, relative, file, "vectors", parse_safetensors)
        try:
            key, tensor = vector_entry(tensors, key, relative)
        except FileRefused as exc:
            raise self.fail(unit, f"`{relative}` {exc.reason}", stmt.span, hint=exc.hint) from None
        shape = tensor.shape
        if self.hidden is not None and shape[-1] != self.hidden or any(d != 1 for d in shape[:-1]):
            raise self.fail(unit, f"vector `{stmt.name}` has shape {list(shape)}; the model's hidden "
                            f"size is {self.hidden}", stmt.span, hint=hint)
        return key

    def threshold(self, ctx: _Context, name: str, layer: int | None, observed: PlanExpr | None, span) -> PlanExpr:
        unit = ctx.unit
        stmt = unit.decls[name]
        qualified = unit.namespace + name
        source = stmt.source
        if isinstance(source, ir.AdaptiveSource):
            if ctx.phase != "decode":
                raise self.fail(unit, f"adaptive threshold `{name}` learns from decode steps: use it in decode "
                                "rules only", span)
            options = adaptive_options(unit, source.options)
            self.thresholds[qualified] = ThresholdPlan(name=qualified, source="adaptive", k=options["k"],
                                                       warmup=int(options["warmup"]), scope=options["scope"],
                                                       sample=options["sample"], iqr_floor=options["iqr_floor"])
            if isinstance(observed, PassValue):  # the candidate's norm learns from pass 0 at that layer
                observed = Observe(observable="norm", layer=ctx.pass_layer)
            if observed is None:
                raise self.fail(unit, f"adaptive threshold `{name}` has no observable to learn from here", span)
            key = (qualified, observed.model_dump_json(), ctx.phase)
            if key not in self.estimators:
                self.estimators[key] = EstimatorPlan(id=len(self.estimators), threshold=qualified,
                                                     observable=observed, phase=ctx.phase)
            return AdaptiveRef(threshold=qualified, estimator=self.estimators[key].id)
        if isinstance(source, ir.FixedSource):
            value = float(constant(source.value, unit, f"threshold `{name}`"))
            plan = self.thresholds.get(qualified) or ThresholdPlan(name=qualified, source="fixed")
            if layer is not None:
                plan = plan.model_copy(update={"values": {**plan.values, layer: value}})
            self.thresholds[qualified] = plan
            return Const(value=value, note=qualified)
        if layer is None:
            raise self.fail(unit, f"threshold `{name}` has one value per layer and no layer is known here",
                            span, hint="compare it with a single `norm[l]`")
        if isinstance(source, ir.TableSource):
            if qualified not in self.tables:
                self.spend(len(source.entries))
                table = {}
                for key, value in source.entries:
                    at = self.layer(_Context(unit), key)
                    if at in table:
                        raise self.fail(unit, f"threshold `{name}` gives layer {at} twice", key.span,
                                        hint="keep one entry per layer")
                    table[at] = float(constant(value, unit, "table entry"))
                self.tables[qualified] = table
                self.thresholds[qualified] = ThresholdPlan(name=qualified, source="table",
                                                           values=self.tables[qualified])
            table = self.tables[qualified]
            if layer not in table:
                raise self.fail(unit, f"threshold `{name}` has no entry for layer {layer}", span,
                                hint=f"its table covers layers {', '.join(map(str, sorted(table)))}")
            return Const(value=table[layer], note=f"{qualified}@{layer}")
        if qualified not in self.tables:
            profile, q = self.profile(unit, stmt, source)
            self.tables[qualified] = {layer: stats[QUANTILE_KEYS[q]] for layer, stats in profile.layers.items()}
            self.thresholds[qualified] = ThresholdPlan(name=qualified, source="calibrated",
                                                       values=self.tables[qualified], profile=source.profile, q=q)
        return Const(value=self.tables[qualified][layer], note=f"{qualified}@{layer}")

    def profile(self, unit: Unit, stmt: ir.Threshold, source: ir.CalibratedSource) -> tuple[Profile, float]:
        q = float(next(constant(kw.value, unit, "q") for kw in source.options if kw.name == "q"))
        if q not in QUANTILE_KEYS:
            raise self.fail(unit, f"profiles record quantiles {', '.join(map(str, QUANTILE_KEYS))}; "
                            f"q={q} is not one of them", stmt.span)
        file = self.data_file(unit, stmt, source.profile)
        profile = self.read(unit, stmt, source.profile, file, "profile", parse_profile)
        if len(profile.layers) != self.L:
            raise self.fail(unit, f"`{source.profile}` was recorded on a model with {len(profile.layers)} layers; "
                            f"this one has {self.L}", stmt.span)
        recorded = profile.weights_sha256
        if self.weights_sha256 and recorded and recorded != self.weights_sha256:
            raise self.fail(unit, f"`{source.profile}` was recorded on other weights ({profile.model}, "
                            f"sha256 {recorded[:12]}…); this model's are {self.weights_sha256[:12]}…", stmt.span,
                            hint="record a profile for this model with `l2lang calibrate`")
        return profile, q

    # -- rules -----------------------------------------------------------------------------------
    def rule_instances(self, unit: Unit, stmt: ir.Rule | ir.ForRule, start_id: int) -> list[RulePlan]:
        if isinstance(stmt, ir.Rule):
            return [self.rule(_Context(unit, phase=stmt.phase), stmt, start_id)]
        out = []
        for value in self.layer_set(_Context(unit), stmt.layers):
            ctx = _Context(unit, bindings={stmt.var: value}, phase=stmt.rule.phase)
            out.append(self.rule(ctx, stmt.rule, start_id + len(out), origin_span=stmt.span))
        return out

    def rule(self, ctx: _Context, rule: ir.Rule, rule_id: int, origin_span: Span | None = None) -> RulePlan:
        unit = ctx.unit
        self.spend(1)
        condition = self.expr(ctx, rule.condition)
        read = _layers_read(condition)
        recursions = [a for a in rule.actions if isinstance(a, ir.Recurse)]
        anchor = None
        if recursions:
            anchor = self.layer_set(ctx, recursions[0].layers)[-1]
        elif read:
            anchor = max(read)
        actions: list[ActionPlan] = []
        for action in rule.actions:
            actions.extend(self.action(ctx, action, anchor))
        read_layer = max(read) if read else min(a.layer for a in actions)
        delayed = []
        for i, action in enumerate(actions):
            if action.layer < read_layer:
                actions[i] = action.model_copy(update={"delay": 1})
                delayed.append(action)
        span = origin_span or rule.span
        origin = f"{unit.path}:{span.line if span else 0}"
        if delayed:
            if rule.phase != "decode":
                raise self.fail(unit, f"the condition is read at layer {read_layer}, after the layer "
                                f"{delayed[0].layer} this `{rule.phase}` rule acts on", rule.span,
                                hint="act at or after the layers the condition reads")
            where = ", ".join(sorted({f"{a.kind} at layer {a.layer}" for a in delayed}))
            self.warnings.append(Diagnostic(
                f"the condition is read at layer {read_layer}, after {where}; that action applies on the "
                "request's next decode step", span, unit.path, unit.source, severity="warning",
                hint="act at or after the layers the condition reads to act on the same step"))
        cooldown = int(constant(rule.cooldown, unit, "cooldown")) if rule.cooldown is not None else 0
        return RulePlan(id=rule_id, origin=origin, phase=rule.phase, cooldown=cooldown, read_layer=read_layer,
                        condition=condition, actions=tuple(actions))

    def action(self, ctx: _Context, action, anchor: int | None) -> list[ActionPlan]:
        unit = ctx.unit
        if isinstance(action, ir.Recurse):
            block = self.layer_set(ctx, action.layers)
            last = block[-1]
            stop_ctx = _Context(unit, ctx.bindings, layer=last, pass_layer=last, phase=ctx.phase)
            stops = tuple((s.mode, self.expr(stop_ctx, s.condition)) for s in action.stops)
            damping = float(constant(action.damping, unit, "damping")) if action.damping is not None else 1.0
            return [RecursePlan(layer=last, first=block[0], passes=int(constant(action.count, unit, "bound")),
                                stops=stops, kv=action.kv, damping=damping)]
        if action.layers is None:
            if anchor is None:
                raise self.fail(unit, f"`{action.kind}` needs a layer: the condition reads none", action.span,
                                hint=f"add `at LAYER` to the `{action.kind}`")
            layers = [anchor]
        else:
            layers = self.layer_set(ctx, action.layers)
        out: list[ActionPlan] = []
        for layer in layers:
            at = _Context(unit, ctx.bindings, layer=layer, phase=ctx.phase)
            match action:
                case ir.Steer(mode=mode, amount=amount):
                    coefficient, vector = split_steer(amount)
                    value = self.number(at, coefficient)
                    if mode == "mix" and not 0 <= value <= 1:
                        raise self.fail(unit, f"`steer mix c*v` needs c in [0, 1] (a convex mix); at layer {layer} "
                                        f"c = {show(coefficient)} = {value:g}", amount.span)
                    if isinstance(vector, ir.Retrieve):
                        min_cos = dict(RETRIEVE_OPTIONS)
                        min_cos.update({kw.name: constant(kw.value, unit, "min_cos") for kw in vector.options})
                        out.append(SteerPlan(layer=layer, mode=mode, coefficient=value,
                                             bank=unit.namespace + vector.bank, min_cos=min_cos["min_cos"]))
                    else:
                        out.append(SteerPlan(layer=layer, mode=mode, coefficient=value,
                                             vector=unit.namespace + vector.name))
                case ir.Suppress(mode=mode, value=value):
                    number = self.number(at, value)
                    if mode == "clamp" and number < 0:
                        raise self.fail(unit, f"`suppress clamp n` bounds the norm: n must be >= 0; at layer {layer} "
                                        f"n = {show(value)} = {number:g}", value.span)
                    out.append(SuppressPlan(layer=layer, mode=mode, value=number))
                case ir.Store(bank=bank):
                    out.append(StorePlan(layer=layer, bank=unit.namespace + bank))
                case ir.Mark(label=label):
                    out.append(MarkPlan(layer=layer, label=label))
        return out

    def number(self, ctx: _Context, expr) -> float:
        resolved = self.expr(ctx, expr)
        value = _fold(resolved)
        if value is None:
            raise self.fail(ctx.unit, f"`{show(expr)}` must be a number here", expr.span)
        return value

    # -- expressions -----------------------------------------------------------------------------
    def expr(self, ctx: _Context, expr, observed: PlanExpr | None = None) -> PlanExpr:
        unit = ctx.unit
        self.spend(1)
        match expr:
            case ir.Num(value=value):
                return Const(value=float(value))
            case ir.Name(name=name) if name in unit.params:
                return Const(value=float(unit.params[name]), note=unit.namespace + name)
            case ir.Name(name=name):
                layer = _layer_of(observed, ctx)
                return self.threshold(ctx, name, layer, observed, expr.span)
            case ir.Unary(op=op, operand=operand):
                inner = self.expr(ctx, operand, observed)
                return inner if op == "+" else _simplify(Arith(op="neg", args=(inner,)))
            case ir.Binary(op=op, left=left, right=right):
                return _simplify(Arith(op=op, args=(self.expr(ctx, left, observed), self.expr(ctx, right, observed))))
            case ir.Compare(operands=operands, ops=ops):
                resolved = [self.expr(ctx, o) if not _reads_threshold(unit, o) else None for o in operands]
                obs = next((x for r in resolved if r is not None for x in _observed(r)), None)
                resolved = [r if r is not None else self.expr(ctx, o, obs) for r, o in zip(resolved, operands)]
                return Cmp(ops=tuple(ops), operands=tuple(resolved))
            case ir.BoolOp(op=op, operands=operands):
                return Logic(op=op, operands=tuple(self.expr(ctx, o) for o in operands))
            case ir.Not(operand=operand):
                return Logic(op="not", operands=(self.expr(ctx, operand),))
            case ir.AtLayer(observable=obs, layer=layer, vector=vector):
                return Observe(observable=obs, layer=self.layer(ctx, layer),
                               vector=unit.namespace + vector if vector else None)
            case ir.Aggregate(fn=fn, observable=obs, layers=layers):
                return Reduce(fn=fn, observable=obs, layers=tuple(self.layer_set(ctx, layers)))
            case ir.PassObservable(name=name):
                return PassValue(name=name)
            case ir.Streak(condition=condition):
                self.streaks += 1
                return StreakOf(slot=self.streaks - 1, condition=self.expr(ctx, condition))
            case ir.Rate(condition=condition):
                self.rates += 1
                return RateOf(slot=self.rates - 1, condition=self.expr(ctx, condition))
            case ir.Chance(probability=p):
                self.chances += 1
                probability = self.expr(ctx, p)
                if isinstance(probability, Const) and not 0 <= probability.value <= 1:
                    where = f" ({probability.note})" if probability.note else ""
                    raise self.fail(unit, f"a chance must be in [0, 1]; `{show(p)}` is {probability.value:g}{where}",
                                    p.span)
                return ChanceOf(slot=self.chances - 1, probability=probability)
        raise self.fail(unit, f"`{show(expr)}` cannot be compiled here", getattr(expr, "span", None))

    # -- sequence level --------------------------------------------------------------------------
    def sample(self) -> SamplePlan | None:
        if self.program.sample is None:
            return None
        unit, stmt = self.program.sample
        options = {kw.name: constant(kw.value, unit, kw.name) for kw in stmt.options}
        if "top_k" in options:
            options["top_k"] = int(options["top_k"])
        return SamplePlan(count=int(constant(stmt.count, unit, "sample count")), **options)

    def select(self) -> SelectPlan | None:
        if self.program.select is None:
            return None
        unit, stmt = self.program.select
        layers = self.layer_set(_Context(unit), stmt.layers)
        thresholds: dict[int, float] = {}
        if stmt.metric.args:
            for layer in layers:
                thresholds[layer] = self.number(_Context(unit, layer=layer), stmt.metric.args[0])
        fraction = float(constant(stmt.metric.args[1], unit, "fraction")) if len(stmt.metric.args) > 1 else 0.3
        return SelectPlan(mode=stmt.mode, metric=stmt.metric.name, layers=tuple(layers), thresholds=thresholds,
                          late_fraction=fraction, per_token=stmt.per_token)


    def bank_memory(self, banks: dict[str, int], rules: list[RulePlan]) -> None:
        """Refuse banks that would hold more than `MAX_BANK_BYTES` per request (float32 states).

        A bank is allocated at every layer a `store` or a `retrieve` uses it, `keep` states each.
        """
        if self.hidden is None:
            return
        used = {(a.bank, a.layer) for r in rules for a in r.actions if getattr(a, "bank", None)}
        total = sum(banks[name] * self.hidden * 4 for name, _ in used)
        if total > MAX_BANK_BYTES:
            name, _ = max(used, key=lambda key: banks[key[0]])
            unit = next(u for u in self.program.units if name.startswith(u.namespace) and
                        name[len(u.namespace):] in u.decls)
            stmt = unit.decls[name[len(unit.namespace):]]
            self.diagnostics.append(Diagnostic(
                f"banks would hold {total / 2**20:.0f} MiB per request ({len(used)} bank layers × keep × hidden "
                f"size {self.hidden} × 4 bytes); the limit is {MAX_BANK_BYTES // 2**20} MiB", stmt.span, unit.path,
                unit.source, "keep fewer states, or store at fewer layers"))


# ---- helpers -----------------------------------------------------------------------------------

def _layers_read(node: PlanExpr) -> set[int]:
    layers: set[int] = set()
    for item in walk(node):
        if isinstance(item, Observe):
            layers.add(item.layer)
        elif isinstance(item, Reduce):
            layers.update(item.layers)
    return layers


def _observed(node: PlanExpr) -> list:
    """The observables a compared operand reads (not inside a nested streak)."""
    out, stack = [], [node]
    while stack:
        item = stack.pop()
        if isinstance(item, (Observe, Reduce, PassValue)):
            out.append(item)
        elif not isinstance(item, (StreakOf, RateOf)):
            stack.extend(_children(item))
    return out


def _layer_of(observed: PlanExpr | None, ctx: _Context) -> int | None:
    if isinstance(observed, Observe):
        return observed.layer
    if isinstance(observed, PassValue):
        return ctx.pass_layer
    return ctx.layer if observed is None else None


def _reads_threshold(unit: Unit, expr) -> bool:
    return any(isinstance(unit.decls.get(n.name), ir.Threshold) for n in names_in(expr))


def _fold(node: PlanExpr) -> float | None:
    return node.value if isinstance(node, Const) else None


def _simplify(node: Arith) -> PlanExpr:
    """Fold arithmetic on constants, keeping a note of the thresholds involved."""
    values = [_fold(a) for a in node.args]
    if any(v is None for v in values):
        return node
    notes = [a.note for a in node.args if isinstance(a, Const) and a.note]
    if node.op == "neg":
        value = -values[0]
    elif node.op == "/":
        if values[1] == 0:
            return node  # left to the runtime: x/0 is inf there, and comparisons with it are false
        value = values[0] / values[1]
    else:
        value = {"+": values[0] + values[1], "-": values[0] - values[1], "*": values[0] * values[1]}[node.op]
    return Const(value=value, note=", ".join(notes) or None)


def schedule(rules: list[RulePlan]) -> tuple[LayerStep, ...]:
    steps: dict[int, dict] = {}
    for rule in rules:
        steps.setdefault(rule.read_layer, {"evaluate": [], "act": []})["evaluate"].append(rule.id)
        for index, action in enumerate(rule.actions):
            steps.setdefault(action.layer, {"evaluate": [], "act": []})["act"].append((rule.id, index))
    return tuple(LayerStep(layer=layer, evaluate=tuple(s["evaluate"]), act=tuple(s["act"]))
                 for layer, s in sorted(steps.items()))


def compile_plan(program: Program, layers: int, hidden_size: int | None = None,
                 weights_sha256: str | None = None) -> Plan:
    """Check the program, then compile it for a model with `layers` decoder layers.

    With the model's weights hash, calibration profiles recorded on other weights are refused.
    """
    check_program(program)
    if not 1 <= layers <= MAX_LAYERS:
        raise CompileError.one(f"a model has from 1 to {MAX_LAYERS} layers, not {layers}", path="<command line>")
    if hidden_size is not None and not 1 <= hidden_size <= MAX_HIDDEN_SIZE:
        raise CompileError.one(f"a model's hidden size is from 1 to {MAX_HIDDEN_SIZE}, not {hidden_size}",
                               path="<command line>")
    return Compiler(program, layers, hidden_size, weights_sha256).compile()
