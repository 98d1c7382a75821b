"""A reference interpreter for strategy files, written from docs/semantics.md and docs/language.md.

It shares nothing with l2lang but the parsed IR (`l2lang.lang.parser.parse`): params, `L`, layer
ranges, `for` expansion, thresholds (fixed, table, calibrated, adaptive with its own P² estimator),
read layers, anchors, deferral, streaks, rates, seeded coins, cooldowns, banks and every action are
resolved and run here, on a Llama-family model run layer by layer by `tests.reference.decoder`, with
no KV cache but its own: per layer, the input state of every position processed so far, from which
keys and values are recomputed (so `kv frozen` and `kv refresh` are decisions of this file alone).

One request (batch size 1), greedy decoding. Not covered: `use`, `sample`/`select`, and the warning
paths for non-finite states. `Trace` gives, per step, every layer's first-pass norm (§1) at every
position processed in that step, which actions took effect where, and the chosen token; plus the
counts per label (§3) and a tally of events (a cooldown blocking a decision, a streak reset by a
firing, a `while` rejecting a pass, ...) so that tests can check that a construct really acted.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from l2lang.lang import ir
from tests.reference.coins import draw, request_key
from tests.reference.decoder import Decoder
from tests.reference.quartiles import Quartiles

ADAPTIVE_DEFAULTS = {"k": 1.5, "warmup": 500, "scope": "request", "sample": "token", "iqr_floor": 1e-3}
COMPARE = {"<": lambda x, y: x < y, "<=": lambda x, y: x <= y, ">": lambda x, y: x > y,
           ">=": lambda x, y: x >= y, "==": lambda x, y: x == y, "!=": lambda x, y: x != y}
REDUCE = {"mean": lambda xs: sum(xs) / len(xs), "max": max, "min": min, "sum": sum}
ObservableKey = tuple  # ("at", observable, layer, vector) or ("agg", fn, observable, layers)


# ---- the resolved program -------------------------------------------------------------------------

@dataclass(frozen=True)
class Threshold:
    name: str
    source: str                                   # fixed | table | calibrated | adaptive
    values: dict[int, float] = field(default_factory=dict)  # table, calibrated: per layer
    value: float | None = None                    # fixed
    k: float = 1.5
    warmup: int = 500
    iqr_floor: float = 1e-3


@dataclass
class Action:
    """One action at one layer (an action with `at` over several layers is one `Action` per layer)."""

    rule: int
    index: int        # among its rule's actions, `at` lists expanded in the order written
    layer: int
    kind: str         # recurse | steer | suppress | store | mark
    deferred: bool    # acts on the next decode step (its layer is before the rule's read layer)
    mode: str = ""    # steer: add | mix; suppress: scale | clamp
    value: float = 0.0            # steer coefficient; suppress scale factor or clamp bound
    vector: str | None = None     # steer with a declared vector
    bank: str | None = None       # steer with retrieve(bank), store in bank
    min_cos: float = 0.5
    first: int = 0                # recurse: the block first..layer
    passes: int = 0
    stops: tuple[ir.Stop, ...] = ()
    kv: str = "frozen"
    damping: float = 1.0
    label: str = ""               # its count label (§3)


@dataclass
class Rule:
    index: int                    # in rule order, `for` rules expanded in ascending layer order
    phase: str
    cooldown: int
    condition: ir.Expr
    bindings: dict[str, int]
    read_layer: int
    actions: list[Action]
    chance_slots: dict[int, int]  # id(chance node) -> slot
    streaks: list[int]            # id(streak node) of every streak in the condition
    observables: dict[int, ObservableKey]  # id(norm[l], mean(...) node) -> what it reads
    compares: dict[int, tuple[int | None, ObservableKey] | None]  # id(comparison) -> its observable


@dataclass
class Program:
    layers: int
    params: dict[str, float]
    thresholds: dict[str, Threshold]
    vectors: dict[str, torch.Tensor]
    banks: dict[str, int]
    rules: list[Rule]
    estimators: list[tuple[str, ObservableKey]]  # (adaptive threshold, the observable it learns)

    def actions_at(self, layer: int) -> list[Action]:
        """The actions at `layer`, in rule order and within a rule in the order written."""
        return [a for rule in self.rules for a in rule.actions if a.layer == layer]


def resolve(strategy: ir.Strategy, layers: int, params: dict[str, float] | None = None,
            vectors: dict[str, torch.Tensor] | None = None, directory: Path | None = None) -> Program:
    """The program of `strategy` for a model with `layers` decoder layers. `params` override defaults;
    `vectors` gives vectors by name (`load(...)` vectors not given are read from `directory`)."""
    return _Resolver(strategy, layers, params or {}, vectors or {}, directory).program()


class _Resolver:
    def __init__(self, strategy: ir.Strategy, layers: int, overrides: dict[str, float],
                 vectors: dict[str, torch.Tensor], directory: Path | None):
        self.strategy, self.L, self.overrides, self.given, self.directory = \
            strategy, layers, overrides, vectors, directory
        self.params: dict[str, float] = {}
        self.thresholds: dict[str, Threshold] = {}
        self.vectors: dict[str, torch.Tensor] = {}
        self.banks: dict[str, int] = {}

    def program(self) -> Program:
        statements = []
        for stmt in self.strategy.statements:
            match stmt:
                case ir.Param(name=name, value=value):
                    self.params[name] = float(self.overrides.get(name, self.constant(value)))
                case ir.Threshold():
                    self.thresholds[stmt.name] = self.threshold(stmt)
                case ir.Vector(name=name, source=source):
                    self.vectors[name] = self.vector(name, source)
                case ir.Bank(name=name, capacity=capacity):
                    self.banks[name] = int(self.constant(capacity))
                case ir.Rule() | ir.ForRule():
                    statements.append(stmt)
                case ir.Use() | ir.Sample() | ir.Select():  # (`observe` only adds to the trace: ignored)
                    raise NotImplementedError(f"`{stmt.kind}` is outside the reference interpreter")
        unknown = set(self.overrides) - set(self.params)
        if unknown:
            raise ValueError(f"no such params: {sorted(unknown)}")
        rules: list[Rule] = []
        for stmt in statements:
            if isinstance(stmt, ir.Rule):
                rules.append(self.rule(stmt, {}, len(rules)))
            else:  # one rule per layer, ascending, each layer once
                for layer in sorted(set(self.layer_list(stmt.layers, {}))):
                    rules.append(self.rule(stmt.rule, {stmt.var: layer}, len(rules)))
        slot = 0
        for rule in rules:  # chance slots: in rule order, then in the order written
            for node in _preorder(rule.condition):
                if isinstance(node, ir.Chance):
                    rule.chance_slots[id(node)] = slot
                    slot += 1
        actions = [a for r in rules for a in r.actions]
        labels = Counter(f"{a.kind}@{a.layer}" for a in actions)
        for a in actions:
            a.label = f"{a.kind}@{a.layer}"
            if labels[a.label] > 1:
                a.label += f" [rule {a.rule}.{a.index}]"
        estimators: list[tuple[str, ObservableKey]] = []
        for rule in rules:
            for key in self.estimators_of(rule):
                if key not in estimators:
                    estimators.append(key)
        return Program(self.L, self.params, self.thresholds, self.vectors, self.banks, rules, estimators)

    # -- constants and layers -------------------------------------------------------------------
    def constant(self, expr, layer: int | None = None) -> float:
        """A number from numbers, arithmetic, params and (at `layer`) fixed/table/calibrated thresholds."""
        match expr:
            case ir.Num(value=value):
                return float(value)
            case ir.Name(name=name) if name in self.params:
                return self.params[name]
            case ir.Name(name=name) if name in self.thresholds:
                value = threshold_at(self.thresholds[name], layer)
                if value is None:
                    raise ValueError(f"threshold `{name}` has no fixed value here")
                return value
            case ir.Unary(op=op, operand=operand):
                value = self.constant(operand, layer)
                return -value if op == "-" else value
            case ir.Binary(op=op, left=left, right=right):
                return arithmetic(op, self.constant(left, layer), self.constant(right, layer))
        raise ValueError(f"not a constant: {expr!r}")

    def layer_value(self, expr, bindings: dict[str, int]) -> int:
        """A layer expression: whole numbers, `L`, the loop variable, whole-valued params."""
        match expr:
            case ir.Num(value=value) if float(value).is_integer():
                return int(value)
            case ir.Name(name="L"):
                return self.L
            case ir.Name(name=name) if name in bindings:
                return bindings[name]
            case ir.Name(name=name) if name in self.params and self.params[name].is_integer():
                return int(self.params[name])
            case ir.Unary(op=op, operand=operand):
                value = self.layer_value(operand, bindings)
                return -value if op == "-" else value
            case ir.Binary(op=op, left=left, right=right):
                a, b = self.layer_value(left, bindings), self.layer_value(right, bindings)
                if op != "/":
                    return {"+": a + b, "-": a - b, "*": a * b}[op]
                if b == 0:
                    raise ValueError("division by zero in a layer")
                return a // b  # `/` rounds down in layers
        raise ValueError(f"not a layer: {expr!r}")

    def layer(self, expr, bindings: dict[str, int]) -> int:
        value = self.layer_value(expr, bindings)
        if not 0 <= value < self.L:
            raise ValueError(f"layer {value} is outside 0..{self.L - 1}")
        return value

    def layer_list(self, layers: ir.Layers, bindings: dict[str, int]) -> list[int]:
        """Indices and inclusive ranges in the order written, duplicates dropped."""
        out: list[int] = []
        for span in layers.spans:
            start = self.layer(span.start, bindings)
            end = self.layer(span.end, bindings) if span.end is not None else start
            if end < start:
                raise ValueError(f"reversed range {start}..{end}")
            out += [layer for layer in range(start, end + 1) if layer not in out]
        return out

    # -- declarations -----------------------------------------------------------------------------
    def threshold(self, stmt: ir.Threshold) -> Threshold:
        name, source = stmt.name, stmt.source
        match source:
            case ir.FixedSource(value=value):
                return Threshold(name, "fixed", value=self.constant(value))
            case ir.TableSource(entries=entries):
                return Threshold(name, "table", values={self.layer(k, {}): self.constant(v) for k, v in entries})
            case ir.CalibratedSource(profile=profile, options=options):
                q = next(self.constant(kw.value) for kw in options if kw.name == "q")
                recorded = json.loads(self._path(profile).read_text(encoding="utf-8"))["layers"]
                key = f"p{round(q * 100)}"
                return Threshold(name, "calibrated", values={int(k): float(v[key]) for k, v in recorded.items()})
            case ir.AdaptiveSource(options=options):
                values = dict(ADAPTIVE_DEFAULTS)
                for kw in options:
                    values[kw.name] = kw.value.name if isinstance(kw.value, ir.Name) and kw.name in \
                        ("scope", "sample") else self.constant(kw.value)
                return Threshold(name, "adaptive", k=float(values["k"]), warmup=int(values["warmup"]),
                                 iqr_floor=float(values["iqr_floor"]))
        raise TypeError(source)

    def vector(self, name: str, source) -> torch.Tensor:
        if name in self.given:
            return self.given[name].reshape(-1)
        if isinstance(source, ir.ContrastSource):
            raise ValueError(f"vector `{name}` is derived from prompts: pass it in `vectors` (see contrast_vector)")
        tensors = load_file(str(self._path(source.path)))
        return (tensors[source.key] if source.key else next(iter(tensors.values()))).reshape(-1)

    def _path(self, relative: str) -> Path:
        if self.directory is None:
            raise ValueError(f"`{relative}` is relative to the strategy's folder: pass `directory`")
        return self.directory / relative

    # -- rules ------------------------------------------------------------------------------------
    def rule(self, stmt: ir.Rule, bindings: dict[str, int], index: int) -> Rule:
        read = self.layers_read(stmt.condition, bindings)
        recursions = [a for a in stmt.actions if isinstance(a, ir.Recurse)]
        if recursions:
            anchor = self.layer_list(recursions[0].layers, bindings)[-1]
        else:
            anchor = max(read) if read else None
        actions: list[Action] = []
        for action in stmt.actions:
            actions += self.action(action, bindings, anchor, index, len(actions))
        read_layer = max(read) if read else min(a.layer for a in actions)
        for action in actions:
            action.deferred = action.layer < read_layer
            if action.deferred and stmt.phase != "decode":
                raise ValueError("prefill and `all` rules may not defer")
        cooldown = int(self.constant(stmt.cooldown)) if stmt.cooldown is not None else 0
        streaks = [id(n) for n in _preorder(stmt.condition) if isinstance(n, ir.Streak)]
        recursion = next((a for a in actions if a.kind == "recurse"), None)
        observables, compares = {}, {}
        for condition in [stmt.condition] + [s.condition for s in (recursion.stops if recursion else ())]:
            for node in _preorder(condition):
                if isinstance(node, ir.AtLayer):
                    observables[id(node)] = ("at", node.observable, self.layer(node.layer, bindings), node.vector)
                elif isinstance(node, ir.Aggregate):
                    layers = tuple(self.layer_list(node.layers, bindings))
                    observables[id(node)] = ("agg", node.fn, node.observable, layers)
                elif isinstance(node, ir.Compare):
                    compares[id(node)] = self.compare_observable(node, bindings, recursion)
        return Rule(index, stmt.phase, cooldown, stmt.condition, bindings, read_layer, actions, {}, streaks,
                    observables, compares)

    def action(self, action, bindings: dict[str, int], anchor: int | None, rule: int, start: int) -> list[Action]:
        if isinstance(action, ir.Recurse):
            block = self.layer_list(action.layers, bindings)
            damping = self.constant(action.damping) if action.damping is not None else 1.0
            return [Action(rule, start, block[-1], "recurse", False, first=block[0],
                           passes=int(self.constant(action.count)), stops=action.stops, kv=action.kv,
                           damping=damping)]
        if action.layers is not None:  # an action `at` several layers acts at each, in ascending order
            layers = sorted(self.layer_list(action.layers, bindings))
        elif anchor is not None:
            layers = [anchor]
        else:
            raise ValueError(f"`{action.kind}` needs `at`: its rule's condition reads no layer")
        out = []
        for layer in layers:
            made = Action(rule, start + len(out), layer, action.kind, False)
            match action:
                case ir.Steer(mode=mode, amount=amount):
                    coefficient, atom = self.steer_amount(amount, layer)
                    made.mode, made.value = mode, coefficient
                    if isinstance(atom, ir.Retrieve):
                        made.bank = atom.bank
                        made.min_cos = next((self.constant(kw.value) for kw in atom.options
                                             if kw.name == "min_cos"), 0.5)
                    else:
                        made.vector = atom.name
                case ir.Suppress(mode=mode, value=value):
                    made.mode, made.value = mode, self.constant(value, layer)
                case ir.Store(bank=bank):
                    made.bank = bank
            out.append(made)
        return out

    def steer_amount(self, amount, layer: int) -> tuple[float, ir.Name | ir.Retrieve]:
        """`c*v`, `v*c`, `v/c`, `-v`, `v` → (c, the vector or retrieve)."""
        match amount:
            case ir.Retrieve():
                return 1.0, amount
            case ir.Name(name=name) if name in self.vectors:
                return 1.0, amount
            case ir.Unary(op=op, operand=operand):
                c, atom = self.steer_amount(operand, layer)
                return (-c if op == "-" else c), atom
            case ir.Binary(op="*", left=left, right=right) if _has_vector(right, self.vectors):
                c, atom = self.steer_amount(right, layer)
                return self.constant(left, layer) * c, atom
            case ir.Binary(op="*" | "/", left=left, right=right):
                c, atom = self.steer_amount(left, layer)
                other = self.constant(right, layer)
                return (c * other if amount.op == "*" else c / other), atom
        raise ValueError(f"not a steering amount: {amount!r}")

    def layers_read(self, condition, bindings: dict[str, int]) -> set[int]:
        read: set[int] = set()
        for node in _preorder(condition):
            if isinstance(node, ir.AtLayer):
                read.add(self.layer(node.layer, bindings))
            elif isinstance(node, ir.Aggregate):
                read.update(self.layer_list(node.layers, bindings))
        return read

    def compare_observable(self, compare: ir.Compare, bindings: dict[str, int],
                           recursion: Action | None) -> tuple[int | None, ObservableKey] | None:
        """The one observable a comparison reads (None if it reads none): the layer its thresholds are
        read at, and its key. A bare pass `norm` learns from the first-pass `norm` of the recursed
        block's last layer, where the thresholds of stop conditions are read."""
        found = [n for o in compare.operands for n in _direct(o)
                 if isinstance(n, (ir.AtLayer, ir.Aggregate, ir.PassObservable))]
        if not found:
            return None
        node = found[0]
        if isinstance(node, ir.PassObservable):
            return recursion.layer, ("at", "norm", recursion.layer, None)
        if isinstance(node, ir.AtLayer):
            layer = self.layer(node.layer, bindings)
            return layer, ("at", node.observable, layer, node.vector)
        return None, ("agg", node.fn, node.observable, tuple(self.layer_list(node.layers, bindings)))

    def estimators_of(self, rule: Rule) -> list[tuple[str, ObservableKey]]:
        """(adaptive threshold, observable) for every comparison of the rule that reads one."""
        out = []
        recursion = next((a for a in rule.actions if a.kind == "recurse"), None)
        conditions = [rule.condition] + [s.condition for s in (recursion.stops if recursion else ())]
        for condition in conditions:
            for node in _preorder(condition):
                observed = rule.compares.get(id(node))
                if observed is None:
                    continue
                for name in sorted({n.name for o in node.operands for n in _direct(o) if isinstance(n, ir.Name)}):
                    if name in self.thresholds and self.thresholds[name].source == "adaptive":
                        out.append((name, observed[1]))
        return out


