"""Where each supported model family keeps its decoder layers.

A table, not a chain of `if`s: `model_type` → attribute path from the causal-LM module to the
`ModuleList` of decoder layers. Anything else is refused with the model's class name.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from l2lang.errors import UnsupportedError

LAYER_PATHS = {
    "llama": "model.layers",
    "mistral": "model.layers",
    "qwen2": "model.layers",
    "qwen3": "model.layers",
    "gemma": "model.layers",
    "gemma2": "model.layers",
    "gemma3_text": "model.layers",
    "gemma3": "model.language_model.layers",
    "phi3": "model.layers",
    "gpt2": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
}


@dataclass(frozen=True)
class ModelAdapter:
    """The decoder layers of one model, and its hidden size."""

    layers: nn.ModuleList
    hidden_size: int
    model_type: str

    @property
    def num_layers(self) -> int:
        return len(self.layers)


def adapt(model: nn.Module) -> ModelAdapter:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    path = LAYER_PATHS.get(model_type or "")
    if path is None:
        raise UnsupportedError.one(f"{type(model).__name__} (model_type {model_type!r}) is not supported",
                          hint=f"supported families: {', '.join(sorted(LAYER_PATHS))}", path="<model>")
    module = model
    for part in path.split("."):
        module = getattr(module, part)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(text_config, "hidden_size", None) or text_config.n_embd
    return ModelAdapter(layers=module, hidden_size=int(hidden), model_type=model_type)
