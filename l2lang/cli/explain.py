"""`l2lang explain FILE`: resolved layers, thresholds and the executor graph (`--json`: the plan)."""

from __future__ import annotations

from l2lang.cli.options import model_shape_options, parse_sets, set_option
from l2lang.errors import printable_lines
from l2lang.lang.check import check_program
from l2lang.lang.compose import load_program
from l2lang.plan import compile_plan
from l2lang.plan.explain import explain_text
from l2lang.plan.shape import resolve_shape


def add_parser(commands) -> None:
    parser = commands.add_parser("explain", help="show resolved layers, thresholds and the executor graph")
    parser.add_argument("file", metavar="FILE")
    model_shape_options(parser)
    set_option(parser)
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.set_defaults(handler=run)


def run(args) -> int:
    program = load_program(args.file, parse_sets(args.set))
    shape = resolve_shape(args.model, args.layers)
    if shape is None:
        check_program(program)
        print(printable_lines(explain_text(program, None)))  # (names a file brings, such as tensors', inert)
        return 0
    plan = compile_plan(program, shape.layers, shape.hidden_size)
    print(plan.to_json() if args.json else printable_lines(explain_text(program, plan)))
    return 0
