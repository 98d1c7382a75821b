"""The `l2lang` command line: check, fmt, explain, run, trace, calibrate, eval. User errors exit 1 with a message."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from l2lang.lang.check import check_program
from l2lang.lang.compose import load_program, read_strategy_file, resolve_target
from l2lang.errors import L2Error
from l2lang.plan.explain import explain_text
from l2lang.plan.shape import resolve_shape
from l2lang.plan import compile_plan
from l2lang.lang.format import format_strategy


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except L2Error as exc:
        if args.debug:
            raise
        print(exc.render(), file=sys.stderr)
        return 1
    except RecursionError:
        if args.debug:
            raise
        print("error: input is nested too deeply to process", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="l2lang", description="Strategy files for steering how LMs think.")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("check", help="check strategy files (and their layers, given a model)")
    check.add_argument("files", nargs="+", metavar="FILE")
    _model_options(check)
    _set_option(check)
    check.set_defaults(handler=run_check)

    fmt = commands.add_parser("fmt", help="rewrite strategy files in canonical form")
    fmt.add_argument("files", nargs="+", metavar="FILE")
    fmt.add_argument("--check", action="store_true", help="only report files that are not formatted")
    fmt.set_defaults(handler=run_fmt)

    run = commands.add_parser("run", help="generate with a strategy attached")
    run.add_argument("strategy", metavar="STRATEGY")
    run.add_argument("--model", default=None, metavar="M", help="alias, HF folder, .gguf file or hub id "
                     "(default: smollm2-135m)")
    prompts = run.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompt", metavar="TEXT")
    prompts.add_argument("--prompts", metavar="FILE.jsonl", help='one {"prompt": ...} per line')
    run.add_argument("--max-new-tokens", type=int, default=64, metavar="N")
    run.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0: greedy (default)")
    run.add_argument("--top-p", type=float, default=None, metavar="P")
    run.add_argument("--top-k", type=int, default=None, metavar="K")
    run.add_argument("--seed", type=int, default=0, metavar="S")
    run.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                     help="apply the tokenizer's chat template (default: when it has one)")
    run.add_argument("--json", action="store_true", help="print outputs and manifest as one JSON object")
    _set_option(run)
    run.set_defaults(handler=run_generate)

    trace = commands.add_parser("trace", help="write norms per token and layer, a heatmap and an HTML report")
    target = trace.add_mutually_exclusive_group(required=True)
    target.add_argument("strategy", nargs="?", metavar="STRATEGY")
    target.add_argument("--observe", action="store_true", help="observe only, with no strategy")
    trace.add_argument("--model", default=None, metavar="M", help="as for `run` (default: smollm2-135m)")
    trace_prompts = trace.add_mutually_exclusive_group(required=True)
    trace_prompts.add_argument("--prompt", metavar="TEXT")
    trace_prompts.add_argument("--prompts", metavar="FILE.jsonl", help='one {"prompt": ...} per line')
    trace.add_argument("--out", required=True, metavar="DIR")
    trace.add_argument("--max-new-tokens", type=int, default=64, metavar="N")
    trace.add_argument("--seed", type=int, default=0, metavar="S")
    trace.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                       help="apply the tokenizer's chat template (default: when it has one)")
    _set_option(trace)
    trace.set_defaults(handler=run_trace)

    calibrate = commands.add_parser("calibrate", help="record per-layer norm quantiles for calibrated(...)")
    calibrate.add_argument("--model", default=None, metavar="M", help="as for `run` (default: smollm2-135m)")
    source = calibrate.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompts", metavar="FILE.jsonl", help='one {"prompt": ...} per line')
    source.add_argument("--task", metavar="T",
                        help="reasoning_gym:NAME[:k=v,...], a BIG-bench task.json, or a JSONL of question/answer")
    calibrate.add_argument("--n", type=int, default=32, metavar="N", help="items drawn from --task (default 32)")
    calibrate.add_argument("--out", required=True, metavar="PROFILE.json")
    calibrate.add_argument("--max-new-tokens", type=int, default=64, metavar="N")
    calibrate.add_argument("--batch-size", type=int, default=8, metavar="B")
    calibrate.add_argument("--seed", type=int, default=0, metavar="S")
    calibrate.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                           help="apply the tokenizer's chat template (default: when it has one)")
    calibrate.set_defaults(handler=run_calibrate)

    evaluate = commands.add_parser("eval", help="accuracy and cost of strategies on the same task items")
    evaluate.add_argument("--model", default=None, metavar="M", help="as for `run` (default: smollm2-135m)")
    evaluate.add_argument("--strategies", required=True, nargs="+", metavar="S",
                          help="comma-separated names or files, each with optional :k=v,... params "
                          "(e.g. baseline,alrr:warmup=32,lrs:n=4)")
    evaluate.add_argument("--task", required=True, metavar="T",
                          help="reasoning_gym:NAME[:k=v,...], a BIG-bench task.json, or a JSONL of question/answer")
    evaluate.add_argument("--baseline", default=None, metavar="S", help="the strategy the paired columns compare "
                          "with, as listed (default: `baseline` if listed, else the first)")
    evaluate.add_argument("--n", type=int, default=50, metavar="N", help="items (default 50)")
    evaluate.add_argument("--seed", type=int, default=0, metavar="S")
    evaluate.add_argument("--max-new-tokens", type=int, default=256, metavar="K")
    evaluate.add_argument("--batch-size", type=int, default=8, metavar="B")
    evaluate.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    evaluate.add_argument("--out", default="eval", metavar="DIR", help="results.jsonl, results.md, report.html "
                          "(default ./eval; re-running resumes)")
    evaluate.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                          help="apply the tokenizer's chat template (default: when it has one)")
    evaluate.set_defaults(handler=run_eval)

    explain = commands.add_parser("explain", help="show resolved layers, thresholds and the executor graph")
    explain.add_argument("file", metavar="FILE")
    _model_options(explain)
    _set_option(explain)
    explain.add_argument("--json", action="store_true", help="print the plan as JSON")
    explain.set_defaults(handler=run_explain)
    for sub in (check, fmt, explain, run, calibrate, trace, evaluate):
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--layers", type=int, metavar="N", help="the model's number of decoder layers")
    group.add_argument("--model", metavar="M", help="built-in model alias or local HF folder")


def _set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a param (repeatable); `ns.NAME` for a used file's param")


def parse_sets(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise L2Error.one(f"--set {item}: write NAME=VALUE", path="<command line>")
        out[name.strip()] = value.strip()
    return out


def run_check(args) -> int:
    shape = resolve_shape(args.model, args.layers)
    failures: list[L2Error] = []
    for file in args.files:
        try:
            program = load_program(file, parse_sets(args.set))
            if shape is None:
                check_program(program)
            else:
                plan = compile_plan(program, shape.layers, shape.hidden_size)
                for warning in plan.warnings:
                    print(f"{warning} [warning]", file=sys.stderr)
        except L2Error as exc:
            failures.append(exc)
            print(exc.render(), file=sys.stderr)
            continue
        where = f" for {shape.name}" if shape else ""
        print(f"{file}: ok{where} (fingerprint {program.fingerprint})")
    return 1 if failures else 0


def run_fmt(args) -> int:
    status = 0
    for file in args.files:
        path = resolve_target(file, None) if not Path(file).exists() else Path(file)
        if path is None:
            raise L2Error.one(f"no such file: {file}", path=file)
        source, strategy = read_strategy_file(path)
        formatted = format_strategy(strategy)
        if formatted == source:
            continue
        if args.check:
            print(f"{file}: would be reformatted", file=sys.stderr)
            status = 1
        else:
            path.write_text(formatted, encoding="utf-8")
            print(f"{file}: formatted")
    return status


def run_explain(args) -> int:
    program = load_program(args.file, parse_sets(args.set))
    shape = resolve_shape(args.model, args.layers)
    if shape is None:
        check_program(program)
        print(explain_text(program, None))
        return 0
    plan = compile_plan(program, shape.layers, shape.hidden_size)
    print(plan.to_json() if args.json else explain_text(program, plan))
    return 0


def run_trace(args) -> int:
    from l2lang.cli.commands import trace_command  # torch and transformers load only here

    return trace_command(args, parse_sets(args.set))


def run_calibrate(args) -> int:
    from l2lang.cli.commands import calibrate_command  # torch and transformers load only here

    return calibrate_command(args)


def run_eval(args) -> int:
    from l2lang.cli.commands import eval_command  # torch and transformers load only here

    return eval_command(args)


def run_generate(args) -> int:
    from l2lang.cli.commands import run_command  # torch and transformers load only for `run`

    return run_command(args, parse_sets(args.set))


if __name__ == "__main__":
    raise SystemExit(main())
