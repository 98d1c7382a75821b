"""Tokens/s of plain `model.generate` vs strategies, interleaved in one process, median of repeats.

    python benchmarks/throughput.py --model smollm2-135m --batch 1 16 --tokens 32 --repeats 5 \
        --strategies baseline alrr "alrr:warmup=5" lrs:n=4

Each configuration runs right after plain generate in the same round, after one warm-up round; the
ratio is the median over rounds of (strategy tokens/s) / (plain tokens/s). A strategy that samples
(`lrs`, `vote`) is compared with plain generate sampling the same N return sequences, and its time
includes scoring the candidates. `bound` is the ALRR target: 1 / ((1 + k/L) + 0.03) for k extra layer
passes per token on L layers. `--model tiny` is a random-weight Llama built in code (8 layers, 256 wide).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from l2lang import L2Error, load_program
from l2lang.backends.hf.attach import Run, plan_for
from l2lang.backends.hf.generate import encode
from l2lang.backends.hf.models import load_model
from l2lang.engine.records import request_rows  # noqa: E402
from l2lang.engine.select import candidate_scores
from l2lang.engine.strategy import Strategy

PROMPT = "Tom has 3 apples and buys 5 more. How many apples does he have now? Think step by step."
SHIPPED = ["baseline", "alrr", "alrr:warmup=5", "erss", "erss:warmup=5,streak_length=4",
           "erss-figure:warmup=5,streak_length=4",
           "suppress-high:warmup=5", "suppress-random:warmup=5", "examples/card.l2:tau=1e9", "lrs:n=4", "vote:n=4"]


def load(name: str):
    """(model, tokenizer): `tiny` is a random-weight Llama (8 layers, hidden 256), `tiny28` a random-weight
    Qwen2 of 28 layers and hidden size 32 — where l2lang's fixed cost per layer and step shows most — both
    with the default model's tokenizer; any other name goes to `load_model`."""
    if name not in ("tiny", "tiny28"):
        loaded = load_model(name)
        return loaded.model, loaded.tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    tokenizer = load_model("smollm2-135m").tokenizer
    if name == "tiny":
        config = LlamaConfig(num_hidden_layers=8, hidden_size=256, intermediate_size=704, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=len(tokenizer))
        model = LlamaForCausalLM(config).eval()
    else:
        config = Qwen2Config(num_hidden_layers=28, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                             num_key_value_heads=1, vocab_size=len(tokenizer))
        model = Qwen2ForCausalLM(config).eval()
    model.generation_config.eos_token_id = None
    return model, tokenizer


def parse_strategy(text: str) -> tuple[str, Strategy]:
    name, _, params = text.partition(":")
    overrides = dict(item.split("=", 1) for item in params.split(",") if item)
    return text, Strategy(load_program(name, overrides))


def timed(model, tokenizer, batch, tokens: int, strategy: Strategy, attach: bool) -> tuple[float, int]:
    """(generated tokens/s, extra layer passes) of one generate call, with or without the strategy attached."""
    plan = plan_for(strategy, model)
    kwargs = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    if plan.sample is not None:
        kwargs.update(do_sample=True, num_return_sequences=plan.sample.count, temperature=plan.sample.temperature,
                      top_p=plan.sample.top_p)
    torch.manual_seed(0)
    start = time.perf_counter()
    if attach:
        with Run(strategy, model, tokenizer, 0, caller_selects=True) as run:
            out = model.generate(**batch, **kwargs)
        if plan.select is not None:
            candidate_scores(list(request_rows(*run.last_call()).values()), plan.select)
        passes = run.report().extra_layer_passes
    else:
        out = model.generate(**batch, **kwargs)
        passes = 0
    elapsed = time.perf_counter() - start
    generated = (out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0]
    return generated / elapsed, passes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m", help="an alias, a folder, or `tiny`")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--strategies", nargs="+", default=SHIPPED)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model, tokenizer = load(args.model)
    layers = model.config.num_hidden_layers
    strategies = [parse_strategy(s) for s in args.strategies]
    print(f"model {args.model} ({layers} layers), {args.tokens} new tokens, median of {args.repeats} after a "
          f"warm-up round, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| batch | configuration | plain tokens/s | tokens/s | ratio to plain | extra layer passes / token | bound |")
    print("|---|---|---|---|---|---|---|")
    for size in args.batch:
        batch = encode(tokenizer, [PROMPT] * size, None)
        for name, strategy in strategies:
            try:
                plan_for(strategy, model)
            except L2Error as exc:
                print(f"| {size} | {name} | — | — | — | — | does not fit: {exc.diagnostics[0].message} |")
                continue
            runs = []
            for round_index in range(args.repeats + 1):
                plain, _ = timed(model, tokenizer, batch, args.tokens, strategy, attach=False)
                speed, passes = timed(model, tokenizer, batch, args.tokens, strategy, attach=True)
                if round_index:  # round 0 warms up
                    runs.append((plain, speed, speed / plain, passes))
            plain = statistics.median(r[0] for r in runs)
            speed = statistics.median(r[1] for r in runs)
            ratio = statistics.median(r[2] for r in runs)
            k = statistics.median(r[3] for r in runs) / (args.tokens - 1)  # a pass runs every row of the batch
            bound = f"{1 / (1 + k / layers + 0.03):.3f}" if k else "—"
            print(f"| {size} | {name} | {plain:.1f} | {speed:.1f} | {ratio:.3f} | {k:.2f} | {bound} |", flush=True)


if __name__ == "__main__":
    main()
