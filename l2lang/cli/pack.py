"""`l2lang pack STRATEGY --out FILE.l2b`: the strategy and everything it needs, as one verified bundle."""

from __future__ import annotations

import argparse

from l2lang.cli.options import parse_sets, set_option


def add_parser(commands) -> None:
    parser = commands.add_parser("pack", help="pack a strategy and every file it needs into one bundle")
    parser.add_argument("strategy", metavar="STRATEGY", help="shipped name or .l2 file")
    parser.add_argument("--model", default=None, metavar="M",
                        help="the model it is for: contrast(...) vectors are computed on it and the bundle refuses "
                        "other weights (alias, local folder or .gguf file)")
    set_option(parser)
    parser.add_argument("--out", required=True, metavar="FILE.l2b")
    parser.add_argument("--force", action="store_true", help="replace FILE if it exists")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from l2lang.apps.pack import pack

    identity, manifest = pack(args.strategy, args.out, model=args.model, overrides=parse_sets(args.set),
                              force=args.force)
    target = f"for {manifest.model.id} (weights {manifest.model.weights_sha256[:12]}…)" if manifest.model else \
        "for any model"
    derived = f", {len(manifest.derived)} derived vector(s)" if manifest.derived else ""
    print(f"{args.out}: bundle {identity} — {len(manifest.members)} member(s){derived}, {target}; "
          f"fingerprint {manifest.fingerprint}")
    return 0
