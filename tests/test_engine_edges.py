"""Edges of docs/semantics.md (and of the limits of docs/language.md) that the mutation run of
scripts/mutate.py found unguarded: each test here failed against a mutant of the engine or the plan
compiler that every other test let through (the list: docs/mutants.md).

Most tests run a strategy on the tiny model of tests/test_semantics.py; those about a backend's
general (non-lockstep) path drive the executor directly through its backend interface
(l2lang/engine/backend.py), with the token rows a continuous-batching engine such as vLLM hands it.
"""

from __future__ import annotations

import pytest
import torch

import l2lang
from l2lang.engine.backend import Capabilities, StepRows
from l2lang.engine.executor import Executor
from l2lang.engine.state import Bank, Quartiles
from l2lang.errors import L2Error
from tests.test_semantics import TOKENIZER, model, run
from tests.tiny_models import layer_outputs_edited

CPU = torch.device("cpu")


def all_set(layer: int, value: float):
    """Inside the block, every element of decoder layer `layer`'s output (all rows) is `value`."""
    return layer_outputs_edited(model().model.layers, {layer: lambda hidden: torch.full_like(hidden, value)})


def plan_of(text: str, tmp_path, layers: int = 8, hidden_size: int | None = None):
    path = tmp_path / "s.l2"
    path.write_text(text, encoding="utf-8")
    return l2lang.load(str(path)).plan_for_shape(layers, hidden_size)


# ---- §4: actions that could overflow the state, and those that cannot ----------------------------

def test_retrieve_adding_more_than_the_banked_state_is_undone_where_it_overflows(tmp_path) -> None:
    """`steer add 1.5*retrieve(...)` adds more than the state itself: on a state of norm 8e18 (float32)
    whose banked nearest state is itself, h + 1.5·h has an infinite norm, so the step is undone, not
    counted, and counted as non-finite."""
    with all_set(3, 1e18), pytest.warns(RuntimeWarning, match="NaN or inf"):
        result = run('bank b keep 2\nif norm[3] > 0 store in b at 3\n'
                     'if norm[3] > 0 steer add 1.5*retrieve(b, min_cos=0.5) at 3\n', tmp_path, tokens=4,
                     min_new_tokens=0)
    assert result.report.interventions["store@3"] > 0 and result.report.interventions["steer@3"] == 0
    assert result.report.nonfinite_states > 0


def test_actions_that_cannot_overflow_are_applied_and_counted_even_on_a_huge_state(tmp_path) -> None:
    """`steer mix c*v` (c in [0, 1]) and `suppress scale s` with |s| <= 1 cannot make a state's elements
    overflow, so they are never checked or undone: a mix toward a finite vector whose float32 norm
    overflows, then a scale by -1 of that state, are both applied and counted."""
    from safetensors.torch import save_file

    save_file({"v": torch.full((64,), 1e30)}, str(tmp_path / "v.safetensors"))
    result = run('vector v = load("v.safetensors")\nif norm[3] > 0 steer mix 0.5*v at 3\n'
                 'if norm[3] > 0 suppress scale -1 at 3\n', tmp_path, tokens=2, min_new_tokens=0)
    assert result.report.interventions["steer@3"] > 0 and result.report.interventions["suppress@3"] > 0


# ---- §7: select metrics, on norms known exactly ------------------------------------------------------

@pytest.mark.parametrize("metric,score", [
    ("events(8)", 0.0),          # norm > tau: a norm equal to tau is no event
    ("events(7.5)", 5 * 1.0),
    ("area(7)", 5 * 1.0),
    ("late_area(0, 0.5)", 3 * 8.0),  # decode steps 3, 4, 5 of 5: the last half
    ("late_area(0)", 2 * 8.0),       # f = 0.3 by default: steps 4 and 5
])
def test_select_metrics_count_the_decode_steps_they_say(metric: str, score: float, tmp_path) -> None:
    """Layer 3's state is all ones (norm exactly 8) on every step; 6 generated tokens are 5 decode
    steps. `events(tau)` counts steps with norm > tau, `late_area(tau, f)` sums `max(0, norm - tau)`
    over the last fraction f of the steps."""
    with all_set(3, 1.0):
        result = run(f"sample 2 with temperature=1.0\nselect argmax {metric} over 3\n", tmp_path, tokens=6)
    (output,) = result.outputs
    assert [c["score"] for c in output["candidates"]] == [score, score]


