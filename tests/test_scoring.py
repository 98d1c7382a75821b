"""What harnesses use of a backend (docs/evaluation.md, lm-evaluation-harness): scoring given token
sequences with a strategy's prefill-phase rules, and generation from token ids with stop strings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from l2lang import load_program
from l2lang.backends.hf.backend import HFBackend
from l2lang.backends.hf.generate import StopStrings
from l2lang.backends.hf.models import LoadedModel
from l2lang.engine.strategy import Strategy
from l2lang.errors import GenerationError
from tests.tiny_models import tiny_model, tiny_tokenizer

TOKENIZER = tiny_tokenizer()
SEQUENCES = [[2, 40, 41, 42, 43, 44, 45], [2, 50, 51], [60, 61, 62, 63]]  # mixed lengths: right padding


@pytest.fixture(scope="module")
def backend() -> HFBackend:
    return HFBackend(LoadedModel(tiny_model("llama", 8), TOKENIZER, "tiny-llama", "none"))


def strategy(text: str, tmp: Path) -> Strategy:
    path = tmp / "s.l2"
    path.write_text(text, encoding="utf-8")
    return Strategy(load_program(str(path)))


def test_scores_are_the_models_own_log_probabilities(backend) -> None:
    scores = backend.score(Strategy(load_program("baseline")), SEQUENCES)
    model = backend.loaded.model
    for row, logprobs, greedy in zip(SEQUENCES, scores.logprobs, scores.greedy):
        with torch.no_grad():  # each sequence alone, no padding, no hooks
            expected = torch.log_softmax(model(torch.tensor([row[:-1]])).logits[0].float(), dim=-1)
        targets = torch.tensor(row[1:])
        assert logprobs == pytest.approx(expected.gather(-1, targets[:, None]).squeeze(-1).tolist(), abs=1e-5)
        assert greedy == (expected.argmax(-1) == targets).tolist()
    assert scores.report.total() == 0 and len(scores.report.requests) == len(SEQUENCES)


def test_prefill_rules_act_on_every_scored_position_and_decode_rules_on_none(backend, tmp_path: Path) -> None:
    plain = backend.score(Strategy(load_program("baseline")), SEQUENCES)
    prefill = backend.score(strategy("if norm[3] > 0 during prefill suppress scale 0.5\n", tmp_path), SEQUENCES)
    counts = [sum(r["counts"].values()) for r in prefill.report.requests]
    assert counts == [len(row) - 1 for row in SEQUENCES]  # every position the model read, padding not
    assert prefill.report.interventions == {"suppress@3": sum(counts)}
    assert all(a != pytest.approx(b, abs=1e-4) for a, b in zip(prefill.logprobs[0], plain.logprobs[0]))
    decode = backend.score(strategy("if norm[3] > 0 recurse layer 3 twice; suppress scale 0.5\n", tmp_path),
                           SEQUENCES)
    assert decode.logprobs == plain.logprobs and decode.report.total() == 0


def test_scoring_refuses_strategies_that_select_among_answers(backend) -> None:
    with pytest.raises(GenerationError, match="`sample`/`select` choose among generated answers"):
        backend.score(Strategy(load_program("vote")), SEQUENCES)
    with pytest.raises(GenerationError, match="sequence 1 has one token"):
        backend.score(Strategy(load_program("baseline")), [[2, 3], [4]])
    with pytest.raises(GenerationError, match="not a token id"):
        backend.score(Strategy(load_program("baseline")), [[2, 3, 999]])


def test_generation_from_token_ids_equals_generation_from_text(backend) -> None:
    prompts = ["hello", "a longer prompt"]
    baseline = Strategy(load_program("baseline"))
    from_text = backend.generate(baseline, prompts, chat=False, max_new_tokens=6)
    ids = [TOKENIZER(p)["input_ids"] for p in prompts]
    from_ids = backend.generate_ids(baseline, ids, max_new_tokens=6)
    assert [o["token_ids"] for o in from_ids.outputs] == [o["token_ids"] for o in from_text.outputs]


def test_a_stop_string_ends_its_sequence_where_it_is_generated(backend, tmp_path: Path) -> None:
    fires = strategy('if norm[3] > 0 mark "x"\n', tmp_path)  # acts on every decode step of a running request
    prompts = [TOKENIZER("hello")["input_ids"], TOKENIZER("a longer prompt")["input_ids"]]
    full = backend.generate_ids(fires, prompts, max_new_tokens=12)
    row = full.outputs[0]["token_ids"]
    stop = TOKENIZER.decode(row[4:6])  # the text of its 5th and 6th tokens (one token per byte)
    first = full.outputs[0]["text"].index(stop)
    stopped = backend.generate_ids(fires, prompts, max_new_tokens=12, stop=[stop])
    assert stopped.outputs[0]["text"] == full.outputs[0]["text"][: first + len(stop)]
    assert stopped.outputs[0]["token_ids"][-1] == TOKENIZER.eos_token_id  # the row is padded with EOS ...
    kept = len(stopped.outputs[0]["token_ids"]) - 1
    # ... so the strategy sees it finish: it acted on decode steps 1..kept (the last one, fed the token that
    # completed the stop string while the other row went on, is one step late), not on all 11
    assert sum(stopped.report.requests[0]["counts"].values()) == kept < 11
    assert sum(full.report.requests[0]["counts"].values()) == 11
    assert sum(stopped.report.requests[1]["counts"].values()) == 11


def test_stop_strings_are_looked_for_in_the_generated_text_only() -> None:
    a, b, c = TOKENIZER.convert_tokens_to_ids(["a", "b", "c"])
    stop = StopStrings(TOKENIZER, ["ab"], start=2)
    assert stop(torch.tensor([[a, b, c], [c, a, b]]), None).tolist() == [False, False]  # "ab" is in the prompt
    assert stop(torch.tensor([[c, c, a, b], [a, b, c, c]]), None).tolist() == [True, False]
