"""Sentences of docs/semantics.md that the mutation run of scripts/mutate.py found unguarded: each test
here failed against a mutant of the engine that every other test let through (docs/testing.md)."""

from __future__ import annotations

import pytest

from tests.test_semantics import model, run, steps_acted
from tests.tiny_models import layer_outputs_edited

EVERY_STEP = list(range(1, 11))  # run() generates 11 tokens: decode steps 1..10


@pytest.mark.parametrize("condition,acts", [
    ("norm[6] / 2 > 0", True),          # a division by a constant divides
    ("norm[6] / 0 > 0", False),         # ... by 0 gives ±inf, and a comparison with a non-finite value is false
    ("norm[6] < 0 or norm[6] > 0", True),
    ("norm[6] > 0 or norm[6] < 0", True),
    ("norm[6] < 0 and norm[6] > 0", False),
    ("chance(norm[5] + 1)", True),       # a layer read only inside a coin's probability is observed and read
])
def test_arithmetic_and_logic_of_conditions(condition: str, acts: bool, tmp_path) -> None:
    result = run(f'if {condition} mark "m" at 6\n', tmp_path)
    assert steps_acted(result) == (EVERY_STEP if acts else [])


def test_a_shared_token_sampled_threshold_absorbs_every_row_of_a_step(tmp_path) -> None:
    """`adaptive(scope=shared, sample=token)`: one stream fed each running row's value at every decode
    step, so with two requests it warms up (5 values) after three decode steps, and acts from step 4;
    `sample=batch` feeds one value (the rows' mean) per step and acts from step 6."""
    text = ('threshold t = adaptive(k=0, warmup=5, scope=shared, sample={})\n'
            'if norm[6] > t - 1e9 mark "m" at 6\n')
    for sample, first in (("token", 4), ("batch", 6)):
        result = run(text.format(sample), tmp_path, prompts=("hello there", "a b c d"))
        for request in (0, 1):
            assert steps_acted(result, request) == list(range(first, 11)), sample


def row_0_set(layers, values: dict[int, float]):
    """Inside the block, row 0 of decoder layer i's output is all `values[i]`."""

    def set_row_0(value):
        def edit(hidden):
            hidden = hidden.clone()
            hidden[0] = value
            return hidden
        return edit
    return layer_outputs_edited(layers, {index: set_row_0(value) for index, value in values.items()})


def test_a_comparison_with_a_shallower_layers_infinite_norm_is_false(tmp_path) -> None:
    """A rule read at layer 6 that also compares layer 2's norm: where that norm is infinite (row 0; the
    state is finite again from layer 3 on) the comparison is false, though `inf > 0`."""
    with row_0_set(model().model.layers, {2: float("inf"), 3: 1.0}), pytest.warns(RuntimeWarning, match="NaN or inf"):
        result = run('if norm[2] > 0 and norm[6] > 0 mark "m" at 6\n', tmp_path, prompts=("hello there", "a b c d"),
                     min_new_tokens=0)
    assert steps_acted(result, 0) == [] and steps_acted(result, 1) == EVERY_STEP
    # request 0's state is counted non-finite once per decode step (where the rule checks it), request 1's never
    assert result.report.nonfinite_states == len(EVERY_STEP)


def test_an_action_at_a_layer_whose_state_is_not_finite_leaves_that_row_alone(tmp_path) -> None:
    """A rule reading layer 2 and acting at layer 6 does not act on a row whose state at layer 6 holds
    NaN, though its condition (at layer 2) held there; the row's neighbour is acted on."""
    with row_0_set(model().model.layers, {4: float("nan")}), pytest.warns(RuntimeWarning, match="NaN or inf"):
        result = run('if norm[2] > 0 mark "m" at 6\n', tmp_path, prompts=("hello there", "a b c d"),
                     min_new_tokens=0)
    assert steps_acted(result, 0) == [] and steps_acted(result, 1) == EVERY_STEP



def test_a_steering_vector_that_overflows_the_state_is_undone(tmp_path) -> None:
    """`steer 1*v` with a loaded vector whose squared norm is about half float32's largest value: after one
    addition the state's norm is finite; a second (same rule, same layer) would overflow it, so that one
    is undone and not counted."""
    import torch
    from safetensors.torch import save_file

    save_file({"v": torch.full((64,), 1.6e18)}, str(tmp_path / "v.safetensors"))
    with pytest.warns(RuntimeWarning, match="NaN or inf"):
        result = run('vector v = load("v.safetensors")\nif norm[3] > 0 steer 1*v at 3; steer 1*v at 3\n', tmp_path,
                     tokens=4, min_new_tokens=0)
    counts = result.report.interventions
    assert counts["steer@3 [rule 0.0]"] > 0 and counts["steer@3 [rule 0.1]"] == 0
    assert result.report.nonfinite_states > 0


