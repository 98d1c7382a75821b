"""Each shipped method equals its plain-PyTorch reference (tests/reference/methods.py), step by step:
identical tokens, identical intervention counts, and final-layer states equal within tolerance."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from l2lang import load_program
from l2lang.engine.strategy import Strategy
from tests.reference import methods
from tests.tiny_models import tiny_model

LAYERS = 12  # the reference layer rule L-L/4..L-2 gives layers 9 and 10
CHOSEN = [9, 10]
PROMPT = [5, 17, 99, 42, 7]


def capture_last_layer(model, states: list[torch.Tensor]):
    return model.model.layers[LAYERS - 1].register_forward_hook(lambda m, a, out: states.append(out[0, -1].clone()))


def run_l2lang(model, name: str, params: dict, prompt: list[int], **kwargs):
    strategy = Strategy(load_program(name, {k: str(v) for k, v in params.items()}))
    states: list[torch.Tensor] = []
    seed = kwargs.pop("seed", 0)
    with strategy.attach(model, seed=seed) as run:
        handle = capture_last_layer(model, states)
        try:
            torch.manual_seed(seed)
            out = model.generate(torch.tensor([prompt]), pad_token_id=0, **kwargs)
        finally:
            handle.remove()
    report = run.report()
    return out, {k: v for k, v in report.interventions.items() if v}, states, report


def run_reference(model, method, prompt: list[int], **kwargs):
    states: list[torch.Tensor] = []
    handle = capture_last_layer(model, states)
    try:
        out = method.run(prompt, **kwargs)
    finally:
        handle.remove()
    return out, method.counts, states


def assert_same(ours, reference) -> None:
    (tokens, counts, states), (ref_tokens, ref_counts, ref_states) = ours[:3], reference
    assert tokens.tolist() == ref_tokens.tolist()
    assert counts == ref_counts
    assert len(states) == len(ref_states)
    for a, b in zip(states, ref_states):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


CASES = {
    # epsilon 0.08: some candidate passes grow enough and are kept, others are rejected (asserted below)
    "alrr": ({"warmup": 5, "k": 0, "epsilon": 0.08, "blowup": 3}, dict(k=0, k_max=1, epsilon=0.08, blowup=3)),
    "alrr-demo": ({"warmup": 5, "k": 0, "epsilon": -0.5, "blowup": 7, "k_max": 3},
                  dict(k=0, k_max=3, epsilon=-0.5, blowup=7)),
    # streak 1: both ERSS readings steer (not only store) in these runs (asserted below)
    "erss": ({"warmup": 5, "k": 0, "streak_length": 1, "p": 0.5, "cool": 1, "min_cos": -1, "bank_size": 3},
             dict(k=0, streak_length=1, p=0.5, cooldown=1, min_cos=-1, bank_size=3, beta=0.5, update="mix")),
    "erss-figure": ({"warmup": 5, "k": 0, "streak_length": 1, "p": 0.5, "cool": 1, "min_cos": -1, "bank_size": 3},
                    dict(k=0, streak_length=1, p=0.5, cooldown=1, min_cos=-1, bank_size=3, beta=0.5, update="add")),
    "suppress-high": ({"warmup": 5, "k": 0, "factor": 0.5}, dict(k=0, factor=0.5)),
    "suppress-random": ({"warmup": 5, "k": 0, "factor": 0.5}, dict(k=0, factor=0.5, random=True)),
}
REFERENCE = {"alrr": methods.ALRR, "alrr-demo": methods.ALRR, "erss": methods.ERSS, "erss-figure": methods.ERSS,
             "suppress-high": methods.Suppress, "suppress-random": methods.Suppress}


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_method_equals_its_reference(family: str, name: str) -> None:
    model = tiny_model(family, LAYERS, seed=2)
    ours_params, reference_params = CASES[name]
    kwargs = dict(max_new_tokens=24, do_sample=False)
    ours = run_l2lang(model, name, ours_params, PROMPT, **kwargs)
    reference = run_reference(model, REFERENCE[name](model, CHOSEN, warmup=5, **reference_params), PROMPT, **kwargs)
    assert_same(ours, reference)
    assert ours[1], f"{name} never acted: the comparison would prove nothing"
    if name.startswith("erss"):
        assert any(label.startswith("steer") for label in ours[1]), "ERSS must steer, not only store"
    if name == "alrr":
        accepted = sum(v for k, v in ours[1].items() if k.startswith("recurse"))
        assert ours[3].extra_layer_passes > accepted > 0, "some passes must be kept and some rejected"


@settings(max_examples=8, deadline=None)
@given(prompt=st.lists(st.integers(3, 258), min_size=1, max_size=8), seed=st.integers(0, 2**20),
       name=st.sampled_from(["erss", "suppress-random", "alrr"]))
@example(prompt=[5, 9, 40, 7], seed=11, name="erss")
@example(prompt=[5, 9, 40, 7], seed=11, name="suppress-random")
@example(prompt=[5, 9, 40, 7], seed=11, name="alrr")
def test_methods_equal_their_references_with_seeded_sampling(prompt: list[int], seed: int, name: str) -> None:
    model = tiny_model("llama", LAYERS, seed=2)
    ours_params, reference_params = CASES[name]
    kwargs = dict(max_new_tokens=16, do_sample=True, top_k=30)
    ours = run_l2lang(model, name, ours_params, prompt, seed=seed, **kwargs)
    method = REFERENCE[name](model, CHOSEN, warmup=5, seed=seed, **reference_params)
    assert_same(ours, run_reference(model, method, prompt, **kwargs))


@pytest.mark.parametrize("metric,args", [("total", ""), ("area", "(T)"), ("events", "(T)"), ("late_area", "(T, 0.4)")])
@pytest.mark.parametrize("per_token", [False, True])
def test_lrs_scores_equal_the_reference_metrics(metric: str, args: str, per_token: bool, tmp_path) -> None:
    import l2lang
    from tests.tiny_models import tiny_tokenizer

    model = tiny_model("llama", LAYERS, seed=2)
    caught: dict[int, list[torch.Tensor]] = {layer: [] for layer in range(4, 12)}
    hooks = [model.model.layers[layer].register_forward_hook(
        lambda m, a, out, layer=layer: caught[layer].append(out[:, -1].float().norm(dim=-1))) for layer in caught]
    tau = 3.0
    text = f"param T = {tau}\nsample 3 with temperature=1.0\nselect argmax {metric}{args} over L/3..L-1"
    (tmp_path / "lrs.l2").write_text(text + (" per token\n" if per_token else "\n"))
    try:
        result = l2lang.generate(model, tiny_tokenizer(), Strategy(load_program(tmp_path / "lrs.l2")), ["hi"],
                                 max_new_tokens=8, min_new_tokens=8, seed=3)
    finally:
        for hook in hooks:
            hook.remove()
    (output,) = result.outputs
    for row, candidate in enumerate(output["candidates"]):
        steps = [[float(caught[layer][t][row]) for layer in caught] for t in range(1, len(caught[4]))]
        late = 0.4 if metric == "late_area" else 0.3
        expected = methods.lrs_scores(steps, tau, metric, late, per_token)
        assert candidate["score"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
