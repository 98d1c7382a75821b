"""Run-time semantics on tiny real models of every supported family (docs/semantics.md)."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from l2lang import L2Error, load_program
from l2lang.engine.strategy import Strategy
from tests.tiny_models import FAMILIES, tiny_model, tiny_tokenizer

CARD = Path(__file__).parents[1] / "examples" / "card.l2"
TOKENIZER = tiny_tokenizer()


@functools.cache
def model(family: str, layers: int = 28):
    return tiny_model(family, layers)


def strategy(text_or_name: str, tmp: Path | None = None, **params) -> Strategy:
    if tmp is not None:
        path = tmp / "s.l2"
        path.write_text(text_or_name, encoding="utf-8")
        text_or_name = str(path)
    return Strategy(load_program(text_or_name, {k: str(v) for k, v in params.items()}))


def batch(prompts: list[list[int]]) -> dict:
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return {"input_ids": ids, "attention_mask": mask}


def generate(m, inputs: dict, s: Strategy | None = None, seed: int = 0, **kwargs):
    kwargs = {"max_new_tokens": 10, "do_sample": False, "pad_token_id": 0, **kwargs}
    torch.manual_seed(seed)
    if s is None:
        return m.generate(**inputs, **kwargs), None
    with s.attach(m, TOKENIZER, seed=seed) as run:
        out = m.generate(**inputs, **kwargs)
    return out, run.report()


PROMPTS = st.lists(st.lists(st.integers(3, 258), min_size=1, max_size=9), min_size=1, max_size=3)


@settings(max_examples=12, deadline=None)
@given(st.sampled_from(FAMILIES), PROMPTS, st.integers(0, 2**16), st.booleans())
@example("llama", [[5, 9, 40], [7]], 0, True)
@example("qwen2", [[100, 3, 250, 17, 60, 4, 4, 9, 11]], 1, False)
def test_a_strategy_that_never_fires_reproduces_plain_generate(family, prompts, seed, sample) -> None:
    m, inputs = model(family), batch(prompts)
    kwargs = {"do_sample": True, "top_k": 20} if sample else {}
    plain, _ = generate(m, inputs, seed=seed, **kwargs)
    never, report = generate(m, inputs, strategy(str(CARD), tau=0), seed=seed, **kwargs)
    assert torch.equal(plain, never)
    assert report.total() == 0


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name,params", [
    (str(CARD), {"tau": 1e9}),
    ("erss", {"warmup": 5, "streak_length": 2, "p": 1, "cool": 0}),
    ("suppress-random", {"warmup": 5}),
])
def test_batched_with_left_padding_equals_one_request_at_a_time(family, name, params) -> None:
    m, s = model(family), strategy(name, **params)
    prompts = [[5, 9, 40], [7, 7, 7, 7, 7, 7, 8], [100, 3, 250, 17, 60]]
    inputs = batch(prompts)
    together, report = generate(m, inputs, s)
    width = inputs["input_ids"].shape[1]
    for row, prompt in enumerate(prompts):
        alone, _ = generate(m, batch([prompt]), s)
        assert torch.equal(together[row, width:], alone[0, len(prompt):]), (family, name, row)
    if name == str(CARD):
        assert report.total() > 0


@settings(max_examples=6, deadline=None)
@given(PROMPTS, st.integers(0, 2**16))
@example([[5], [7, 7, 7, 7, 8, 9, 10, 11, 12], [40, 41]], 3)
def test_batched_equals_one_at_a_time_for_generated_prompts(prompts, seed) -> None:
    m = model("llama")
    s = strategy("erss", warmup=5, streak_length=1, p=0.5, cool=1)
    together, _ = generate(m, batch(prompts), s, seed=seed)
    width = together.shape[1] - 10
    for row, prompt in enumerate(prompts):
        alone, _ = generate(m, batch([prompt]), s, seed=seed)
        assert torch.equal(together[row, width:], alone[0, len(prompt):])


def test_firing_on_every_decode_step_counts_one_intervention_per_step_and_row() -> None:
    m = model("llama")
    out, report = generate(m, batch([[5, 6, 7], [9, 9]]), strategy(str(CARD), tau=1e9), max_new_tokens=12)
    decode_steps = 11  # the first new token comes from the prefill pass
    assert report.interventions == {"recurse@24": 2 * decode_steps, "steer@24": 2 * decode_steps}
    assert all(len(r["interventions"]) == 2 * decode_steps for r in report.requests)


def test_recursion_never_exceeds_its_bound_and_zero_is_a_no_op(tmp_path: Path) -> None:
    m = model("qwen2", 8)
    inputs = batch([[5, 6, 7]])
    plain, _ = generate(m, inputs)
    text = 'if norm[3] > 0 recurse layers 2..3 up to 3 times while norm > 0\n'
    out, report = generate(m, inputs, strategy(text, tmp_path))
    assert report.extra_layer_passes == 9 * 3 * 2  # 9 decode steps, 3 passes, 2 layers: the bound exactly
    assert report.requests[0]["extra_layer_passes"] == 9 * 3 * 2
    assert report.interventions == {"recurse@3": 9}
    bounded = 'if norm[3] > 0 recurse layers 2..3 up to 3 times while growth > 1e9\n'
    out, report = generate(m, inputs, strategy(bounded, tmp_path))
    assert report.extra_layer_passes == 9 * 2 and report.total() == 0 and torch.equal(out, plain)
    for no_op in ('if norm[3] > 0 recurse layer 3 0 times\n', 'if norm[3] > 0 suppress scale 1 at 3\n',
                  'bank b keep 4\nif norm[3] > 0 store in b\n'):
        out, _ = generate(m, inputs, strategy(no_op, tmp_path))
        assert torch.equal(out, plain), no_op


def test_steering_with_zero_strength_is_a_no_op_and_nonzero_changes_tokens(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    m = model("llama", 8)
    torch.manual_seed(3)
    save_file({"v": torch.randn(64) * 50}, str(tmp_path / "v.safetensors"))
    inputs = batch([[5, 6, 7]])
    plain, _ = generate(m, inputs)
    zero, _ = generate(m, inputs, strategy('vector v = load("v.safetensors")\nif norm[4] > 0 steer 0*v\n', tmp_path))
    strong, report = generate(m, inputs, strategy('vector v = load("v.safetensors")\nif norm[4] > 0 steer 1*v\n',
                                                  tmp_path))
    assert torch.equal(zero, plain)
    assert not torch.equal(strong, plain) and report.interventions == {"steer@4": 9}


def test_the_same_seed_reproduces_sampling_and_chance() -> None:
    m, inputs = model("gemma3"), batch([[5, 6, 7], [8, 9]])
    s = strategy("erss", warmup=5, streak_length=1, p=0.5, cool=0)
    first, r1 = generate(m, inputs, s, seed=7, do_sample=True, top_k=20)
    again, r2 = generate(m, inputs, s, seed=7, do_sample=True, top_k=20)
    assert torch.equal(first, again) and r1.interventions == r2.interventions


def test_detaching_restores_the_model_exactly() -> None:
    m = model("phi3")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    inputs = batch([[5, 6, 7]])
    plain, _ = generate(m, inputs)
    generate(m, inputs, strategy(str(CARD), tau=1e9))
    assert all(not layer._forward_hooks for layer in m.model.layers) and not m._forward_pre_hooks
    assert all("forward" not in layer.__dict__ for layer in m.model.layers) and "generate" not in m.__dict__
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert torch.equal(generate(m, inputs)[0], plain)


def test_another_tools_forward_wrapper_stays_inside_and_its_hooks_see_the_acted_on_state(tmp_path: Path) -> None:
    """l2lang wraps a layer's `forward` as it finds it (another tool's wrapper included, put back on exit);
    a forward hook on that layer sees the state after l2lang's action, also when later layers are read."""
    m, inputs = model("llama", 8), batch([[5, 6, 7]])
    layer = m.model.layers[3]
    calls, seen = [], []
    own = layer.forward

    def theirs(*args, **kwargs):
        calls.append(1)
        return own(*args, **kwargs)

    layer.forward = theirs
    handle = layer.register_forward_hook(lambda module, args, out: seen.append(out[0, -1].norm().item()))
    try:
        generate(m, inputs, strategy('if norm[3] > 0 suppress clamp 1e-3\nif norm[5] > 0 mark "x"\n', tmp_path))
    finally:
        handle.remove()
    assert layer.__dict__["forward"] is theirs and calls and max(seen[1:]) <= 1e-3 * (1 + 1e-5)  # (decode steps)
    del layer.forward


