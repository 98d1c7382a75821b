"""`l2lang eval --strategies S,... --task T`: accuracy and cost of strategies on the same task items."""

from __future__ import annotations

import argparse
import sys

from l2lang.cli.options import (
    DEFAULT_MODEL,
    allow_other_model_option,
    batch_option,
    chat_option,
    model_name,
    model_option,
    open_model,
    output_folder,
    seed_option,
    tokens_option,
    whole,
)
from l2lang.errors import L2Error


def add_parser(commands) -> None:
    parser = commands.add_parser("eval", help="accuracy and cost of strategies on the same task items")
    model_option(parser)
    parser.add_argument("--strategies", required=True, nargs="+", metavar="S",
                        help="comma-separated names or files, each with optional :k=v,... params "
                        "(e.g. baseline,alrr:warmup=32,lrs:n=4)")
    parser.add_argument("--task", required=True, metavar="T",
                        help="reasoning_gym:NAME[:k=v,...], a BIG-bench task.json, or a JSONL of question/answer")
    parser.add_argument("--baseline", default=None, metavar="S", help="the strategy the paired columns compare "
                        "with, as listed (default: `baseline` if listed, else the first)")
    parser.add_argument("--n", type=whole(1), default=50, metavar="N", help="items (default 50)")
    seed_option(parser)
    tokens_option(parser, 256)
    batch_option(parser)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--out", default="eval", metavar="DIR", help="results.jsonl, results.md, report.html "
                        "(default ./eval; re-running resumes)")
    chat_option(parser)
    parser.add_argument("--rescore", action="store_true", help="re-score the recorded answers of the run in "
                        "--out from their texts under the current answer convention (no model is loaded)")
    allow_other_model_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    model_name(args)  # a wrong --model fails before anything loads
    from l2lang.apps.eval_report import write_report  # torch loads only here
    from l2lang.apps.evaluate import convention_changes, evaluate, markdown_table, parse_arms, rescore, summarise
    from l2lang.apps.tasks import load_task

    arms = parse_arms(args.strategies, allow_other_model=args.allow_other_model)
    if args.baseline is not None and args.baseline not in {a.label for a in arms}:
        raise L2Error.one(f"--baseline {args.baseline}: not one of the strategies listed", path="<command line>")
    task = load_task(args.task, args.n, args.seed)
    folder = output_folder(args.out)
    if args.rescore:
        command = {"model": args.model or DEFAULT_MODEL, "task": task.spec, "seed": args.seed,
                   "max_new_tokens": args.max_new_tokens, "chat": args.chat, "batch_size": args.batch_size,
                   "dtype": args.dtype}
        records, settings = rescore(arms, task, folder, command)
        for line in convention_changes(records, arms):
            print(f"l2lang: {line}", file=sys.stderr)
    else:
        backend = open_model(args, dtype=args.dtype)
        print(f"l2lang: {len(arms)} strategies × {len(task.items)} items of {args.task} on {backend.model_id}",
              file=sys.stderr)
        records, settings = evaluate(backend, arms, task, folder, seed=args.seed,
                                     max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                     chat=args.chat, dtype=args.dtype)
    rows = summarise(records, arms, args.baseline)
    write_report(rows, settings, folder)
    print(markdown_table(rows))
    print(f"\n{folder / 'results.jsonl'}, results.md, summary.json, report.html", file=sys.stderr)
    return 0
