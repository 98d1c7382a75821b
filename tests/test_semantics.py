"""Sentences of docs/semantics.md, each checked where it acts (issue: make the tests bite).

Every test here runs a small strategy on a tiny random model with a condition that holds on every
step (`norm[...] > 0`), so *when* an action takes effect is decided by the construct under test alone.
"""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import l2lang
from l2lang.engine.state import Bank
from l2lang.errors import GenerationError
from tests.tiny_models import tiny_model, tiny_tokenizer

TOKENIZER = tiny_tokenizer()


@functools.cache
def model(layers: int = 8):
    return tiny_model("llama", layers)


def run(text: str, tmp_path, prompts=("hello there",), tokens: int = 11, **kwargs):
    """Generate exactly `tokens` tokens (unless `min_new_tokens` says otherwise) with the strategy `text`."""
    path = tmp_path / "s.l2"
    path.write_text(text, encoding="utf-8")
    kwargs = {"min_new_tokens": tokens, **kwargs}
    return l2lang.generate(model(), TOKENIZER, l2lang.load(str(path)), list(prompts), max_new_tokens=tokens,
                           chat=False, **kwargs)


def steps_acted(result, request: int = 0, action: str = "mark") -> list[int]:
    return [e["step"] for e in result.report.requests[request]["interventions"] if e["action"] == action]


# ---- §3: cooldown and streaks restart from the decision that fired -----------------------------

def test_cooldown_spaces_same_step_rules_by_c_plus_one(tmp_path) -> None:
    result = run('if norm[6] > 0 cooldown 2 mark "m" at 6\n', tmp_path)
    assert steps_acted(result) == [1, 4, 7, 10]


def test_a_deferred_rule_cools_down_like_a_same_step_rule_one_step_later(tmp_path) -> None:
    result = run('if norm[6] > 0 cooldown 2 mark "m" at 2\n', tmp_path)
    assert steps_acted(result) == [2, 5, 8]


def test_firing_resets_the_streak_at_once_for_same_step_and_deferred_rules(tmp_path) -> None:
    same = run('if streak(norm[6] > 0) >= 2 mark "m" at 6\n', tmp_path)
    assert steps_acted(same) == [2, 4, 6, 8, 10]
    deferred = run('if streak(norm[6] > 0) >= 2 mark "m" at 2\n', tmp_path)
    assert steps_acted(deferred) == [3, 5, 7, 9]


def test_rate_counts_only_earlier_steps(tmp_path) -> None:
    """rate = 0 on the first decode step, then 1: `chance(rate(...))` cannot fire on step 1."""
    result = run('if chance(rate(norm[6] > 0)) mark "m" at 6\n', tmp_path)
    assert steps_acted(result) == list(range(2, 11))


# ---- §3: counts per rule, action and layer -------------------------------------------------------

def test_two_rules_acting_at_one_layer_are_counted_apart(tmp_path) -> None:
    result = run('if norm[6] > 0 suppress scale 0.99 at 6\nif norm[6] > 1e9 suppress scale 0.9 at 6\n', tmp_path)
    assert result.report.interventions == {"suppress@6 [rule 0.0]": 10, "suppress@6 [rule 1.0]": 0}


# ---- §4: no-op actions take no effect -----------------------------------------------------------

@pytest.mark.parametrize("rule", [
    "if norm[6] > 0 cooldown 3 steer 0*v at 6", "if norm[6] > 0 cooldown 3 steer mix 0*v at 6",
    "if norm[6] > 0 cooldown 3 suppress scale 1 at 6", "if norm[6] > 0 cooldown 3 recurse layer 6 0 times",
    "if norm[6] > 0 cooldown 3 suppress clamp 1e6 at 6",
])
def test_no_op_actions_take_no_effect(rule: str, tmp_path) -> None:
    result = run(f'vector v = contrast(["a"], ["b"]) at 6\n{rule}\n', tmp_path)
    assert result.report.total() == 0
    assert result.outputs[0]["token_ids"] == run("observe 6\n", tmp_path).outputs[0]["token_ids"]


# ---- for-expansion order --------------------------------------------------------------------------

def test_for_rules_expand_in_ascending_layer_order_whatever_the_written_order(tmp_path) -> None:
    def plan(layers: str):
        path = tmp_path / "s.l2"
        path.write_text(f"for l in {layers}: if chance(0.5) and norm[l] > 0 suppress scale 0.5\n", encoding="utf-8")
        return l2lang.compile_plan(l2lang.load_program(str(path)), 8)

    written, ascending = plan("[6, 2, 4]"), plan("[2, 4, 6]")
    assert [r.read_layer for r in written.rules] == [2, 4, 6]
    assert written.rules == ascending.rules


# ---- prefill: every prompt position offers, retrieves and draws on its own -----------------------

