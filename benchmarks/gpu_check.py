"""The GPU check: one command, no downloads (random weights in real models' shapes), under 8 minutes.

    python benchmarks/gpu_check.py            # on a CUDA machine: Qwen2.5-1.5B and Llama-3-8B shapes, bf16
    python benchmarks/gpu_check.py --quick    # anywhere: tiny shapes (the test suite runs this on the CPU)

Prints three tables:
1. greedy tokens of every shipped strategy on a tiny float32 model, on the CPU and on the GPU: equal?
2. host-device synchronisations per decode step with each strategy attached, minus plain generate
   (CUDA: `torch.cuda.set_sync_debug_mode`; without a GPU: host reads of tensor values, counted by the
   profiler, under the GPU policy of never skipping an empty mask);
3. tokens/s with each strategy / plain `model.generate`, interleaved, median of rounds, at batch 1, 16
   and 64: observe-only, ALRR never firing, ALRR recursing on every step (against its bound
   1 / (1 + k/L + 0.03) for k extra layer passes per token), ERSS, LRS.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import transformers as tf

sys.path.insert(0, str(Path(__file__).parents[1]))

import l2lang  # noqa: E402
from l2lang.backends.hf.attach import Run  # noqa: E402

EQUALITY = {"baseline": {}, "alrr": {"warmup": 5, "k": 0, "epsilon": -1, "blowup": 100},
            "erss": {"warmup": 5, "streak_length": 2, "p": 1, "cool": 1, "k": 0},
            "suppress-high": {"warmup": 5, "k": 0}, "suppress-random": {"warmup": 5, "k": 0}}
EVERY_STEP = "for l in L-L/4..L-2: if norm[l] >= 0 recurse layer l once\n"  # ALRR's layers, recursing always
SPEED = {"observe-only": ("baseline", {}), "alrr never firing": ("alrr", {"blowup": 0, "warmup": 5}),
         "alrr every step": (EVERY_STEP, {}), "erss": ("erss", {"warmup": 5}), "lrs": ("lrs", {"n": 4})}


def load(target: str, params: dict):
    """A shipped strategy, or (for a strategy written inline) a file in a temporary folder."""
    if "\n" not in target:
        return l2lang.load(target, **params)
    import tempfile

    path = Path(tempfile.mkdtemp()) / "strategy.l2"
    path.write_text(target, encoding="utf-8")
    return l2lang.load(str(path), **params)


def shapes(quick: bool) -> dict[str, tf.PretrainedConfig]:
    if quick:
        return {"tiny-qwen2": tf.Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=128,
                                             num_hidden_layers=28, num_attention_heads=4, num_key_value_heads=2)}
    return {"qwen2.5-1.5b": tf.Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                                           num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                                           max_position_embeddings=32768, tie_word_embeddings=True),
            "llama-3-8b": tf.LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                                         max_position_embeddings=8192, rope_theta=500000.0)}


def build(config, device: str, dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = tf.AutoModelForCausalLM.from_config(config).eval()
    finally:
        torch.set_default_dtype(previous)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def generate(model, ids: torch.Tensor, tokens: int, strategy=None, **kwargs) -> tuple[torch.Tensor, Run | None]:
    """(the sequences, the run) of one generate call, the strategy attached if given (its report, read
    after generating, is not part of any figure here)."""
    kwargs = {"max_new_tokens": tokens, "min_new_tokens": tokens, "do_sample": False, "pad_token_id": 0, **kwargs}
    if strategy is None:
        return model.generate(ids, **kwargs), None
    run = Run(strategy, model, None, 0, caller_selects=True)
    if run.plan.sample is not None:
        kwargs.update(do_sample=True, num_return_sequences=run.plan.sample.count,
                      temperature=run.plan.sample.temperature)
    with run:
        out = model.generate(ids, **kwargs)
    return out, run


def equality_table(device: str) -> None:
    print("## 1. greedy tokens, CPU vs " + device)
    print("| strategy | equal |\n|---|---|")
    config = shapes(True)["tiny-qwen2"]
    cpu, other = build(config, "cpu", torch.float32), build(config, device, torch.float32)
    ids = torch.randint(3, 500, (2, 12), generator=torch.Generator().manual_seed(1))
    for name, params in EQUALITY.items():
        strategy = l2lang.load(name, **params)
        a = generate(cpu, ids, 16, strategy)[0]
        b = generate(other, ids.to(device), 16, strategy)[0].cpu()
        print(f"| {name} | {'yes' if torch.equal(a, b) else 'NO'} |", flush=True)


def sync_table(model, device: str, batch: int, tokens: int) -> dict[str, float]:
    print(f"\n## 2. host-device synchronisations per decode step, batch {batch} (strategy minus plain)")
    print("| strategy | syncs per step |\n|---|---|")
    ids = torch.randint(3, 500, (batch, 16), device=device)
    found = {}
    for label, (name, params) in SPEED.items():
        strategy = load(name, params)
        mine = count_syncs(model, ids, tokens, strategy, device)
        plain = count_syncs(model, ids, tokens, None, device, **sampling_of(strategy, model))
        found[label] = (mine - plain) / (tokens - 1)
        print(f"| {label} | {found[label]:.2f} |", flush=True)
    return found


def sampling_of(strategy, model) -> dict:
    """The generate arguments that make plain generation sample as the strategy's `sample` does."""
    sampled = Run(strategy, model, None, 0, caller_selects=True).plan.sample
    return {"do_sample": True, "num_return_sequences": sampled.count, "temperature": sampled.temperature} \
        if sampled else {}


