"""The Hugging Face backend as applications see it (`l2lang.backends.base.Backend`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from l2lang.backends.base import Backend, Sampling
from l2lang.backends.hf.attach import CAPABILITIES, plan_for
from l2lang.backends.hf.generate import context_length, generate, generate_ids
from l2lang.backends.hf.models import LoadedModel, load_model, quiet_transformers
from l2lang.backends.hf.score import score
from l2lang.engine.generation import Generation
from l2lang.engine.scores import Scores
from l2lang.engine.strategy import Strategy
from l2lang.errors import L2Error
from l2lang.plan import Plan


@dataclass
class HFBackend(Backend):
    loaded: LoadedModel
    name = "hf"
    capabilities = CAPABILITIES

    @classmethod
    def load(cls, model: str, *, dtype: str = "float32", device: str | None = None) -> HFBackend:
        quiet_transformers()
        target = _device(device) if device is not None else None
        loaded = load_model(model, dtype=getattr(torch, dtype))
        if target is not None:
            loaded.model.to(target)
        return cls(loaded)

    @property
    def model_id(self) -> str:
        return self.loaded.model_id

    @property
    def weights_sha256(self) -> str:
        return self.loaded.weights_sha256

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def context_length(self) -> int | None:
        return context_length(self.loaded.model)

    def plan_for(self, strategy: Strategy) -> Plan:
        return plan_for(strategy, self.loaded.model)

    def generate(self, strategy: Strategy, prompts: list[str], *, seed: int = 0, chat: bool | None = None,
                 max_new_tokens: int = 64, sampling: Sampling | None = None,
                 observe_all: bool = False) -> Generation:
        return generate(self.loaded.model, self.loaded.tokenizer, strategy, prompts, seed=seed, chat=chat,
                        observe_all=observe_all, **_generation_kwargs(max_new_tokens, sampling))

    def generate_ids(self, strategy: Strategy, prompts: list[list[int]], *, seed: int = 0, max_new_tokens: int = 64,
                     sampling: Sampling | None = None, stop: Sequence[str] = ()) -> Generation:
        return generate_ids(self.loaded.model, self.loaded.tokenizer, strategy, prompts, seed=seed, stop=stop,
                            **_generation_kwargs(max_new_tokens, sampling))

    def score(self, strategy: Strategy, sequences: list[list[int]], *, seed: int = 0) -> Scores:
        return score(self.loaded.model, self.loaded.tokenizer, strategy, sequences, seed=seed)

    def decode(self, token_ids: list[int]) -> str:
        return self.loaded.tokenizer.decode(token_ids)


def _generation_kwargs(max_new_tokens: int, sampling: Sampling | None) -> dict:
    kwargs: dict = {"max_new_tokens": max_new_tokens}
    if sampling is not None:
        kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p,
                      top_k=sampling.top_k or None)
    return kwargs


def _device(name: str) -> torch.device:
    """A torch device that exists here, refused before the model loads."""
    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:  # a malformed name; no CUDA build or no such GPU
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise L2Error.one(f"device {name!r} cannot be used here: {first}", path="<command line>",
                          hint="cpu, cuda, cuda:N (a GPU of this machine), mps") from None
    return device
