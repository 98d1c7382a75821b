"""l2lang: strategy files that steer a causal LM by the l2 norm of its hidden states.

Pipeline: `grammar/` → `syntax` (parse, format) → `ir` → `compose` (use, params) → `check`
→ `plan` (the executor graph). The runtime that runs plans inside `transformers` builds on `plan`.
"""

from l2lang.check import check_program
from l2lang.compose import Program, load_program
from l2lang.diagnostics import L2Error
from l2lang.plan import Plan, compile_plan
from l2lang.syntax.format import format_strategy
from l2lang.syntax.parser import parse

__all__ = ["L2Error", "Plan", "Program", "check_program", "compile_plan", "format_strategy", "load",
           "load_program", "parse"]
__version__ = "0.1.0"


def load(target: str, **params: float) -> Program:
    """Load a shipped strategy by name (`"alrr"`) or a `.l2` file, overriding params by keyword."""
    return load_program(target, {name: str(value) for name, value in params.items()})
