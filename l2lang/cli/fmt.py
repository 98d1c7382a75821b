"""`l2lang fmt FILE...`: rewrite strategy files in canonical form (`--check`: only report)."""

from __future__ import annotations

import sys
from pathlib import Path

from l2lang.errors import L2Error
from l2lang.lang.compose import read_strategy_file, resolve_target
from l2lang.lang.format import format_strategy
from l2lang.paths import exists


def add_parser(commands) -> None:
    parser = commands.add_parser("fmt", help="rewrite strategy files in canonical form")
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument("--check", action="store_true", help="only report files that are not formatted")
    parser.set_defaults(handler=run)


def run(args) -> int:
    status = 0
    for file in args.files:
        path = resolve_target(file, None) if not exists(file) else Path(file)
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
