"""The typed intermediate representation of a strategy file.

Nodes are frozen pydantic models. Source spans and comments ride along on every node but are
excluded from `model_dump()`, equality and hashing: two files that differ only in layout or comments
have equal IR, and the canonical dump of the IR is what the fingerprint hashes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from l2lang.errors import Span


class Node(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    span: Span | None = Field(default=None, exclude=True, repr=False)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.model_dump() == other.model_dump()  # type: ignore[union-attr]

    def __hash__(self) -> int:
        return hash((type(self).__name__, canonical_json(self)))


def canonical_json(node: BaseModel) -> str:
    """Span-free, comment-free, key-sorted JSON: the identity of a node."""
    return json.dumps(node.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def fingerprint_of(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


# ---- expressions ------------------------------------------------------------------------------

class Num(Node):
    kind: Literal["num"] = "num"
    value: int | float


class Name(Node):
    kind: Literal["name"] = "name"
    name: str


class Unary(Node):
    kind: Literal["unary"] = "unary"
    op: Literal["-", "+"]
    operand: Expr


class Binary(Node):
    kind: Literal["binary"] = "binary"
    op: Literal["+", "-", "*", "/"]
    left: Expr
    right: Expr


class Compare(Node):
    """A chained comparison `a < b < c`: holds when every link holds."""

    kind: Literal["compare"] = "compare"
    operands: tuple[Expr, ...]
    ops: tuple[Literal["<", "<=", ">", ">=", "==", "!="], ...]


class BoolOp(Node):
    kind: Literal["boolop"] = "boolop"
    op: Literal["and", "or"]
    operands: tuple[Expr, ...]


class Not(Node):
    kind: Literal["not"] = "not"
    operand: Expr


class LayerSpan(Node):
    """`start` alone, or the inclusive range `start..end`."""

    start: Expr
    end: Expr | None = None


class Layers(Node):
    spans: tuple[LayerSpan, ...]


class AtLayer(Node):
    """`norm[l]`, `growth[l]`, `cos[l]` or `cos[l, v]`: a per-token observable after layer l."""

    kind: Literal["at_layer"] = "at_layer"
    observable: Literal["norm", "growth", "cos"]
    layer: Expr
    vector: str | None = None


class Aggregate(Node):
    """`mean(norm[a..b])` and friends: an observable reduced over a set of layers."""

    kind: Literal["aggregate"] = "aggregate"
    fn: Literal["mean", "max", "min", "sum"]
    observable: Literal["norm", "growth", "cos"]
    layers: Layers


class PassObservable(Node):
    """Bare `norm`, `growth`, `ratio`, `change`, `cos`: the candidate state inside a recursion."""

    kind: Literal["pass"] = "pass"
    name: Literal["norm", "growth", "ratio", "change", "cos"]


class Streak(Node):
    kind: Literal["streak"] = "streak"
    condition: Expr


class Rate(Node):
    """Fraction of this request's decode steps so far (this one included) on which `condition` held."""

    kind: Literal["rate"] = "rate"
    condition: Expr


class Chance(Node):
    kind: Literal["chance"] = "chance"
    probability: Expr


class KwArg(Node):
    name: str
    value: Expr


class Retrieve(Node):
    kind: Literal["retrieve"] = "retrieve"
    bank: str
    options: tuple[KwArg, ...] = ()


Expr = Annotated[
    Union[Num, Name, Unary, Binary, Compare, BoolOp, Not, AtLayer, Aggregate, PassObservable,
          Streak, Rate, Chance, Retrieve],
    Field(discriminator="kind"),
]


# ---- statements -------------------------------------------------------------------------------

class Statement(Node):
    """Base of every line-level construct; carries the comments the formatter must keep."""

    comments_before: tuple[str, ...] = Field(default=(), exclude=True, repr=False)
    comment_after: str | None = Field(default=None, exclude=True, repr=False)


class Param(Statement):
    kind: Literal["param"] = "param"
    name: str
    value: Expr


class FixedSource(Node):
    kind: Literal["fixed"] = "fixed"
    value: Expr


