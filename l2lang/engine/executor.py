"""The executor: runs a plan over the token rows of each forward pass (docs/semantics.md).

A backend calls it at the boundaries of every step and after every hooked decoder layer:

    slots, uids = executor.start_requests(keys)      # when requests start
    executor.begin_step(rows)                        # who each token row belongs to
    hidden = executor.after_layer(index, hidden, before)   # for each layer in `executor.hooked`
    record = executor.end_step()
    executor.finish_requests(slots)                  # when requests finish

After a layer it computes the observations, evaluates the rules read there and applies the actions
scheduled there, as masked tensor operations over all rows at once: no loop over rows or requests.
Per-request state lives in the slots of a `RequestTable`. What makes a step cheap
(docs/performance.md): the plan's expressions are compiled into Python functions once, so a step
walks no plan; layers that are only observed keep their output until the end of a decode step, when
all their norms are taken in one operation; lockstep backends keep the decode step as a number; the
coins of all `chance` slots are drawn together; the finiteness of a layer's norm is checked once.
On a CPU, where reading a mask costs nothing, an action whose mask is empty is skipped, and so are
the operands of an `and` without side effects once no row is left; on a GPU nothing is read back
during a step: every action runs under its mask, every operand is evaluated (the same results).
"""

from __future__ import annotations

import functools
import math
import operator
import warnings
from collections.abc import Callable

import torch

from l2lang import plan as P
from l2lang.engine.backend import LayerBackend, StepRows
from l2lang.engine.records import StepRecord
from l2lang.engine.state import TAU_BOUND, Quartiles, RequestTable, coin_salts, uniform_from_salts
from l2lang.errors import GenerationError

COMPARE = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq,
           "!=": operator.ne}


def _divide(x, y):
    """x / y, where dividing by the number 0 gives x·inf instead of an error."""
    return x * math.inf if not torch.is_tensor(y) and y == 0 else x / y


ARITH = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": _divide}
REDUCE = {"mean": torch.mean, "max": torch.amax, "min": torch.amin, "sum": torch.sum}


