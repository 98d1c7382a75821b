"""The two numbers a plan needs from a model, without loading its weights: layers and hidden size.

`--model` takes a built-in alias or a local Hugging Face folder (its `config.json` is read). Loading
real weights (GGUF packages, hub ids) belongs to the runtime.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from l2lang.errors import L2Error
from l2lang.lang.files import FileRefused, parse_json, read_regular
from l2lang.paths import exists, is_file, is_folder


@dataclass(frozen=True)
class ModelShape:
    name: str
    layers: int
    hidden_size: int | None = None


# Built-in models (see docs/models.md): decoder layers and hidden size of each.
ALIASES = {
    "smollm2-135m": ModelShape("smollm2-135m", 30, 576),
    "qwen2.5-coder-0.5b": ModelShape("qwen2.5-coder-0.5b", 24, 896),
    "qwen2.5-coder-1.5b": ModelShape("qwen2.5-coder-1.5b", 28, 1536),
}

_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
_HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model")
CONFIG_LIMIT = 4 << 20  # bytes of a config.json


def shape_from_config(config: object, name: str) -> ModelShape:
    """Read layers and hidden size from a HF config dict (multimodal ones nest a `text_config`)."""
    if not isinstance(config, dict):
        raise L2Error.one("config.json is not a JSON object", path=name)
    text = config.get("text_config") or config
    if not isinstance(text, dict):
        raise L2Error.one("config.json's text_config is not a JSON object", path=name)
    layers = next((text[k] for k in _LAYER_KEYS if _count(text.get(k))), None)
    hidden = next((text[k] for k in _HIDDEN_KEYS if text.get(k) is not None), None)
    if hidden is not None and not _count(hidden):
        raise L2Error.one(f"config.json gives hidden size {str(hidden)[:40]}, not a whole number above 0",
                          path=name)
    if layers is None:
        raise L2Error.one(f"config.json gives no layer count (a whole number above 0 as "
                          f"{', '.join(_LAYER_KEYS)})", path=name)
    return ModelShape(name, layers, hidden)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def resolve_shape(model: str | None, layers: int | None) -> ModelShape | None:
    """`--layers N` or `--model M` → a shape; None when neither is given."""
    if layers is not None:
        return ModelShape(f"{layers} layers", layers)
    if model is None:
        return None
    if model in ALIASES:
        return ALIASES[model]
    config = Path(model) / "config.json"
    if is_file(config):
        try:
            return shape_from_config(parse_json(read_regular(str(config), CONFIG_LIMIT)), model)
        except FileRefused as exc:
            raise L2Error.one(f"{config} {exc.reason}", path=model, hint=exc.hint) from None
    refused = not_a_model(model, list(ALIASES))
    if refused is not None:
        raise refused
    raise L2Error.one(f"unknown model {model!r}: not a built-in alias and not a folder with config.json",
                      hint=f"built-in models: {', '.join(ALIASES)}; or pass --layers N", path=model)


def not_a_model(spec: str, aliases: list[str]) -> L2Error | None:
    """The error for a `--model` that can be neither a local model nor a hub id, found without any network
    access: a missing path ("no such folder"), a folder without config.json, or a near miss of an alias."""
    path = Path(spec).expanduser()
    hint = f"built-in models: {', '.join(aliases)}"
    if is_folder(path) and not is_file(path / "config.json"):
        return L2Error.one(f"--model {spec}: this folder has no config.json, so it is not a Hugging Face model "
                           "folder", path="<command line>", hint=hint)
    if exists(path) and not is_folder(path) and not spec.endswith(".gguf"):
        return L2Error.one(f"--model {spec}: this is a file; a model is a folder, a .gguf file or an alias",
                           path="<command line>", hint=hint)
    if not exists(path) and _looks_like_path(spec):
        return L2Error.one(f"--model {spec}: no such folder", path="<command line>", hint=hint)
    near = difflib.get_close_matches(spec.lower(), aliases, n=1, cutoff=0.6)
    if near and spec not in aliases and not exists(path):
        return L2Error.one(f"--model {spec}: no built-in model of that name", path="<command line>",
                           hint=f"did you mean `{near[0]}`? ({hint})")
    return None


def _looks_like_path(spec: str) -> bool:
    """A spec only a local path can mean: absolute, starting with `.` or `~`, or inside a folder that exists."""
    if spec.startswith((".", "~", "/")) or Path(spec).is_absolute() or spec.endswith(".gguf"):
        return True
    parent = Path(spec).parent
    return str(parent) != "." and is_folder(parent)
