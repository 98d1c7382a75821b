"""A plan (or, without a model, the checked program) as text a person reads top to bottom."""

from __future__ import annotations

from l2lang.lang.compose import Program
from l2lang.lang.format import format_strategy
from l2lang.plan import (
    AdaptiveRef,
    Arith,
    ChanceOf,
    Cmp,
    Const,
    Logic,
    Observe,
    PassValue,
    Plan,
    PlanExpr,
    RateOf,
    RecursePlan,
    Reduce,
    SteerPlan,
    StreakOf,
    SuppressPlan,
)


def explain_text(program: Program, plan: Plan | None) -> str:
    lines = [f"strategy {program.root.path}", f"fingerprint {program.fingerprint}"]
    if len(program.units) > 1:
        lines.append("uses " + ", ".join(f"{u.namespace[:-1]} ({u.path})" for u in program.units[1:]))
    params = {u.namespace + k: v for u in program.units for k, v in u.params.items()}
    if params:
        lines.append("params " + ", ".join(f"{k}={v:g}" for k, v in params.items()))
    if plan is None:
        lines += ["", "layers unresolved: pass --layers N or --model M to see the executor graph", ""]
        for unit in program.units:
            lines.append(f"# {unit.path}")
            lines.append(format_strategy(unit.strategy).rstrip())
        return "\n".join(lines)

    lines.append(f"model {plan.layers} layers" + (f", hidden size {plan.hidden_size}" if plan.hidden_size else ""))
    if plan.thresholds:
        lines += ["", "thresholds"]
        for t in plan.thresholds.values():
            if t.source == "adaptive":
                detail = (f"Q3 + {t.k:g}*max(IQR, {t.iqr_floor:g}), warm-up {t.warmup} steps, "
                          f"scope {t.scope}, sample {t.sample}")
            else:
                detail = ", ".join(f"{layer}: {v:g}" for layer, v in sorted(t.values.items()))
                detail += f" (profile {t.profile}, q={t.q})" if t.source == "calibrated" else ""
            lines.append(f"  {t.name} [{t.source}] {detail}")
    for name, v in plan.vectors.items():
        src = f"load {v.path}" + (f" [{v.key}]" if v.key else "") if v.source == "load" else \
            f"contrast of {len(v.positive)} vs {len(v.negative)} prompts at layer {v.layer}" + \
            (f", computed when packed: {v.path}" if v.path else "")
        lines.append(f"vector {name}: {src}")
    for name, capacity in plan.banks.items():
        lines.append(f"bank {name}: top {capacity} states by norm, per request and layer")
    if plan.observe:
        lines.append("observes layers " + _ranges(plan.observe))
    lines += ["", "rules (in acting order)"]
    for rule in plan.rules:
        head = f"  #{rule.id} {rule.origin} [{rule.phase}]"
        head += f" cooldown {rule.cooldown}" if rule.cooldown else ""
        lines.append(f"{head}: if {expression(rule.condition)} (read after layer {rule.read_layer})")
        for action in rule.actions:
            lines.append(f"      -> {action_text(action)}")
    lines += ["", "schedule (per decoder layer, each token)"]
    for step in plan.schedule:
        parts = [f"evaluate #{', #'.join(map(str, step.evaluate))}"] if step.evaluate else []
        parts += [f"act {', '.join(f'#{r}.{i}' for r, i in step.act)}"] if step.act else []
        lines.append(f"  after layer {step.layer}: " + "; ".join(parts))
    if plan.sample:
        s = plan.sample
        lines.append(f"\nsample {s.count} (temperature {s.temperature:g}, top_p {s.top_p:g}, top_k {s.top_k})")
    if plan.select:
        s = plan.select
        lines.append(f"select {s.mode} {s.metric} over layers {_ranges(s.layers)}" + (" per token" if s.per_token else ""))
    if plan.warnings:
        lines += ["", "warnings"] + [f"  {line}" for w in plan.warnings for line in w.splitlines()]
    return "\n".join(lines)


def action_text(action) -> str:
    delay = " (next step)" if action.delay else ""
    if isinstance(action, RecursePlan):
        block = f"layer {action.layer}" if action.first == action.layer else f"layers {action.first}..{action.layer}"
        text = f"recurse {block} up to {action.passes} extra pass(es), kv {action.kv}"
        text += f", damping {action.damping:g}" if action.damping != 1 else ""
        for mode, cond in action.stops:
            text += f", {mode} {expression(cond)}"
        return text + delay
    if isinstance(action, SteerPlan):
        target = action.vector or f"retrieve({action.bank}, min_cos={action.min_cos:g})"
        return f"steer {action.mode} {action.coefficient:g}*{target} at layer {action.layer}{delay}"
    if isinstance(action, SuppressPlan):
        return f"suppress {action.mode} {action.value:g} at layer {action.layer}{delay}"
    if action.kind == "store":
        return f"store in {action.bank} at layer {action.layer}{delay}"
    return f"mark {action.label!r} at layer {action.layer}{delay}"


def expression(node: PlanExpr) -> str:
    match node:
        case Const(value=value, note=note):
            return f"{value:g}" + (f"<{note}>" if note else "")
        case Observe(observable=obs, layer=layer, vector=vector):
            return f"{obs}[{layer}" + (f", {vector}]" if vector else "]")
        case Reduce(fn=fn, observable=obs, layers=layers):
            return f"{fn}({obs}[{_ranges(layers)}])"
        case PassValue(name=name):
            return name
        case AdaptiveRef(threshold=name, estimator=est):
            return f"{name}<adaptive #{est}>"
        case Arith(op="neg", args=args):
            return f"-({expression(args[0])})"
        case Arith(op=op, args=args):
            return f"({expression(args[0])}{op}{expression(args[1])})"
        case Cmp(ops=ops, operands=operands):
            text = expression(operands[0])
            for op, operand in zip(ops, operands[1:]):
                text += f" {op} {expression(operand)}"
            return text
        case Logic(op="not", operands=operands):
            return f"not ({expression(operands[0])})"
        case Logic(op=op, operands=operands):
            return "(" + f" {op} ".join(expression(o) for o in operands) + ")"
        case StreakOf(condition=condition):
            return f"streak({expression(condition)})"
        case RateOf(condition=condition):
            return f"rate({expression(condition)})"
        case ChanceOf(probability=p):
            return f"chance({expression(p)})"
    return repr(node)


def _ranges(layers) -> str:
    layers = sorted(layers)
    out, start = [], None
    for i, layer in enumerate(layers):
        if start is None:
            start = layer
        if i + 1 == len(layers) or layers[i + 1] != layer + 1:
            out.append(str(start) if start == layer else f"{start}..{layer}")
            start = None
    return ", ".join(out)