def test_prefill_store_offers_every_prompt_position(tmp_path) -> None:
    prompt = "abcdefghij"
    result = run('bank b keep 64\nif norm[3] > 0 during prefill store in b\n', tmp_path, prompts=[prompt],
                 tokens=2)
    assert result.report.interventions == {"store@3": len(prompt)}


def test_prefill_chance_draws_per_position(tmp_path) -> None:
    prompt = "the quick brown fox jumps"
    result = run('if chance(0.5) during prefill mark "c" at 2\n', tmp_path, prompts=[prompt], tokens=2)
    assert 0 < result.report.interventions["mark@2"] < len(prompt)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from([0.5, 1.0, 2.0, 3.0]), st.booleans()), min_size=1,
                max_size=12), st.integers(1, 4))
@example(rows=[(0, 1.0, True), (0, 1.0, True), (0, 1.0, True)], capacity=2)  # ties: the earlier stays
def test_offering_many_rows_at_once_equals_offering_them_one_by_one(rows, capacity: int) -> None:
    slots = torch.tensor([s for s, _, _ in rows])
    norms = torch.tensor([n for _, n, _ in rows])
    mask = torch.tensor([m for _, _, m in rows])
    states = torch.arange(len(rows), dtype=torch.float32)[:, None].repeat(1, 2)  # tells rows apart
    together = Bank(4, capacity, 2, torch.float32, torch.device("cpu"))
    together.offer_many(torch.where(mask, slots, 3), states, norms, mask)
    alone = Bank(4, capacity, 2, torch.float32, torch.device("cpu"))
    for i in range(len(rows)):
        alone.offer(torch.tensor([slots[i]]), states[i:i + 1], norms[i:i + 1], mask[i:i + 1])
    for slot in range(3):
        kept = sorted(zip(together.norms[slot].tolist(), together.states[slot, :, 0].tolist()))
        expected = sorted(zip(alone.norms[slot].tolist(), alone.states[slot, :, 0].tolist()))
        assert [k for k in kept if k[0] > float("-inf")] == [e for e in expected if e[0] > float("-inf")]


# ---- §6: a request finishes at generate's own end-of-sequence ids --------------------------------

def test_eos_given_to_generate_ends_a_request_and_its_interventions(tmp_path) -> None:
    prompts = ["The quick brown fox", "hello there"]
    plain = run("observe 6\n", tmp_path, prompts=prompts, tokens=10)
    first, second = (o["token_ids"] for o in plain.outputs)
    stop = next(i for i in range(2, 6) if first[i] not in second and first[i] not in first[:i])
    result = run('if norm[6] > 0 mark "m" at 6\n', tmp_path, prompts=prompts, tokens=10, eos_token_id=first[stop],
                 min_new_tokens=0)  # the first request's token at `stop` ends it
    assert steps_acted(result, 0) == list(range(1, stop + 1))  # its EOS is the last token it feeds back
    assert steps_acted(result, 1) == list(range(1, 10))


def test_attach_refuses_beam_search() -> None:
    m = model()
    inputs = {"input_ids": torch.tensor([[5, 6, 7]])}
    with l2lang.load("baseline").attach(m, TOKENIZER):
        with pytest.raises(GenerationError, match="beam"):
            m.generate(**inputs, num_beams=2, max_new_tokens=2, pad_token_id=0)
    assert "generate" not in m.__dict__  # the wrapper went with the hooks


# ---- §7: `per token` divides by the decode steps ---------------------------------------------------

def test_per_token_scores_are_totals_over_decode_steps(tmp_path) -> None:
    text = "sample 3 with temperature=1.0\nselect argmax total over 5..7{}\n"
    total = run(text.format(""), tmp_path, tokens=6, seed=4)
    per_token = run(text.format(" per token"), tmp_path, tokens=6, seed=4)
    for a, b in zip(total.outputs[0]["candidates"], per_token.outputs[0]["candidates"]):
        assert b["score"] == pytest.approx(a["score"] / 5, rel=1e-6)  # 6 tokens, 5 fed back


# ---- §6: non-finite states a strategy creates are undone, counted and warned about -----------------

def test_an_action_that_overflows_the_state_is_undone_counted_and_warned(tmp_path) -> None:
    plain = run("observe 6\n", tmp_path, tokens=8, min_new_tokens=0)
    with pytest.warns(RuntimeWarning, match="NaN or inf"):
        result = run("if norm[3] > 0 suppress scale 1e300 at 3\n", tmp_path, tokens=8, min_new_tokens=0)
    assert result.report.nonfinite_states > 0 and result.report.total() == 0
    assert result.outputs[0]["token_ids"] == plain.outputs[0]["token_ids"]  # the step ran unmodified


def test_a_steering_coefficient_that_overflows_the_dtype_is_refused_before_the_run(tmp_path) -> None:
    with pytest.raises(GenerationError, match="overflows"):
        run('vector v = contrast(["a"], ["b"]) at 3\nif norm[3] > 0 steer 1e300*v\n', tmp_path, tokens=2)
