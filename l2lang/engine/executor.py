"""The executor: runs a plan over the token rows of each forward pass (docs/semantics.md).

A backend calls it at the boundaries of every step and after every hooked decoder layer:

    slots, uids = executor.start_requests(keys)      # when requests start
    executor.begin_step(rows)                        # who each token row belongs to
    hidden = executor.after_layer(index, hidden, before)   # for each layer in `executor.hooked`
    record = executor.end_step()
    executor.finish_requests(slots)                  # when requests finish

After a layer it computes the observations, evaluates the rules read there and applies the actions
scheduled there, as masked tensor operations over all rows at once: no loop over rows or requests,
and no host-device synchronisation except the `any()` that decides whether a recursion pass runs at
all (docs/performance.md counts them). Per-request state lives in the slots of a `RequestTable`.
"""

from __future__ import annotations

import functools
import math
import operator
import warnings

import torch

from l2lang import plan as P
from l2lang.engine.backend import LayerBackend, StepRows
from l2lang.engine.records import StepRecord
from l2lang.engine.state import Quartiles, RequestTable, uniform

COMPARE = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq,
           "!=": operator.ne}
ARITH = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
REDUCE = {"mean": torch.mean, "max": torch.amax, "min": torch.amin, "sum": torch.sum}


class Executor:
    def __init__(self, plan: P.Plan, backend: LayerBackend, vectors: dict[str, torch.Tensor], *, seed: int,
                 hidden_size: int, dtype: torch.dtype, device: torch.device, capacity: int = 8):
        backend.capabilities.check(plan)
        self.plan, self.backend, self.vectors, self.seed = plan, backend, vectors, seed
        self.rules = {rule.id: rule for rule in plan.rules}
        self.steps_at = {step.layer: step for step in plan.schedule}
        self.needs = _observations_needed(plan)
        self.block_layers = frozenset(j for r in plan.rules for a in r.actions if isinstance(a, P.RecursePlan)
                                      for j in range(a.first, a.layer + 1))
        self.hooked = tuple(sorted(set(self.needs) | set(self.steps_at) | self.block_layers))
        self.observed = tuple(plan.observe)
        self.observed_row = {layer: i for i, layer in enumerate(self.observed)}
        # Per-step bookkeeping, decided once here rather than by walking the plan every step.
        self.streaks_of = {rule.id: _streak_slots(rule.condition) for rule in plan.rules}
        self.on_fire = {rule.id for rule in plan.rules if rule.cooldown or self.streaks_of[rule.id]}
        self.latch_index = {rule_id: i for i, rule_id in enumerate(r.id for r in plan.rules
                                                                   if any(a.delay for a in r.actions))}
        self.table = RequestTable(plan, capacity, hidden_size, dtype, device)
        self.shared_estimators = {e.id: Quartiles(1, device) for e in plan.estimators
                                  if plan.thresholds[e.threshold].scope == "shared"}
        self.records: list[StepRecord] = []
        self.nonfinite = torch.zeros((), dtype=torch.int64, device=device)
        self.rows: StepRows | None = None

    # -- requests ------------------------------------------------------------------------------
    def start_requests(self, keys: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """Slots and uids for new requests (keys from `state.request_keys`); their state starts empty."""
        return self.table.start(keys)

    def finish_requests(self, slots: list[int]) -> None:
        self.table.finish(slots)

    def wants_input(self, index: int) -> bool:
        """Whether `after_layer(index, ...)` needs the layer's input (for `growth` or `cos`)."""
        return bool(self.needs.get(index, set()) - {"norm"})

    # -- steps ---------------------------------------------------------------------------------
    def begin_step(self, rows: StepRows, common_step: int | None = None) -> None:
        """Start a forward pass over `rows`. `common_step`: the decode step every row is at, when the
        backend knows one (it saves per-row work for coins); prompt rows are at step 0."""
        table = self.table
        self.rows = rows
        if rows.phase == "prefill":
            self.step_numbers = torch.zeros_like(rows.slots)
        else:  # every running request with a decode row takes one more decode step
            current = self._gather(table.decode_steps)
            steps = torch.where(rows.live_decode, current + 1, current)
            self._scatter(table.decode_steps, steps, None, rows)
            self.step_numbers = steps if rows.phase == "decode" else torch.where(rows.decode, steps, 0)
        # what seeds each row's coins: its decode step, or -1 - p for the prompt row at position p
        if rows.phase == "decode":
            self.coin_steps = common_step if common_step is not None else self.step_numbers
        else:
            self.coin_steps = -1 - rows.positions if rows.phase == "prefill" else \
                torch.where(rows.decode, self.step_numbers, -1 - rows.positions)
        self.observations: dict[tuple, torch.Tensor] = {}
        self.decisions: dict[int, torch.Tensor] = {}
        self.taus: torch.Tensor | None = None
        self.effects: dict[tuple[int, int], torch.Tensor] = {}
        self.extra_layer_passes = 0
        self.norms = torch.empty(len(self.observed), rows.size, dtype=torch.float32, device=rows.slots.device)

    def end_step(self) -> StepRecord:
        rows = self.rows
        if rows.phase != "prefill":
            self._finish_decode_step(rows)
        record = StepRecord(rows, self.table.snapshot, self.step_numbers, self.observed, self.norms, self.effects,
                            self.extra_layer_passes)
        self.records.append(record)
        self.rows = None
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
        if table.local:  # every request-scoped estimator in one vectorised update
            values = torch.stack([self._evaluate(e.observable) for e in table.local]).to(torch.float64)
            size = table.capacity + 1
            per_slot = torch.zeros(len(table.local), size, dtype=torch.float64, device=values.device)
            mask = torch.zeros(len(table.local), size, dtype=torch.bool, device=values.device)
            for target, source in ((per_slot, values), (mask, live.expand_as(values))):
                self._scatter(target, source, live, self.rows)
            mask[:, table.scratch] = False
            table.quartiles.add(per_slot.flatten(), mask.flatten())
        for est in self.plan.estimators:
            threshold = self.plan.thresholds[est.threshold]
            if threshold.scope != "shared":
                continue
            value = self._evaluate(est.observable).to(torch.float64)
            shared = self.shared_estimators[est.id]
            if threshold.sample == "batch":
                mean = torch.where(live, value, torch.zeros_like(value)).sum() / live.sum().clamp(min=1)
                shared.add(mean[None], live.any()[None])
            else:
                for row in range(value.shape[0]):  # a shared stream absorbs rows in order: P² is sequential
                    shared.add(value[row:row + 1], live[row:row + 1])

    # -- per-slot state, read and written by row --------------------------------------------------
    def _gather(self, per_slot: torch.Tensor) -> torch.Tensor:
        return self._gather_with(self.rows, per_slot)

    @staticmethod
    def _gather_with(rows: StepRows, per_slot: torch.Tensor) -> torch.Tensor:
        """[..., slots + 1] → [..., N]: each row's value of its request's slot."""
        if rows.phase == "decode":
            return per_slot[..., :rows.size]
        return per_slot[..., rows.slots]

    def _scatter(self, per_slot: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None, rows: StepRows,
                 current: torch.Tensor | None = None) -> None:
        """In place: each masked row writes its value into its request's slot (at most one row per slot
        may be masked). `current`: the rows' present values, when the caller has them."""
        if rows.phase == "decode":
            if mask is None:
                per_slot[..., :rows.size] = values
            else:
                old = per_slot[..., :rows.size] if current is None else current
                per_slot[..., :rows.size] = torch.where(mask, values, old)
            return
        target = rows.slots if mask is None else torch.where(mask, rows.slots, self.table.scratch)
        per_slot[..., target] = values

    # -- layers --------------------------------------------------------------------------------
    def after_layer(self, index: int, hidden: torch.Tensor, before: torch.Tensor | None = None) -> torch.Tensor:
        """Observe and act after decoder layer `index`. `hidden`: its output [N, hidden] (the residual
        stream); `before`: its input, needed when `wants_input(index)`. Returns the (new) output."""
        self._observe(index, before, hidden)
        work = self.steps_at.get(index)
        if work is None:
            return hidden
        rows = self.rows
        finite = torch.isfinite(self.observations[("norm", index)])
        self.nonfinite = self.nonfinite + (rows.valid & ~finite).sum()
        for rule_id in work.evaluate:
            self.decisions[rule_id] = self._decide(self.rules[rule_id])
        first_pass = hidden
        for rule_id, action_index in work.act:
            rule = self.rules[rule_id]
            action = rule.actions[action_index]
            mask = self._action_mask(rule, action)
            if mask is None:
                continue
            mask = mask & finite
            hidden, effect = self._apply(action, hidden, first_pass, mask, index)
            key = (rule_id, action_index)
            self.effects[key] = self.effects[key] | effect if key in self.effects else effect
            if rule.id in self.on_fire and rows.phase != "prefill":
                self._fired(rule, action.delay, effect)
        return hidden

    def _fired(self, rule: P.RulePlan, delay: int, effect: torch.Tensor) -> None:
        """The rule fired where `effect` holds, on the decision of this step (minus `delay`): its cooldown
        runs from that decision, and its streaks restart from 0 at once."""
        table, rows = self.table, self.rows
        if rule.cooldown:
            until = self.step_numbers + (rule.cooldown - delay)
            self._scatter(table.cooldown_until[rule.id], until, effect, rows)
        for slot in self.streaks_of[rule.id]:
            self._scatter(table.streaks[slot], torch.zeros_like(self.step_numbers), effect, rows)

    def _observe(self, index: int, before: torch.Tensor | None, after: torch.Tensor) -> None:
        kinds = self.needs.get(index)
        if kinds is None:
            return
        row = self.observed_row.get(index)
        if row is not None:  # written straight into this step's record
            norm = torch.linalg.vector_norm(after, dim=-1, dtype=torch.float32, out=self.norms[row])
        else:
            norm = l2(after)
        self.observations[("norm", index)] = norm
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

    def _decide(self, rule: P.RulePlan) -> torch.Tensor:
        """Where the rule holds on this step: bool [N]."""
        rows = self.rows
        phase = _phase_mask(rule.phase, rows)
        if phase is False:
            return torch.zeros_like(rows.valid)
        mask = rows.valid & self._mask(rule.condition)
        if phase is not True:
            mask = mask & phase
        if rule.cooldown and rows.phase != "prefill":
            mask = mask & (self.step_numbers > self._gather(self.table.cooldown_until[rule.id]))
        return mask

    def _action_mask(self, rule: P.RulePlan, action) -> torch.Tensor | None:
        if action.delay:
            if self.rows.phase == "prefill":
                return None
            return self._gather(self.table.latched[self.latch_index[rule.id]]) & self.rows.live_decode
        return self.decisions.get(rule.id)

    # -- evaluation ----------------------------------------------------------------------------
    def _evaluate(self, node, passes: dict | None = None) -> torch.Tensor | float | bool:
        """A plan expression over the rows: a [N] tensor, or a Python number for constants.

        Constants stay Python numbers so that evaluating never copies from host to device.
        """
        table, rows = self.table, self.rows
        match node:
            case P.Const(value=value):
                return value
            case P.Observe(observable=obs, layer=layer, vector=vector):
                return self.observations[(obs, layer, vector) if vector else (obs, layer)]
            case P.Reduce(fn=fn, observable=obs, layers=layers):
                stacked = torch.stack([self.observations[(obs, layer)] for layer in layers], dim=-1)
                return REDUCE[fn](stacked, dim=-1)
            case P.PassValue(name=name):
                return passes[name]
            case P.AdaptiveRef(threshold=name, estimator=est):
                t = self.plan.thresholds[name]
                if t.scope == "shared":
                    return self.shared_estimators[est].threshold(t.k, t.iqr_floor, t.warmup).float()
                if self.taus is None:  # all request-scoped thresholds, once per step
                    self.taus = table.quartiles.threshold(table.k, table.iqr_floor, table.warmup).float() \
                        .view(len(table.local), -1)
                return self._gather(self.taus[table.local_index[est]])
            case P.Arith(op="neg", args=(arg,)):
                return -self._evaluate(arg, passes)
            case P.Arith(op=op, args=(a, b)):
                x, y = self._evaluate(a, passes), self._evaluate(b, passes)
                if op == "/" and not torch.is_tensor(y) and y == 0:
                    return x * float("inf")
                return ARITH[op](x, y)
            case P.Cmp(ops=ops, operands=operands):
                values = [self._evaluate(o, passes) for o in operands]
                # a comparison with a non-finite operand is false; each operand is checked once
                checks = [_finite(v) for v in values]
                checks += [COMPARE[op](x, y) for op, x, y in zip(ops, values, values[1:])]
                kept = [c for c in checks if c is not True]
                return functools.reduce(operator.and_, kept) if kept else True
            case P.Logic(op="not", operands=(operand,)):
                return ~self._mask(operand, passes)
            case P.Logic(op=op, operands=operands):
                values = [self._mask(o, passes) for o in operands]
                out = values[0]
                for value in values[1:]:
                    out = (out & value) if op == "and" else (out | value)
                return out
            case P.StreakOf(slot=slot, condition=condition):
                holds = self._mask(condition, passes)
                current = self._gather(table.streaks[slot])
                new = torch.where(rows.live_decode, torch.where(holds, current + 1, 0), current)
                self._scatter(table.streaks[slot], new, None, rows)
                return new.float()
            case P.RateOf(slot=slot, condition=condition):  # over the earlier decode steps
                holds = self._mask(condition, passes)
                live = rows.live_decode
                earlier = self._gather(table.rate_hits[slot])  # (a view: read before writing)
                rate = (earlier / (self.step_numbers - 1).clamp(min=1)).float()
                self._scatter(table.rate_hits[slot], earlier + (holds & live).to(torch.int64), live, rows)
                return rate
            case P.ChanceOf(slot=slot, probability=p):
                draw = uniform(self.seed, self._gather(table.keys), self.coin_steps, slot)
                return draw < self._evaluate(p, passes)
        raise TypeError(f"cannot evaluate {node!r}")

    def _mask(self, node, passes: dict | None = None) -> torch.Tensor:
        """A condition as a bool [N] tensor (a constant condition is broadcast)."""
        value = self._evaluate(node, passes)
        if torch.is_tensor(value):
            return value.bool().expand_as(self.rows.valid)
        return torch.full_like(self.rows.valid, bool(value))

    # -- actions -------------------------------------------------------------------------------
    def _apply(self, action, hidden: torch.Tensor, first_pass: torch.Tensor, mask: torch.Tensor, layer: int):
        table, rows = self.table, self.rows
        m = mask[:, None]
        if _is_noop(action):
            return hidden, torch.zeros_like(mask)
        match action:
            case P.SteerPlan(vector=name, bank=None, coefficient=c, mode=mode):
                vector = self.vectors[name].to(hidden.dtype)
                new = hidden + c * vector if mode == "add" else (1 - c) * hidden + c * vector
                return torch.where(m, new, hidden), mask
            case P.SteerPlan(bank=bank, coefficient=c, mode=mode, min_cos=min_cos):
                slots = rows.slots if rows.phase != "decode" else torch.arange(rows.size, device=hidden.device)
                chosen, cos = table.banks[(bank, layer)].nearest(slots, hidden)
                effect = mask & (cos >= min_cos)
                chosen = chosen.to(hidden.dtype)
                new = hidden + c * chosen if mode == "add" else (1 - c) * hidden + c * chosen
                return torch.where(effect[:, None], new, hidden), effect
            case P.SuppressPlan(mode="scale", value=s):
                return torch.where(m, hidden * s, hidden), mask
            case P.SuppressPlan(mode="clamp", value=n):
                norm = l2(hidden)[:, None]
                effect = mask & (norm[:, 0] > n)
                scaled = hidden * (n / norm.clamp(min=1e-12)).to(hidden.dtype)
                return torch.where(effect[:, None], scaled, hidden), effect
            case P.StorePlan(bank=bank):
                if rows.phase == "decode":
                    slots = torch.arange(rows.size, device=hidden.device)
                    table.banks[(bank, layer)].offer(slots, first_pass, l2(first_pass), mask)
                else:  # several prompt rows of a request may offer their states in one step
                    slots = torch.where(mask, rows.slots, table.scratch)
                    table.banks[(bank, layer)].offer_many(slots, first_pass, l2(first_pass), mask)
                return hidden, mask
            case P.MarkPlan():
                return hidden, mask
            case P.RecursePlan():
                return self._recurse(action, hidden, mask)
        raise TypeError(f"cannot apply {action!r}")

    def _recurse(self, action: P.RecursePlan, hidden: torch.Tensor, mask: torch.Tensor):
        rows = mask
        accepted = torch.zeros_like(rows)
        if action.passes == 0 or not bool(rows.any()):
            return hidden, accepted
        block = self.backend.block(action.first, action.layer, action.kv)
        base_norm = l2(hidden)
        current = hidden
        for done in range(action.passes):
            candidate = block.run(current)
            values = _pass_values(candidate, current, base_norm)
            ok = rows & torch.isfinite(values["norm"])
            for mode, condition in action.stops:
                if mode == "while":
                    ok = ok & self._mask(condition, values)
            updated = current + action.damping * (candidate - current) if action.damping != 1 else candidate
            previous, current = current, torch.where(ok[:, None], updated, current)
            accepted = accepted | ok
            block.accept(ok)
            until = torch.zeros_like(ok)
            for mode, condition in action.stops:
                if mode == "until":
                    until = until | self._mask(condition, _pass_values(current, previous, base_norm))
            rows = ok & ~until
            self.extra_layer_passes += action.layer - action.first + 1
            if done + 1 < action.passes and not bool(rows.any()):
                break
        block.commit()
        return current, accepted

    # -- results -------------------------------------------------------------------------------
    def warn_nonfinite(self) -> int:
        count = int(self.nonfinite)
        if count:
            warnings.warn(f"l2lang: {count} hidden state(s) held NaN or inf; those rows were left unmodified",
                          RuntimeWarning, stacklevel=2)
        return count


def _is_noop(action) -> bool:
    """Actions that leave the state unchanged whatever it is (docs/semantics.md §4): never take effect."""
    match action:
        case P.SteerPlan(coefficient=0.0) | P.SuppressPlan(mode="scale", value=1.0) | P.RecursePlan(passes=0):
            return True
    return False


def _phase_mask(phase: str, rows: StepRows) -> torch.Tensor | bool:
    """Which rows a rule of `phase` may act on: True (all), False (none) or a mask."""
    if phase == "all" or rows.phase == ("decode" if phase == "decode" else "prefill"):
        return True
    if rows.phase != "mixed":
        return False
    return rows.decode if phase == "decode" else ~rows.decode


def _observations_needed(plan: P.Plan) -> dict[int, set]:
    """Per layer, what to observe: the norm at every layer observed, read or acted at, plus what
    conditions, estimators and stop conditions read (`growth`, `cos`, `("cos", vector)`)."""
    needs: dict[int, set] = {layer: {"norm"} for layer in plan.observe}
    for step in plan.schedule:
        needs.setdefault(step.layer, {"norm"})
    nodes = [r.condition for r in plan.rules] + [e.observable for e in plan.estimators]
    nodes += [c for r in plan.rules for a in r.actions if isinstance(a, P.RecursePlan) for _, c in a.stops]
    for node in nodes:
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


def _finite(value) -> torch.Tensor | bool:
    return torch.isfinite(value) if torch.is_tensor(value) else math.isfinite(value)


def _streak_slots(node) -> list[int]:
    return [item.slot for item in P.walk(node) if isinstance(item, P.StreakOf)]
