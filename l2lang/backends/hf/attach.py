"""The Python interface: a loaded strategy, attached to a model for the length of a `with` block.

    s = l2lang.load("alrr", warmup=50)
    with s.attach(model, tokenizer) as run:
        model.generate(...)
    run.report()
"""

from __future__ import annotations

import weakref
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn

from l2lang import plan as P
from l2lang.lang.compose import Program, compose
from l2lang.errors import L2Error
from l2lang.plan import compile_plan
from l2lang.backends.hf.layers import adapt
from l2lang.engine.executor import Executor
from l2lang.lang.parser import parse


def observe_only() -> Program:
    """`observe 0..L-1`: every layer's norm recorded, nothing changed (traces, calibration)."""
    text = "observe 0..L-1\n"
    return compose(parse(text), "<observe>", text, {})


class Strategy:
    """A checked program, ready to be compiled for a model and attached to it."""

    def __init__(self, program: Program):
        self.program = program
        # vectors derived from prompts, per model: derived on the first attach, reused after
        self.derived: weakref.WeakKeyDictionary[nn.Module, dict[str, torch.Tensor]] = weakref.WeakKeyDictionary()
        self.plans: dict[tuple, P.Plan] = {}

    @property
    def fingerprint(self) -> str:
        return self.program.fingerprint

    def plan_for(self, model: nn.Module) -> P.Plan:
        """The plan for this model's shape and weights (compiled once per shape, then reused)."""
        adapter = adapt(model)
        key = (adapter.num_layers, adapter.hidden_size, _weights_sha256(model))
        if key not in self.plans:
            self.plans[key] = compile_plan(self.program, *key)
        return self.plans[key]

    def attach(self, model: nn.Module, tokenizer=None, seed: int = 0, observe_all: bool = False) -> Run:
        """Hooks for the `with` block; `observe_all` records every layer's norm (for traces)."""
        return Run(self, model, tokenizer, seed, observe_all)


@dataclass
class Report:
    """What a run did: interventions per (rule, action, layer), per request, and the costs."""

    fingerprint: str
    interventions: dict[str, int]
    requests: list[dict] = field(default_factory=list)
    extra_layer_passes: int = 0
    nonfinite_states: int = 0

    def total(self) -> int:
        return sum(self.interventions.values())


class Run:
    """Hooks installed on entry, removed on exit (also on error): the model is restored exactly."""

    def __init__(self, strategy: Strategy, model: nn.Module, tokenizer, seed: int, observe_all: bool = False):
        self.strategy, self.model, self.tokenizer, self.seed = strategy, model, tokenizer, seed
        self.adapter = adapt(model)
        self.plan = strategy.plan_for(model)
        if observe_all:
            self.plan = self.plan.model_copy(update={"observe": tuple(range(self.adapter.num_layers))})
        self.executor: Executor | None = None

    def __enter__(self) -> Run:
        vectors = {name: self._vector(v) for name, v in self.plan.vectors.items()}
        eos = self.model.generation_config.eos_token_id if getattr(self.model, "generation_config", None) else None
        eos_ids = tuple(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        self.executor = Executor(self.plan, self.model, self.adapter, vectors, self.seed, eos_ids)
        self.executor.install()
        return self

    def __exit__(self, *exc) -> None:
        if self.executor is not None:
            self.executor.remove()

    def _vector(self, spec: P.VectorPlan) -> torch.Tensor:
        parameter = next(self.model.parameters())
        if spec.source == "load":
            from safetensors.torch import load_file

            tensors = load_file(spec.path)
            vector = tensors[spec.key] if spec.key else next(iter(tensors.values()))
        else:
            derived = self.strategy.derived.setdefault(self.model, {})
            key = f"{id(self.tokenizer)}:{spec.model_dump_json()}"  # derived with this tokenizer
            if key not in derived:
                derived[key] = contrast_vector(self.model, self.adapter, self.tokenizer, spec)
            vector = derived[key]
        vector = vector.reshape(-1)
        if vector.numel() != self.adapter.hidden_size:
            raise L2Error.one(f"vector `{spec.name}` has {vector.numel()} values; the model's hidden size is "
                              f"{self.adapter.hidden_size}", path=spec.path or "<vector>")
        return vector.to(device=parameter.device, dtype=parameter.dtype)

    def report(self) -> Report:
        executor = self.executor
        counts: Counter[str] = Counter()
        requests = []
        for call in executor.history:
            traces: list[list[dict]] = [[] for _ in range(call.keys.shape[0])]
            for step_index, record in enumerate(call.records):
                for (rule_id, action_index), effect in record["effects"].items():
                    action = executor.rules[rule_id].actions[action_index]
                    hits = effect.any(dim=-1).cpu()
                    label = f"{action.kind}@{action.layer}"
                    counts[label] += int(effect.sum())
                    for row in hits.nonzero().flatten().tolist():
                        traces[row].append({"step": step_index, "phase": record["phase"], "rule": rule_id,
                                            "action": action.kind, "layer": action.layer})
            requests.extend({"interventions": trace} for trace in traces)
        passes = sum(call.extra_layer_passes for call in executor.history)
        return Report(self.strategy.fingerprint, dict(sorted(counts.items())), requests, passes,
                      executor.warn_nonfinite())


def _weights_sha256(model: nn.Module) -> str | None:
    """The weights hash `load_model` recorded on the model, if it was loaded that way."""
    return getattr(model, "l2lang_weights_sha256", None)


@torch.no_grad()
def contrast_vector(model: nn.Module, adapter, tokenizer, spec: P.VectorPlan) -> torch.Tensor:
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
            model(ids, use_cache=False)
        return torch.stack(caught).mean(dim=0)

    handle = adapter.layers[spec.layer].register_forward_hook(catch)
    try:
        return mean_state(spec.positive) - mean_state(spec.negative)
    finally:
        handle.remove()