def count_syncs(model, ids, tokens: int, strategy, device: str, **kwargs) -> int:
    if device == "cuda":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                generate(model, ids, tokens, strategy, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)
    from torch.profiler import ProfilerActivity, profile

    original = Run.__enter__

    def gpu_policy(self):  # never read a mask to skip work, as on a GPU
        run = original(self)
        run.executor.skip_idle = False
        return run

    Run.__enter__ = gpu_policy
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            generate(model, ids, tokens, strategy, **kwargs)
    finally:
        Run.__enter__ = original
    return sum(e.name in ("aten::_local_scalar_dense", "aten::item", "aten::nonzero") for e in prof.events())


def speed_table(model, name: str, device: str, batches: list[int], tokens: int, repeats: int) -> None:
    layers = model.config.num_hidden_layers
    print(f"\n## 3. tokens/s vs plain generate, {name} ({layers} layers), {tokens} tokens, median of {repeats}")
    print("| batch | strategy | plain tokens/s | ratio | extra layer passes / token | bound |\n|---|---|---|---|---|---|")
    for batch in batches:
        ids = torch.randint(3, 500, (batch, 32), device=device)
        for label, (strategy_name, params) in SPEED.items():
            strategy = load(strategy_name, params)
            plain_kwargs = sampling_of(strategy, model)
            rounds = []
            for index in range(repeats + 1):  # round 0 warms up
                plain, _ = timed(model, ids, tokens, None, device, **plain_kwargs)
                mine, passes = timed(model, ids, tokens, strategy, device)
                if index:
                    rounds.append((plain, mine / plain, passes / (tokens - 1)))
            ratio = statistics.median(r[1] for r in rounds)
            k = statistics.median(r[2] for r in rounds)
            bound = f"{1 / (1 + k / layers + 0.03):.3f}" if k else "—"
            print(f"| {batch} | {label} | {statistics.median(r[0] for r in rounds):.1f} | {ratio:.3f} | {k:.2f} "
                  f"| {bound} |", flush=True)


def timed(model, ids, tokens: int, strategy, device: str, **kwargs) -> tuple[float, int]:
    """(generated tokens/s, extra layer passes) of one generate call."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out, run = generate(model, ids, tokens, strategy, **kwargs)
    if device == "cuda":
        torch.cuda.synchronize()
    speed = out.shape[0] * tokens / (time.perf_counter() - start)
    return speed, run.report().extra_layer_passes if run is not None else 0


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Print the tables; return the syncs per step of each strategy, per model shape."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few tokens (what the suite runs)")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    quick = args.quick or device == "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else "no GPU: CPU with tiny shapes"
    print(f"# l2lang GPU check: {name}, torch {torch.__version__}, transformers {tf.__version__}\n")
    if device == "cuda":
        equality_table(device)
    else:
        print("## 1. greedy tokens, CPU vs GPU: skipped (no GPU)")
    batches, tokens, repeats = ([2], 6, 1) if quick else ([1, 16, 64], 64, 3)
    syncs = {}
    for label, config in shapes(quick).items():
        model = build(config, device, torch.float32 if quick else torch.bfloat16)
        syncs[label] = sync_table(model, device, batches[-1], tokens)
        speed_table(model, label, device, batches, tokens, repeats)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    return syncs


if __name__ == "__main__":
    main()