class TableSource(Node):
    kind: Literal["table"] = "table"
    entries: tuple[tuple[Expr, Expr], ...]


class AdaptiveSource(Node):
    kind: Literal["adaptive"] = "adaptive"
    options: tuple[KwArg, ...] = ()


class CalibratedSource(Node):
    kind: Literal["calibrated"] = "calibrated"
    profile: str
    options: tuple[KwArg, ...] = ()


ThresholdSource = Annotated[
    Union[FixedSource, TableSource, AdaptiveSource, CalibratedSource], Field(discriminator="kind")
]


class Threshold(Statement):
    kind: Literal["threshold"] = "threshold"
    name: str
    source: ThresholdSource


class LoadSource(Node):
    kind: Literal["load"] = "load"
    path: str
    key: str | None = None


class ContrastSource(Node):
    kind: Literal["contrast"] = "contrast"
    positive: tuple[str, ...]
    negative: tuple[str, ...]
    layer: Expr


VectorSource = Annotated[Union[LoadSource, ContrastSource], Field(discriminator="kind")]


class Vector(Statement):
    kind: Literal["vector"] = "vector"
    name: str
    source: VectorSource


class Bank(Statement):
    kind: Literal["bank"] = "bank"
    name: str
    capacity: Expr


class Use(Statement):
    kind: Literal["use"] = "use"
    target: str
    alias: str | None = None
    overrides: tuple[KwArg, ...] = ()


class Observe(Statement):
    kind: Literal["observe"] = "observe"
    layers: Layers


# ---- actions ----------------------------------------------------------------------------------

class Stop(Node):
    """`while C` keeps a candidate pass only if C holds on it; `until C` stops after one that does."""

    mode: Literal["while", "until"]
    condition: Expr


class Recurse(Node):
    kind: Literal["recurse"] = "recurse"
    layers: Layers
    count: Expr
    stops: tuple[Stop, ...] = ()
    kv: Literal["frozen", "refresh"] = "frozen"
    damping: Expr | None = None


class Steer(Node):
    kind: Literal["steer"] = "steer"
    mode: Literal["add", "mix"] = "add"
    amount: Expr
    layers: Layers | None = None


class Suppress(Node):
    kind: Literal["suppress"] = "suppress"
    mode: Literal["scale", "clamp"]
    value: Expr
    layers: Layers | None = None


class Store(Node):
    kind: Literal["store"] = "store"
    bank: str
    layers: Layers | None = None


class Mark(Node):
    kind: Literal["mark"] = "mark"
    label: str
    layers: Layers | None = None


Action = Annotated[Union[Recurse, Steer, Suppress, Store, Mark], Field(discriminator="kind")]


class Rule(Statement):
    kind: Literal["rule"] = "rule"
    condition: Expr
    phase: Literal["decode", "prefill", "all"] = "decode"
    cooldown: Expr | None = None
    actions: tuple[Action, ...]


class ForRule(Statement):
    kind: Literal["for"] = "for"
    var: str
    layers: Layers
    rule: Rule


class Sample(Statement):
    kind: Literal["sample"] = "sample"
    count: Expr
    options: tuple[KwArg, ...] = ()


class Metric(Node):
    name: str
    args: tuple[Expr, ...] = ()


class Select(Statement):
    kind: Literal["select"] = "select"
    mode: Literal["argmax", "argmin", "vote"]
    metric: Metric
    layers: Layers
    per_token: bool = False


AnyStatement = Annotated[
    Union[Param, Threshold, Vector, Bank, Use, Observe, Rule, ForRule, Sample, Select],
    Field(discriminator="kind"),
]


class Strategy(Node):
    """One parsed file: its statements in order."""

    statements: tuple[AnyStatement, ...] = ()
    trailing_comments: tuple[str, ...] = Field(default=(), exclude=True, repr=False)

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(canonical_json(self))


for _model in list(globals().values()):
    if isinstance(_model, type) and issubclass(_model, BaseModel) and _model is not BaseModel:
        _model.model_rebuild()