# ---- the plan compiler: constants, layers, limits ----------------------------------------------------

@pytest.mark.parametrize("expression,value", [("1000 + 0", 1000.0), ("0 + 1000", 1000.0), ("7 - 2", 5.0),
                                              ("2 * 3", 6.0), ("6 / 4", 1.5)])
def test_arithmetic_on_constants_folds_to_its_value(expression: str, value: float, tmp_path) -> None:
    """A constant expression in a condition is folded once, at compile time, to its value."""
    plan = plan_of(f'if norm[6] < {expression} mark "m" at 6\n', tmp_path)
    condition = plan.rules[0].condition
    assert condition.operands[1].value == value


def test_layer_arithmetic_divides_and_refuses_division_by_zero(tmp_path) -> None:
    """Layers are whole-number expressions: `6/1` is layer 6, `7/2` rounds down to 3, `2*3` is 6, and a
    division by zero is a compile error (not a crash)."""
    plan = plan_of('if norm[6/1] > 0 mark "m" at 7/2\nif norm[2*3] > 0 mark "m" at 2*3 - 1\n', tmp_path)
    assert plan.rules[0].read_layer == 6 and plan.rules[0].actions[0].layer == 3
    assert plan.rules[1].read_layer == 6 and plan.rules[1].actions[0].layer == 5
    with pytest.raises(L2Error, match="division by zero"):
        plan_of('if norm[6/0] > 0 mark "m" at 3\n', tmp_path)


def test_late_area_takes_its_fraction_and_other_metrics_take_one_argument(tmp_path) -> None:
    """`late_area(tau, f)` keeps f; without f it is 0.3; a one-argument metric has no fraction."""
    assert plan_of("sample 2\nselect argmax late_area(1, 0.5) over 3\n", tmp_path).select.late_fraction == 0.5
    assert plan_of("sample 2\nselect argmax late_area(1) over 3\n", tmp_path).select.late_fraction == 0.3
    assert plan_of("sample 2\nselect argmax events(1) over 3\n", tmp_path).select.thresholds == {3: 1.0}


def test_a_loaded_vector_may_have_leading_dimensions_of_one_only(tmp_path) -> None:
    """A steering vector is one row of the hidden size: a tensor of shape [1, 64] is one (for a model of
    hidden size 64); [2, 64] is two, and is refused naming its shape."""
    from safetensors.torch import save_file

    text = 'vector v = load("v.safetensors")\nif norm[3] > 0 steer 0.5*v at 3\n'
    save_file({"v": torch.ones(1, 64)}, str(tmp_path / "v.safetensors"))
    assert plan_of(text, tmp_path, hidden_size=64).vectors
    save_file({"v": torch.ones(2, 64)}, str(tmp_path / "v.safetensors"))
    with pytest.raises(L2Error, match=r"has shape \[2, 64\]"):
        plan_of(text, tmp_path, hidden_size=64)


def test_every_rule_names_the_file_and_line_it_was_written_on(tmp_path) -> None:
    """A rule's origin (in reports, warnings and errors) is FILE:LINE of its statement; each rule a `for`
    writes has the `for` statement's line."""
    plan = plan_of('observe 6\nif norm[6] > 0 mark "m" at 6\nfor l in 2..3: if norm[l] > 0 mark "m" at l\n',
                   tmp_path)
    path = str(tmp_path / "s.l2")
    assert [rule.origin for rule in plan.rules] == [f"{path}:2", f"{path}:3", f"{path}:3"]


