"""A loaded strategy: a checked program, compiled once per model shape and reused."""

from __future__ import annotations

import weakref

from l2lang.lang.compose import Program, compose
from l2lang.lang.parser import parse
from l2lang.plan import Plan, compile_plan


def observe_only() -> Program:
    """`observe 0..L-1`: every layer's norm recorded, nothing changed (traces, calibration)."""
    text = "observe 0..L-1\n"
    return compose(parse(text), "<observe>", text, {})


class Strategy:
    """A checked program, ready to be compiled for a model and run by a backend."""

    def __init__(self, program: Program):
        self.program = program
        # vectors derived from prompts, per model object: derived on first use, reused after
        self.derived: weakref.WeakKeyDictionary[object, dict] = weakref.WeakKeyDictionary()
        self.plans: dict[tuple, Plan] = {}

    @property
    def fingerprint(self) -> str:
        return self.program.fingerprint

    def plan_for_shape(self, layers: int, hidden_size: int | None, weights_sha256: str | None = None) -> Plan:
        """The plan for a model of this shape and these weights (compiled once, then reused).

        A strategy loaded from a bundle runs only on the weights it was packed for, unless it was loaded
        with `allow_other_model`."""
        if self.program.bundle is not None:
            self.program.bundle.check_model(weights_sha256)
        key = (layers, hidden_size, weights_sha256)
        if key not in self.plans:
            self.plans[key] = compile_plan(self.program, *key)
        return self.plans[key]

    def attach(self, model, tokenizer=None, seed: int = 0, observe_all: bool = False):
        """Attach to a Hugging Face model for a `with` block (see `l2lang.backends.hf.attach`)."""
        from l2lang.backends.hf.attach import attach

        return attach(self, model, tokenizer, seed, observe_all)

    def __repr__(self) -> str:
        return f"Strategy({self.program.root.path!r}, fingerprint={self.fingerprint})"
