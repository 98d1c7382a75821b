"""Compiling programs into executor plans: layers, rounding, deferral, order, composition."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from l2lang import L2Error, compile_plan, load_program
from l2lang.plan import Plan, RecursePlan, SteerPlan
from l2lang.resources import shipped_strategies

CARD = Path(__file__).parents[1] / "examples" / "card.l2"


def program_from(tmp_path: Path, text: str, name: str = "s.l2", **overrides: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return load_program(path, overrides)


def test_card_at_28_layers_recurses_and_steers_in_the_same_step() -> None:
    plan = compile_plan(load_program(CARD), 28, 576)
    (rule,) = plan.rules
    assert rule.read_layer == 24
    recurse, steer = rule.actions
    assert isinstance(recurse, RecursePlan) and (recurse.first, recurse.layer, recurse.passes) == (20, 24, 2)
    assert isinstance(steer, SteerPlan) and steer.layer == 24 and steer.coefficient == pytest.approx(0.3)
    assert recurse.delay == steer.delay == 0
    assert plan.warnings == ()
    assert plan.vectors["v_reason"].layer == 24


def test_card_at_30_layers_defers_to_the_next_step_with_a_warning() -> None:
    plan = compile_plan(load_program(CARD), 30)
    (rule,) = plan.rules
    assert rule.read_layer == 26
    assert [a.delay for a in rule.actions] == [1, 1]
    assert len(plan.warnings) == 1 and "next decode step" in plan.warnings[0]


def test_card_needs_25_layers() -> None:
    with pytest.raises(L2Error, match="out of range"):
        compile_plan(load_program(CARD), 24)


def test_overrides_and_their_precedence(tmp_path: Path) -> None:
    assert compile_plan(load_program(CARD, {"τ": "0"}), 28).params["tau"] == 0
    (tmp_path / "inner.l2").write_text("param k = 1\nif norm[3] > k mark \"m\"\n", encoding="utf-8")
    program = program_from(tmp_path, 'use "inner.l2" as a with k = 2\n')
    assert compile_plan(program, 8).params["a.k"] == 2
    program = program_from(tmp_path, 'use "inner.l2" as a with k = 2\n', **{"a.k": "3"})
    assert compile_plan(program, 8).rules[0].condition.operands[1].value == 3
    with pytest.raises(L2Error, match="no param `b.k`"):
        program_from(tmp_path, 'use "inner.l2" as a\n', **{"b.k": "3"})
    with pytest.raises(L2Error, match="it is not a number"):
        program_from(tmp_path, 'use "inner.l2" as a\n', **{"a.k": "many"})


def test_set_changes_the_fingerprint_and_reformatting_does_not(tmp_path: Path) -> None:
    a = program_from(tmp_path, "param t = 1\nif norm[2] > t mark \"x\"\n", "a.l2")
    b = program_from(tmp_path, "param   t=1  # same\n\nif norm[ 2 ]>t mark \"x\"\n", "b.l2")
    c = program_from(tmp_path, "param t = 1\nif norm[2] > t mark \"x\"\n", "c.l2", t="2")
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_used_files_keep_their_own_names(tmp_path: Path) -> None:
    (tmp_path / "inner.l2").write_text("param tau = 5\nif norm[3] > tau mark \"inner\"\n", encoding="utf-8")
    program = program_from(tmp_path, 'param tau = 1\nuse "inner.l2"\nif norm[2] > tau mark "outer"\n')
    plan = compile_plan(program, 8)
    assert [r.condition.operands[1].value for r in plan.rules] == [5, 1]  # use-site order, own names
    assert plan.params == {"tau": 1, "inner.tau": 5}


def test_layer_division_rounds_down() -> None:
    for layers, expected in [(28, 9), (29, 9), (30, 10), (8, 2)]:
        plan = compile_plan(load_program(shipped_strategies()["lrs"]), layers)
        assert plan.select.layers[0] == expected
        assert plan.select.layers[-1] == layers - 1


def test_rules_evaluate_before_they_act_and_act_in_file_order(tmp_path: Path) -> None:
    program = program_from(tmp_path, 'param t = 1\nif norm[5] > t mark "a" at 5\nif norm[3] > t mark "b" at 5\n'
                                     'if norm[5] < t suppress scale 0.5\n')
    plan = compile_plan(program, 8)
    steps = {s.layer: s for s in plan.schedule}
    assert steps[3].evaluate == (1,) and steps[3].act == ()
    assert steps[5].evaluate == (0, 2) and steps[5].act == ((0, 0), (1, 0), (2, 0))


def test_vectors_load_from_safetensors_with_checked_shape(tmp_path: Path) -> None:
    save_file({"reason": torch.ones(16), "other": torch.ones(16)}, str(tmp_path / "v.safetensors"))
    text = 'vector v = load("v.safetensors", "reason")\nif norm[1] > 1 steer 0.5*v\n'
    plan = compile_plan(program_from(tmp_path, text), 4, 16)
    assert plan.vectors["v"].key == "reason"
    with pytest.raises(L2Error, match="hidden size is 32"):
        compile_plan(program_from(tmp_path, text), 4, 32)
    with pytest.raises(L2Error, match="holds 2 tensors"):
        compile_plan(program_from(tmp_path, text.replace(', "reason"', "")), 4, 16)
    (tmp_path / "bad.safetensors").write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(L2Error, match="not a valid safetensors file"):
        compile_plan(program_from(tmp_path, text.replace("v.safetensors", "bad.safetensors")), 4, 16)


def test_calibrated_thresholds_resolve_from_a_profile(tmp_path: Path) -> None:
    layers = {str(i): {"p50": i, "p75": 10 + i, "p90": 20 + i, "p95": 30 + i, "p99": 40 + i} for i in range(4)}
    (tmp_path / "p.json").write_text(json.dumps({"layers": layers}), encoding="utf-8")
    text = 'threshold tau = calibrated("p.json", q=0.9)\nif norm[2] > tau mark "x"\n'
    plan = compile_plan(program_from(tmp_path, text), 4)
    assert plan.rules[0].condition.operands[1].value == 22
    with pytest.raises(L2Error, match="recorded on a model with 4 layers; this one has 5"):
        compile_plan(program_from(tmp_path, text), 5)
    with pytest.raises(L2Error, match="q=0.8 is not one of them"):
        compile_plan(program_from(tmp_path, text.replace("0.9", "0.8")), 4)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(shipped_strategies())), st.integers(min_value=8, max_value=96))
def test_every_shipped_strategy_compiles_for_any_depth_and_its_plan_is_json(name: str, layers: int) -> None:
    plan = compile_plan(load_program(name), layers)
    assert Plan.model_validate_json(plan.to_json()) == plan
    for rule in plan.rules:
        for action in rule.actions:
            assert 0 <= action.layer < layers


def test_the_calibrated_example_resolves_from_its_shipped_profile() -> None:
    example = Path(__file__).parents[1] / "examples" / "alrr-calibrated.l2"
    profile = json.loads((example.parent / "profiles" / "qwen2.5-coder-0.5b.json").read_text())
    plan = compile_plan(load_program(example), 24, 896, profile["weights_sha256"])
    assert plan.thresholds["tau"].values[20] == pytest.approx(profile["layers"]["20"]["p90"])
    assert [r.read_layer for r in plan.rules] == [18, 19, 20, 21, 22]
    with pytest.raises(L2Error, match="recorded on other weights"):
        compile_plan(load_program(example), 24, 896, "0" * 64)
    with pytest.raises(L2Error, match="24 layers; this one has 28"):
        compile_plan(load_program(example), 28)


@pytest.mark.parametrize("text, message", [
    ("vector v = contrast([\"a\"], [\"b\"]) at 3\nparam c = 2\nif norm[3] > 1 steer mix c*v\n", "here c = 2"),
    ("vector v = contrast([\"a\"], [\"b\"]) at 3\nparam c = 0.6\nif norm[3] > 1 steer mix (c+c)*v\n", "c = 1.2"),
    ("if chance(-0.5) mark \"x\" at 3\n", "a chance must be in [0, 1], not -0.5"),
    ("param p = 3\nif chance(p/2) mark \"x\" at 3\n", "not 1.5"),
    ("param n = 1\nif norm[3] > 1 suppress clamp 0 - n\n", "n must be >= 0, not -1"),
    ("sample 2 with temperature=1, top_k=2*1e18\nselect argmax total over 3\n", "top_k must be a whole number"),
    ("threshold t = adaptive(warmup=1e12)\nif norm[3] > t mark \"x\"\n", "adaptive warmup must be"),
])
def test_ranges_hold_after_constant_folding(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(L2Error, match=message.replace("[", r"\[").replace("(", r"\(")):
        compile_plan(program_from(tmp_path, text), 8)


@pytest.mark.parametrize("text, message", [
    ("vector v = contrast([\"a\"], [\"b\"]) at 3\nthreshold w = table {2: 0.5, 3: 1.5}\n"
     "if norm[2] > 1 steer mix w*v at 2..3\n", "at layer 3 c = w = 1.5"),
    ("threshold t = 4\nif chance(t/2) mark \"x\" at 3\n", "`t/2` is 2 (t)"),
    ("threshold t = table {3: 4}\nif norm[3] > 1 suppress clamp 0 - t\n", "n = 0-t = -4"),
])
def test_values_known_only_for_a_model_are_range_checked_when_compiled_for_it(tmp_path: Path, text: str,
                                                                            message: str) -> None:
    program = program_from(tmp_path, text)
    from l2lang import check_program

    check_program(program)  # nothing to fold without the model's layers
    with pytest.raises(L2Error, match=message.replace("(", r"\(").replace(")", r"\)")):
        compile_plan(program, 8)


def test_hidden_sizes_outside_1_to_the_limit_are_refused_at_compile() -> None:
    from l2lang.lang.limits import MAX_HIDDEN_SIZE

    program = load_program("baseline")
    for hidden in (1, MAX_HIDDEN_SIZE):
        assert compile_plan(program, 4, hidden).layers == 4
    for hidden in (0, -5, MAX_HIDDEN_SIZE + 1):
        with pytest.raises(L2Error, match=f"hidden size is from 1 to {MAX_HIDDEN_SIZE}, not {hidden}"):
            compile_plan(program, 4, hidden)
