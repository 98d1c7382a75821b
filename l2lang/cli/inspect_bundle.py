"""`l2lang inspect FILE.l2b`: what a bundle holds, for which model, with which hashes (verified first)."""

from __future__ import annotations

import argparse
import json

from l2lang.errors import L2Error, printable_lines
from l2lang.lang.bundle import is_bundle_path
from l2lang.lang.compose import load_program


def add_parser(commands) -> None:
    parser = commands.add_parser("inspect", help="show what a bundle holds, for which model, with which hashes")
    parser.add_argument("file", metavar="FILE.l2b")
    parser.add_argument("--json", action="store_true", help="print the id and the manifest as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if not is_bundle_path(args.file):
        raise L2Error.one("inspect reads bundles (.l2b); `l2lang explain` shows a strategy file", path=args.file)
    bundle = load_program(args.file, allow_other_model=True).bundle  # verifies every member and the fingerprint
    manifest = bundle.manifest
    if args.json:
        # (ASCII, every other character \u-escaped: escape sequences in the packer's text stay inert)
        print(json.dumps({"id": bundle.id, "manifest": manifest.model_dump()}, indent=2))
        return 0
    model = manifest.model
    lines = [f"bundle {args.file}", f"id          {bundle.id}",
             f"format      {manifest.format}, packed by l2lang {manifest.l2lang}",
             f"strategy    {manifest.strategy} (fingerprint {manifest.fingerprint})",
             "params      " + (", ".join(f"{k}={v}" for k, v in manifest.overrides.items()) + " (frozen)"
                               if manifest.overrides else "defaults"),
             "model       " + (f"{model.id}, {model.layers} layers, hidden size {model.hidden_size}, weights sha256 "
                               f"{model.weights_sha256}" if model else "any (it holds nothing derived from a model)")]
    lines += [f"derived     {name} -> {member}" for name, member in manifest.derived.items()]
    lines += [f"created     {json.dumps(manifest.created, ensure_ascii=False)}", "members     sha256, bytes"]
    width = max(map(len, manifest.members))
    lines += [f"  {name:<{width}}  {digest}  {len(bundle.members[name])}" for name, digest in manifest.members.items()]
    lines.append("verified    the seal, every member's sha256 and the strategy's fingerprint")
    print(printable_lines("\n".join(lines)))  # (the manifest's text is the packer's, untrusted)
    return 0
