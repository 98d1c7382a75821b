"""The public Python interface: loading, attaching, generating, the error classes a caller catches."""

from __future__ import annotations

import pytest
import torch

import l2lang
from l2lang.engine.backend import Capabilities
from l2lang.errors import CheckError, CompileError, GenerationError, StrategySyntaxError, UnsupportedError
from tests.tiny_models import tiny_model, tiny_tokenizer

TOKENIZER = tiny_tokenizer()


def test_attach_refuses_sample_and_select_it_cannot_apply() -> None:
    with pytest.raises(GenerationError, match="l2lang.generate"):
        l2lang.load("lrs").attach(tiny_model("llama", 4), TOKENIZER)


def test_a_backend_without_a_capability_refuses_the_plan_naming_the_construct(tmp_path) -> None:
    path = tmp_path / "s.l2"
    path.write_text("if norm[2] > 1 recurse layer 2 once kv refresh\n", encoding="utf-8")
    plan = l2lang.compile_plan(l2lang.load_program(str(path)), 4, 64)
    with pytest.raises(UnsupportedError, match="kv refresh") as caught:
        Capabilities(kv_modes=frozenset({"frozen"}), name="test").check(plan)
    assert "s.l2:1" in caught.value.render()
    with pytest.raises(UnsupportedError, match="sample"):
        Capabilities(sequence_selection=False).check(l2lang.compile_plan(l2lang.load_program("lrs"), 4))


def test_generate_leaves_the_tokenizer_as_it_was_and_gives_texts() -> None:
    tokenizer = tiny_tokenizer()
    tokenizer.padding_side, tokenizer.pad_token = "right", None
    result = l2lang.generate(tiny_model("llama", 4), tokenizer, l2lang.load("baseline"), ["ab", "abcd"],
                             max_new_tokens=3)
    assert tokenizer.padding_side == "right" and tokenizer.pad_token is None
    assert result.texts == [o["text"] for o in result.outputs] and len(result.texts) == 2
    assert repr(result).startswith("Generation(texts=[") and "interventions=0" in repr(result)


def test_generate_refuses_beam_search() -> None:
    with pytest.raises(GenerationError, match="beam"):
        l2lang.generate(tiny_model("llama", 4), TOKENIZER, l2lang.load("baseline"), ["ab"], max_new_tokens=2,
                        num_beams=2)


@pytest.mark.parametrize("text,error", [
    ("if norm[2] >\n", StrategySyntaxError),
    ("if norm[2] > tau recurse layer 2 once\n", CheckError),
    ("if norm[40] > 1 recurse layer 2 once\n", CompileError),
])
def test_each_stage_raises_its_own_error_class(tmp_path, text, error) -> None:
    path = tmp_path / "s.l2"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(error) as caught:
        l2lang.compile_plan(l2lang.load_program(str(path)), 8)
    assert isinstance(caught.value, l2lang.L2Error) and "s.l2:" in caught.value.render()


def test_an_unsupported_model_family_is_an_unsupported_error() -> None:
    class Odd(torch.nn.Module):
        config = type("Config", (), {"model_type": "odd"})()

    with pytest.raises(UnsupportedError, match="odd"):
        l2lang.load("baseline").attach(Odd(), TOKENIZER)


def test_the_gpu_check_runs_without_a_gpu_and_finds_no_host_reads_per_step(capsys) -> None:
    """benchmarks/gpu_check.py, ready for a GPU machine, runs here on tiny shapes; under the GPU policy no
    shipped strategy reads a tensor value on the host during a decode step (recursion included)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import gpu_check

    syncs = gpu_check.main(["--quick"])
    assert all(value == 0 for shape in syncs.values() for value in shape.values()), syncs
    assert "## 3. tokens/s" in capsys.readouterr().out