def test_kv_modes_both_run_and_refresh_writes_only_the_current_position(tmp_path: Path) -> None:
    m, inputs = model("llama", 8), batch([[5, 6, 7], [8, 9, 10]])
    frozen, rf = generate(m, inputs, strategy('if norm[3] > 0 recurse layers 2..3 twice kv frozen\n', tmp_path))
    refresh, rr = generate(m, inputs, strategy('if norm[3] > 0 recurse layers 2..3 twice kv refresh\n', tmp_path))
    assert rf.interventions == rr.interventions == {"recurse@3": 18}
    assert not torch.equal(frozen, refresh)


def test_nonfinite_states_leave_the_row_unmodified_and_warn_once(tmp_path: Path) -> None:
    m = model("llama", 8)
    inputs = batch([[5, 6, 7], [8, 9, 10]])

    def poison(module, args, output):
        output = output.clone()
        output[0] = float("nan")
        return output

    handle = m.model.layers[2].register_forward_hook(poison)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _, report = generate(m, inputs, strategy('if norm[3] > 0 suppress scale 0.5\n', tmp_path))
    finally:
        handle.remove()
    assert report.interventions == {"suppress@3": 9}  # row 1 only
    assert report.nonfinite_states > 0
    assert sum("NaN or inf" in str(w.message) for w in caught) == 1


