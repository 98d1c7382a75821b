"""What the engine needs from the inference engine it runs in: the `LayerBackend` interface.

A backend drives generation. For every forward pass it tells the executor who each token row
belongs to (`StepRows`), hands it each hooked decoder layer's output to read and replace, and, when
a rule recurses, re-runs a block of layers for it (`LayerBackend.block`). Requests get a slot of
per-request state when they start and give it back when they finish (`Executor.start_requests`,
`Executor.finish_requests`); nothing is keyed by batch row, since engines reuse rows.

Tensors of a step are flat: one row per token, `[N]` or `[N, hidden]`. Hugging Face's padded
`[batch, time]` batch is the case `N = batch · time` with every request's rows together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from l2lang.errors import UnsupportedError
from l2lang.plan import Plan, RecursePlan

KVMode = Literal["frozen", "refresh"]
Phase = Literal["prefill", "decode", "mixed"]


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do; a plan that needs more is refused before generation starts."""

    kv_modes: frozenset[str] = frozenset({"frozen", "refresh"})
    sequence_selection: bool = True  # `sample N` / `select`
    name: str = "backend"

    def check(self, plan: Plan) -> None:
        """Raise `UnsupportedError` naming the first construct of `plan` this backend cannot run."""
        for rule in plan.rules:
            for action in rule.actions:
                if isinstance(action, RecursePlan) and action.kv not in self.kv_modes:
                    raise UnsupportedError.one(
                        f"the {self.name} backend cannot run `recurse ... kv {action.kv}` ({rule.origin})",
                        hint=f"supported: kv {', '.join(sorted(self.kv_modes))}", path=rule.origin)
        if (plan.sample or plan.select) and not self.sequence_selection:
            raise UnsupportedError.one(f"the {self.name} backend does not run `sample`/`select`",
                                       path=plan.source)


@dataclass(frozen=True)
class StepRows:
    """Who each token row of one forward pass belongs to.

    `slots[i]` is the per-request state slot of row i; `decode[i]` says the row is a generated token
    fed back (not a prompt position); `valid[i]` that it is real (not padding, its request still
    running); `positions[i]` is a prompt row's 0-based position in its prompt (needed when the step
    has prompt rows). `phase` is "decode" when every row is a decode row with `slots == arange(N)`
    (one row per request, in slot order), "prefill" when no row is a decode row, else "mixed".
    `step` is the decode step every decode row is at, when the backend runs its requests in lockstep
    (all started together, one token each per step: Hugging Face `generate`); then the executor keeps
    the step as a number instead of a tensor per request.
    """

    slots: torch.Tensor   # int64 [N]
    decode: torch.Tensor  # bool [N]
    valid: torch.Tensor   # bool [N]
    phase: Phase
    positions: torch.Tensor | None = None  # int64 [N]
    step: int | None = None

    @property
    def size(self) -> int:
        return self.slots.shape[0]

    @property
    def live_decode(self) -> torch.Tensor:
        """Rows that are a running request's newest generated token."""
        return self.valid if self.phase == "decode" else self.valid & self.decode


class BlockRunner(Protocol):
    """Layers `first..last` run again on this step's rows (docs/semantics.md §4, recurse)."""

    def run(self, hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """One more pass of the block over `hidden` [N, hidden] for the rows still recursing (bool [N]:
        other rows' outputs are discarded, and their K/V must not change); returns [N, hidden]."""

    def accept(self, rows: torch.Tensor) -> None:
        """`kv refresh`: keep this pass's K/V for `rows` (bool [N]); `kv frozen`: nothing."""

    def commit(self) -> None:
        """`kv refresh`: write the kept K/V over the first pass's for this position; `kv frozen`: nothing."""


class LayerBackend(Protocol):
    """The inference engine, as the executor sees it."""

    capabilities: Capabilities

    def block(self, first: int, last: int, kv: KVMode) -> BlockRunner:
        """A runner for extra passes of layers `first..last` in the current step."""
