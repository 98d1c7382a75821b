"""Options and inputs several commands share: --model/--layers, --set, --prompt(s), --chat, --seed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from l2lang.errors import L2Error


def model_shape_options(parser: argparse.ArgumentParser) -> None:
    """`--layers N | --model M`: the shape a plan is compiled for, without loading weights."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--layers", type=int, metavar="N", help="the model's number of decoder layers")
    group.add_argument("--model", metavar="M", help="built-in model alias or local HF folder")


DEFAULT_MODEL = "smollm2-135m"


def model_option(parser: argparse.ArgumentParser) -> None:
    """`--model M` and `--backend B`: the model to load and the inference engine to run it in."""
    parser.add_argument("--model", default=None, metavar="M", help="alias, HF folder, .gguf file or hub id "
                        f"(default: {DEFAULT_MODEL})")
    parser.add_argument("--backend", default="hf", choices=["hf"], help="inference engine (default: hf)")


def open_model(args: argparse.Namespace, dtype: str = "float32"):
    """The backend the command line asks for, with its model loaded."""
    from l2lang.backends.base import open_backend

    return open_backend(args.backend, args.model or DEFAULT_MODEL, dtype=dtype)


def set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a param (repeatable); `ns.NAME` for a used file's param")


def allow_other_model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-other-model", action="store_true",
                        help="run a bundle on weights other than those it was packed for (recorded in the run)")


def prompt_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--prompt", metavar="TEXT")
    group.add_argument("--prompts", metavar="FILE.jsonl", help='one {"prompt": ...} per line')


def chat_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                        help="apply the tokenizer's chat template (default: when it has one)")


def seed_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, metavar="S")


def parse_sets(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise L2Error.one(f"--set {item}: write NAME=VALUE", path="<command line>")
        out[name.strip()] = value.strip()
    return out


def read_prompts(args) -> list[str]:
    if getattr(args, "prompt", None) is not None:
        return [args.prompt]
    path = Path(args.prompts)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeError) as exc:
        raise L2Error.one(f"cannot read prompts: {exc}", path=str(path)) from None
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            prompts.append(str(item["prompt"]))
        except (ValueError, KeyError, TypeError):
            raise L2Error.one('each line must be a JSON object with a "prompt"', path=f"{path}:{number}") from None
    if not prompts:
        raise L2Error.one("no prompts in the file", path=str(path))
    return prompts
