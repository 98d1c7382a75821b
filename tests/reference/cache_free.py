"""A cache-free reference interpreter, written from docs/semantics.md without the executor's code.

At every step it recomputes the whole sequence layer by layer, with no KV cache carried between steps,
and applies the interventions decided so far at the positions they were decided for. A decode
position's decision is taken once, when that position is the newest one. Supports Llama-style models
(Llama, Qwen2, Qwen3, Mistral), greedy decoding, batch 1, rules on `norm[l]` comparisons with
recurse (kv frozen), steer (vector or bank retrieval), suppress and store.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from l2lang import plan as P

OPS = {"<": torch.lt, "<=": torch.le, ">": torch.gt, ">=": torch.ge, "==": torch.eq, "!=": torch.ne}


class ReadOnlyCache(DynamicCache):
    """Attention reads the stored keys and values and writes nothing."""

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return self.layers[layer_idx].keys, self.layers[layer_idx].values


def value(node, norms: dict[int, float], passes: dict[str, float] | None = None) -> float | bool:
    match node:
        case P.Const(value=v):
            return v
        case P.Observe(observable="norm", layer=layer):
            return norms[layer]
        case P.PassValue(name=name):
            return passes[name]
        case P.Arith(op=op, args=(a, b)):
            x, y = value(a, norms, passes), value(b, norms, passes)
            return {"+": x + y, "-": x - y, "*": x * y, "/": x / y}[op]
        case P.Cmp(ops=ops, operands=operands):
            vals = [value(o, norms, passes) for o in operands]
            return all(bool(OPS[op](torch.tensor(x), torch.tensor(y))) for op, x, y in zip(ops, vals, vals[1:]))
        case P.Logic(op="and", operands=operands):
            return all(value(o, norms, passes) for o in operands)
        case P.Logic(op="or", operands=operands):
            return any(value(o, norms, passes) for o in operands)
        case P.Logic(op="not", operands=(o,)):
            return not value(o, norms, passes)
    raise NotImplementedError(node)


@torch.no_grad()
def reference_generate(model, plan: P.Plan, vectors: dict[str, torch.Tensor], prompt: list[int],
                       new_tokens: int) -> tuple[list[int], dict[str, int]]:
    core = model.model
    tokens = list(prompt)
    decided: dict[tuple[int, int], bool] = {}   # (rule id, position) -> condition held
    counts: dict[str, int] = {}
    for step in range(new_tokens):
        total = len(tokens)
        newest = total - 1 if step > 0 else None
        decode_positions = range(len(prompt), total)
        positions = torch.arange(total)[None]
        h = core.embed_tokens(torch.tensor([tokens]))
        cos, sin = core.rotary_emb(h, positions)
        inputs: dict[int, torch.Tensor] = {}
        banks: dict[tuple[str, int], list[tuple[float, torch.Tensor]]] = {}
        step_counts: dict[str, int] = {}
        for index, layer in enumerate(core.layers):
            inputs[index] = h
            h = layer(h, attention_mask=None, position_ids=positions, position_embeddings=(cos, sin))
            first = h.clone()
            h = h.clone()
            for step_item in [s for s in plan.schedule if s.layer == index]:
                for position in decode_positions:
                    for rule_id, action_index in step_item.act:
                        rule = plan.rules[rule_id]
                        key = (rule_id, position)
                        if position == newest and key not in decided:
                            decided[key] = bool(value(rule.condition, _norms_at(position, index, rule, first)))
                        if not decided[key]:
                            continue
                        action = rule.actions[action_index]
                        took = _apply(action, h, first, position, vectors, banks, inputs, core, cos, sin,
                                      plan.banks)
                        if took and position == newest:
                            label = f"{action.kind}@{action.layer}"
                            step_counts[label] = step_counts.get(label, 0) + 1
        for label, n in step_counts.items():
            counts[label] = counts.get(label, 0) + n
        logits = model.lm_head(core.norm(h))
        tokens.append(int(logits[0, -1].argmax()))
    return tokens[len(prompt):], counts


def _norms_at(position: int, index: int, rule, first: torch.Tensor) -> dict[int, float]:
    """The first-pass norm at `position` of this layer: the only layer the reference's conditions read."""
    for node in P.walk(rule.condition):
        if isinstance(node, P.Observe) and node.layer != index:
            raise NotImplementedError("the reference reads conditions at the acting layer only")
    return {index: float(first[0, position].float().norm())}