class Executor:
    def __init__(self, plan: P.Plan, backend: LayerBackend, vectors: dict[str, torch.Tensor], *, seed: int | None,
                 hidden_size: int, dtype: torch.dtype, device: torch.device, capacity: int = 8):
        """`seed`: the run's seed for every request's coins; None when each request brings its own
        (`start_requests(keys, seeds)`)."""
        backend.capabilities.check(plan)
        self.plan, self.backend, self.vectors, self.seed = plan, backend, vectors, seed
        self.rules = {rule.id: rule for rule in plan.rules}
        self.steps_at = {step.layer: step for step in plan.schedule}
        self.needs = _observations_needed(plan)
        self.block_layers = frozenset(j for r in plan.rules for a in r.actions if isinstance(a, P.RecursePlan)
                                      for j in range(a.first, a.layer + 1))
        self.hooked = tuple(sorted(set(self.needs) | set(self.steps_at) | self.block_layers))
        self.observed_in_order = sorted(plan.observe)
        # Layers whose norm nothing reads during the step: on decode steps their outputs are kept and
        # all their norms taken at the end of the step, in one operation.
        read = set(self.steps_at) | {layer for node in _read_during_step(plan) for layer in _layers_of(node)}
        self.deferrable = frozenset(layer for layer, kinds in self.needs.items()
                                    if layer not in read and layer not in self.block_layers and kinds == {"norm"})
        # Per-step bookkeeping, decided once here rather than by walking the plan every step.
        self.streaks_of = {rule.id: _streak_slots(rule.condition) for rule in plan.rules}
        self.on_fire = {rule.id for rule in plan.rules if rule.cooldown or self.streaks_of[rule.id]}
        self.latch_index = {rule_id: i for i, rule_id in enumerate(r.id for r in plan.rules
                                                                   if any(a.delay for a in r.actions))}
        self.checked = {(rule.id, i) for rule in plan.rules for i, a in enumerate(rule.actions) if _may_overflow(a)}
        self.table = RequestTable(plan, capacity, hidden_size, dtype, device)
        self.shared_estimators = {e.id: Quartiles(1, device, t.k, t.iqr_floor, t.warmup) for e in plan.estimators
                                  if (t := plan.thresholds[e.threshold]).scope == "shared"}
        self.batch_sampled = {e.id for e in plan.estimators if plan.thresholds[e.threshold].sample == "batch"}
        self.chance_base = torch.tensor([coin_salts(seed or 0, slot) for slot in range(plan.chance_slots)],
                                        dtype=torch.int64, device=device)
        self.skip_idle = device.type == "cpu"  # reading a mask is free on a CPU, a stall on a GPU
        self.records: list[StepRecord] = []
        self.nonfinite = torch.zeros((), dtype=torch.int64, device=device)  # states actions made non-finite
        self.finite_log: list[tuple[torch.Tensor, tuple[torch.Tensor, ...]]] = []  # per step: valid, finite
        self.rows: StepRows | None = None
        self.deferring = False  # whether layers only observed are normed at the end of the step (decode steps)
        for name, vector in vectors.items():
            _refuse_overflow(plan, name, vector, dtype)
        self.conditions = {rule.id: self._compile_mask(rule.condition, rule.read_layer) for rule in plan.rules}
        self.observables = {e.id: self._compile(e.observable) for e in plan.estimators}
        # each recursion's `while` and `until` conditions
        self.stops = {id(action): tuple([self._compile_mask(condition) for mode, condition in action.stops
                                         if mode == kind] for kind in ("while", "until"))
                      for rule in plan.rules for action in rule.actions if isinstance(action, P.RecursePlan)}

    # -- requests ------------------------------------------------------------------------------
    def start_requests(self, keys: torch.Tensor, seeds: torch.Tensor | None = None) -> tuple[torch.Tensor, list[int]]:
        """Slots and uids for new requests (keys from `state.request_keys`, seeds when the executor has no
        seed of its own); their state starts empty."""
        return self.table.start(keys, seeds)

    def finish_requests(self, slots: list[int]) -> None:
        self.table.finish(slots)

    def wants_input(self, index: int) -> bool:
        """Whether `after_layer(index, ...)` needs the layer's input (for `growth` or `cos`)."""
        return bool(self.needs.get(index, set()) - {"norm"})

    # -- steps ---------------------------------------------------------------------------------
    def begin_step(self, rows: StepRows) -> None:
        """Start a forward pass over `rows`."""
        table = self.table
        self.rows = rows
        if rows.phase == "prefill":
            self.steps: torch.Tensor | int = 0
        elif rows.step is not None:  # lockstep: every decode row is at this step
            self.steps = rows.step
        else:  # every running request with a decode row takes one more decode step
            current = self._gather(table.decode_steps)
            steps = torch.where(rows.live_decode, current + 1, current)
            self._scatter(table.decode_steps, steps, None, rows)
            self.steps = steps if rows.phase == "decode" else torch.where(rows.decode, steps, 0)
        self.deferring = rows.phase != "prefill"  # (prompts are long: their norms are taken at once)
        self.deferred: list[tuple[int, torch.Tensor]] = []
        self.observations: dict[tuple, torch.Tensor] = {}
        self.finite: dict[int, torch.Tensor] = {}
        self.usable: dict[int, torch.Tensor] = {}
        self.decisions: dict[int, torch.Tensor] = {}
        self.draws: torch.Tensor | None = None
        self.taus: tuple[torch.Tensor, ...] | None = None  # request-scoped thresholds of the rows (`_taus`)
        self.invariant: dict[object, torch.Tensor | float] = {}  # arithmetic on thresholds: computed once
        self.effects: dict[tuple[int, int], torch.Tensor] = {}
        self.extra_layer_passes = 0
        self.row_passes: torch.Tensor | None = None

    def end_step(self) -> StepRecord:
        rows = self.rows
        layers, parts = [], []
        if self.deferred:  # every deferred layer's norm in one operation
            layers += [layer for layer, _ in self.deferred]
            parts.append(torch.linalg.vector_norm(torch.stack([h for _, h in self.deferred]), dim=-1,
                                                  dtype=torch.float32).view(len(self.deferred), rows.size))
        kept = [layer for layer in self.observed_in_order if ("norm", layer) in self.observations] \
            if self.observations else []
        if kept:
            layers += kept
            parts.append(torch.stack([self.observations[("norm", layer)] for layer in kept]))
        norms = parts[0] if len(parts) == 1 else torch.cat(parts) if parts else \
            torch.zeros(0, rows.size, device=rows.slots.device)
        if self.finite:  # valid rows a state of which was NaN or infinite: counted when reported
            self.finite_log.append((rows.valid, tuple(self.finite.values())))
        if rows.phase != "prefill" and (self.latch_index or self.plan.estimators):
            self._finish_decode_step(rows)
        record = StepRecord(rows, self.table.snapshot, self.steps, tuple(layers), norms, self.effects,
                            self.extra_layer_passes, self.row_passes)
        self.records.append(record)
        self.rows, self.deferring = None, False
        return record

    def _finish_decode_step(self, rows: StepRows) -> None:
        table, live = self.table, rows.live_decode
        for rule_id, i in self.latch_index.items():
            decision = self.decisions.get(rule_id)
            value = decision if decision is not None else torch.zeros_like(live)
            self._scatter(table.latched[i], value, rows.decode if rows.phase == "mixed" else None, rows)
        self._feed_estimators(live)

    def _feed_estimators(self, live: torch.Tensor) -> None:
        table = self.table
        if table.local:  # every request-scoped estimator in one update
            values = torch.stack([self.observables[e.id](None) for e in table.local])
            table.feed(values, live, None if self.rows.phase == "decode" else self.rows.slots)
        for est_id, shared in self.shared_estimators.items():
            value = self.observables[est_id](None).to(torch.float64)
            if est_id in self.batch_sampled:
                mean = torch.where(live, value, torch.zeros_like(value)).sum() / live.sum().clamp(min=1)
                shared.add(mean[None], live.any()[None])
            else:
                for row in range(value.shape[0]):  # a shared stream absorbs rows in order: P² is sequential
                    shared.add(value[row:row + 1], live[row:row + 1])

    # -- per-slot state, read and written by row --------------------------------------------------
    def _gather(self, per_slot: torch.Tensor) -> torch.Tensor:
        """[..., slots + 1] → [..., N]: each row's value of its request's slot."""
        rows = self.rows
        if rows.phase == "decode":
            return per_slot[..., :rows.size]
        return per_slot[..., rows.slots]

    def _scatter(self, per_slot: torch.Tensor, values, mask: torch.Tensor | None, rows: StepRows) -> None:
        """In place: each masked row writes its value (a tensor [..., N], or one number for all) into its
        request's slot (at most one row per slot may be masked)."""
        if rows.phase == "decode":  # rows are the first slots
            mine = per_slot[..., :rows.size]
            if mask is None:
                mine.copy_(values) if torch.is_tensor(values) else mine.fill_(values)
            elif torch.is_tensor(values):
                mine.copy_(torch.where(mask, values, mine))
            else:
                mine.masked_fill_(mask, values)
            return
        target = rows.slots if mask is None else torch.where(mask, rows.slots, self.table.scratch)
        per_slot[..., target] = values

    # -- layers --------------------------------------------------------------------------------
    def defer(self, index: int, hidden: torch.Tensor) -> bool:
        """Whether layer `index` is only observed on this step: then its output `hidden` (any shape whose
        leading dimensions flatten to the step's rows) is kept, its norm taken at the end of the step,
        and the backend skips `after_layer`."""
        if self.deferring and index in self.deferrable:
            self.deferred.append((index, hidden))
            return True
        return False

    def after_layer(self, index: int, hidden: torch.Tensor, before: torch.Tensor | None = None) -> torch.Tensor:
        """Observe and act after decoder layer `index` (unless `defer` kept it). `hidden`: its output
        [N, hidden] (the residual stream); `before`: its input, needed when `wants_input(index)`.
        Returns the (new) output."""
        if self.defer(index, hidden):
            return hidden
        self._observe(index, before, hidden)
        work = self.steps_at.get(index)
        if work is None:
            return hidden
        rows = self.rows
        finite = self._finite(index)
        for rule_id in work.evaluate:
            decision = self._decide(self.rules[rule_id])
            if decision is not None:
                self.decisions[rule_id] = decision
        first_pass = hidden
        for rule_id, action_index in work.act:
            rule = self.rules[rule_id]
            action = rule.actions[action_index]
            mask = self._action_mask(rule, action)
            if mask is None:
                continue
            if action.delay or rule.read_layer != index:  # (a decision already excludes non-finite rows)
                mask = mask & finite
            if self._idle(mask):  # (on a CPU) no row: nothing to apply, count or time
                continue
            before_action = hidden
            hidden, effect = self._apply(action, hidden, first_pass, mask, index)
            if (rule_id, action_index) in self.checked:  # an action that could overflow the state
                hidden, effect = self._keep_finite(before_action, hidden, effect)
            key = (rule_id, action_index)
            self.effects[key] = self.effects[key] | effect if key in self.effects else effect
            if rule.id in self.on_fire and rows.phase != "prefill":
                self._fired(rule, action.delay, effect)
        return hidden

    def _usable(self, index: int) -> torch.Tensor:
        """Valid rows whose state after layer `index` is finite (once per layer and step)."""
        usable = self.usable.get(index)
        if usable is None:
            usable = self.usable[index] = self.rows.valid & self._finite(index)
        return usable

    def _finite(self, index: int) -> torch.Tensor:
        """Where the norm after layer `index` is finite (checked once per step; `end_step` counts the
        valid rows that were not)."""
        finite = self.finite.get(index)
        if finite is None:  # (a norm is never negative: finite means below inf; NaN is not)
            finite = self.finite[index] = self.observations[("norm", index)] < math.inf
        return finite

    def _keep_finite(self, before: torch.Tensor, after: torch.Tensor, effect: torch.Tensor):
        """Rows an action left non-finite go back to their state before it, uncounted as an intervention
        and counted as non-finite (docs/semantics.md §6)."""
        bad = effect & ~(l2(after) < math.inf)
        self.nonfinite = self.nonfinite + bad.sum()
        return torch.where(bad[:, None], before, after), effect & ~bad

    def _fired(self, rule: P.RulePlan, delay: int, effect: torch.Tensor) -> None:
        """The rule fired where `effect` holds, on the decision of this step (minus `delay`): its cooldown
        runs from that decision, and its streaks restart from 0 at once."""
        table, rows = self.table, self.rows
        if rule.cooldown:
            self._scatter(table.cooldown_until[rule.id], self.steps + (rule.cooldown - delay), effect, rows)
        for slot in self.streaks_of[rule.id]:
            self._scatter(table.streaks[slot], 0, effect, rows)

    def _observe(self, index: int, before: torch.Tensor | None, after: torch.Tensor) -> None:
        kinds = self.needs.get(index)
        if kinds is None:
            return
        norm = self.observations[("norm", index)] = l2(after)
        if kinds == {"norm"}:
            return
        h = after.float()
        if "growth" in kinds:
            self.observations[("growth", index)] = norm / l2(before) - 1
        if "cos" in kinds:
            self.observations[("cos", index)] = torch.cosine_similarity(h, before.float(), dim=-1)
        for kind in kinds:
            if isinstance(kind, tuple):  # ("cos", vector name)
                vector = self.vectors[kind[1]].float()
                self.observations[("cos", index, kind[1])] = torch.cosine_similarity(h, vector.expand_as(h), dim=-1)

    def _decide(self, rule: P.RulePlan) -> torch.Tensor | None:
        """Where the rule holds on this step: bool [N] (valid rows whose state at the read layer is finite);
        None when the step's phase is not the rule's (no row can act: known without reading a mask)."""
        rows = self.rows
        phase = _phase_mask(rule.phase, rows)
        if phase is False:
            return None
        mask = self._usable(rule.read_layer) & self.conditions[rule.id](None)  # (see `_finite_check`)
        if phase is not True:
            mask = mask & phase
        if rule.cooldown and rows.phase != "prefill":
            mask = mask & (self._gather(self.table.cooldown_until[rule.id]) < self.steps)
        return mask

    def _action_mask(self, rule: P.RulePlan, action) -> torch.Tensor | None:
        """The rows `action` of `rule` acts on in this step; None when none can (no decision this step, or a
        deferred action in a prefill step), known without reading a mask."""
        if action.delay:
            if self.rows.phase == "prefill":
                return None
            return self._gather(self.table.latched[self.latch_index[rule.id]]) & self.rows.live_decode
        return self.decisions.get(rule.id)

    def _idle(self, mask: torch.Tensor) -> bool:
        """On a CPU, whether no row is in `mask` (so costly work can be skipped); on a GPU always False."""
        return self.skip_idle and not bool(mask.any())

    # -- evaluation ----------------------------------------------------------------------------
    # Plan expressions are compiled once, when the executor is made, into Python functions of the step's
    # state (and of a recursion's pass values): evaluating one walks no plan and decides nothing that the
    # plan already fixes. Constants stay Python numbers, so evaluating never copies from host to device.

    def _compile(self, node, reading: int | None = None) -> Callable[[dict | None], torch.Tensor | float | bool]:
        """`node` as a function of the pass values (None outside a recursion) giving its value over the rows:
        a [N] tensor, or a Python number for constants. `reading`: the read layer of the rule whose
        condition this is (its rows are already known finite there: see `_finite_check`)."""
        table = self.table
        match node:
            case P.Const(value=value):
                return lambda passes: value
            case P.Observe(observable=obs, layer=layer, vector=vector):
                key = (obs, layer, vector) if vector else (obs, layer)
                return lambda passes: self.observations[key]
            case P.Reduce(fn=fn, observable=obs, layers=layers):
                reduce, keys = REDUCE[fn], [(obs, layer) for layer in layers]
                return lambda passes: reduce(torch.stack([self.observations[k] for k in keys], dim=-1), dim=-1)
            case P.PassValue(name=name):
                return lambda passes: passes[name]
            case P.AdaptiveRef(estimator=est) if est in self.shared_estimators:
                shared = self.shared_estimators[est]
                return lambda passes: shared.tau
            case P.AdaptiveRef(estimator=est):
                index = table.local_index[est]
                return lambda passes: self._taus()[index]
            case P.Arith(op="neg", args=(arg,)):
                operand = self._compile(arg, reading)
                return self._once_per_step(node, lambda passes: -operand(passes))
            case P.Arith(op=op, args=(a, b)):
                x, y, arith = self._compile(a, reading), self._compile(b, reading), ARITH[op]
                return self._once_per_step(node, lambda passes: arith(x(passes), y(passes)))
            case P.Cmp(ops=ops, operands=operands):
                return self._compile_comparison(ops, operands, reading)
            case P.Logic(op="not", operands=(operand,)):
                holds = self._compile_mask(operand, reading)
                return lambda passes: ~holds(passes)
            case P.Logic(op="and", operands=operands):
                return self._compile_conjunction(operands, reading)
            case P.Logic(op="or", operands=operands):
                parts = [self._compile_mask(o, reading) for o in operands]
                return lambda passes: functools.reduce(operator.or_, [part(passes) for part in parts])
            case P.StreakOf(slot=slot, condition=condition):
                holds = self._compile_mask(condition, reading)
                return lambda passes: self._streak(slot, holds(passes))
            case P.RateOf(slot=slot, condition=condition):
                holds = self._compile_mask(condition, reading)
                return lambda passes: self._rate(slot, holds(passes))
            case P.ChanceOf(slot=slot, probability=probability):
                p = self._compile(probability, reading)
                return lambda passes: self._draws()[slot] < p(passes)
        raise TypeError(f"cannot evaluate {node!r}")

    def _compile_mask(self, node, reading: int | None = None) -> Callable[[dict | None], torch.Tensor]:
        """A condition as a function giving a bool tensor that broadcasts over the rows (the checker makes
        every condition a true/false test; a constant one is made a tensor over the rows)."""
        evaluate = self._compile(node, reading)

        def mask(passes: dict | None) -> torch.Tensor:
            value = evaluate(passes)
            return value if torch.is_tensor(value) else torch.full_like(self.rows.valid, bool(value))
        return mask

    def _compile_conjunction(self, operands: tuple, reading: int | None):
        """`a and b and ...`. On a CPU, where reading a mask is free, once no row is left the operands without
        side effects are not evaluated; those with (`_has_side_effects`) always are. On a GPU every operand
        is."""
        parts = [(self._compile_mask(o, reading), not _has_side_effects(o, reading)) for o in operands]

        def conjunction(passes: dict | None) -> torch.Tensor:
            out = parts[0][0](passes)
            for part, skippable in parts[1:]:
                if not (skippable and self._idle(out)):
                    out = out & part(passes)
            return out
        return conjunction

    def _compile_comparison(self, ops: tuple[str, ...], operands: tuple, reading: int | None):
        """A chained comparison; one with a non-finite operand is false. Each operand is checked once, in the
        cheapest way that is exact (`_finite_check`), and not at all where that is decided here."""
        values = [self._compile(o, reading) for o in operands]
        checks = [self._finite_check(o, ops, reading) for o in operands]
        compares = [COMPARE[op] for op in ops]

        def compare(passes: dict | None):
            x = [value(passes) for value in values]
            kept = [c for c in (check(v) for check, v in zip(checks, x) if check is not None) if c is not True]
            kept += [c for c in (cmp(a, b) for cmp, a, b in zip(compares, x, x[1:])) if c is not True]
            return functools.reduce(operator.and_, kept) if kept else True
        return compare

    def _finite_check(self, node, ops: tuple[str, ...], reading: int | None):
        """Where the value of `node`, an operand of a comparison with operators `ops`, is finite: None where
        nothing needs checking, else a function of the value. A layer's norm is checked once per step, and
        not at all at the read layer of the rule being decided (its decision keeps only finite rows);
        thresholds, and arithmetic on them that cannot overflow, are finite or NaN, and NaN already fails
        every comparison but !=; any other value is checked as it comes (a tensor against inf, a Python
        number with `math.isfinite`)."""
        match node:
            case P.Observe(observable="norm", layer=layer, vector=None):
                return None if layer == reading else lambda value: self._finite(layer)
        if "!=" not in ops and _bound(node) < FLOAT32_MAX:
            return None
        return lambda value: value.abs() < math.inf if torch.is_tensor(value) else math.isfinite(value)

    def _once_per_step(self, node, evaluate):
        """`evaluate`, or, for arithmetic on thresholds and constants only (fixed within a step), `evaluate`
        computed once per step and then kept."""
        if not _on_thresholds_only(node):
            return evaluate
        key = object()  # its entry in `self.invariant`

        def once(passes: dict | None):
            value = self.invariant.get(key)
            if value is None:
                value = self.invariant[key] = evaluate(passes)
            return value
        return once

    def _taus(self) -> tuple[torch.Tensor, ...]:
        """Every request-scoped threshold of every row, one [N] per estimator, gathered once per step."""
        if self.taus is None:
            self.taus = self._gather(self.table.quartiles.tau.view(len(self.table.local), -1)).unbind()
        return self.taus

    def _draws(self) -> torch.Tensor:
        """Every chance slot's coin for every row on this step, [slots, N], drawn once per step."""
        if self.draws is None:
            self.draws = uniform_from_salts(self._gather(self.table.keys), self.chance_base, self._coin_offsets())
        return self.draws

    def _streak(self, slot: int, holds: torch.Tensor) -> torch.Tensor:
        """The streak counter `slot` after this step: one more where `holds`, else 0."""
        table, rows = self.table, self.rows
        if rows.phase == "decode":  # in place; a finished request's count no longer matters
            return table.streaks[slot, :rows.size].add_(1).mul_(holds).float()
        current = self._gather(table.streaks[slot])
        new = torch.where(rows.live_decode, torch.where(holds, current + 1, 0), current)
        self._scatter(table.streaks[slot], new, None, rows)
        return new.float()

    def _rate(self, slot: int, holds: torch.Tensor) -> torch.Tensor:
        """The share of earlier decode steps on which the condition of rate counter `slot` held; counts this
        step's."""
        table, rows = self.table, self.rows
        earlier = self._gather(table.rate_hits[slot])
        before = max(self.steps - 1, 1) if isinstance(self.steps, int) else (self.steps - 1).clamp(min=1)
        rate = (earlier / before).float()  # (read before `earlier`, a view, is added to)
        if rows.phase == "decode":
            earlier.add_(holds)
        else:
            self._scatter(table.rate_hits[slot], earlier + (holds & rows.live_decode), rows.live_decode, rows)
        return rate

    def _coin_offsets(self) -> torch.Tensor | int:
        """Each row's part of its coins' salt: its decode step, or -1 - p for the prompt row at position p,
        times 7919; plus its request's seed times 1000003 where requests bring their own seeds."""
        rows = self.rows
        if rows.phase == "decode":
            steps = self.steps
        elif rows.phase == "prefill":
            steps = -1 - rows.positions
        else:
            steps = torch.where(rows.decode, self.steps, -1 - rows.positions)
        if self.seed is None:
            return steps * 7919 + self._gather(self.table.seeds) * 1_000_003
        return steps * 7919

    # -- actions -------------------------------------------------------------------------------
    def _apply(self, action, hidden: torch.Tensor, first_pass: torch.Tensor, mask: torch.Tensor, layer: int):
        table, rows = self.table, self.rows
        if _is_noop(action):
            return hidden, torch.zeros_like(mask)
        match action:
            case P.SteerPlan(vector=name, bank=None, coefficient=c, mode=mode):
                vector = self.vectors[name].to(hidden.dtype)
                new = hidden + c * vector if mode == "add" else (1 - c) * hidden + c * vector
                return torch.where(mask[:, None], new, hidden), mask
            case P.SteerPlan(bank=bank, coefficient=c, mode=mode, min_cos=min_cos):
                chosen, cos = table.banks[(bank, layer)].nearest(self._slots(), hidden)
                effect = mask & (cos >= min_cos)
                chosen = chosen.to(hidden.dtype)
                new = hidden + c * chosen if mode == "add" else (1 - c) * hidden + c * chosen
                return torch.where(effect[:, None], new, hidden), effect
            case P.SuppressPlan(mode="scale", value=s):
                return torch.where(mask[:, None], hidden * s, hidden), mask
            case P.SuppressPlan(mode="clamp", value=n):
                norm = l2(hidden)[:, None]
                effect = mask & (norm[:, 0] > n)
                scaled = hidden * (n / norm.clamp(min=1e-12)).to(hidden.dtype)
                return torch.where(effect[:, None], scaled, hidden), effect
            case P.StorePlan(bank=bank):
                if rows.phase == "decode":
                    table.banks[(bank, layer)].offer(self._slots(), first_pass, self.observations[("norm", layer)],
                                                     mask)
                else:  # several prompt rows of a request may offer their states in one step
                    slots = torch.where(mask, rows.slots, table.scratch)
                    table.banks[(bank, layer)].offer_many(slots, first_pass, self.observations[("norm", layer)],
                                                          mask)
                return hidden, mask
            case P.MarkPlan():
                return hidden, mask
            case P.RecursePlan():
                return self._recurse(action, hidden, mask)
        raise TypeError(f"cannot apply {action!r}")

    def _slots(self) -> torch.Tensor:
        """Each row's slot (in a decode step, rows are the slots: 0..N-1)."""
        rows = self.rows
        if rows.phase == "decode":
            return self.table.arange[:rows.size]
        return rows.slots

    def _recurse(self, action: P.RecursePlan, hidden: torch.Tensor, mask: torch.Tensor):
        rows = mask
        accepted = torch.zeros_like(rows)
        whiles, untils = self.stops[id(action)]
        block = self.backend.block(action.first, action.layer, action.kv)
        base_norm = l2(hidden)
        current = hidden
        layers = action.layer - action.first + 1
        for done in range(action.passes):
            ran = rows.to(torch.int32) * layers
            self.row_passes = ran if self.row_passes is None else self.row_passes + ran
            candidate = block.run(current, rows)
            values = _pass_values(candidate, current, base_norm)
            ok = rows & (values["norm"] < math.inf)
            for condition in whiles:
                ok = ok & condition(values)
            updated = current + action.damping * (candidate - current) if action.damping != 1 else candidate
            previous, current = current, torch.where(ok[:, None], updated, current)
            accepted = accepted | ok
            block.accept(ok)
            rows = ok
            if untils:
                values = _pass_values(current, previous, base_norm)
                for condition in untils:
                    rows = rows & ~condition(values)
            self.extra_layer_passes += layers
            if done + 1 < action.passes and self._idle(rows):
                break
        block.commit()
        return current, accepted

    # -- results -------------------------------------------------------------------------------
    def nonfinite_states(self) -> int:
        """Valid rows of a step a state of which was NaN or infinite (once per row and step), plus states
        that actions made non-finite."""
        for valid, finite in self.finite_log:
            self.nonfinite = self.nonfinite + (valid & ~functools.reduce(operator.and_, finite)).sum()
        self.finite_log.clear()
        return int(self.nonfinite)

    def warn_nonfinite(self) -> int:
        count = self.nonfinite_states()
        if count:
            warnings.warn(f"l2lang: {count} hidden state(s) held NaN or inf; those rows were left unmodified",
                          RuntimeWarning, stacklevel=2)
        return count


FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def _bound(node) -> float:
    """A bound on |value| of an expression over thresholds, counters and constants, whatever the rows (an
    adaptive threshold is NaN beyond `state.TAU_BOUND`); infinite for anything else."""
    match node:
        case P.Const(value=value):
            return abs(value)
        case P.AdaptiveRef():
            return TAU_BOUND
        case P.StreakOf():  # a count of decode steps
            return float(2**63)
        case P.RateOf():
            return 1.0
        case P.Arith(op="neg", args=(arg,)):
            return _bound(arg)
        case P.Arith(op="+" | "-", args=(a, b)):
            return _bound(a) + _bound(b)
        case P.Arith(op="*", args=(a, b)):
            return _bound(a) * _bound(b)
    return math.inf


def _on_thresholds_only(node) -> bool:
    """Whether an expression reads nothing but constants and thresholds (fixed within a step)."""
    match node:
        case P.Const() | P.AdaptiveRef():
            return True
        case P.Arith(args=args):
            return all(_on_thresholds_only(arg) for arg in args)
    return False


def _is_noop(action) -> bool:
    """Actions that leave the state unchanged whatever it is (docs/semantics.md §4): never take effect."""
    match action:
        case P.SteerPlan(coefficient=0.0) | P.SuppressPlan(mode="scale", value=1.0) | P.RecursePlan(passes=0):
            return True
    return False


