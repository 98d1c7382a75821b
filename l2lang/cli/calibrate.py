"""`l2lang calibrate --prompts FILE --out PROFILE.json`: per-layer norm quantiles for `calibrated(...)`."""

from __future__ import annotations

import argparse
import sys

from l2lang.cli.options import (
    batch_option,
    chat_option,
    model_name,
    model_option,
    open_model,
    output_file,
    read_prompts,
    seed_option,
    tokens_option,
    whole,
)


def add_parser(commands) -> None:
    parser = commands.add_parser("calibrate", help="record per-layer norm quantiles for calibrated(...)")
    model_option(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompts", metavar="FILE.jsonl", help='one {"prompt": ...} per line')
    source.add_argument("--task", metavar="T",
                        help="reasoning_gym:NAME[:k=v,...], a BIG-bench task.json, or a JSONL of question/answer")
    parser.add_argument("--n", type=whole(1), default=32, metavar="N", help="items drawn from --task (default 32)")
    parser.add_argument("--out", required=True, metavar="PROFILE.json")
    tokens_option(parser, 64)
    batch_option(parser)
    seed_option(parser)
    chat_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    model_name(args)  # a wrong --model or --out fails before anything loads
    out = output_file(args.out)
    from l2lang.apps.calibrate import (  # torch and transformers load only here
        calibrate,
        write_profile,
    )
    from l2lang.backends.hf.models import quiet_transformers

    quiet_transformers()
    if args.task:
        from l2lang.apps.tasks import task_items

        prompts = [item["prompt"] for item in task_items(args.task, args.n, args.seed)]
    else:
        prompts = read_prompts(args)
    backend = open_model(args)
    print(f"l2lang: calibrating {backend.model_id} on {len(prompts)} prompt(s) ...", file=sys.stderr)
    profile = calibrate(backend, prompts, max_new_tokens=args.max_new_tokens, chat=args.chat, seed=args.seed,
                        batch_size=args.batch_size)
    write_profile(profile, out)
    last = profile["layers"][str(len(profile["layers"]) - 1)]
    print(f"{args.out}: {len(profile['layers'])} layers, {last['count']} decode tokens per layer; "
          f"last layer p50 {last['p50']:.1f}, p95 {last['p95']:.1f}")
    return 0