def _apply(action, h, first, position, vectors, banks, inputs, core, cos, sin, capacities) -> bool:
    state = h[0, position]
    match action:
        case P.SteerPlan(vector=name, bank=None, coefficient=c, mode=mode):
            v = vectors[name].to(h.dtype)
            h[0, position] = state + c * v if mode == "add" else (1 - c) * state + c * v
            return True
        case P.SteerPlan(bank=bank, coefficient=c, mode=mode, min_cos=min_cos):
            stored = banks.get((bank, action.layer), [])
            if not stored:
                return False
            sims = [float(torch.cosine_similarity(s.float(), state.float(), dim=0)) for _, s in stored]
            best = max(range(len(sims)), key=lambda i: (sims[i], -i))
            if sims[best] < min_cos:
                return False
            v = stored[best][1].to(h.dtype)
            h[0, position] = state + c * v if mode == "add" else (1 - c) * state + c * v
            return True
        case P.SuppressPlan(mode="scale", value=s):
            h[0, position] = state * s
            return True
        case P.SuppressPlan(mode="clamp", value=n):
            norm = float(state.float().norm())
            if norm <= n:
                return False
            h[0, position] = state * (n / norm)
            return True
        case P.StorePlan(bank=bank):
            stored = banks.setdefault((bank, action.layer), [])
            capacity = capacities[bank]
            norm = float(first[0, position].float().norm())
            stored.append((norm, first[0, position].clone()))
            stored.sort(key=lambda item: -item[0])  # stable: an earlier state wins a tie
            del stored[capacity:]
            return True
        case P.RecursePlan(first=a, layer=b, passes=passes, stops=stops, kv="frozen", damping=alpha):
            current = h[0, position]
            base = float(current.float().norm())
            accepted = False
            for _ in range(passes):
                candidate = current[None, None]
                for j in range(a, b + 1):
                    cache = DynamicCache()
                    layer = core.layers[j]
                    pos = torch.arange(position + 1)[None]
                    layer(inputs[j][:, : position + 1], attention_mask=None, position_ids=pos,
                          position_embeddings=(cos[:, : position + 1], sin[:, : position + 1]),
                          past_key_values=cache, use_cache=True)
                    candidate = layer(candidate, attention_mask=None, position_ids=pos[:, -1:],
                                      position_embeddings=(cos[:, position:position + 1], sin[:, position:position + 1]),
                                      past_key_values=_read_only(cache), use_cache=True)
                candidate = candidate[0, 0]
                new, old = float(candidate.float().norm()), float(current.float().norm())
                passes_now = {"norm": new, "growth": new / old - 1, "ratio": new / base,
                              "change": float((candidate.float() - current.float()).norm())}
                if not all(value(c, {}, passes_now) for mode, c in stops if mode == "while"):
                    break
                current = current + alpha * (candidate - current)
                accepted = True
            h[0, position] = current
            return accepted
    raise NotImplementedError(action)


class _PassView(DynamicCache):
    """For an extra pass: attend with this pass's own K/V at the newest position, store nothing."""

    def __init__(self, cache: DynamicCache):
        super().__init__()
        self.layers = cache.layers
        self.fresh: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        self.fresh[layer_idx] = (key_states, value_states)
        layer = self.layers[layer_idx]
        return (torch.cat([layer.keys[..., :-1, :], key_states], dim=-2),
                torch.cat([layer.values[..., :-1, :], value_states], dim=-2))


@torch.no_grad()
def reference_generate_positionwise(model, plan: P.Plan, vectors: dict[str, torch.Tensor], prompt: list[int],
                                    new_tokens: int) -> tuple[list[int], dict[str, int]]:
    """The same interpreter, recomputing each step position by position (needed for `kv refresh`,
    where a refreshed position's K/V feed every later position). Nothing is carried between steps."""
    core = model.model
    tokens = list(prompt)
    decided: dict[tuple[int, int], bool] = {}
    counts: dict[str, int] = {}
    for step in range(new_tokens):
        newest = len(tokens) - 1 if step > 0 else None
        cache = DynamicCache()
        banks: dict = {}
        for q, token in enumerate(tokens):
            h = core.embed_tokens(torch.tensor([[token]]))
            pos = torch.tensor([[q]])
            rotary = core.rotary_emb(h, pos)
            for index, layer in enumerate(core.layers):
                h = layer(h, attention_mask=None, position_ids=pos, position_embeddings=rotary,
                          past_key_values=cache, use_cache=True)
                first = h.clone()
                for item in [s for s in plan.schedule if s.layer == index]:
                    if q < len(prompt):
                        continue
                    for rule_id, action_index in item.act:
                        rule = plan.rules[rule_id]
                        if q == newest and (rule_id, q) not in decided:
                            decided[(rule_id, q)] = bool(value(rule.condition, {index: float(first.float().norm())}))
                        if not decided[(rule_id, q)]:
                            continue
                        action = rule.actions[action_index]
                        if isinstance(action, P.RecursePlan):
                            h, took = _recurse_positionwise(action, h, core, cache, pos, rotary)
                        else:
                            took = _apply(action, h[:, -1:], first[:, -1:], 0, vectors, banks, {}, core, None,
                                          None, plan.banks)
                        if took and q == newest:
                            label = f"{action.kind}@{action.layer}"
                            counts[label] = counts.get(label, 0) + 1
        logits = model.lm_head(core.norm(h))
        tokens.append(int(logits[0, -1].argmax()))
    return tokens[len(prompt):], counts


def _recurse_positionwise(action: P.RecursePlan, h, core, cache, pos, rotary):
    current = h
    base = float(current.float().norm())
    kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    accepted = False
    for _ in range(action.passes):
        view = _PassView(cache)
        candidate = current
        for j in range(action.first, action.layer + 1):
            candidate = core.layers[j](candidate, attention_mask=None, position_ids=pos, position_embeddings=rotary,
                                       past_key_values=view if action.kv == "refresh" else _read_only(cache),
                                       use_cache=True)
        new, old = float(candidate.float().norm()), float(current.float().norm())
        passes = {"norm": new, "growth": new / old - 1, "ratio": new / base,
                  "change": float((candidate.float() - current.float()).norm())}
        if not all(value(c, {}, passes) for mode, c in action.stops if mode == "while"):
            break
        current = current + action.damping * (candidate - current)
        kept.update(view.fresh)
        accepted = True
    for j, (key, val) in kept.items():  # refresh: the last accepted pass's K/V replace the first's
        cache.layers[j].keys[..., -1:, :] = key
        cache.layers[j].values[..., -1:, :] = val
    return current, accepted


def _read_only(cache: DynamicCache) -> ReadOnlyCache:
    readonly = ReadOnlyCache()
    readonly.layers = cache.layers
    return readonly