def threshold_at(threshold: Threshold, layer: int | None) -> float | None:
    """A fixed, table or calibrated threshold's value at `layer` (None for an adaptive one)."""
    if threshold.source == "fixed":
        return threshold.value
    if threshold.source == "adaptive":
        return None
    if layer not in threshold.values:
        raise ValueError(f"threshold `{threshold.name}` has no value at layer {layer}")
    return threshold.values[layer]


def arithmetic(op: str, x: float, y: float) -> float:
    if op == "/":
        if y == 0:  # docs: x/0 is inf (a comparison with it is false)
            return math.copysign(math.inf, x) if x else math.nan
        return x / y
    return {"+": x + y, "-": x - y, "*": x * y}[op]


def _children(node) -> list:
    out = []
    for name in type(node).model_fields:
        value = getattr(node, name)
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, ir.Node) and not isinstance(item, ir.Layers):
                out.append(item)
    return out


def _preorder(node):
    """Every node of an expression, in the order written."""
    yield node
    for child in _children(node):
        yield from _preorder(child)


def _direct(node):
    """The nodes an operand reads itself: not inside a nested streak or rate."""
    yield node
    if not isinstance(node, (ir.Streak, ir.Rate)):
        for child in _children(node):
            yield from _direct(child)


def _has_vector(node, vectors: dict) -> bool:
    return any(isinstance(n, ir.Retrieve) or isinstance(n, ir.Name) and n.name in vectors for n in _preorder(node))


