"""The semantics suite once on the embedded default, SmolLM2-135M-Instruct (slow: fetched on first use)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from l2lang import load_program
from l2lang.backends.hf.generate import encode, generate
from l2lang.backends.hf.models import load_model
from l2lang.cli.main import main
from l2lang.engine.strategy import Strategy

pytestmark = pytest.mark.slow
CARD = Path(__file__).parents[1] / "examples" / "card.l2"
PROMPTS = ["What is 2 + 3?", "Tom has 3 apples and buys 5 more. How many apples does he have now?"]


@pytest.fixture(scope="module")
def smol():
    return load_model("smollm2-135m")


def strategy(target, **params) -> Strategy:
    return Strategy(load_program(str(target), {k: str(v) for k, v in params.items()}))


def test_never_firing_equals_plain_generate_greedy_and_sampled(smol) -> None:
    batch = encode(smol.tokenizer, PROMPTS, None)
    for kwargs in ({"do_sample": False}, {"do_sample": True, "temperature": 0.8}):
        torch.manual_seed(3)
        plain = smol.model.generate(**batch, max_new_tokens=12, pad_token_id=smol.tokenizer.pad_token_id, **kwargs)
        result = generate(smol.model, smol.tokenizer, strategy(CARD, tau=0), PROMPTS, seed=3, max_new_tokens=12,
                          **kwargs)
        width = batch["input_ids"].shape[1]
        for row, output in enumerate(result.outputs):
            expected = plain[row, width:].tolist()
            assert output["token_ids"] == expected[: len(output["token_ids"])]
        assert result.report.total() == 0


def test_card_fires_every_step_and_batched_equals_alone(smol) -> None:
    s = strategy(CARD, tau=1e9)
    together = generate(smol.model, smol.tokenizer, s, PROMPTS, max_new_tokens=10)
    assert together.report.interventions["recurse@24"] == 2 * 8  # L = 30: deferred, so 8 of 9 decode steps
    for prompt, output in zip(PROMPTS, together.outputs):
        alone = generate(smol.model, smol.tokenizer, s, [prompt], max_new_tokens=10)
        assert alone.outputs[0]["token_ids"] == output["token_ids"]


def test_shipped_strategies_run_on_smollm2(smol) -> None:
    for name, params in [("alrr", {"warmup": 5}), ("alrr-demo", {"warmup": 5}),
                         ("erss", {"warmup": 5, "streak_length": 3}), ("erss-figure", {"warmup": 5, "streak_length": 3}),
                         ("suppress-high", {"warmup": 5}), ("suppress-random", {"warmup": 5}), ("baseline", {}),
                         ("lrs", {"n": 2}), ("vote", {"n": 2})]:
        result = generate(smol.model, smol.tokenizer, strategy(name, **params), PROMPTS[:1], max_new_tokens=8)
        assert result.outputs[0]["text"] is not None
    from l2lang.resources import shipped_strategies

    assert {"alrr", "alrr-demo", "erss", "erss-figure", "suppress-high", "suppress-random", "baseline",
            "lrs", "vote"} == set(shipped_strategies())


def test_recorded_runs_are_reproduced(smol) -> None:
    """Greedy tokens and intervention counts of tests/golden/cases.py's SmolLM2 cases, as recorded."""
    import json

    from tests.golden.cases import record_smollm2

    recorded = json.loads((Path(__file__).parent / "data" / "golden_smollm2.json").read_text())
    assert record_smollm2(smol.model, smol.tokenizer) == recorded


def test_the_example_bundle_runs_as_its_file_on_smollm2(smol) -> None:
    import l2lang

    bundle = CARD.with_suffix(".l2b")
    for kwargs in ({"do_sample": False}, {"do_sample": True, "temperature": 0.8}):
        from_file = generate(smol.model, smol.tokenizer, strategy(CARD), PROMPTS, seed=3, max_new_tokens=24, **kwargs)
        from_bundle = generate(smol.model, smol.tokenizer, l2lang.load(str(bundle)), PROMPTS, seed=3,
                               max_new_tokens=24, **kwargs)
        assert [o["token_ids"] for o in from_bundle.outputs] == [o["token_ids"] for o in from_file.outputs]
        assert from_bundle.report.interventions == from_file.report.interventions
        assert from_bundle.plan.vectors["v_reason"].path.endswith("card.l2b!derived/v_reason.safetensors")


def test_the_demo_reaches_the_answer_within_its_token_budget(smol, capsys) -> None:
    """scripts/demo's prompt and budget, read from the script: the answer line comes before the budget ends."""
    script = (Path(__file__).parents[1] / "scripts" / "demo").read_text()
    prompt = re.search(r'--prompt "([^"]+)"', script).group(1)
    budget = re.search(r"--max-new-tokens (\d+)", script).group(1)
    assert main(["run", str(CARD), "--prompt", prompt, "--max-new-tokens", budget, "--json"]) == 0
    (output,) = json.loads(capsys.readouterr().out)["outputs"]
    assert re.search(r"answer is \d", output["text"], re.IGNORECASE), output["text"]
