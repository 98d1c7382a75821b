"""`l2lang fmt FILE...`: rewrite strategy files in canonical form (`--check`: only report)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from l2lang.errors import L2Error, printable
from l2lang.lang.bundle import is_bundle_path
from l2lang.lang.compose import read_strategy
from l2lang.lang.files import file_argument
from l2lang.lang.format import format_strategy
from l2lang.resources import shipped_strategies


def add_parser(commands) -> None:
    parser = commands.add_parser("fmt", help="rewrite strategy files in canonical form")
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument("--check", action="store_true", help="only report files that are not formatted")
    parser.set_defaults(handler=run)


def run(args) -> int:
    status = 0
    for file in args.files:
        if is_bundle_path(file):
            raise L2Error.one("a bundle is sealed: fmt rewrites .l2 files", path=file,
                              hint="format the strategy file, then pack it again")
        path = Path(file) if os.path.lexists(file) else shipped_strategies().get(file)
        if path is None:
            raise L2Error.one(f"no such file: {file}", path=file)
        source, strategy = read_strategy(file_argument(path))
        formatted = format_strategy(strategy)
        if formatted == source:
            continue
        if args.check:
            print(printable(f"{file}: would be reformatted"), file=sys.stderr)
            status = 1
        else:
            path.write_text(formatted, encoding="utf-8")  # (through a link: formatting a linked file edits it)
            print(printable(f"{file}: formatted"))
    return status
