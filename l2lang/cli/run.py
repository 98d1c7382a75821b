"""`l2lang run STRATEGY --prompt TEXT`: generate with a strategy attached; print answers and where it fired."""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import version

from l2lang.cli.options import (
    allow_other_model_option,
    chat_option,
    model_name,
    model_option,
    number,
    open_model,
    parse_sets,
    prompt_options,
    read_prompts,
    say,
    seed_option,
    set_option,
    tokens_option,
    whole,
)
from l2lang.errors import L2Error


def add_parser(commands) -> None:
    parser = commands.add_parser("run", help="generate with a strategy attached")
    parser.add_argument("strategy", metavar="STRATEGY", help="shipped name, .l2 file or bundle (.l2b)")
    model_option(parser)
    prompt_options(parser)
    tokens_option(parser, 64)
    parser.add_argument("--temperature", type=number(0), default=0.0, metavar="T", help="0: greedy (default)")
    parser.add_argument("--top-p", type=number(0, 1, above=True), default=None, metavar="P", help="in (0, 1]")
    parser.add_argument("--top-k", type=whole(0), default=None, metavar="K", help="0: every token")
    seed_option(parser)
    chat_option(parser)
    parser.add_argument("--json", action="store_true", help="print outputs and manifest as one JSON object")
    set_option(parser)
    allow_other_model_option(parser)
    parser.set_defaults(handler=run)


def sampling_options(args: argparse.Namespace):
    """--temperature/--top-p/--top-k as a `Sampling`, or None for greedy decoding."""
    from l2lang.backends.base import Sampling

    if args.temperature > 0:
        return Sampling(temperature=args.temperature, top_p=1.0 if args.top_p is None else args.top_p,
                        top_k=args.top_k or 0)
    if args.top_p is not None or args.top_k is not None:
        raise L2Error.one("--top-p/--top-k need sampling: add --temperature T (T > 0)", path="<command line>")
    return None


def run(args) -> int:
    model_name(args)  # a wrong --model fails before anything loads
    from l2lang.engine.strategy import Strategy
    from l2lang.lang.compose import load_program

    strategy = Strategy(load_program(args.strategy, parse_sets(args.set), allow_other_model=args.allow_other_model))
    prompts = read_prompts(args)
    sampling = sampling_options(args)
    backend = open_model(args)  # torch and the backend load only here
    say(f"generating up to {args.max_new_tokens} tokens for {len(prompts)} prompt(s) ...")
    result = backend.generate(strategy, prompts, seed=args.seed, chat=args.chat, max_new_tokens=args.max_new_tokens,
                              sampling=sampling)
    plan = result.plan
    generation = {"max_new_tokens": args.max_new_tokens, **(vars(sampling) if sampling else {"do_sample": False})}
    manifest = {
        "fingerprint": plan.fingerprint, "strategy": str(args.strategy), "model": backend.model_id,
        "backend": backend.name, "weights_sha256": backend.weights_sha256, "seed": args.seed, "layers": plan.layers,
        "params": plan.params, "thresholds": {k: v.model_dump(exclude_none=True) for k, v in plan.thresholds.items()},
        "generation": generation, "interventions": result.report.interventions,
        "extra_layer_passes": result.report.extra_layer_passes,
        "candidates": [{"chosen": o["chosen"], "scores": [c["score"] for c in o["candidates"]]}
                       for o in result.outputs] if plan.select else None,
        "versions": {name: version(name) for name in ("l2lang", "torch", "transformers")},
    }
    bundle = strategy.program.bundle
    if bundle is not None:
        manifest["bundle"] = bundle.record()
    if args.json:
        outputs = [{"prompt": p, **o} for p, o in zip(prompts, result.outputs)]
        json.dump({"outputs": outputs, "manifest": manifest}, sys.stdout, indent=2)
        print()
        return 0
    for prompt, output in zip(prompts, result.outputs):
        print(f"> {prompt}\n{output['text'].strip()}\n")
    fired = ", ".join(f"{k}: {v}" for k, v in result.report.interventions.items() if v) or "nowhere"
    print(f"strategy {args.strategy} ({plan.fingerprint}) on {backend.model_id}, {plan.layers} layers")
    print(f"fired: {fired}")
    if bundle is not None:
        other = "; ran on other weights than it was packed for (--allow-other-model)" if bundle.ran_on_other_model else ""
        print(f"bundle {bundle.id[:16]}{other}")
    return 0