def test_request_keys_and_salts_wrap_to_signed_64_bit_integers() -> None:
    """docs/semantics.md §2 computes modulo 2^64; torch holds the values as int64 (two's complement)."""
    from l2lang.engine.state import _signed

    assert [_signed(v) for v in (2**63 - 1, 2**63, 2**64 - 1, 2**64 + 5)] == [2**63 - 1, -2**63, -1, 5]


def test_p2_markers_equal_the_scalar_reference_value_by_value() -> None:
    """The vectorised P² (l2lang/engine/state.py) equals the plain-Python one of tests/reference after
    every value, on streams that move the markers in every way: falling (markers pushed down against
    their neighbours), rising, repeated values and zig-zags, all in one batch of streams."""
    import random

    import torch

    from l2lang.engine.state import Quartiles
    from tests.reference.quartiles import Quartiles as Reference

    rng = random.Random(3)
    streams = [[100.0 - t for t in range(60)], [float(t) for t in range(60)], [float(t % 3) for t in range(60)],
               [float((-1) ** t * t) for t in range(60)], [rng.gauss(0, 1) for _ in range(60)],
               [rng.choice([0.0, 1.0, 10.0]) for _ in range(60)],
               # the parabola lands exactly on a neighbour's height (then the linear step is taken):
               [3.0, 3.0, 4.0, 4.0, 1.0, 0.0, 0.0, 1.0, 2.0, 4.0, 4.0, 2.0] * 5,
               [0.0, 3.0, 2.0, 2.0, 1.0, 0.0, 1.0, 2.0, 2.0, 3.0, 2.0, 2.0, 4.0] * 5,
               # a marker with its right neighbour one position away must not move up:
               [4.0, -1.617, 0.0, -2.945, 1.0, 2.599, 2.0, 0.0, 1.167, 0.0, 1.246, -2.893, -0.754, 1.0, 3.165, -2.454,
                -4.197, 1.347, 0.334, -1.198, 2.0, 0.213, 1.0, 1.0, 0.0, 1.0, 4.860, 4.0, 3.753, 0.0, -1.582, -2.655,
                0.0, 0.0, 1.0, -1.373, 0.0, 3.127, 2.0, 0.0] * 2]
    ours, theirs = Quartiles(len(streams), torch.device("cpu")), [Reference() for _ in streams]
    for t in range(60):
        ours.add(torch.tensor([s[t] for s in streams], dtype=torch.float64), torch.ones(len(streams), dtype=torch.bool))
        for reference, stream in zip(theirs, streams):
            reference.add(stream[t])
        if t >= 4:
            torch.testing.assert_close(ours.heights, torch.tensor([r.heights for r in theirs], dtype=torch.float64),
                                       rtol=0, atol=1e-9)
            assert ours.positions.tolist() == [r.positions for r in theirs], t






def test_a_threshold_is_read_at_the_layer_of_the_observable_inside_arithmetic(tmp_path) -> None:
    """In `2 * norm[5] > tau` the table threshold is tau's entry for layer 5 (not the action's layer 6)."""
    table = "threshold tau = table {5: 1e9, 6: 0}\n"
    assert steps_acted(run(table + 'if 2 * norm[5] > tau mark "m" at 6\n', tmp_path)) == []
    assert steps_acted(run(table + 'if 2 * norm[6] > tau mark "m" at 6\n', tmp_path)) == EVERY_STEP


@pytest.mark.parametrize("condition,steps", [
    ("rate(norm[6] > 1e30) < 0.5", EVERY_STEP),           # 0 on the first decode step (not 0/0), then 0/n
    ("rate(norm[6] > 0) > 0.9", list(range(2, 11))),      # 1/1 from step 2: the divisor is the earlier steps
])
def test_rate_is_a_share_of_the_earlier_decode_steps(condition: str, steps: list[int], tmp_path) -> None:
    assert steps_acted(run(f'if {condition} mark "m" at 6\n', tmp_path)) == steps
