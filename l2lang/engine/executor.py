"""The executor: runs a plan inside a Hugging Face model's forward passes (docs/semantics.md).

`Executor.install()` puts a pre-hook on the model (step boundaries, phase, finished rows) and forward
hooks on the decoder layers the plan needs; `remove()` takes every hook off again. Per layer it
computes the observations, evaluates the rules read there and applies the actions scheduled there,
as masked tensor operations over the whole batch: no loop over rows, and no host-device
synchronisation except the `any()` that decides whether a recursion pass runs at all
(docs/performance.md counts them).
"""

from __future__ import annotations

import functools
import math
import operator
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from l2lang import plan as P
from l2lang.errors import L2Error
from l2lang.backends.hf.layers import ModelAdapter
from l2lang.backends.hf.cache import FrozenView, RefreshView
from l2lang.engine.state import Bank, Quartiles, request_keys, uniform

COMPARE = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq,
           "!=": operator.ne}
ARITH = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
REDUCE = {"mean": torch.mean, "max": torch.amax, "min": torch.amin, "sum": torch.sum}


@dataclass
class Step:
    """What one forward pass is: its phase, which positions are real, which rows still generate."""

    phase: str
    index: int                      # 0 for prefill, then 1, 2, ... per decode step
    valid: torch.Tensor             # bool [B, T]: real (non-padding) positions of live rows
    cache: object | None
    observations: dict = field(default_factory=dict)   # (kind, layer[, vector]) -> tensor [B, T]
    decisions: dict[int, torch.Tensor] = field(default_factory=dict)   # rule id -> bool [B, T]
    layer_calls: dict[int, tuple[tuple, dict]] = field(default_factory=dict)
    taus: torch.Tensor | None = None  # request-scoped adaptive thresholds [estimator, row], once per step