def test_bad_inputs_get_clean_errors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"v": torch.ones(32)}, str(tmp_path / "v.safetensors"))
    m = model("llama", 8)
    with pytest.raises(L2Error, match="hidden size is 64"):
        strategy('vector v = load("v.safetensors")\nif norm[3] > 0 steer 1*v\n', tmp_path).attach(m)
    with pytest.raises(L2Error, match="out of range: the model has 8 layers"):
        strategy(str(CARD)).attach(m)
    with pytest.raises(L2Error, match="use_cache=True"):
        generate(m, batch([[5, 6]]), strategy('if norm[3] > 0 mark "x"\n', tmp_path), use_cache=False)


def test_top_level_load_and_generate_equal_plain_generation_for_the_baseline() -> None:
    import l2lang
    from l2lang.backends.hf.generate import encode

    m = model("qwen3", 8)
    prompts = ["hi", "hello there"]
    result = l2lang.generate(m, TOKENIZER, l2lang.load("baseline"), prompts, max_new_tokens=5)
    inputs = encode(TOKENIZER, prompts, None)
    plain = m.generate(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=0)
    width = inputs["input_ids"].shape[1]
    for row, output in enumerate(result.outputs):
        assert output["token_ids"] == plain[row, width:].tolist()[: len(output["token_ids"])]
    assert result.plan.observe == tuple(range(8)) and result.report.total() == 0


def test_select_scores_candidates_by_their_decode_step_norms(tmp_path: Path) -> None:
    import l2lang

    m = model("llama", 8)
    caught: dict[int, list[torch.Tensor]] = {layer: [] for layer in range(2, 6)}
    hooks = [m.model.layers[layer].register_forward_hook(
        lambda module, args, out, layer=layer: caught[layer].append(out[:, -1].float().norm(dim=-1)))
        for layer in caught]
    try:
        s = strategy("sample 3 with temperature=1.0\nselect argmax total over 2..5\n", tmp_path)
        result = l2lang.generate(m, TOKENIZER, s, ["hello"], max_new_tokens=6, min_new_tokens=6, seed=1)
    finally:
        for hook in hooks:
            hook.remove()
    (output,) = result.outputs
    scores = [c["score"] for c in output["candidates"]]
    expected = sum(torch.stack(caught[layer][1:]).sum(dim=0) for layer in caught)  # decode steps only
    assert scores == pytest.approx(expected.tolist(), rel=1e-5)
    assert output["chosen"] == scores.index(max(scores))
    assert output["text"] == output["candidates"][output["chosen"]]["text"]


def test_vote_returns_the_answer_with_the_highest_summed_score(tmp_path: Path) -> None:
    import l2lang
    from l2lang.engine.answers import extract_answer, normalise

    assert extract_answer("so 3 + 4\nAnswer: 7.") == "7" and extract_answer("it is 12, or 15") == "15"
    m = model("llama", 8)
    s = strategy("sample 6 with temperature=1.5\nselect vote total over 2..5 per token\n", tmp_path)
    result = l2lang.generate(m, TOKENIZER, s, ["hello", "abc"], max_new_tokens=6, seed=2)
    for output in result.outputs:
        totals: dict[str, float] = {}
        for candidate in output["candidates"]:
            answer = normalise(extract_answer(candidate["text"]))
            totals[answer] = totals.get(answer, 0.0) + candidate["score"]
        assert normalise(extract_answer(output["text"])) == max(totals, key=totals.__getitem__)


def test_vote_count_is_a_plain_majority_vote_over_the_same_samples(tmp_path: Path) -> None:
    import l2lang
    from l2lang.engine.answers import extract_answer, normalise

    m = model("llama", 8)
    weighted = l2lang.generate(m, TOKENIZER, strategy("sample 6 with temperature=1.5\nselect vote total over 2..5\n",
                                                      tmp_path), ["hello", "abc"], max_new_tokens=6, seed=2)
    s = strategy("sample 6 with temperature=1.5\nselect vote count over L-1\n", tmp_path)
    result = l2lang.generate(m, TOKENIZER, s, ["hello", "abc"], max_new_tokens=6, seed=2)
    for output, other in zip(result.outputs, weighted.outputs):
        answers = [normalise(extract_answer(c["text"])) for c in output["candidates"]]
        assert [c["text"] for c in output["candidates"]] == [c["text"] for c in other["candidates"]]
        assert all(c["score"] == 1.0 for c in output["candidates"])
        counts = {a: answers.count(a) for a in answers}  # insertion order: ties go to the first sampled
        assert normalise(extract_answer(output["text"])) == max(counts, key=counts.__getitem__)


def test_the_terminal_progress_bar_leaves_generation_unchanged(monkeypatch) -> None:
    import l2lang
    from l2lang.backends.hf import generate as hf_generate

    m = model("llama", 8)
    quiet = l2lang.generate(m, TOKENIZER, l2lang.load("baseline"), ["hello"], max_new_tokens=5)
    monkeypatch.setattr(hf_generate, "_on_terminal", lambda: True)
    shown = l2lang.generate(m, TOKENIZER, l2lang.load("baseline"), ["hello"], max_new_tokens=5)
    assert shown.outputs == quiet.outputs
