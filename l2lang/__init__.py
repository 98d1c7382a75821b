"""l2lang: strategy files that steer a causal LM by the l2 norm of its hidden states.

Pipeline (docs/architecture.md): `grammar/` → `lang` (parse, format, IR, compose, check) → `plan`
(the executor graph) → `engine` (runs a plan over the token rows of each step) ↔ `backends`
(Hugging Face today) → `apps` (eval, trace, calibrate) → `cli`. Backends (and torch) load only when
first used, so `l2lang check` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from l2lang.engine.strategy import Strategy
from l2lang.errors import L2Error
from l2lang.lang.check import check_program
from l2lang.lang.compose import Program, load_program
from l2lang.lang.format import format_strategy
from l2lang.lang.parser import parse
from l2lang.plan import Plan, compile_plan

if TYPE_CHECKING:
    from l2lang.backends.hf.generate import generate
    from l2lang.backends.hf.models import load_model

__all__ = ["L2Error", "Plan", "Program", "Strategy", "check_program", "compile_plan", "format_strategy",
           "generate", "load", "load_model", "load_program", "parse"]
__version__ = "0.1.0"


def load(target: str, *, allow_other_model: bool = False, **params: float) -> Strategy:
    """Load a shipped strategy by name (`"alrr"`), a `.l2` file or a bundle (`.l2b`), overriding params by
    keyword (a bundle's are frozen). A bundle refuses other weights than its own unless `allow_other_model`."""
    return Strategy(load_program(target, {name: str(value) for name, value in params.items()},
                                 allow_other_model=allow_other_model))


def __getattr__(name: str):
    if name == "generate":
        from l2lang.backends.hf.generate import generate

        return generate
    if name == "load_model":
        from l2lang.backends.hf.models import load_model

        return load_model
    raise AttributeError(f"module 'l2lang' has no attribute {name!r}")
