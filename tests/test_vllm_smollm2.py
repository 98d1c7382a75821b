"""The vLLM backend equals the Hugging Face backend on SmolLM2-135M, the embedded default (slow; one
engine for the module; skipped without vLLM): every shipped strategy and the card, with parameters that
make them act, give the same greedy tokens and intervention counts, and norms within 1e-4 relative."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import l2lang  # noqa: E402
from l2lang.backends.hf.backend import HFBackend  # noqa: E402
from l2lang.backends.vllm.backend import VLLMBackend  # noqa: E402

pytestmark = pytest.mark.slow
CARD = str(Path(__file__).parents[1] / "examples" / "card.l2")
PROMPTS = ["What is 2 + 3?", "Tom has 3 apples and buys 5 more. How many apples does he have now?"]
CASES = [(CARD, {"tau": 1e9}), ("alrr", {"warmup": 8}), ("alrr-demo", {"warmup": 8}),
         ("erss", {"warmup": 8, "streak_length": 3, "p": 1, "cool": 2}),
         ("erss-figure", {"warmup": 8, "streak_length": 3, "p": 1, "cool": 2}),
         ("suppress-high", {"warmup": 8}), ("suppress-random", {"warmup": 8}), ("baseline", {})]


@pytest.fixture(scope="module")
def engines():
    vllm = VLLMBackend.load("smollm2-135m", max_model_len=512, max_num_seqs=4)
    yield vllm, HFBackend.load("smollm2-135m")
    vllm.close()


@pytest.mark.parametrize("target,params", CASES, ids=[Path(c[0]).stem for c in CASES])
def test_every_shipped_strategy_runs_on_vllm_as_on_transformers(engines, target, params) -> None:
    vllm, hf = engines
    s = l2lang.load(target, **params)
    ours = vllm.generate(s, PROMPTS, max_new_tokens=24, seed=5)
    theirs = hf.generate(s, PROMPTS, max_new_tokens=24, seed=5)
    assert [o["token_ids"] for o in ours.outputs] == [o["token_ids"] for o in theirs.outputs]
    assert ours.report.interventions == theirs.report.interventions
    for mine, other in zip(ours.rows, theirs.rows, strict=True):
        torch.testing.assert_close(mine.norms, other.norms, rtol=1e-4, atol=1e-5)
