"""IR → canonical text. `parse(format_strategy(s)) == s` for every IR `s`, and formatting is idempotent.

Canonical style: ASCII spellings (`tau`, `*`), one space around comparisons and keywords, none around
arithmetic, parentheses only where precedence needs them, comments and single blank lines kept.
"""

from __future__ import annotations

import re

from l2lang.lang import ir
from l2lang.lang.parser import keywords

# Binding strength, loosest first; an operand binding looser than its context gets parentheses.
OR, AND, NOT, COMPARE, SUM, PRODUCT, UNARY, ATOM = range(8)
COUNT_WORDS = {1: "once", 2: "twice", 3: "thrice"}


def format_strategy(strategy: ir.Strategy) -> str:
    lines: list[str] = []
    for stmt in strategy.statements:
        lines.extend(stmt.comments_before if lines else _strip_blank(stmt.comments_before))
        text = statement(stmt)
        if stmt.comment_after:
            text += "  " + stmt.comment_after
        lines.append(text)
    lines.extend(strategy.trailing_comments if lines else _strip_blank(strategy.trailing_comments))
    return "\n".join(lines) + "\n" if lines else ""


def _strip_blank(lines: tuple[str, ...]) -> tuple[str, ...]:
    while lines and not lines[0]:
        lines = lines[1:]
    return lines


def statement(stmt: ir.Statement) -> str:
    match stmt:
        case ir.Param(name=name, value=value):
            return f"param {name} = {expr(value)}"
        case ir.Threshold(name=name, source=source):
            return f"threshold {name} = {threshold_source(source)}"
        case ir.Vector(name=name, source=ir.LoadSource(path=path, key=key)):
            return f"vector {name} = load({string(path)}" + (f", {string(key)})" if key is not None else ")")
        case ir.Vector(name=name, source=ir.ContrastSource(positive=pos, negative=neg, layer=layer)):
            return f"vector {name} = contrast({strings(pos)}, {strings(neg)}) at {expr(layer)}"
        case ir.Bank(name=name, capacity=capacity):
            return f"bank {name} keep {expr(capacity)}"
        case ir.Use(target=target, alias=alias, overrides=overrides):
            text = "use " + (target if _is_plain_name(target) else string(target))
            if alias:
                text += f" as {alias}"
            if overrides:
                text += " with " + kwargs(overrides)
            return text
        case ir.Observe(layers=layers):
            return f"observe {layer_set(layers)}"
        case ir.Rule():
            return rule(stmt)
        case ir.ForRule(var=var, layers=layers, rule=inner):
            return f"for {var} in {layer_set(layers)}: {rule(inner)}"
        case ir.Sample(count=count, options=options):
            return f"sample {expr(count)}" + (f" with {kwargs(options)}" if options else "")
        case ir.Select(mode=mode, metric=metric, layers=layers, per_token=per_token):
            args = f"({', '.join(expr(a) for a in metric.args)})" if metric.args else ""
            return f"select {mode} {metric.name}{args} over {layer_set(layers)}" + (" per token" if per_token else "")
    raise TypeError(f"cannot format {type(stmt).__name__}")


def threshold_source(source) -> str:
    match source:
        case ir.FixedSource(value=value):
            return expr(value)
        case ir.TableSource(entries=entries):
            return "table {" + ", ".join(f"{expr(k)}: {expr(v)}" for k, v in entries) + "}"
        case ir.AdaptiveSource(options=options):
            return f"adaptive({kwargs(options)})"
        case ir.CalibratedSource(profile=profile, options=options):
            return f"calibrated({string(profile)}" + (f", {kwargs(options)})" if options else ")")
    raise TypeError(type(source).__name__)


def rule(node: ir.Rule) -> str:
    parts = [f"if {expr(node.condition)}"]
    if node.phase != "decode":
        parts.append(f"during {node.phase}")
    if node.cooldown is not None:
        parts.append(f"cooldown {expr(node.cooldown)}")
    return " ".join(parts) + " " + "; ".join(action(a) for a in node.actions)


