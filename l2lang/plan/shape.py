"""The two numbers a plan needs from a model, without loading its weights: layers and hidden size.

`--model` takes a built-in alias or a local Hugging Face folder (its `config.json` is read). Loading
real weights (GGUF packages, hub ids) belongs to the runtime.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from l2lang.errors import L2Error


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


def shape_from_config(config: dict, name: str) -> ModelShape:
    """Read layers and hidden size from a HF config dict (multimodal ones nest a `text_config`)."""
    text = config.get("text_config") or config
    layers = next((text[k] for k in _LAYER_KEYS if isinstance(text.get(k), int)), None)
    hidden = next((text[k] for k in _HIDDEN_KEYS if isinstance(text.get(k), int)), None)
    if layers is None:
        raise L2Error.one(f"{name}: config.json gives no layer count ({', '.join(_LAYER_KEYS)})", path=name)
    return ModelShape(name, layers, hidden)


def resolve_shape(model: str | None, layers: int | None) -> ModelShape | None:
    """`--layers N` or `--model M` → a shape; None when neither is given."""
    if layers is not None:
        return ModelShape(f"{layers} layers", layers)
    if model is None:
        return None
    if model in ALIASES:
        return ALIASES[model]
    config = Path(model) / "config.json"
    if config.is_file():
        try:
            return shape_from_config(json.loads(config.read_text(encoding="utf-8")), model)
        except (ValueError, UnicodeError):
            raise L2Error.one(f"{config}: not valid JSON", path=model) from None
    raise L2Error.one(f"unknown model {model!r}: not a built-in alias and not a folder with config.json",
                      hint=f"built-in models: {', '.join(ALIASES)}; or pass --layers N", path=model)
