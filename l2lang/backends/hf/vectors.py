"""Steering vectors for a Hugging Face model: loaded from safetensors, or derived from contrasting prompts.

Vector files are read through the program's confined files (`Program.files`, filled when the plan
was compiled) and parsed by safetensors from bytes; nothing is unpickled. A `contrast(...)` vector
that a bundle stores (computed when it was packed) is loaded like a file instead of derived.
"""

from __future__ import annotations

import torch
from torch import nn

from l2lang import plan as P
from l2lang.backends.hf.layers import ModelAdapter
from l2lang.engine.strategy import Strategy
from l2lang.errors import CompileError, L2Error
from l2lang.lang.files import FileRef, FileRefused
from l2lang.plan.datafiles import parse_safetensors, vector_entry


def vector_for(spec: P.VectorPlan, strategy: Strategy, model: nn.Module, adapter: ModelAdapter,
               tokenizer) -> torch.Tensor:
    """The vector `spec` names, on the model's device and dtype, checked against its hidden size."""
    parameter = next(model.parameters())
    if spec.path is not None:
        vector = load_vector(strategy.program.files[spec.path], spec.key)
    else:
        derived = strategy.derived.setdefault(model, {})
        key = f"{id(tokenizer)}:{spec.model_dump_json()}"  # derived with this tokenizer
        if key not in derived:
            derived[key] = contrast_vector(model, adapter, tokenizer, spec)
        vector = derived[key]
    vector = vector.reshape(-1)
    if vector.numel() != adapter.hidden_size:
        raise L2Error.one(f"vector `{spec.name}` has {vector.numel()} values; the model's hidden size is "
                          f"{adapter.hidden_size}", path=spec.path or "<vector>")
    return vector.to(device=parameter.device, dtype=parameter.dtype)


def load_vector(file: FileRef, key: str | None) -> torch.Tensor:
    """The vector `key` of a safetensors file, validated first; refused if any value is NaN or infinite."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        data = file.read("vectors")
        key, _ = vector_entry(parse_safetensors(data), key, file.name)
        vector = load(data)[key]
    except FileRefused as exc:
        raise CompileError.one(f"the vector file {exc.reason}", hint=exc.hint, path=file.display) from None
    except SafetensorError as exc:
        raise CompileError.one(f"the vector file is not a valid safetensors file: {exc}", path=file.display) from None
    if not torch.isfinite(vector).all():
        raise CompileError.one(f"vector `{key}` has NaN or infinite values", path=file.display)
    return vector


@torch.no_grad()
def contrast_vector(model: nn.Module, adapter: ModelAdapter, tokenizer, spec: P.VectorPlan) -> torch.Tensor:
    """Mean last-token state after `spec.layer` over the positive prompts minus over the negative ones.

    The state is caught with a temporary hook of our own (not `output_hidden_states`, which makes
    transformers install permanent hooks of its own).
    """
    if tokenizer is None:
        raise L2Error.one(f"vector `{spec.name}` is derived from prompts: attach with a tokenizer",
                          path="<vector>")
    caught: list[torch.Tensor] = []

    def catch(module, args, output):
        caught.append((output[0] if isinstance(output, tuple) else output)[0, -1].float())

    def mean_state(prompts: tuple[str, ...]) -> torch.Tensor:
        caught.clear()
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt").input_ids.to(next(model.parameters()).device)
            if ids.shape[-1] == 0:
                raise CompileError.one(f"vector `{spec.name}`: the contrast prompt {prompt!r} gives no tokens with "
                                       "this tokenizer, so it has no last state", path="<vector>",
                                       hint="write a prompt with some text in it")
            model(ids, use_cache=False)
        return torch.stack(caught).mean(dim=0)

    handle = adapter.layers[spec.layer].register_forward_hook(catch)
    try:
        return mean_state(spec.positive) - mean_state(spec.negative)
    finally:
        handle.remove()
