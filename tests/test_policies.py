"""The CPU policy (work under an empty mask skipped, `and` stopping once no row is left) and the GPU policy
(no mask read during a step) give the same states, effects and non-finite counts, for any plan the checker
accepts. (The report's total of layer passes run is not among them: under the GPU policy a recursion
whose mask is empty still runs, and its passes count; each request's own passes agree.)

Plans come from the checker's fuzzer (`tests/fuzzer.py`: mutated shipped strategies, examples and error
cases); the executor runs a prefill and eight decode steps of two requests on random states, some NaN or
infinite, one request finishing early, through a block runner that changes the state on every pass.
"""

from __future__ import annotations

import random

import pytest
import torch

from l2lang.backends.hf.attach import CAPABILITIES
from l2lang.engine.backend import StepRows
from l2lang.engine.executor import Executor
from l2lang.errors import L2Error
from l2lang.lang.compose import compose
from l2lang.lang.parser import decode_source, parse
from l2lang.plan import compile_plan
from tests import fuzzer

HIDDEN, ROWS, PROMPT = 16, 2, 3


class Block:
    def run(self, hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return hidden * 1.01 + 0.1

    def accept(self, rows: torch.Tensor) -> None:
        pass

    def commit(self) -> None:
        pass


class Backend:
    capabilities = CAPABILITIES

    def block(self, first: int, last: int, kv: str) -> Block:
        return Block()


# side effects behind an operand that is often false, which a CPU must still have on every step: counters,
# and the finiteness check (and so the count) of another layer's state
SIDE_EFFECTS = (b'if chance(0.5) and streak(norm[3] > 0) >= 3 mark "a" at 3\n'
                b'if norm[5] > 3 and rate(norm[5] > 4) > 0.3 and chance(0.7) cooldown 1 mark "b" at 5\n'
                b'if norm[6] > 1e9 and norm[2] > 0 mark "c" at 6\n')


def accepted_plans(count: int, seed: int) -> list:
    """The plan of `SIDE_EFFECTS`, then `count` plans of accepted fuzzer inputs."""
    rng, corpus, plans = random.Random(seed), fuzzer.seeds(), []
    count += 1
    while len(plans) < count:
        data = fuzzer.mutant(rng, corpus) if plans else SIDE_EFFECTS
        try:
            source = decode_source(data, fuzzer.PATH)
            plans.append(compile_plan(compose(parse(source, fuzzer.PATH), fuzzer.PATH, source, {}), 28, HIDDEN))
        except L2Error:
            continue
    return plans


def run(plan, vectors: dict, seed: int, gpu_policy: bool):
    """Every state after_layer returned, every step's effects, the non-finite count."""
    try:
        executor = Executor(plan, Backend(), vectors, seed=0, hidden_size=HIDDEN, dtype=torch.float32,
                            device=torch.device("cpu"))
    except L2Error:  # (e.g. a steering coefficient that overflows float32: refused before the run)
        return None
    executor.skip_idle = not gpu_policy
    draw, generator = random.Random(seed), torch.Generator().manual_seed(seed)

    def state(rows: int) -> torch.Tensor:
        if draw.random() < 0.1:
            return torch.full((rows, HIDDEN), draw.choice([float("nan"), float("inf")]))
        return torch.randn(rows, HIDDEN, generator=generator) * draw.choice([0.1, 1.0, 10.0])

    states = []
    executor.start_requests(torch.tensor([11, 22]))
    steps = [StepRows(slots=torch.arange(ROWS).repeat_interleave(PROMPT), decode=torch.zeros(ROWS * PROMPT, dtype=bool),
                      valid=torch.ones(ROWS * PROMPT, dtype=bool), phase="prefill",
                      positions=torch.arange(PROMPT).repeat(ROWS))]
    steps += [StepRows(slots=torch.arange(ROWS), decode=torch.ones(ROWS, dtype=bool),
                       valid=torch.tensor([True, step < 6]), phase="decode", step=step) for step in range(1, 9)]
    for rows in steps:
        executor.begin_step(rows)
        for layer in executor.hooked:
            hidden = state(rows.size)
            if not executor.defer(layer, hidden):
                before = state(rows.size) if executor.wants_input(layer) else None
                states.append(executor.after_layer(layer, hidden, before))
        executor.end_step()
    effects = [{key: value.tolist() for key, value in r.effects.items() if value.any()} for r in executor.records]
    return states, effects, executor.nonfinite_states()


@pytest.mark.parametrize("seed", range(4))
def test_the_cpu_and_the_gpu_policy_agree_on_any_accepted_plan(seed: int) -> None:
    for number, plan in enumerate(accepted_plans(40, seed)):
        vectors = {name: torch.randn(HIDDEN, generator=torch.Generator().manual_seed(number)) for name in plan.vectors}
        cpu, gpu = (run(plan, vectors, seed * 1000 + number, gpu_policy) for gpu_policy in (False, True))
        if cpu is None:
            assert gpu is None
            continue
        assert cpu[1] == gpu[1] and cpu[2] == gpu[2], plan.source
        assert all(torch.equal(a.nan_to_num(1.5), b.nan_to_num(1.5)) for a, b in zip(cpu[0], gpu[0], strict=True))
