"""Deciding a decode step's layers after they ran (on a CPU, Hugging Face backend: `Executor._settle`) gives
exactly what deciding each layer as it runs gives. The speculative run keeps the first pass of every layer
until an action changes a state, then runs the later layers again over the KV cache the first pass wrote
(`_rerun`); tokens, interventions, layer passes and every layer's norm at every step must be bit for bit
those of the run that decides in place — for every model family (their caches and attention differ) and
for random strategies that act often, with a padded batch whose rows fire on different steps and layers.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import l2lang
from l2lang.backends.hf import attach
from l2lang.engine.executor import Executor
from l2lang.engine.strategy import Strategy
from l2lang.errors import L2Error
from tests.golden.cases import PROMPTS, TEXTS, cases
from tests.tiny_models import FAMILIES, tiny_model, tiny_tokenizer

CASES = {name: (target, params) for name, target, params in cases() if name in ("every-construct", "alrr", "erss")}


def generate(strategy: Strategy, model, speculate: bool, monkeypatch, **kwargs):
    """`l2lang.generate` with or without speculation, and the layers after which later layers ran again."""
    reruns: list[int] = []
    rerun = Executor._rerun
    with monkeypatch.context() as patch:
        patch.setattr(attach.Run, "capabilities", dataclasses.replace(attach.CAPABILITIES, reruns_layers=speculate))
        patch.setattr(Executor, "_rerun", lambda self, changed, state: reruns.append(changed) or
                      rerun(self, changed, state))
        result = l2lang.generate(model, tiny_tokenizer(), strategy, PROMPTS, chat=False, observe_all=True, **kwargs)
    return result, reruns


def assert_same(settled, in_place) -> None:
    assert [o["token_ids"] for o in settled.outputs] == [o["token_ids"] for o in in_place.outputs]
    assert settled.report.requests == in_place.report.requests
    for mine, other in zip(settled.rows, in_place.rows, strict=True):
        assert mine.phases == other.phases and mine.steps == other.steps
        assert torch.equal(mine.norms.nan_to_num(-1.0), other.norms.nan_to_num(-1.0))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_deciding_after_the_step_equals_deciding_in_place(name: str, family: str, tmp_path, monkeypatch) -> None:
    target, params = CASES[name]
    if target is None:
        (tmp_path / f"{name}.l2").write_text(TEXTS[name], encoding="utf-8")
        target = str(tmp_path / f"{name}.l2")
    strategy, model = l2lang.load(target, **params), tiny_model(family, 28)
    (settled, reruns), (in_place, none) = (generate(strategy, model, speculate, monkeypatch, seed=7,
                                                    max_new_tokens=12) for speculate in (True, False))
    assert reruns and not none, "the comparison needs steps whose later layers ran again"
    assert settled.report.total() > 0
    assert_same(settled, in_place)


# Random strategies that act often: adaptive thresholds at the third quartile, rules at random layers of
# the window, every kind of action, cooldowns, streaks, coins, rates, actions at later layers and delayed ones.
LAYER = st.integers(min_value=8, max_value=26)
CONDITIONS = st.sampled_from(["norm[{l}] > tau", "norm[{l}] < tau", "growth[{l}] > 0", "streak(norm[{l}] < tau) >= 2",
                              "norm[{l}] > tau and chance(0.5)", "rate(norm[{l}] > tau) > 0.3", "cos[{l}] > 0"])
ACTIONS = st.sampled_from(["steer 0.5*v", "steer mix 0.3*v", "suppress scale 0.8", "suppress clamp 3",
                           "recurse layer {l} up to 2 times while growth > -0.5",
                           "recurse layers {k}..{l} twice kv refresh", "recurse layer {l} once kv refresh damping 0.5",
                           "store in high", "steer mix 0.3*retrieve(high, min_cos=-1)", 'mark "m"'])
RULES = st.builds(lambda condition, action, layer, other, cooldown, where:
                  f"if {condition} {cooldown}{action}{where}".format(l=layer, k=layer - 1, o=other),
                  CONDITIONS, ACTIONS, LAYER, LAYER, st.sampled_from(["", "cooldown 2 "]),
                  st.sampled_from(["", " at {o}"]))
HEADER = ('threshold tau = adaptive(k=0, warmup=5)\nbank high keep 4\n'
          'vector v = contrast(["Let us think step by step."], ["The answer is"]) at 10\n')


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(rules=st.lists(RULES, min_size=1, max_size=4))
def test_deciding_after_the_step_equals_deciding_in_place_for_random_strategies(rules: list[str], tmp_path_factory,
                                                                                   monkeypatch) -> None:
    path = tmp_path_factory.mktemp("random") / "s.l2"
    path.write_text(HEADER + "\n".join(rules) + "\n", encoding="utf-8")
    try:
        strategy = l2lang.load(str(path))
        strategy.plan_for_shape(28, 64)
    except L2Error:  # (e.g. an action at an earlier layer in a rule that may not defer)
        assume(False)
    model = tiny_model("llama", 28)
    (settled, reruns), (in_place, _) = (generate(strategy, model, speculate, monkeypatch, seed=3, max_new_tokens=12)
                                        for speculate in (True, False))
    event("layers ran again" if reruns else "no layer ran again")
    assert_same(settled, in_place)


@pytest.mark.parametrize("capture", ["output_hidden_states", "output_attentions"])
def test_hidden_states_and_attentions_that_generate_returns_are_those_of_deciding_in_place(capture: str,
                                                                                          monkeypatch) -> None:
    """What `generate` captures from the layers as they run (`output_hidden_states`, `output_attentions`:
    transformers' own hooks) shows each layer's state after l2lang's action, as on a GPU."""
    model, tokenizer = tiny_model("llama", 28), tiny_tokenizer()
    model.set_attn_implementation("eager")  # (sdpa returns no attention weights)
    strategy = l2lang.load("alrr", **CASES["alrr"][1])
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    captured = []
    for speculate in (True, False):
        with monkeypatch.context() as patch:
            patch.setattr(attach.Run, "capabilities", dataclasses.replace(attach.CAPABILITIES, reruns_layers=speculate))
            with strategy.attach(model, tokenizer, seed=7) as run:
                out = model.generate(**batch, max_new_tokens=12, do_sample=False, return_dict_in_generate=True,
                                     **{capture: True})
        assert run.report().total() > 0
        captured.append(out.hidden_states if capture == "output_hidden_states" else out.attentions)
    for settled, in_place in zip(*captured, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(settled, in_place, strict=True))