# ---- running ----------------------------------------------------------------------------------------

@dataclass
class Step:
    phase: str                        # prefill | decode
    number: int                       # the decode step (0 for the prefill)
    positions: list[int]              # the positions processed in this step
    norms: torch.Tensor               # float32 [layers, positions]: first-pass norms
    effects: list[set[tuple[int, int, int]]]  # per position: (rule, action index, layer) that took effect
    token: int


@dataclass
class Trace:
    steps: list[Step]
    tokens: list[int]
    counts: dict[str, int]            # per label (docs §3), only labels that took effect
    events: Counter[str]              # what happened, for tests that check a construct acted
    margin: float = math.inf          # smallest relative gap of a comparison with a state-dependent side


@dataclass
class _Request:
    key: int
    step: int = 0                                      # the current decode step (0 in the prefill)
    counters: dict[tuple[int, int], int] = field(default_factory=dict)    # streak value / rate hits
    cooldown_until: dict[int, int] = field(default_factory=dict)          # rule -> last blocked step
    latched: dict[int, bool] = field(default_factory=dict)                # rule -> decision to act on
    banks: dict[tuple[str, int], list[tuple[float, torch.Tensor]]] = field(default_factory=dict)
    estimators: dict[tuple[str, ObservableKey], Quartiles] = field(default_factory=dict)


