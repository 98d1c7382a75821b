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
                    readonly = ReadOnlyCache()
                    readonly.layers = cache.layers
                    candidate = layer(candidate, attention_mask=None, position_ids=pos[:, -1:],
                                      position_embeddings=(cos[:, position:position + 1], sin[:, position:position + 1]),
                                      past_key_values=readonly, use_cache=True)
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
