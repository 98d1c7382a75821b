"""KV-cached generation with the executor equals the cache-free reference interpreter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from l2lang import load_program
from l2lang.engine.strategy import Strategy
from tests.reference.cache_free import (
    reference_generate,
    reference_generate_positionwise,
)
from tests.tiny_models import tiny_model

FAMILIES = ["llama", "qwen2", "qwen3", "mistral"]
STRATEGIES = {
    "recurse": "if norm[3] > TAU recurse layers 2..3 twice while growth > -0.5\n",
    "recurse-damped": "if norm[3] < TAU recurse layer 3 up to 3 times while ratio < 1.5 damping 0.5\n",
    "steer-suppress": 'vector v = load("v.safetensors")\nif norm[2] < TAU steer 0.8*v; suppress scale 0.7\n',
    "bank": "bank b keep 3\nif norm[3] > TAU store in b\nif norm[3] <= TAU steer mix 0.5*retrieve(b, min_cos=-1)\n",
    "clamp": "if norm[4] > TAU suppress clamp TAU*0.9\n",
    "refresh": "if norm[3] > TAU recurse layers 2..3 twice while growth > -0.5 kv refresh\n",
    "refresh-single": "if norm[3] < TAU recurse layer 3 up to 3 times while ratio < 1.5 kv refresh damping 0.5\n",
}
LAYER_OF = {"recurse": 3, "recurse-damped": 3, "steer-suppress": 2, "bank": 3, "clamp": 4, "refresh": 3,
            "refresh-single": 3}


def median_norm(model, prompt: list[int], layer: int) -> float:
    """A threshold halfway between two observed norms, so no decision sits on a rounding boundary."""
    caught = []
    handle = model.model.layers[layer].register_forward_hook(lambda m, a, o: caught.append(o[0].float().norm(dim=-1)))
    try:
        model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, pad_token_id=0)
    finally:
        handle.remove()
    norms = torch.cat(caught).flatten().sort().values
    middle = len(norms) // 2
    return float(norms[middle - 1] + norms[middle]) / 2


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_cached_generation_equals_the_cache_free_reference(family: str, name: str, tmp_path: Path) -> None:
    check(family, name, [5, 17, 99, 42], tmp_path)


@pytest.mark.parametrize("name", ["recurse", "steer-suppress", "bank"])
def test_the_two_reference_interpreters_agree(name: str, tmp_path: Path) -> None:
    model = tiny_model("llama", 6, seed=1)
    torch.manual_seed(4)
    save_file({"v": torch.randn(64) * 3}, str(tmp_path / "v.safetensors"))
    tau = median_norm(model, [5, 17, 99, 42], LAYER_OF[name])
    (tmp_path / "s.l2").write_text(STRATEGIES[name].replace("TAU", repr(tau)), encoding="utf-8")
    with Strategy(load_program(tmp_path / "s.l2")).attach(model) as run:
        pass
    layerwise = reference_generate(model, run.plan, run.executor.vectors, [5, 17, 99, 42], 8)
    positionwise = reference_generate_positionwise(model, run.plan, run.executor.vectors, [5, 17, 99, 42], 8)
    assert layerwise == positionwise


@settings(max_examples=8, deadline=None)
@given(prompt=st.lists(st.integers(3, 258), min_size=1, max_size=8), name=st.sampled_from(sorted(STRATEGIES)))
def test_reference_equality_for_generated_prompts(prompt: list[int], name: str, tmp_path_factory) -> None:
    check("llama", name, prompt, tmp_path_factory.mktemp("ref"))


def check(family: str, name: str, prompt: list[int], tmp_path: Path) -> None:
    model = tiny_model(family, 6, seed=1)
    torch.manual_seed(4)
    save_file({"v": torch.randn(64) * 3}, str(tmp_path / "v.safetensors"))
    tau = median_norm(model, prompt, LAYER_OF[name])
    (tmp_path / "s.l2").write_text(STRATEGIES[name].replace("TAU", repr(tau)), encoding="utf-8")
    strategy = Strategy(load_program(tmp_path / "s.l2"))
    with strategy.attach(model) as run:
        out = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, pad_token_id=0)
    tokens = out[0, len(prompt):].tolist()
    vectors = run.executor.vectors
    interpreter = reference_generate_positionwise if "refresh" in name else reference_generate
    expected, counts = interpreter(model, run.plan, vectors, prompt, 8)
    assert tokens == expected
    assert {k: v for k, v in run.report().interventions.items() if v} == counts