@dataclass
class _Layer:
    """One layer of the current step: its input and first-pass output at the positions processed."""

    entered: torch.Tensor
    first: torch.Tensor

    def __post_init__(self) -> None:
        self.norms = torch.linalg.vector_norm(self.first, dim=-1, dtype=torch.float32)
        self.entered_norms = torch.linalg.vector_norm(self.entered, dim=-1, dtype=torch.float32)


@dataclass
class _Where:
    """Where an expression is evaluated: a rule, a position of the step, and (in a stop) the pass."""

    rule: Rule
    row: int
    passes: dict[str, float] | None = None


class Interpreter:
    """Runs a resolved program on a model, one request, greedy; `run` gives the trace."""

    def __init__(self, model: torch.nn.Module, program: Program, seed: int = 0):
        self.decoder = Decoder(model)
        if self.decoder.depth != program.layers:
            raise ValueError(f"the program was resolved for {program.layers} layers; the model has "
                             f"{self.decoder.depth}")
        self.program, self.seed = program, seed
        dtype = next(model.parameters()).dtype
        self.vectors = {name: v.to(dtype) for name, v in program.vectors.items()}

    @torch.no_grad()
    def run(self, prompt: list[int], new_tokens: int, eos_token_ids: tuple[int, ...] = ()) -> Trace:
        """Greedy generation of up to `new_tokens` tokens after `prompt`, with the program acting."""
        self.request = _Request(request_key(prompt))
        self.trace = Trace([], [], {}, Counter())
        self.sources = [torch.zeros(0, self.decoder.hidden_size) for _ in range(self.program.layers)]
        tokens = list(prompt)
        for number in range(new_tokens):
            positions = list(range(len(prompt))) if number == 0 else [len(tokens) - 1]
            token = self.step(number, positions, [tokens[p] for p in positions])
            tokens.append(token)
            if token in eos_token_ids:
                break
        self.trace.tokens = tokens[len(prompt):]
        return self.trace

    # -- one forward pass -----------------------------------------------------------------------
    def step(self, number: int, positions: list[int], tokens: list[int]) -> int:
        phase = "prefill" if number == 0 else "decode"
        request = self.request
        request.step = number
        self.phase, self.positions, self.layers = phase, positions, {}
        self.decisions: dict[int, list[bool]] = {}
        effects: list[set[tuple[int, int, int]]] = [set() for _ in positions]
        h = self.decoder.embed(tokens)
        for x in range(self.program.layers):
            self.sources[x] = torch.cat([self.sources[x], h])
            out = self.decoder.layer(x, h, positions, self.sources[x])
            self.layers[x] = _Layer(h, out.clone())
            for rule in self.program.rules:
                if rule.read_layer == x:
                    self.decisions[rule.index] = [self.decide(rule, row) for row in range(len(positions))]
            for action in self.program.actions_at(x):
                for row in range(len(positions)):
                    if self.wants(action, row) and self.apply(action, out, row):
                        effects[row].add((action.rule, action.index, action.layer))
                        self.trace.counts[action.label] = self.trace.counts.get(action.label, 0) + 1
                        self.fired(action)
            h = out
        token = int(self.decoder.logits(h[-1]).argmax())
        norms = torch.stack([self.layers[x].norms for x in range(self.program.layers)])
        self.trace.steps.append(Step(phase, number, positions, norms, effects, token))
        if phase == "decode":
            for rule in self.program.rules:
                if any(a.deferred for a in rule.actions):
                    request.latched[rule.index] = self.decisions.get(rule.index, [False])[0]
            self.feed_estimators()
        return token

    def decide(self, rule: Rule, row: int) -> bool:
        """Whether `rule` holds at this row of the step (docs §2): phase, cooldown, condition."""
        if rule.phase != "all" and rule.phase != self.phase:
            return False
        holds = self.truth(rule.condition, _Where(rule, row))  # evaluated in full: streaks and rates update
        if self.phase == "decode" and self.request.step <= self.request.cooldown_until.get(rule.index, -1):
            if holds:
                self.trace.events["cooldown blocked"] += 1
            return False
        return holds

    def wants(self, action: Action, row: int) -> bool:
        """Whether `action` acts at this row: on this step's decision, or a deferred one on the last step's."""
        if action.deferred:
            return self.phase == "decode" and self.request.latched.get(action.rule, False)
        return self.decisions[action.rule][row]

    def fired(self, action: Action) -> None:
        """An action took effect: its rule fired on its decision (cooldown from it; streaks reset at once)."""
        self.trace.events[f"{action.kind} took effect"] += 1
        if action.deferred:
            self.trace.events["deferred acted"] += 1
        if self.phase != "decode":
            self.trace.events["prefill acted"] += 1
            return
        rule = self.program.rules[action.rule]
        decided = self.request.step - 1 if action.deferred else self.request.step
        if rule.cooldown:
            self.request.cooldown_until[rule.index] = decided + rule.cooldown
        for node in rule.streaks:
            if self.request.counters.get((rule.index, node), 0):
                self.trace.events["streak reset"] += 1
            self.request.counters[(rule.index, node)] = 0

    def feed_estimators(self) -> None:
        """After a decode step: each estimator absorbs the step's value of its observable (§5)."""
        for name, key in self.program.estimators:
            value = self.observable(key, 0)
            if math.isfinite(value):
                self.request.estimators.setdefault((name, key), Quartiles()).add(value)

    # -- expressions ----------------------------------------------------------------------------
    def truth(self, expr, where: _Where) -> bool:
        """A condition's truth value at `where`."""
        return bool(self.value(expr, where))

    def value(self, expr, where: _Where, at: tuple[int | None, ObservableKey] | None = None):
        """A number (float), a truth value (bool), or None for an adaptive threshold still warming up.
        `at`: inside a comparison, the layer its thresholds are read at and the observable they learn."""
        match expr:
            case ir.Num(value=value):
                return float(value)
            case ir.Name(name=name) if name in self.program.params:
                return self.program.params[name]
            case ir.Name(name=name):
                threshold = self.program.thresholds[name]
                if threshold.source != "adaptive":
                    return threshold_at(threshold, at[0])
                estimator = self.request.estimators.setdefault((name, at[1]), Quartiles())
                return estimator.threshold(threshold.k, threshold.iqr_floor, threshold.warmup)
            case ir.Unary(op=op, operand=operand):
                value = self.value(operand, where, at)
                return None if value is None else (-value if op == "-" else value)
            case ir.Binary(op=op, left=left, right=right):
                x, y = self.value(left, where, at), self.value(right, where, at)
                return None if x is None or y is None else arithmetic(op, x, y)
            case ir.Compare():
                return self.compare(expr, where)
            case ir.BoolOp(op=op, operands=operands):
                values = [self.truth(o, where) for o in operands]  # all evaluated: streaks, rates update
                return all(values) if op == "and" else any(values)
            case ir.Not(operand=operand):
                return not self.truth(operand, where)
            case ir.AtLayer() | ir.Aggregate():
                return self.observable(where.rule.observables[id(expr)], where.row)
            case ir.PassObservable(name=name):
                return where.passes[name]
            case ir.Streak(condition=condition):
                key = (where.rule.index, id(expr))
                streak = self.request.counters.get(key, 0) + 1 if self.truth(condition, where) else 0
                self.request.counters[key] = streak
                return float(streak)
            case ir.Rate(condition=condition):
                key = (where.rule.index, id(expr))
                hits = self.request.counters.get(key, 0)
                earlier = self.request.step - 1
                self.request.counters[key] = hits + self.truth(condition, where)
                return hits / earlier if earlier else 0.0
            case ir.Chance(probability=probability):
                p = self.value(probability, where)
                step = self.request.step if self.phase == "decode" else -1 - self.positions[where.row]
                u = draw(self.seed, self.request.key, step, where.rule.chance_slots[id(expr)])
                self.trace.events[f"chance {u < p}"] += 1
                return u < p
        raise NotImplementedError(f"cannot evaluate {expr!r}")

    def compare(self, expr: ir.Compare, where: _Where) -> bool:
        """A chained comparison: false when any operand has no value or is not finite (§2)."""
        at = where.rule.compares[id(expr)]
        values = [self.value(o, where, at) for o in expr.operands]
        if any(v is None or not math.isfinite(v) for v in values):
            return False
        if at is not None:
            for x, y in zip(values, values[1:]):
                self.gap(x, y)
        return all(COMPARE[op](x, y) for op, x, y in zip(expr.ops, values, values[1:]))

    def gap(self, x: float, y: float) -> None:
        """Note how close a decision on `x` against `y` came to going the other way (relative gap)."""
        scale = max(abs(x), abs(y))
        if scale:
            self.trace.margin = min(self.trace.margin, abs(x - y) / scale)

    def observable(self, key: ObservableKey, row: int) -> float:
        """The first-pass value of an observable at a row of this step (docs §1)."""
        if key[0] == "agg":
            _, fn, obs, layers = key
            return REDUCE[fn]([self.observable(("at", obs, layer, None), row) for layer in layers])
        _, obs, layer, vector = key
        seen = self.layers[layer]
        if obs == "norm":
            return float(seen.norms[row])
        if obs == "growth":
            return float(seen.norms[row]) / float(seen.entered_norms[row]) - 1
        other = self.vectors[vector] if vector else seen.entered[row]
        return float(torch.cosine_similarity(seen.first[row].float(), other.float(), dim=0))

    # -- actions --------------------------------------------------------------------------------
    def apply(self, action: Action, h: torch.Tensor, row: int) -> bool:
        """Apply `action` to row `row` of `h` (in place); whether it took effect (docs §4)."""
        state = h[row]
        match action.kind:
            case "mark":
                return True
            case "store":
                self.store(action, self.layers[action.layer].first[row])
                return True
            case "steer":
                if action.value == 0:
                    self.trace.events["no-op"] += 1
                    return False
                vector = self.vectors[action.vector] if action.vector else self.retrieve(action, state)
                if vector is None:
                    return False
                c = action.value
                h[row] = state + c * vector if action.mode == "add" else (1 - c) * state + c * vector
                return True
            case "suppress" if action.mode == "scale":
                if action.value == 1:
                    self.trace.events["no-op"] += 1
                    return False
                h[row] = state * action.value
                return True
            case "suppress":
                norm = float(torch.linalg.vector_norm(state, dtype=torch.float32))
                self.gap(norm, action.value)
                if norm <= action.value:
                    self.trace.events["no-op"] += 1
                    return False
                h[row] = state * (action.value / norm)
                return True
            case "recurse":
                return self.recurse(action, h, row)
        raise NotImplementedError(action.kind)

    def store(self, action: Action, state: torch.Tensor) -> None:
        """Offer a first-pass state to the bank: it keeps the K of largest norm, an earlier one winning a tie."""
        bank = self.request.banks.setdefault((action.bank, action.layer), [])
        bank.append((float(torch.linalg.vector_norm(state, dtype=torch.float32)), state.clone()))
        bank.sort(key=lambda item: -item[0])  # a stable sort keeps the earlier of equal norms first
        if len(bank) > self.program.banks[action.bank]:
            self.trace.events["bank dropped a state"] += 1
            del bank[self.program.banks[action.bank]:]

    def retrieve(self, action: Action, state: torch.Tensor) -> torch.Tensor | None:
        """The banked state nearest to `state` by cosine, if that cosine reaches `min_cos`."""
        bank = self.request.banks.get((action.bank, action.layer), [])
        if not bank:
            self.trace.events["retrieve found an empty bank"] += 1
            return None
        cosines = [float(torch.cosine_similarity(s.float(), state.float(), dim=0)) for _, s in bank]
        best = max(range(len(bank)), key=lambda i: cosines[i])
        self.gap(cosines[best], action.min_cos)
        if cosines[best] < action.min_cos:
            self.trace.events["retrieve below min_cos"] += 1
            return None
        self.trace.events["retrieve took effect"] += 1
        return bank[best][1]

    def recurse(self, action: Action, h: torch.Tensor, row: int) -> bool:
        """Extra passes of the block at this position (docs §4), with `while`, `until`, damping and kv."""
        if action.passes == 0:
            self.trace.events["no-op"] += 1
            return False
        where = _Where(self.program.rules[action.rule], row)
        position = self.positions[row]
        current = h[row].clone()
        base = _norm(current)
        kept: dict[int, torch.Tensor] | None = None
        for done in range(action.passes):
            candidate, inputs = self.block(action, current, position)
            where.passes = _pass_values(candidate, current, base)
            if not math.isfinite(where.passes["norm"]) or not all(
                    self.truth(s.condition, where) for s in action.stops if s.mode == "while"):
                self.trace.events["while rejected"] += 1
                break
            new = current + action.damping * (candidate - current)
            kept = inputs
            where.passes = _pass_values(new, current, base)
            current = new
            self.trace.events["pass accepted"] += 1
            if any(self.truth(s.condition, where) for s in action.stops if s.mode == "until"):
                if done + 1 < action.passes:
                    self.trace.events["until stopped"] += 1
                break
        if kept is None:
            return False
        h[row] = current
        if action.kv == "refresh":  # the last accepted pass's K/V replace the normal pass's
            for j, state in kept.items():
                self.sources[j][position] = state
        return True

    def block(self, action: Action, state: torch.Tensor, position: int) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """One extra pass of layers first..last on `state` at `position`; also each layer's input.
        `kv frozen`: attend over the K/V as they stand (this position's from the normal pass);
        `kv refresh`: this position's K/V come from the pass itself."""
        x, inputs = state[None], {}
        for j in range(action.first, action.layer + 1):
            inputs[j] = x[0]
            sources = self.sources[j][:position + 1] if action.kv == "frozen" else \
                torch.cat([self.sources[j][:position], x])
            x = self.decoder.layer(j, x, [position], sources)
        return x[0], inputs