class Executor:
    def __init__(self, plan: P.Plan, model: nn.Module, adapter: ModelAdapter, vectors: dict[str, torch.Tensor],
                 seed: int = 0, eos_token_ids: tuple[int, ...] = ()):
        self.plan, self.model, self.adapter = plan, model, adapter
        self.vectors, self.seed = vectors, seed
        self.eos = torch.tensor(sorted(set(eos_token_ids)) or [-1])
        self.rules = {rule.id: rule for rule in plan.rules}
        self.steps_at = {step.layer: step for step in plan.schedule}
        self.needs = _observations_needed(plan)
        self.block_layers = {j for r in plan.rules for a in r.actions if isinstance(a, P.RecursePlan)
                             for j in range(a.first, a.layer + 1)}
        self.hooked = sorted(set(self.needs) | set(self.steps_at) | self.block_layers)
        # Per-step bookkeeping, decided once here rather than by walking the plan every step.
        self.streaks_of = {rule.id: _streak_slots(rule.condition) for rule in plan.rules}
        self.deferring = [rule.id for rule in plan.rules if any(a.delay for a in rule.actions)]
        self.handles: list = []
        self.shared_estimators: dict[int, Quartiles] = {}
        self.history: list[RequestState] = []   # one per generate call, with its per-step records
        self.step: Step | None = None
        self.nonfinite = torch.zeros((), dtype=torch.int64)

    # -- hooks ---------------------------------------------------------------------------------
    def install(self) -> None:
        self.handles.append(self.model.register_forward_pre_hook(self._begin_step, with_kwargs=True))
        self.handles.append(self.model.register_forward_hook(self._end_step, with_kwargs=True))
        for index in self.hooked:
            hook = self._layer_hook(index)
            self.handles.append(self.adapter.layers[index].register_forward_hook(hook, with_kwargs=True))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    # -- step boundaries -----------------------------------------------------------------------
    def _begin_step(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        reference = input_ids if input_ids is not None else embeds
        rows, width = reference.shape[0], reference.shape[1]
        cache = kwargs.get("past_key_values")
        past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
        device = reference.device
        if past == 0:
            if cache is None and kwargs.get("use_cache") is False and self._acts_in_decode():
                raise L2Error.one("l2lang runs decode-step rules with the KV cache: generate with use_cache=True",
                                  path="<generate>")
            mask = kwargs.get("attention_mask")
            valid = mask[:, -width:].bool() if mask is not None else torch.ones(rows, width, dtype=torch.bool,
                                                                                 device=device)
            ids = input_ids if input_ids is not None else torch.zeros(rows, width, dtype=torch.long, device=device)
            self._new_requests(rows, request_keys(ids, valid), device)
            self.step = Step("prefill", 0, valid, cache)
        else:
            if width != 1:
                raise L2Error.one(f"l2lang decodes one token per step; this call feeds {width}",
                                  path="<generate>", hint="assisted or speculative decoding is not supported")
            state = self.state
            if input_ids is not None:
                state.finished |= (input_ids[:, -1:] == self.eos).any(dim=-1)  # cheaper than isin for a few ids
            state.decode_steps += 1
            live = ~state.finished
            self.step = Step("decode", state.decode_steps, live[:, None], cache)
            state.active_steps = state.active_steps + live.to(torch.int64)
        return None

    def _end_step(self, module, args, kwargs, output):
        step, state = self.step, self.state
        if step is None:
            return output
        if step.phase == "decode":
            self._finish_decode_step(step, state)
        norms = {layer: step.observations[("norm", layer)] for layer in self.plan.observe
                 if ("norm", layer) in step.observations}
        # `valid[:, -1]` says which rows were live on a decode step.
        state.records.append({"phase": step.phase, "valid": step.valid, "effects": state.step_effects, "norms": norms})
        state.step_effects = {}
        self.step = None
        return output

    def _acts_in_decode(self) -> bool:
        return any(rule.phase != "prefill" for rule in self.plan.rules)

    def _new_requests(self, rows: int, keys: torch.Tensor, device: torch.device) -> None:
        self.state = RequestState(self.plan, rows, keys, device, self.adapter.hidden_size,
                                  next(self.model.parameters()).dtype)
        self.eos = self.eos.to(device)
        for est in self.plan.estimators:
            threshold = self.plan.thresholds[est.threshold]
            if threshold.scope == "shared":
                self.shared_estimators.setdefault(est.id, Quartiles(1, device))
        self.history.append(self.state)

    def _finish_decode_step(self, step: Step, state: RequestState) -> None:
        live = ~state.finished
        for rule_id, fired in state.fired.items():
            rule = self.rules[rule_id]
            if rule.cooldown:
                state.cooldown[rule_id] = torch.where(fired, state.decode_steps + rule.cooldown, state.cooldown[rule_id])
            for slot in self.streaks_of[rule_id]:
                state.streaks[slot] = torch.where(fired, torch.zeros_like(state.streaks[slot]), state.streaks[slot])
        state.fired.clear()
        for rule_id in self.deferring:
            decision = step.decisions.get(rule_id)
            state.latched[rule_id] = decision[:, -1] if decision is not None else torch.zeros_like(live)
        self._feed_estimators(step, state, live)

    def _feed_estimators(self, step: Step, state: RequestState, live: torch.Tensor) -> None:
        if state.local:  # every request-scoped estimator in one vectorised update
            values = torch.stack([self._evaluate(e.observable, step)[:, -1] for e in state.local])
            state.quartiles.add(values.flatten(), live.repeat(len(state.local)))
        for est in self.plan.estimators:
            threshold = self.plan.thresholds[est.threshold]
            if threshold.scope != "shared":
                continue
            value = self._evaluate(est.observable, step)[:, -1].to(torch.float64)
            shared = self.shared_estimators[est.id]
            if threshold.sample == "batch":
                mean = torch.where(live, value, torch.zeros_like(value)).sum() / live.sum().clamp(min=1)
                shared.add(mean[None], live.any()[None])
            else:
                for row in range(value.shape[0]):  # a shared stream absorbs rows in order: P² is sequential
                    shared.add(value[row:row + 1], live[row:row + 1])

    # -- layers --------------------------------------------------------------------------------
    def _layer_hook(self, index: int):
        def hook(module, args, kwargs, output):
            step = self.step
            if step is None:
                return output
            hidden = output[0] if isinstance(output, tuple) else output
            new = self._after_layer(index, module, args, kwargs, hidden, step)
            if new is hidden:
                return output
            return (new, *output[1:]) if isinstance(output, tuple) else new
        return hook

    def _after_layer(self, index: int, module, args, kwargs, hidden: torch.Tensor, step: Step) -> torch.Tensor:
        if index in self.block_layers:
            step.layer_calls[index] = (args, kwargs)
        before = args[0] if args else kwargs["hidden_states"]
        self._observe(index, before, hidden, step)
        work = self.steps_at.get(index)
        if work is None:
            return hidden
        state = self.state
        finite = torch.isfinite(step.observations[("norm", index)])
        bad = step.valid & ~finite
        self.nonfinite = self.nonfinite.to(bad.device) + bad.sum()
        for rule_id in work.evaluate:
            rule = self.rules[rule_id]
            step.decisions[rule_id] = self._decide(rule, step, state)
        first_pass = hidden
        for rule_id, action_index in work.act:
            rule = self.rules[rule_id]
            action = rule.actions[action_index]
            mask = self._action_mask(rule, action, step, state)
            if mask is None:
                continue
            mask = mask & finite
            hidden, effect = self._apply(action, hidden, first_pass, mask, index, step)
            state.record(rule_id, action_index, effect)
            if step.phase == "decode":
                state.fired[rule_id] = state.fired.get(rule_id, torch.zeros_like(effect[:, -1])) | effect[:, -1]
        return hidden

    def _observe(self, index: int, before: torch.Tensor, after: torch.Tensor, step: Step) -> None:
        step.observations[("norm", index)] = l2(after)
        kinds = self.needs.get(index)
        if not kinds or kinds == {"norm"}:
            return
        h = after.float()
        if "growth" in kinds:
            step.observations[("growth", index)] = step.observations[("norm", index)] / l2(before) - 1
        if "cos" in kinds:
            step.observations[("cos", index)] = torch.cosine_similarity(h, before.float(), dim=-1)
        for kind in kinds:
            if isinstance(kind, tuple):  # ("cos", vector name)
                vector = self.vectors[kind[1]].float()
                step.observations[("cos", index, kind[1])] = torch.cosine_similarity(h, vector.expand_as(h), dim=-1)

    def _decide(self, rule: P.RulePlan, step: Step, state: RequestState) -> torch.Tensor:
        if rule.phase not in (step.phase, "all"):
            return torch.zeros_like(step.valid)
        mask = step.valid & self._mask(rule.condition, step)
        if step.phase == "decode" and rule.cooldown:
            mask = mask & (state.decode_steps > state.cooldown[rule.id])[:, None]
        return mask

    def _action_mask(self, rule: P.RulePlan, action, step: Step, state: RequestState) -> torch.Tensor | None:
        if action.delay:
            if step.phase != "decode" or rule.id not in state.latched:
                return None
            return (state.latched[rule.id] & ~state.finished)[:, None]
        return step.decisions.get(rule.id)

    # -- evaluation ----------------------------------------------------------------------------
    def _evaluate(self, node, step: Step, passes: dict | None = None) -> torch.Tensor | float | bool:
        """A plan expression over the batch: a [B, T] tensor, or a Python number for constants.

        Constants stay Python numbers so that evaluating never copies from host to device.
        """
        state = self.state
        match node:
            case P.Const(value=value):
                return value
            case P.Observe(observable=obs, layer=layer, vector=vector):
                return step.observations[(obs, layer, vector) if vector else (obs, layer)]
            case P.Reduce(fn=fn, observable=obs, layers=layers):
                stacked = torch.stack([step.observations[(obs, layer)] for layer in layers], dim=-1)
                return REDUCE[fn](stacked, dim=-1)
            case P.PassValue(name=name):
                return passes[name]
            case P.AdaptiveRef(threshold=name, estimator=est):
                t = self.plan.thresholds[name]
                if t.scope == "shared":
                    return self.shared_estimators[est].threshold(t.k, t.iqr_floor, t.warmup).float()[:, None]
                if step.taus is None:  # all request-scoped thresholds, once per step
                    step.taus = state.quartiles.threshold(state.k, state.iqr_floor, state.warmup).float() \
                        .view(len(state.local), -1)
                return step.taus[state.local_index[est]][:, None]
            case P.Arith(op="neg", args=(arg,)):
                return -self._evaluate(arg, step, passes)
            case P.Arith(op=op, args=(a, b)):
                x, y = self._evaluate(a, step, passes), self._evaluate(b, step, passes)
                if op == "/" and not torch.is_tensor(y) and y == 0:
                    return x * float("inf")
                return ARITH[op](x, y)
            case P.Cmp(ops=ops, operands=operands):
                values = [self._evaluate(o, step, passes) for o in operands]
                # a comparison with a non-finite operand is false; each operand is checked once
                checks = [_finite(v) for v in values]
                checks += [COMPARE[op](x, y) for op, x, y in zip(ops, values, values[1:])]
                kept = [c for c in checks if c is not True]
                return functools.reduce(operator.and_, kept) if kept else True
            case P.Logic(op="not", operands=(operand,)):
                return ~self._mask(operand, step, passes)
            case P.Logic(op=op, operands=operands):
                values = [self._mask(o, step, passes) for o in operands]
                out = values[0]
                for value in values[1:]:
                    out = (out & value) if op == "and" else (out | value)
                return out
            case P.StreakOf(slot=slot, condition=condition):
                holds = self._mask(condition, step, passes)[:, -1]
                live = ~state.finished
                state.streaks[slot] = torch.where(live, torch.where(holds, state.streaks[slot] + 1, 0),
                                                  state.streaks[slot])
                return state.streaks[slot][:, None].float()
            case P.RateOf(slot=slot, condition=condition):
                holds = self._mask(condition, step, passes)[:, -1]
                live = ~state.finished
                state.rate_hits[slot] = state.rate_hits[slot] + (holds & live).to(torch.int64)
                return (state.rate_hits[slot] / state.active_steps.clamp(min=1))[:, None].float()
            case P.ChanceOf(slot=slot, probability=p):
                draw = uniform(self.seed, state.keys, step.index, slot)[:, None]
                return draw < self._evaluate(p, step, passes)
        raise TypeError(f"cannot evaluate {node!r}")

    def _mask(self, node, step: Step, passes: dict | None = None) -> torch.Tensor:
        """A condition as a bool [B, T] tensor (a constant condition is broadcast)."""
        value = self._evaluate(node, step, passes)
        if torch.is_tensor(value):
            return value.bool().expand_as(step.valid)
        return torch.full_like(step.valid, bool(value))

    # -- actions -------------------------------------------------------------------------------
    def _apply(self, action, hidden, first_pass, mask, layer: int, step: Step):
        state = self.state
        m = mask[..., None]
        match action:
            case P.SteerPlan(vector=name, bank=None, coefficient=c, mode=mode):
                vector = self.vectors[name].to(hidden.dtype)
                new = hidden + c * vector if mode == "add" else (1 - c) * hidden + c * vector
                return torch.where(m, new, hidden), mask
            case P.SteerPlan(bank=bank, coefficient=c, mode=mode, min_cos=min_cos):
                chosen, cos = state.banks[(bank, layer)].nearest(hidden[:, -1])
                effect = mask & (cos >= min_cos)[:, None]
                chosen = chosen[:, None, :].to(hidden.dtype)
                new = hidden + c * chosen if mode == "add" else (1 - c) * hidden + c * chosen
                return torch.where(effect[..., None], new, hidden), effect
            case P.SuppressPlan(mode="scale", value=s):
                return torch.where(m, hidden * s, hidden), mask
            case P.SuppressPlan(mode="clamp", value=n):
                norm = l2(hidden)[..., None]
                effect = mask & (norm[..., 0] > n)
                scaled = hidden * (n / norm.clamp(min=1e-12)).to(hidden.dtype)
                return torch.where(effect[..., None], scaled, hidden), effect
            case P.StorePlan(bank=bank):
                norm = l2(first_pass[:, -1])
                state.banks[(bank, layer)].offer(first_pass[:, -1], norm, mask[:, -1])
                return hidden, mask
            case P.MarkPlan():
                return hidden, mask
            case P.RecursePlan():
                return self._recurse(action, hidden, mask, step)
        raise TypeError(f"cannot apply {action!r}")

    def _recurse(self, action: P.RecursePlan, hidden: torch.Tensor, mask: torch.Tensor, step: Step):
        rows = mask[:, -1]
        accepted = torch.zeros_like(rows)
        if action.passes == 0 or not bool(rows.any()):
            return hidden, accepted[:, None]
        cache = step.cache  # decode steps always have one: generation without it is refused
        view = (RefreshView if action.kv == "refresh" else FrozenView)(cache)
        base_norm = l2(hidden)[:, -1]
        current = hidden
        for done in range(action.passes):
            candidate = current
            for j in range(action.first, action.layer + 1):
                args, kwargs = step.layer_calls[j]
                args = tuple(view if a is cache else a for a in args)
                kwargs = {k: (view if v is cache else v) for k, v in kwargs.items()}
                if args:
                    out = self.adapter.layers[j].forward(candidate, *args[1:], **kwargs)
                else:
                    out = self.adapter.layers[j].forward(**{**kwargs, "hidden_states": candidate})
                candidate = out[0] if isinstance(out, tuple) else out
            values = _pass_values(candidate, current, base_norm)
            ok = rows & torch.isfinite(values["norm"][:, -1])
            for mode, condition in action.stops:
                if mode == "while":
                    ok = ok & self._mask(condition, step, values)[:, -1]
            updated = current + action.damping * (candidate - current) if action.damping != 1 else candidate
            previous, current = current, torch.where(ok[:, None, None], updated, current)
            accepted = accepted | ok
            if isinstance(view, RefreshView):
                view.accept(ok)
            until = torch.zeros_like(ok)
            for mode, condition in action.stops:
                if mode == "until":
                    until = until | self._mask(condition, step, _pass_values(current, previous, base_norm))[:, -1]
            rows = ok & ~until
            self.state.extra_layer_passes += action.layer - action.first + 1
            if done + 1 < action.passes and not bool(rows.any()):
                break
        if isinstance(view, RefreshView):
            view.commit()
        return current, accepted[:, None]

    # -- results -------------------------------------------------------------------------------
    def warn_nonfinite(self) -> int:
        count = int(self.nonfinite)
        if count:
            warnings.warn(f"l2lang: {count} hidden state(s) held NaN or inf; those rows were left unmodified",
                          RuntimeWarning, stacklevel=2)
        return count


class RequestState:
    """All state of the requests in one `generate` call, one row each."""

    def __init__(self, plan: P.Plan, rows: int, keys: torch.Tensor, device, hidden: int, dtype):
        self.keys = keys
        self.finished = torch.zeros(rows, dtype=torch.bool, device=device)
        self.decode_steps = 0
        self.active_steps = torch.zeros(rows, dtype=torch.int64, device=device)
        self.streaks = [torch.zeros(rows, dtype=torch.int64, device=device) for _ in range(plan.streak_slots)]
        self.rate_hits = [torch.zeros(rows, dtype=torch.int64, device=device) for _ in range(plan.rate_slots)]
        self.cooldown = {r.id: torch.full((rows,), -1, dtype=torch.int64, device=device) for r in plan.rules}
        self.latched: dict[int, torch.Tensor] = {}
        self.fired: dict[int, torch.Tensor] = {}
        self.local = [e for e in plan.estimators if plan.thresholds[e.threshold].scope != "shared"]
        self.local_index = {e.id: i for i, e in enumerate(self.local)}
        self.quartiles = Quartiles(len(self.local) * rows, device)
        specs = [plan.thresholds[e.threshold] for e in self.local]

        def per_stream(values: list[float]) -> torch.Tensor:  # one entry per (estimator, row) stream
            return torch.tensor(values, dtype=torch.float64, device=device).repeat_interleave(rows)

        self.k = per_stream([t.k for t in specs])
        self.iqr_floor = per_stream([t.iqr_floor for t in specs])
        self.warmup = per_stream([t.warmup for t in specs])
        self.banks = {(a.bank, a.layer): Bank(rows, plan.banks[a.bank], hidden, dtype, device)
                      for r in plan.rules for a in r.actions if getattr(a, "bank", None)}
        self.records: list[dict] = []
        self.step_effects: dict[tuple[int, int], torch.Tensor] = {}
        self.extra_layer_passes = 0  # layer forward passes run by recursions, for the whole batch

    def record(self, rule_id: int, action_index: int, effect: torch.Tensor) -> None:
        key = (rule_id, action_index)
        self.step_effects[key] = self.step_effects[key] | effect if key in self.step_effects else effect


def _observations_needed(plan: P.Plan) -> dict[int, set]:
    needs: dict[int, set] = {layer: {"norm"} for layer in plan.observe}
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
    """The pass observables of a recursion (docs/language.md): each [B, 1]."""
    norm = l2(state)[:, -1:]
    return {"norm": norm, "growth": norm / l2(previous)[:, -1:] - 1,
            "ratio": norm / base_norm[:, None], "change": (state.float() - previous.float()).norm(dim=-1)[:, -1:]}


def l2(hidden: torch.Tensor) -> torch.Tensor:
    """The ℓ2 norm over the hidden dimension, computed in float32 whatever the model's dtype."""
    return torch.linalg.vector_norm(hidden, dim=-1, dtype=torch.float32)


def _finite(value) -> torch.Tensor | bool:
    return torch.isfinite(value) if torch.is_tensor(value) else math.isfinite(value)


def _streak_slots(node) -> list[int]:
    return [item.slot for item in P.walk(node) if isinstance(item, P.StreakOf)]
