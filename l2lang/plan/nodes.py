"""The plan's data: the executor graph that `compile_plan` builds and the engine runs.

Plain, frozen pydantic models: JSON-serialisable (`Plan.to_json()`), printable by `l2lang explain`,
and free of any reference to a model or an inference engine.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ActionPlan", "AdaptiveRef", "Arith", "ChanceOf", "Cmp", "Const", "EstimatorPlan", "LayerStep", "Logic",
    "MarkPlan", "Observe", "PassValue", "Plan", "PLAN_VERSION", "PlanExpr", "PlanNode", "QUANTILE_KEYS",
    "RateOf", "RecursePlan", "Reduce", "RulePlan", "SamplePlan", "SelectPlan", "SteerPlan", "StorePlan",
    "StreakOf", "SuppressPlan", "ThresholdPlan", "VectorPlan", "walk"
]

PLAN_VERSION = 1
QUANTILE_KEYS = {0.5: "p50", 0.75: "p75", 0.9: "p90", 0.95: "p95", 0.99: "p99"}


class PlanNode(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# ---- expressions: what the runtime evaluates per batch row ----------------------------------------

class Const(PlanNode):
    kind: Literal["const"] = "const"
    value: float
    note: str | None = None  # where a folded threshold came from, e.g. "tau@24"


class Observe(PlanNode):
    """`norm`, `growth` or `cos` of the state after `layer` (pass 0), per row."""

    kind: Literal["observe"] = "observe"
    observable: Literal["norm", "growth", "cos"]
    layer: int
    vector: str | None = None


class Reduce(PlanNode):
    kind: Literal["reduce"] = "reduce"
    fn: Literal["mean", "max", "min", "sum"]
    observable: Literal["norm", "growth", "cos"]
    layers: tuple[int, ...]


class PassValue(PlanNode):
    """The candidate state of a recursion pass: norm, growth, ratio or change."""

    kind: Literal["pass"] = "pass"
    name: Literal["norm", "growth", "ratio", "change"]


class AdaptiveRef(PlanNode):
    """An adaptive threshold's current value for one estimator (one observable it learns from)."""

    kind: Literal["adaptive"] = "adaptive"
    threshold: str
    estimator: int


class Arith(PlanNode):
    kind: Literal["arith"] = "arith"
    op: Literal["+", "-", "*", "/", "neg"]
    args: tuple[PlanExpr, ...]


class Cmp(PlanNode):
    kind: Literal["compare"] = "compare"
    ops: tuple[str, ...]
    operands: tuple[PlanExpr, ...]


class Logic(PlanNode):
    kind: Literal["logic"] = "logic"
    op: Literal["and", "or", "not"]
    operands: tuple[PlanExpr, ...]


class StreakOf(PlanNode):
    """Consecutive decode steps (this one included) on which `condition` held, per request."""

    kind: Literal["streak"] = "streak"
    slot: int
    condition: PlanExpr


class RateOf(PlanNode):
    """Fraction of this request's decode steps so far (this one included) on which `condition` held."""

    kind: Literal["rate"] = "rate"
    slot: int
    condition: PlanExpr


class ChanceOf(PlanNode):
    """A seeded coin: true with `probability` (per row), drawn per (seed, request, step, slot)."""

    kind: Literal["chance"] = "chance"
    slot: int
    probability: PlanExpr


PlanExpr = Annotated[
    Union[Const, Observe, Reduce, PassValue, AdaptiveRef, Arith, Cmp, Logic, StreakOf, RateOf, ChanceOf],
    Field(discriminator="kind"),
]


# ---- actions, rules, declarations ---------------------------------------------------------------

class RecursePlan(PlanNode):
    kind: Literal["recurse"] = "recurse"
    layer: int  # the block's last layer: where the recursion runs
    first: int
    passes: int
    stops: tuple[tuple[Literal["while", "until"], PlanExpr], ...] = ()
    kv: Literal["frozen", "refresh"] = "frozen"
    damping: float = 1.0
    delay: int = 0


class SteerPlan(PlanNode):
    kind: Literal["steer"] = "steer"
    layer: int
    mode: Literal["add", "mix"]
    coefficient: float
    vector: str | None = None
    bank: str | None = None
    min_cos: float | None = None
    delay: int = 0