def action(node) -> str:
    match node:
        case ir.Recurse(layers=layers, count=count, stops=stops, kv=kv, damping=damping):
            word = "layer" if len(layers.spans) == 1 and layers.spans[0].end is None else "layers"
            text = f"recurse {word} {layer_set(layers)} {count_text(count, bool(stops))}"
            for stop in stops:
                text += f" {stop.mode} {expr(stop.condition)}"
            if kv != "frozen":
                text += f" kv {kv}"
            if damping is not None:
                text += f" damping {expr(damping)}"
            return text
        case ir.Steer(mode=mode, amount=amount, layers=layers):
            text = "steer " + ("mix " if mode == "mix" else "")
            # A leading name `mix` or `add` would be read as the mode: parenthesise it.
            body = expr(amount)
            if re.match(r"(mix|add)\b", body):
                body = f"({body})"
            return text + body + (f" at {layer_set(layers)}" if layers else "")
        case ir.Suppress(mode=mode, value=value, layers=layers):
            return f"suppress {mode} {expr(value)}" + (f" at {layer_set(layers)}" if layers else "")
        case ir.Store(bank=bank, layers=layers):
            return f"store in {bank}" + (f" at {layer_set(layers)}" if layers else "")
        case ir.Mark(label=label, layers=layers):
            return f"mark {string(label)}" + (f" at {layer_set(layers)}" if layers else "")
    raise TypeError(type(node).__name__)


def count_text(count, bounded_by_stops: bool = False) -> str:
    if isinstance(count, ir.Num) and type(count.value) is int and count.value in COUNT_WORDS:
        return COUNT_WORDS[count.value]
    body = expr(count)
    if body[0] in "+-":  # `recurse layer a -1 times` would read as layer `a-1`
        body = f"({body})"
    return ("up to " if bounded_by_stops else "") + f"{body} times"


def layer_set(layers: ir.Layers) -> str:
    spans = [expr(s.start) + (f"..{expr(s.end)}" if s.end is not None else "") for s in layers.spans]
    return spans[0] if len(spans) == 1 else "[" + ", ".join(spans) + "]"


def kwargs(items) -> str:
    return ", ".join(f"{k.name}={expr(k.value)}" for k in items)


def string(text: str) -> str:
    return f'"{text}"'


def strings(items) -> str:
    return "[" + ", ".join(string(s) for s in items) + "]"


def _is_plain_name(text: str) -> bool:
    return text.isidentifier() and text.isascii() and text not in keywords()


def number(value: int | float) -> str:
    return str(value) if type(value) is int else repr(float(value))


def expr(node, context: int = OR) -> str:
    text, strength = _expr(node)
    return f"({text})" if strength < context else text


def _expr(node) -> tuple[str, int]:
    match node:
        case ir.Num(value=value):
            return number(value), ATOM
        case ir.Name(name=name):
            return name, ATOM
        case ir.Unary(op=op, operand=operand):
            return op + expr(operand, UNARY), UNARY
        case ir.Binary(op=op, left=left, right=right):
            strength = SUM if op in "+-" else PRODUCT
            return f"{expr(left, strength)}{op}{expr(right, strength + 1)}", strength
        case ir.Compare(operands=operands, ops=ops):
            text = expr(operands[0], SUM)
            for op, operand in zip(ops, operands[1:]):
                text += f" {op} {expr(operand, SUM)}"
            return text, COMPARE
        case ir.BoolOp(op=op, operands=operands):
            strength = AND if op == "and" else OR
            return f" {op} ".join(expr(o, strength + 1) for o in operands), strength
        case ir.Not(operand=operand):
            return "not " + expr(operand, NOT), NOT
        case ir.AtLayer(observable=obs, layer=layer, vector=vector):
            return f"{obs}[{expr(layer)}" + (f", {vector}]" if vector else "]"), ATOM
        case ir.Aggregate(fn=fn, observable=obs, layers=layers):
            return f"{fn}({obs}[{layer_set(layers)}])", ATOM
        case ir.PassObservable(name=name):
            return name, ATOM
        case ir.Streak(condition=condition):
            return f"streak({expr(condition)})", ATOM
        case ir.Rate(condition=condition):
            return f"rate({expr(condition)})", ATOM
        case ir.Chance(probability=p):
            return f"chance({expr(p)})", ATOM
        case ir.Retrieve(bank=bank, options=options):
            return f"retrieve({bank}" + (f", {kwargs(options)})" if options else ")"), ATOM
    raise TypeError(f"cannot format {type(node).__name__}")
