"""How strongly `suppress-random`'s coin prefers high-norm tokens, with and without the current step in `rate`.

    python benchmarks/control_bias.py [--model smollm2-135m] [--prompts 8] [--tokens 128] [--warmup 32] [--k 1.5]

The matched-random control should damp tokens *regardless* of their norm: P(coin fires | norm > τ)
should equal P(coin fires | norm ≤ τ). This runs the plain-PyTorch reference of the control
(tests/reference/methods.py) with a damping factor of 1 (so the coins never change what is generated)
on real prompts, and counts coin outcomes on high- and low-norm steps, for `rate` as docs/semantics.md
defines it (earlier steps only) and for the earlier definition that counted the current step too.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
from l2lang.backends.hf.models import load_model  # noqa: E402
from tests.reference.methods import Suppress, coin  # noqa: E402

QUESTIONS = ["Tom has 3 apples and buys 5 more. How many apples does he have?",
             "What is 17 times 3? Explain.", "A train travels 60 km in 1.5 hours. What is its speed?",
             "List three prime numbers greater than 20 and say why they are prime.",
             "If a shirt costs $20 after a 20% discount, what was the original price?",
             "Explain why the sky is blue in two sentences.", "What is the sum of the first ten odd numbers?",
             "Sara reads 12 pages a day. How many days does she need for a 150-page book?"]


@dataclass
class Tally(Suppress):
    """The reference control, tallying (high, fired) per step and layer; `current` counts this step in rate."""

    current: bool = False

    def act(self, layer, module, args, kwargs, h, norm, tau):
        high = tau is not None and norm > tau
        earlier = self.hits[layer]
        rate = (earlier + high) / self.step if self.current else earlier / max(self.step - 1, 1)
        fired = coin(self.seed, self.key, self.step, self.layers.index(layer)) < rate
        if tau is not None:
            self.tally[(high, fired)] = self.tally.get((high, fired), 0) + 1
        self.hits[layer] += high
        return None  # factor 1: generation is unchanged


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=32)
    parser.add_argument("--k", type=float, default=1.5, help="τ = Q3 + k·IQR (the shipped strategy's k is 1.5)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    loaded = load_model(args.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    depth = model.config.num_hidden_layers
    layers = list(range(depth - depth // 4, depth - 1))  # the shipped strategy's L-L/4..L-2
    print(f"model {args.model}, layers {layers}, {args.prompts} prompts x {args.tokens} greedy tokens, "
          f"warmup {args.warmup}, k {args.k}")
    print("| rate counts | P(fire given norm > τ) | P(fire given norm ≤ τ) | ratio | high steps | low steps |")
    print("|---|---|---|---|---|---|")
    for current in (True, False):
        tally: dict[tuple[bool, bool], int] = {}
        for seed, question in enumerate(QUESTIONS[: args.prompts]):
            text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                                 add_generation_prompt=True)
            prompt = tokenizer(text, add_special_tokens=False).input_ids
            method = Tally(model, layers, k=args.k, warmup=args.warmup, seed=seed, current=current)
            method.tally = tally
            method.run(prompt, max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False)
        high = tally.get((True, True), 0) / max(tally.get((True, True), 0) + tally.get((True, False), 0), 1)
        low = tally.get((False, True), 0) / max(tally.get((False, True), 0) + tally.get((False, False), 0), 1)
        n_high = tally.get((True, True), 0) + tally.get((True, False), 0)
        n_low = tally.get((False, True), 0) + tally.get((False, False), 0)
        label = "earlier steps and this one (before)" if current else "earlier steps only (now)"
        print(f"| {label} | {high:.4f} | {low:.4f} | {high / low if low else float('nan'):.2f} | {n_high} | {n_low} |")


if __name__ == "__main__":
    main()