class SuppressPlan(PlanNode):
    kind: Literal["suppress"] = "suppress"
    layer: int
    mode: Literal["scale", "clamp"]
    value: float
    delay: int = 0


class StorePlan(PlanNode):
    kind: Literal["store"] = "store"
    layer: int
    bank: str
    delay: int = 0


class MarkPlan(PlanNode):
    kind: Literal["mark"] = "mark"
    layer: int
    label: str
    delay: int = 0


ActionPlan = Annotated[Union[RecursePlan, SteerPlan, SuppressPlan, StorePlan, MarkPlan],
                       Field(discriminator="kind")]


class RulePlan(PlanNode):
    id: int
    origin: str  # FILE:LINE of the rule
    phase: Literal["decode", "prefill", "all"]
    cooldown: int = 0
    read_layer: int  # the condition is evaluated once this layer's first pass is done
    condition: PlanExpr
    actions: tuple[ActionPlan, ...]


class LayerStep(PlanNode):
    """Work after one decoder layer: evaluate these rules, then apply these actions in order."""

    layer: int
    evaluate: tuple[int, ...] = ()
    act: tuple[tuple[int, int], ...] = ()  # (rule id, action index)


class ThresholdPlan(PlanNode):
    name: str
    source: Literal["fixed", "table", "adaptive", "calibrated"]
    values: dict[int, float] = {}  # fixed: every layer it is read at; table/calibrated: per layer
    k: float | None = None
    warmup: int | None = None
    scope: Literal["request", "shared"] | None = None
    sample: Literal["token", "batch"] | None = None
    iqr_floor: float | None = None
    profile: str | None = None
    q: float | None = None


class EstimatorPlan(PlanNode):
    """One online quartile estimator of an adaptive threshold, fed by one observable."""

    id: int
    threshold: str
    observable: PlanExpr
    phase: Literal["decode", "prefill", "all"]


class VectorPlan(PlanNode):
    """A steering vector: loaded from a safetensors file, or derived from contrasting prompts. `path` (the
    file as shown, read through `Program.files`) is set for loaded vectors and for derived ones a bundle
    stores; the others are derived on the model when a run starts."""

    name: str
    source: Literal["load", "contrast"]
    path: str | None = None
    key: str | None = None
    positive: tuple[str, ...] = ()
    negative: tuple[str, ...] = ()
    layer: int | None = None


class SamplePlan(PlanNode):
    count: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0


class SelectPlan(PlanNode):
    mode: Literal["argmax", "argmin", "vote"]
    metric: Literal["total", "area", "events", "late_area", "count"]
    layers: tuple[int, ...]
    thresholds: dict[int, float] = {}
    late_fraction: float = 0.3
    per_token: bool = False


class Plan(PlanNode):
    version: int = PLAN_VERSION
    fingerprint: str
    source: str
    layers: int
    hidden_size: int | None = None
    params: dict[str, float]
    thresholds: dict[str, ThresholdPlan] = {}
    estimators: tuple[EstimatorPlan, ...] = ()
    vectors: dict[str, VectorPlan] = {}
    banks: dict[str, int] = {}
    observe: tuple[int, ...] = ()
    rules: tuple[RulePlan, ...] = ()
    schedule: tuple[LayerStep, ...] = ()
    streak_slots: int = 0
    rate_slots: int = 0
    chance_slots: int = 0
    sample: SamplePlan | None = None
    select: SelectPlan | None = None
    warnings: tuple[str, ...] = ()  # rendered diagnostics of severity "warning"

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


for _model in (Arith, Cmp, Logic, StreakOf, RateOf, ChanceOf, RecursePlan, RulePlan, EstimatorPlan, Plan):
    _model.model_rebuild()




# ---- walking expressions ------------------------------------------------------------------------

def _children(node: PlanExpr) -> tuple:
    match node:  # (by type: a pydantic model's missing attribute costs an exception)
        case Arith(args=args):
            return args
        case Cmp(operands=operands) | Logic(operands=operands):
            return operands
        case StreakOf(condition=condition) | RateOf(condition=condition):
            return (condition,)
        case ChanceOf(probability=probability):
            return (probability,)
    return ()


def walk(node: PlanExpr):
    """Every node of a plan expression (streak, rate and chance arguments included)."""
    stack = [node]
    while stack:
        item = stack.pop()
        yield item
        stack.extend(_children(item))
