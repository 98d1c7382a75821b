"""vLLM: plain generation vs l2lang's observe-only strategy, tokens/s at a batch size, interleaved.

    python benchmarks/vllm_throughput.py [--model smollm2-135m] [--batch 16] [--tokens 64] [--repeats 5]
        [--strategies baseline "alrr:blowup=0,warmup=5"]

One engine (vLLM's default, multiprocess) runs every round: plain requests (no strategy: l2lang's hooks
see no request of theirs and step aside), then the same requests with each strategy attached. The
ratio is the median over rounds of (strategy tokens/s) / (plain tokens/s) of the same round.
"""

from __future__ import annotations

import argparse
import statistics
import time

from throughput import PROMPT, parse_strategy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--strategies", nargs="+", default=["baseline", "alrr:blowup=0,warmup=5"])
    args = parser.parse_args()
    from vllm import SamplingParams

    from l2lang.backends.vllm.backend import VLLMBackend

    backend = VLLMBackend.load(args.model, max_num_seqs=args.batch, max_model_len=512)
    prompts = [f"{PROMPT} ({i})" for i in range(args.batch)]
    base = SamplingParams(max_tokens=args.tokens, min_tokens=args.tokens, temperature=0.0)
    installed = [(text, backend.install(strategy)) for text, strategy in map(parse_strategy, args.strategies)]

    def timed(params) -> float:
        start = time.perf_counter()
        outputs = backend.llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - start
        if params[0].extra_args:
            backend.collect(params)
        return sum(len(o.outputs[0].token_ids) for o in outputs) / elapsed

    ratios: dict[str, list[float]] = {text: [] for text, _ in installed}
    plain_speeds: list[float] = []
    for round_index in range(args.repeats + 1):
        plain = timed([base] * args.batch)
        for text, strategy in installed:
            speed = timed([backend.sampling_params(strategy, base) for _ in prompts])
            if round_index:  # round 0 warms up
                ratios[text].append(speed / plain)
        if round_index:
            plain_speeds.append(plain)
    print(f"vLLM {args.model}, batch {args.batch}, {args.tokens} tokens, median of {args.repeats} rounds; "
          f"plain {statistics.median(plain_speeds):.1f} tokens/s")
    print("| strategy | ratio to plain vLLM |")
    print("|---|---|")
    for text, values in ratios.items():
        print(f"| {text} | {statistics.median(values):.3f} |")


if __name__ == "__main__":
    main()
