"""The Hugging Face backend as applications see it (`l2lang.backends.base.Backend`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from l2lang.backends.base import Backend, Sampling
from l2lang.backends.hf.attach import CAPABILITIES, plan_for
from l2lang.backends.hf.generate import generate
from l2lang.backends.hf.models import LoadedModel, load_model, quiet_transformers
from l2lang.engine.generation import Generation
from l2lang.engine.strategy import Strategy
from l2lang.plan import Plan


@dataclass
class HFBackend(Backend):
    loaded: LoadedModel
    name = "hf"
    capabilities = CAPABILITIES

    @classmethod
    def load(cls, model: str, *, dtype: str = "float32") -> HFBackend:
        quiet_transformers()
        return cls(load_model(model, dtype=getattr(torch, dtype)))

    @property
    def model_id(self) -> str:
        return self.loaded.model_id

    @property
    def weights_sha256(self) -> str:
        return self.loaded.weights_sha256

    def plan_for(self, strategy: Strategy) -> Plan:
        return plan_for(strategy, self.loaded.model)

    def generate(self, strategy: Strategy, prompts: list[str], *, seed: int = 0, chat: bool | None = None,
                 max_new_tokens: int = 64, sampling: Sampling | None = None,
                 observe_all: bool = False) -> Generation:
        kwargs: dict = {"max_new_tokens": max_new_tokens}
        if sampling is not None:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p,
                          top_k=sampling.top_k or None)
        return generate(self.loaded.model, self.loaded.tokenizer, strategy, prompts, seed=seed, chat=chat,
                        observe_all=observe_all, **kwargs)

    def decode(self, token_ids: list[int]) -> str:
        return self.loaded.tokenizer.decode(token_ids)