def test_banks_hold_at_most_64_mib_per_request(tmp_path) -> None:
    """keep × hidden size × 4 bytes at every layer a bank is used: 4096 × 4096 × 4 bytes is exactly
    64 MiB at one layer (allowed), 128 MiB at two (refused)."""
    plan_of("bank b keep 4096\nif norm[6] > 0 store in b at 6\n", tmp_path, hidden_size=4096)
    with pytest.raises(L2Error, match="banks would hold 128 MiB"):
        plan_of("bank b keep 4096\nif norm[6] > 0 store in b at 5..6\n", tmp_path, hidden_size=4096)


def test_a_program_expanding_past_the_plan_item_limit_is_refused(tmp_path) -> None:
    """At most 10,000 plan items: each rule instance counts 1, each node of its condition 1
    (`norm[l] > 0`: 3), each layer of a layer set 1. A `for` rule over layers 1..L-1 acting at each of
    them makes M + M·(1 + 3 + M) items with M = L - 1: 9,894 at 98 layers (compiled), 10,094 at 99
    (refused)."""
    text = 'for l in 1..L-1: if norm[l] > 0 mark "m" at 1..L-1\n'
    assert len(plan_of(text, tmp_path, layers=98).rules) == 97
    with pytest.raises(L2Error, match="more than 10000 plan items"):
        plan_of(text, tmp_path, layers=99)


# ---- state: banks, estimators ---------------------------------------------------------------------

def test_a_bank_evicts_the_later_of_two_equal_norms_across_prefill_and_decode() -> None:
    """The bank keeps the K states of largest norm, ties: the earlier state stays. A prompt state A
    (norm 5), then a decode state B of the same norm, then C (norm 6): A and C stay, whatever the
    request's row is (here row 2 of 3, after a prompt of 4 rows)."""
    bank = Bank(slots=4, capacity=2, hidden=2, dtype=torch.float32, device=CPU)
    a, d = [5.0, 0.0], [0.0, 3.0]
    prompt = torch.tensor([[1.0, 0.0], [0.0, 1.0], a, d])
    bank.offer_many(torch.tensor([0, 1, 2, 2]), prompt, prompt.norm(dim=-1), torch.ones(4, dtype=torch.bool))
    mine = torch.tensor([False, False, True])
    for state in ([3.0, 4.0], [0.0, 6.0]):  # B (norm 5, replaces D), then C (norm 6)
        rows = torch.tensor([[1.0, 0.0], [1.0, 0.0], state])
        bank.offer(torch.arange(3), rows, rows.norm(dim=-1), mine)
    kept = sorted(bank.states[2].tolist())
    assert kept == sorted([a, [0.0, 6.0]])



def test_estimators_are_compiled_only_on_a_gpu_or_when_asked(monkeypatch) -> None:
    """docs/performance.md: P² runs as a compiled function on GPUs (uncompiled with L2LANG_COMPILE=0) and on
    numpy views on a CPU (compiled with L2LANG_COMPILE=1)."""
    from l2lang.engine.state import p2_mode

    gpu = torch.device("cuda")
    monkeypatch.delenv("L2LANG_COMPILE", raising=False)
    assert (p2_mode(CPU), p2_mode(gpu)) == ("numpy", "compiled")
    monkeypatch.setenv("L2LANG_COMPILE", "0")
    assert (p2_mode(CPU), p2_mode(gpu)) == ("numpy", "torch")
    monkeypatch.setenv("L2LANG_COMPILE", "1")
    assert (p2_mode(CPU), p2_mode(gpu)) == ("compiled", "compiled")


def test_a_failing_compiler_falls_back_with_a_warning_from_the_estimator(monkeypatch) -> None:
    """A compiler that fails does not stop generation: the step runs uncompiled, with one warning
    attributed to the estimator (l2lang/engine/state.py), so a filter on that module silences it."""
    import l2lang.engine.state as state

    def broken():
        def compiled(*args):
            raise RuntimeError("no compiler")
        return compiled

    monkeypatch.setattr(state, "_compiled_p2_step", broken)
    ours, plain = Quartiles(1, CPU, mode="compiled"), Quartiles(1, CPU, mode="torch")
    with pytest.warns(RuntimeWarning, match="torch.compile failed") as caught:
        for _ in range(2):
            for q in (ours, plain):
                q.add(torch.tensor([1.0], dtype=torch.float64), torch.ones(1, dtype=torch.bool))
    assert torch.equal(ours.heights, plain.heights) and ours.mode == "torch"
    assert [w.filename for w in caught] == [state.__file__]


