"""Hypothesis strategies that draw arbitrary (syntactically valid) l2lang IR."""

from __future__ import annotations

from hypothesis import strategies as st

from l2lang.lang import ir

NAMES = st.sampled_from(["a", "b", "tau", "x_1", "beta", "v", "Gamma", "high", "L", "l", "norms", "mixer"])
STRINGS = st.text(st.characters(blacklist_characters='"\\\x7f', blacklist_categories=("Cs", "Cc")), max_size=12)
COMPARE_OPS = st.sampled_from(["<", "<=", ">", ">=", "==", "!="])
OBSERVABLES = st.sampled_from(["norm", "growth", "cos"])
NUMBERS = st.one_of(
    st.integers(min_value=0, max_value=10**9).map(lambda v: ir.Num(value=v)),
    st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False)
    .filter(lambda v: v == 0 or v >= 1e-300).map(lambda v: ir.Num(value=v)),  # (literals below 1e-300 are refused)
)


def layers(expressions) -> st.SearchStrategy[ir.Layers]:
    span = st.builds(ir.LayerSpan, start=expressions, end=st.none() | expressions)
    return st.lists(span, min_size=1, max_size=3).map(lambda s: ir.Layers(spans=tuple(s)))


def _extend(children):
    small = st.lists(children, min_size=2, max_size=3).map(tuple)
    return st.one_of(
        st.builds(ir.Unary, op=st.sampled_from(["-", "+"]), operand=children),
        st.builds(ir.Binary, op=st.sampled_from(["+", "-", "*", "/"]), left=children, right=children),
        small.flatmap(lambda ops: st.lists(COMPARE_OPS, min_size=len(ops) - 1, max_size=len(ops) - 1).map(
            lambda cmp: ir.Compare(operands=ops, ops=tuple(cmp)))),
        st.builds(ir.BoolOp, op=st.sampled_from(["and", "or"]), operands=small),
        st.builds(ir.Not, operand=children),
        st.builds(ir.AtLayer, observable=OBSERVABLES, layer=children, vector=st.none() | NAMES),
        st.builds(ir.Aggregate, fn=st.sampled_from(["mean", "max", "min", "sum"]), observable=OBSERVABLES,
                  layers=layers(children)),
        st.builds(ir.Streak, condition=children),
        st.builds(ir.Rate, condition=children),
        st.builds(ir.Chance, probability=children),
        st.builds(ir.Retrieve, bank=NAMES, options=kwargs(children)),
    )


def kwargs(values):
    return st.lists(st.builds(ir.KwArg, name=NAMES, value=values), max_size=2).map(tuple)


LEAVES = st.one_of(NUMBERS, NAMES.map(lambda n: ir.Name(name=n)),
                   st.sampled_from(["norm", "growth", "ratio", "change", "cos"]).map(lambda n: ir.PassObservable(name=n)))
EXPRS = st.recursive(LEAVES, _extend, max_leaves=8)
LAYERS = layers(EXPRS)

ACTIONS = st.one_of(
    st.builds(ir.Recurse, layers=LAYERS, count=EXPRS,
              stops=st.lists(st.builds(ir.Stop, mode=st.sampled_from(["while", "until"]), condition=EXPRS),
                             max_size=2).map(tuple),
              kv=st.sampled_from(["frozen", "refresh"]), damping=st.none() | EXPRS),
    st.builds(ir.Steer, mode=st.sampled_from(["add", "mix"]), amount=EXPRS, layers=st.none() | LAYERS),
    st.builds(ir.Suppress, mode=st.sampled_from(["scale", "clamp"]), value=EXPRS, layers=st.none() | LAYERS),
    st.builds(ir.Store, bank=NAMES, layers=st.none() | LAYERS),
    st.builds(ir.Mark, label=STRINGS, layers=st.none() | LAYERS),
)

RULES = st.builds(ir.Rule, condition=EXPRS, phase=st.sampled_from(["decode", "prefill", "all"]),
                  cooldown=st.none() | EXPRS, actions=st.lists(ACTIONS, min_size=1, max_size=3).map(tuple))

STATEMENTS = st.one_of(
    st.builds(ir.Param, name=NAMES, value=EXPRS),
    st.builds(ir.Threshold, name=NAMES, source=st.one_of(
        st.builds(ir.FixedSource, value=EXPRS),
        st.lists(st.tuples(EXPRS, EXPRS), min_size=1, max_size=3).map(lambda e: ir.TableSource(entries=tuple(e))),
        st.builds(ir.AdaptiveSource, options=kwargs(EXPRS)),
        st.builds(ir.CalibratedSource, profile=STRINGS, options=kwargs(EXPRS)),
    )),
    st.builds(ir.Vector, name=NAMES, source=st.one_of(
        st.builds(ir.LoadSource, path=STRINGS, key=st.none() | STRINGS),
        st.builds(ir.ContrastSource, positive=st.lists(STRINGS, min_size=1, max_size=2).map(tuple),
                  negative=st.lists(STRINGS, min_size=1, max_size=2).map(tuple), layer=EXPRS),
    )),
    st.builds(ir.Bank, name=NAMES, capacity=EXPRS),
    st.builds(ir.Use, target=st.one_of(NAMES, STRINGS.filter(bool)), alias=st.none() | NAMES,
              overrides=st.lists(st.builds(ir.KwArg, name=NAMES, value=EXPRS), max_size=2).map(tuple)),
    st.builds(ir.Observe, layers=LAYERS),
    RULES,
    st.builds(ir.ForRule, var=NAMES, layers=LAYERS, rule=RULES),
    st.builds(ir.Sample, count=EXPRS, options=kwargs(EXPRS)),
    st.builds(ir.Select, mode=st.sampled_from(["argmax", "argmin", "vote"]),
              metric=st.builds(ir.Metric, name=NAMES, args=st.lists(EXPRS, max_size=2).map(tuple)),
              layers=LAYERS, per_token=st.booleans()),
)

STRATEGIES = st.lists(STATEMENTS, max_size=6).map(lambda s: ir.Strategy(statements=tuple(s)))
