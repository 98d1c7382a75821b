"""Recorded behaviour that refactors must keep: tokens, intervention counts and LRS scores.

Each case runs one strategy on a tiny random model (3 prompts of different lengths, left-padded
together) and records what came out. `python -m tests.golden.record` rewrites
`tests/data/golden_tiny.json`; `tests/test_golden.py` compares a fresh run with it. A semantic change
that alters a record must say so in its commit and re-record on purpose.
"""

from __future__ import annotations

import torch

import l2lang
from tests.tiny_models import tiny_model, tiny_tokenizer

PROMPTS = ["Tom has 3 apples and buys 5 more.", "What is 17 * 3?", "Hi"]

# Strategies written to fire on the tiny models' norms; together they exercise every construct.
TEXTS = {
    "every-construct": """
param warmup = 5
threshold tau = adaptive(k=0.5, warmup=warmup)
threshold fixed = 0.5
threshold per_layer = table { 20: 0.75, 21: 0.8, 22: 0.8 }
vector v = contrast(["Let's think step by step."], ["The answer is"]) at 12
bank high keep 4
observe 0..L-1
if norm[2] > 0 during prefill mark "prompt" at 3
if mean(norm[10..12]) > fixed during all suppress clamp 0.6 at 12
for l in [22, 20]: if norm[l] > per_layer and chance(0.5) cooldown 2 steer 0.05*v
if norm[24] > tau store in high
if streak(norm[24] < tau) >= 2 cooldown 3 steer mix 0.2*retrieve(high, min_cos=-1) at 24
if rate(growth[25] > 0) > 0.3 and cos[25] > 0 recurse layers 24..25 up to 3 times until ratio > 1.01 kv refresh damping 0.5
if norm[L-2] < tau suppress scale 0.9 at 16
""",
    "recursion-while-frozen": """
threshold tau = adaptive(k=0, warmup=5)
if norm[26] > tau recurse layer 26 up to 4 times while growth > -0.5 and change < 1e6
""",
}


def cases() -> list[tuple[str, str | None, dict]]:
    """(name, shipped strategy or None for a text above, params)."""
    return [
        ("card-fires", "examples/card.l2", {"tau": 1e9}),
        ("card-never", "examples/card.l2", {"tau": 0}),
        ("alrr", "alrr", {"warmup": 5, "k": 0, "epsilon": -1, "blowup": 100, "k_max": 2}),
        ("alrr-demo", "alrr-demo", {"warmup": 5, "k": 0, "epsilon": 0, "blowup": 50}),
        ("erss", "erss", {"warmup": 5, "streak_length": 2, "p": 1, "cool": 1, "k": 0}),
        ("erss-figure", "erss-figure", {"warmup": 5, "streak_length": 2, "p": 1, "cool": 1, "k": 0}),
        ("suppress-high", "suppress-high", {"warmup": 5, "k": 0}),
        ("suppress-random", "suppress-random", {"warmup": 5, "k": 0}),
        ("baseline", "baseline", {}),
        ("lrs", "lrs", {"n": 3}),
        ("vote", "vote", {"n": 3}),
        ("lrs-per-token", "examples/lrs-per-token.l2", {}),
        ("every-construct", None, {}),
        ("recursion-while-frozen", None, {}),
    ]


def run_case(name: str, target: str | None, params: dict, tmp_dir, family: str = "llama") -> dict:
    """One case on a 28-layer tiny model of `family`: tokens, counts, per-request traces, LRS scores."""
    if target is None:
        path = tmp_dir / f"{name}.l2"
        path.write_text(TEXTS[name], encoding="utf-8")
        target = str(path)
    strategy = l2lang.load(target, **params)
    model, tokenizer = tiny_model(family, 28), tiny_tokenizer()
    result = l2lang.generate(model, tokenizer, strategy, PROMPTS, seed=7, max_new_tokens=16, chat=False)
    record = {
        "tokens": [o["token_ids"] for o in result.outputs],
        "interventions": result.report.interventions,
        "requests": [len(r["interventions"]) for r in result.report.requests],
        "extra_layer_passes": result.report.extra_layer_passes,
    }
    if result.plan.select is not None:
        record["chosen"] = [o["chosen"] for o in result.outputs]
        record["scores"] = [[round(c["score"], 3) for c in o["candidates"]] for o in result.outputs]
    return record


def record_all(tmp_dir) -> dict:
    torch.set_num_threads(1)
    return {f"{family}/{name}": run_case(name, target, params, tmp_dir, family)
            for family in ("llama", "qwen2") for name, target, params in cases()}


SMOLLM2_CASES = [
    ("card-fires", "examples/card.l2", {"tau": 1e9}),
    ("alrr", "alrr", {"warmup": 8}),
    ("erss", "erss", {"warmup": 8, "streak_length": 3, "p": 1, "cool": 2}),
    ("suppress-random", "suppress-random", {"warmup": 8}),
    ("lrs", "lrs", {"n": 2}),
]


def record_smollm2(model, tokenizer) -> dict:
    """The same records on SmolLM2-135M (the real model; a slow test compares them)."""
    out = {}
    for name, target, params in SMOLLM2_CASES:
        result = l2lang.generate(model, tokenizer, l2lang.load(target, **params), PROMPTS, seed=7,
                                 max_new_tokens=24)
        out[name] = {"tokens": [o["token_ids"] for o in result.outputs],
                     "interventions": result.report.interventions,
                     "requests": [len(r["interventions"]) for r in result.report.requests]}
    return out
