"""The plan: a checked program compiled for one model shape into the executor graph.

`nodes` holds the plan's data types, `compile` builds them (`compile_plan`), `explain` prints them,
`shape` reads a model's depth and width without loading its weights.
"""

from l2lang.plan.compile import compile_plan, schedule
from l2lang.plan.nodes import *  # noqa: F403
from l2lang.plan.nodes import walk  # noqa: F401
