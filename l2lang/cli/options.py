"""Options and inputs several commands share: --model/--layers, --set, --prompt(s), --chat, --seed, --out.

Numbers are checked by argparse (a bad one is a usage error, exit 2, before anything loads); prompts
and output paths are checked before the model is loaded, so a mistake never waits for the model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

from l2lang.errors import L2Error
from l2lang.lang.files import read_text_file
from l2lang.lang.parser import command_line_number
from l2lang.paths import exists, is_folder

MAX_SEED = 2**63 - 1  # seeds of the strategy's coins and of sampling (torch takes 64 bits)


def whole(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from `low` (to `high`)."""

    def parse(text: str) -> int:
        sign, digits = (text[0], text[1:]) if text[:1] in "+-" else ("", text)
        if not (digits.isascii() and digits.isdigit()):
            raise argparse.ArgumentTypeError(f"{_short(text)!r} is not a whole number")
        if len(digits) > 30 or not low <= int(sign + digits) <= (high if high is not None else math.inf):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{_short(text)} is out of range: it must be {bound}")
        return int(sign + digits)

    return parse


def number(low: float, high: float = math.inf, *, above: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in [low, high] (in (low, high] when `above`)."""

    def parse(text: str) -> float:
        try:
            value = command_line_number(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{_short(text)!r}: {exc}") from None
        if value < low or value > high or (above and value == low):
            bound = (f"in ({low:g}, {high:g}]" if above else f"from {low:g} to {high:g}") if high < math.inf \
                else f"above {low:g}" if above else f"at least {low:g}"
            raise argparse.ArgumentTypeError(f"{_short(text)} is out of range: it must be {bound}")
        return value

    return parse


def _short(text: str) -> str:
    return text if len(text) <= 24 else text[:20] + "…"


def model_shape_options(parser: argparse.ArgumentParser) -> None:
    """`--layers N | --model M`: the shape a plan is compiled for, without loading weights."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--layers", type=whole(1), metavar="N", help="the model's number of decoder layers")
    group.add_argument("--model", metavar="M", help="built-in model alias or local HF folder")


DEFAULT_MODEL = "smollm2-135m"


def model_option(parser: argparse.ArgumentParser) -> None:
    """`--model M` and `--backend B`: the model to load and the inference engine to run it in."""
    parser.add_argument("--model", default=None, metavar="M", help="alias, HF folder, .gguf file or hub id "
                        f"(default: {DEFAULT_MODEL})")
    parser.add_argument("--backend", default="hf", choices=["hf", "vllm"],
                        help="inference engine: hf (transformers, default) or vllm (docs/runtime.md)")


def model_name(args: argparse.Namespace) -> str:
    """`--model` (or the default), refused at once, before torch loads, when it cannot name a model:
    a missing folder, a folder without config.json, a near miss of a built-in alias."""
    from l2lang.plan.shape import ALIASES, not_a_model

    spec = args.model or DEFAULT_MODEL
    refused = not_a_model(spec, list(ALIASES))
    if refused is not None:
        raise refused
    return spec


def open_model(args: argparse.Namespace, dtype: str = "float32"):
    """The backend the command line asks for, with its model loaded."""
    spec = model_name(args)
    from l2lang.backends.base import open_backend

    say(f"loading {spec} ...")
    return open_backend(args.backend, spec, dtype=dtype)


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
    parser.add_argument("--seed", type=whole(0, MAX_SEED), default=0, metavar="S",
                        help="seed of coins and sampling, 0 to 2**63-1 (default 0)")


def tokens_option(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument("--max-new-tokens", type=whole(1), default=default, metavar="N",
                        help=f"tokens to generate per answer, at least 1 (default {default})")


def batch_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=whole(1), default=8, metavar="B", help="prompts per batch (default 8)")


def output_folder(path: str) -> Path:
    """`--out DIR`: made (with its parents) when missing; refused when it is a file or cannot be written."""
    folder = Path(path)
    if exists(folder) and not is_folder(folder):
        raise L2Error.one(f"--out {path}: this is a file, not a folder", path="<command line>",
                          hint="name a folder to write into (it is created when missing)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise L2Error.one(f"--out {path}: cannot create the folder ({exc.strerror or exc})",
                          path="<command line>") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise L2Error.one(f"--out {path}: the folder is not writable", path="<command line>")
    return folder


def output_file(path: str) -> Path:
    """`--out FILE`: refused when it is a folder, its folder is missing, or it cannot be written."""
    file = Path(path)
    if is_folder(file):
        raise L2Error.one(f"--out {path}: this is a folder; name the file to write", path="<command line>",
                          hint=f"e.g. --out {file / 'profile.json'}")
    folder = file.parent
    if not is_folder(folder):
        raise L2Error.one(f"--out {path}: no such folder: {folder}", path="<command line>",
                          hint=f"create it first (mkdir -p {folder})")
    if not os.access(folder, os.W_OK | os.X_OK) or (exists(file) and not os.access(file, os.W_OK)):
        raise L2Error.one(f"--out {path}: cannot write there", path="<command line>")
    return file


def say(message: str) -> None:
    """A line on stderr about what a long command is doing, when stderr is a terminal."""
    if sys.stderr.isatty():
        print(f"l2lang: {message}", file=sys.stderr, flush=True)


def parse_sets(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise L2Error.one(f"--set {item}: write NAME=VALUE", path="<command line>")
        out[name.strip()] = value.strip()
    return out


def read_prompts(args) -> list[str]:
    """`--prompt TEXT` or the prompts of `--prompts FILE.jsonl`, each a non-empty string of valid text."""
    if getattr(args, "prompt", None) is not None:
        return [_prompt_text(args.prompt, "--prompt", "<command line>")]
    path = Path(args.prompts)
    lines = read_text_file(str(path), "the prompts file").splitlines()
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            prompt = item["prompt"]
        except (ValueError, KeyError, TypeError, IndexError, RecursionError):
            raise L2Error.one('each line must be a JSON object with a "prompt"', path=f"{path}:{number}") from None
        if not isinstance(prompt, str):
            raise L2Error.one(f'"prompt" must be a string, not {type(prompt).__name__}', path=f"{path}:{number}")
        prompts.append(_prompt_text(prompt, "the prompt", f"{path}:{number}"))
    if not prompts:
        raise L2Error.one("no prompts in the file", path=str(path))
    return prompts


def _prompt_text(text: str, what: str, where: str) -> str:
    if not text:
        raise L2Error.one(f"{what} is empty", path=where, hint="give the model something to answer")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise L2Error.one(f"{what} is not valid text: character {exc.start + 1} is a lone surrogate "
                          f"({text[exc.start]!a}), e.g. from bytes that are not UTF-8", path=where) from None
    return text
