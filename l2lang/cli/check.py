"""`l2lang check FILE...`: parse and check strategy files (and compile them, given a model shape)."""

from __future__ import annotations

import sys

from l2lang.cli.options import model_shape_options, parse_sets, set_option
from l2lang.errors import L2Error, printable
from l2lang.lang.check import check_program
from l2lang.lang.compose import load_program
from l2lang.plan import compile_plan
from l2lang.plan.shape import resolve_shape


def add_parser(commands) -> None:
    parser = commands.add_parser("check", help="check strategy files (and their layers, given a model)")
    parser.add_argument("files", nargs="+", metavar="FILE")
    model_shape_options(parser)
    set_option(parser)
    parser.set_defaults(handler=run)


def run(args) -> int:
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
                    print(warning, file=sys.stderr)
        except L2Error as exc:
            failures.append(exc)
            print(exc.render(), file=sys.stderr)
            continue
        where = f" for {shape.name}" if shape else ""
        print(printable(f"{file}: ok{where} (fingerprint {program.fingerprint})"))
    return 1 if failures else 0