def _may_overflow(action) -> bool:
    """Actions that can turn a finite state non-finite: adding more than the state itself, or scaling it
    up. (A convex mix, a clamp, a scale by at most 1 cannot; a recursion checks its candidates.)"""
    match action:
        case P.SteerPlan(mode="add", coefficient=c) if abs(c) > 1:
            return True
        case P.SteerPlan(mode="add", vector=str()):
            return True
        case P.SuppressPlan(mode="scale", value=s) if abs(s) > 1:
            return True
    return False


def _refuse_overflow(plan: P.Plan, name: str, vector: torch.Tensor, dtype: torch.dtype) -> None:
    """A steering vector whose coefficient makes it overflow the model's dtype is refused before the run."""
    largest = float(vector.float().abs().max()) if vector.numel() else 0.0
    limit = torch.finfo(dtype).max
    for rule in plan.rules:
        for action in rule.actions:
            if isinstance(action, P.SteerPlan) and action.vector == name and abs(action.coefficient) * largest > limit:
                raise GenerationError.one(
                    f"`steer {action.coefficient:g}*{name}` overflows {dtype}: the steered state would be "
                    "infinite", path=rule.origin, hint="use a smaller coefficient")


def _phase_mask(phase: str, rows: StepRows) -> torch.Tensor | bool:
    """Which rows a rule of `phase` may act on: True (all), False (none) or a mask."""
    if phase == "all" or rows.phase == ("decode" if phase == "decode" else "prefill"):
        return True
    if rows.phase != "mixed":
        return False
    return rows.decode if phase == "decode" else ~rows.decode


