"""The plan: a checked program compiled for one model shape into the executor graph.

`nodes` holds the plan's data types, `compile` builds them (`compile_plan`), `explain` prints them,
`shape` reads a model's depth and width without loading its weights.
"""

from l2lang.plan import nodes
from l2lang.plan.compile import compile_plan
from l2lang.plan.nodes import *  # noqa: F403

__all__ = ["compile_plan", *nodes.__all__]