def _norm(state: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(state, dtype=torch.float32))


def _pass_values(state: torch.Tensor, previous: torch.Tensor, base: float) -> dict[str, float]:
    norm = _norm(state)
    return {"norm": norm, "growth": norm / _norm(previous) - 1, "ratio": norm / base,
            "change": _norm(state.float() - previous.float())}


@torch.no_grad()
def contrast_vector(model: torch.nn.Module, positive: list[list[int]], negative: list[list[int]],
                    layer: int) -> torch.Tensor:
    """`contrast(...) at layer` from tokenised prompts: the mean state after `layer` at the last token of
    each positive prompt minus the same mean over the negative ones."""
    decoder = Decoder(model)

    def last_state(tokens: list[int]) -> torch.Tensor:
        h = decoder.embed(tokens)
        for j in range(layer + 1):
            h = decoder.layer(j, h, list(range(len(tokens))), h)
        return h[-1].float()

    def mean(prompts: list[list[int]]) -> torch.Tensor:
        return torch.stack([last_state(p) for p in prompts]).mean(dim=0)

    return mean(positive) - mean(negative)


def interpret(model: torch.nn.Module, strategy: ir.Strategy, prompt: list[int], new_tokens: int, *,
              seed: int = 0, params: dict[str, float] | None = None, vectors: dict[str, torch.Tensor] | None = None,
              directory: Path | None = None, eos_token_ids: tuple[int, ...] = ()) -> Trace:
    """Resolve `strategy` for `model` and generate greedily from `prompt` (token ids) with it."""
    program = resolve(strategy, len(model.model.layers), params, vectors, directory)
    return Interpreter(model, program, seed).run(prompt, new_tokens, eos_token_ids)