# ---- §6: a backend's general path (continuous batching: vLLM's token rows) ---------------------------

class RowsBackend:
    """A backend as the executor sees it, for plans without `recurse` (no extra passes to run)."""

    capabilities = Capabilities(name="test")

    def block(self, first, last, kv):
        raise AssertionError("no recursion in these plans")


def executor_for(text: str, tmp_path, requests: int) -> Executor:
    """An executor for `text` on a 2-layer model of hidden size 4, with `requests` started (slots 0..)."""
    executor = Executor(plan_of(text, tmp_path, layers=2), RowsBackend(), {}, seed=0, hidden_size=4,
                        dtype=torch.float32, device=CPU)
    executor.start_requests(torch.arange(1, requests + 1, dtype=torch.int64))
    return executor


def step(executor: Executor, slots: list[int], decode: list[bool], positions: list[int] | None = None,
         number: int | None = None) -> list[bool]:
    """One forward pass over these token rows (every state all ones); whether rule 0's first action
    took effect on each row."""
    phase = "decode" if all(decode) else "prefill" if not any(decode) else "mixed"
    rows = StepRows(slots=torch.tensor(slots), decode=torch.tensor(decode), valid=torch.ones(len(slots), dtype=torch.bool),
                    phase=phase, positions=None if positions is None else torch.tensor(positions), step=number)
    executor.begin_step(rows)
    for index in executor.hooked:
        hidden = torch.ones(len(slots), 4)
        executor.after_layer(index, hidden, hidden if executor.wants_input(index) else None)
    record = executor.end_step()
    effect = record.effects.get((0, 0))
    return [False] * len(slots) if effect is None else effect.tolist()


def test_rate_on_the_general_path_counts_earlier_decode_steps_as_lockstep_does(tmp_path) -> None:
    """`rate(C)` is (earlier steps where C held) / (earlier steps): 0 on decode step 1, then 1 from step
    2 on, whether the backend runs in lockstep (the step a number) or not (a step per request)."""
    for lockstep in (True, False):
        executor = executor_for('if rate(norm[1] > 0) >= 1 mark "m" at 1\n', tmp_path, 2)
        step(executor, [0, 0, 1, 1], [False] * 4, positions=[0, 1, 0, 1])
        acted = [step(executor, [0, 1], [True, True], number=n if lockstep else None) for n in (1, 2, 3)]
        assert acted == [[False, False], [True, True], [True, True]], lockstep


def test_a_streak_counts_decode_rows_in_steps_that_also_hold_prompt_rows(tmp_path) -> None:
    """A continuous-batching step mixes request 0's generated token with request 1's prompt chunk: the
    streak of request 0 still counts its decode steps (1, 2, ...) and its rule fires on step 2."""
    executor = executor_for('if streak(norm[1] > 0) >= 2 mark "m" at 1\n', tmp_path, 2)
    step(executor, [0, 0, 0], [False] * 3, positions=[0, 1, 2])
    assert step(executor, [0, 1, 1], [True, False, False], positions=[0, 0, 1]) == [False, False, False]
    assert step(executor, [0, 1], [True, False], positions=[0, 2]) == [True, False]


# ---- results ---------------------------------------------------------------------------------------

def test_scores_print_without_their_step_records_and_request_ids() -> None:
    """A `Scores` result prints its log-probabilities, greedy flags, report and plan, not the step records
    and request uids it keeps for traces (every step's norms: large, and internal)."""
    from l2lang.backends.hf.backend import HFBackend
    from l2lang.backends.hf.models import LoadedModel
    from l2lang.engine.strategy import Strategy

    backend = HFBackend(LoadedModel(model(), TOKENIZER, "tiny-llama", "none"))
    scores = backend.score(Strategy(l2lang.load_program("baseline")), [[2, 40, 41], [2, 50]])
    text = repr(scores)
    assert text.startswith("Scores(logprobs=") and "records=" not in text and "uids=" not in text
