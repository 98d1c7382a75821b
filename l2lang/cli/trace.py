"""`l2lang trace STRATEGY --prompt TEXT --out DIR`: norms per token and layer, a heatmap, an HTML report."""

from __future__ import annotations

import argparse

from l2lang.cli.options import (
    allow_other_model_option,
    chat_option,
    model_name,
    model_option,
    open_model,
    output_folder,
    parse_sets,
    prompt_options,
    read_prompts,
    seed_option,
    set_option,
    tokens_option,
)
from l2lang.errors import L2Error


def add_parser(commands) -> None:
    parser = commands.add_parser("trace", help="write norms per token and layer, a heatmap and an HTML report")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("strategy", nargs="?", metavar="STRATEGY")
    target.add_argument("--observe", action="store_true", help="observe only, with no strategy")
    model_option(parser)
    prompt_options(parser)
    parser.add_argument("--out", required=True, metavar="DIR")
    tokens_option(parser, 64)
    seed_option(parser)
    chat_option(parser)
    set_option(parser)
    allow_other_model_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    model_name(args)  # a wrong --model fails before anything loads
    from l2lang.apps.trace import trace  # torch loads only here
    from l2lang.engine.strategy import observe_only
    from l2lang.lang.compose import load_program

    program = observe_only() if args.observe else \
        load_program(args.strategy, parse_sets(args.set), allow_other_model=args.allow_other_model)
    if program.sample is not None:
        raise L2Error.one("trace follows one answer per prompt; `sample` strategies are listed by `run --json`",
                          path=str(args.strategy))
    prompts = read_prompts(args)
    folder = output_folder(args.out)
    summary = trace(open_model(args), program, prompts, folder, max_new_tokens=args.max_new_tokens, chat=args.chat,
                    seed=args.seed)
    fired = ", ".join(f"{k}: {v}" for k, v in summary["interventions"].items() if v) or "nowhere"
    print(f"{summary['folder']}: {summary['tokens']} tokens traced for {summary['requests']} prompt(s); "
          f"report.html, heatmap.png, fig1.png, norms.jsonl, norms.csv; fired: {fired}")
    return 0
