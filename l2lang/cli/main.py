"""`l2lang`: check, fmt, explain, run, trace, calibrate, eval, pack, inspect. User errors exit 1 with a message.

Each command is a module of this package with `add_parser(commands)` and `run(args)`; commands that
load a model import torch and transformers only when they run, so `check` and `fmt` stay fast.
Ctrl-C exits 130 with one line; a reader that goes away (`l2lang check ... | head`) ends the command
quietly (exit 141, as a process killed by SIGPIPE). `--debug` shows the Python traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys

from l2lang.cli import (
    calibrate,
    check,
    eval,
    explain,
    fmt,
    inspect_bundle,
    pack,
    run,
    trace,
)
from l2lang.errors import L2Error

COMMANDS = (check, fmt, explain, run, trace, calibrate, eval, pack, inspect_bundle)


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
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("l2lang: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if args.debug:
            raise
        _drop_stdout()
        return 141
    except OSError as exc:  # a file the system would not let l2lang read or write (a folder, no permission, ...)
        if args.debug:
            raise
        print(L2Error.one((exc.strerror or str(exc)).lower(), path=str(exc.filename or "l2lang")).render(),
              file=sys.stderr)
        return 1


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a file descriptor (captured, closed)
        pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="l2lang", description="Strategy files for steering how LMs think.")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(commands)
    for sub in commands.choices.values():
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