def _read_during_step(plan: P.Plan) -> list:
    """The expressions evaluated while a step runs: conditions, stop conditions, estimators' values."""
    nodes = [r.condition for r in plan.rules] + [e.observable for e in plan.estimators]
    return nodes + [c for r in plan.rules for a in r.actions if isinstance(a, P.RecursePlan) for _, c in a.stops]


def _layers_of(node) -> set[int]:
    layers: set[int] = set()
    for item in P.walk(node):
        if isinstance(item, P.Observe):
            layers.add(item.layer)
        elif isinstance(item, P.Reduce):
            layers.update(item.layers)
    return layers


def _observations_needed(plan: P.Plan) -> dict[int, set]:
    """Per layer, what to observe: the norm at every layer observed, read or acted at, plus what
    conditions, estimators and stop conditions read (`growth`, `cos`, `("cos", vector)`)."""
    needs: dict[int, set] = {layer: {"norm"} for layer in plan.observe}
    for step in plan.schedule:
        needs.setdefault(step.layer, {"norm"})
    for node in _read_during_step(plan):
        for item in P.walk(node):
            if isinstance(item, P.Observe):
                kind = ("cos", item.vector) if item.vector else item.observable
                needs.setdefault(item.layer, {"norm"}).add(kind)
            elif isinstance(item, P.Reduce):
                for layer in item.layers:
                    needs.setdefault(layer, {"norm"}).add(item.observable)
    return needs


def _pass_values(state: torch.Tensor, previous: torch.Tensor, base_norm: torch.Tensor) -> dict[str, torch.Tensor]:
    """The pass observables of a recursion (docs/language.md): each [N]."""
    norm = l2(state)
    return {"norm": norm, "growth": norm / l2(previous) - 1, "ratio": norm / base_norm,
            "change": (state.float() - previous.float()).norm(dim=-1)}


def l2(hidden: torch.Tensor) -> torch.Tensor:
    """The ℓ2 norm over the hidden dimension, computed in float32 whatever the model's dtype."""
    return torch.linalg.vector_norm(hidden, dim=-1, dtype=torch.float32)


def _has_side_effects(node, reading: int | None) -> bool:
    """Whether evaluating `node` (in a condition read at layer `reading`) changes state: per-request counters
    (`streak`, `rate`), or the layers whose finiteness the step checks, and so counts (a layer's norm
    compared other than at the read layer)."""
    return any(isinstance(item, (P.StreakOf, P.RateOf))
               or (isinstance(item, P.Observe) and item.observable == "norm" and item.layer != reading)
               for item in P.walk(node))


def _streak_slots(node) -> list[int]:
    return [item.slot for item in P.walk(node) if isinstance(item, P.StreakOf)]
