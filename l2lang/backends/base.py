"""The interface applications use: a model inside an inference engine, generating with a strategy.

`open_backend("hf", "smollm2-135m")` gives a `Backend`; `trace`, `calibrate`, `eval` and the CLI
talk to that and to nothing backend-specific. A new backend subclasses `Backend` here and
implements the engine's `LayerBackend` (l2lang.engine.backend) inside its inference engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from l2lang.engine.backend import Capabilities
from l2lang.engine.generation import Generation
from l2lang.engine.scores import Scores
from l2lang.engine.strategy import Strategy
from l2lang.errors import UnsupportedError
from l2lang.plan import Plan


@dataclass(frozen=True)
class Sampling:
    """Sampling instead of greedy decoding (a strategy's own `sample` statement takes precedence)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0


class Backend(ABC):
    """A loaded model in one inference engine."""

    name: str
    model_id: str
    weights_sha256: str
    capabilities: Capabilities

    @abstractmethod
    def plan_for(self, strategy: Strategy) -> Plan:
        """The strategy compiled for this model; refused if the model or the backend cannot run it."""

    @abstractmethod
    def generate(self, strategy: Strategy, prompts: list[str], *, seed: int = 0, chat: bool | None = None,
                 max_new_tokens: int = 64, sampling: Sampling | None = None,
                 observe_all: bool = False) -> Generation:
        """One output per prompt (greedy unless `sampling` or the strategy's `sample`), with the report and
        the step records. `observe_all` records every layer's norm (for traces)."""

    def generate_chunks(self, strategy: Strategy, chunks: list[tuple[list[str], int]], *, chat: bool | None = None,
                        max_new_tokens: int = 64) -> Iterator[Generation]:
        """`generate` for each (prompts, seed) chunk, in order, each as if generated alone; a backend that
        batches continuously runs them all together."""
        for prompts, seed in chunks:
            yield self.generate(strategy, prompts, seed=seed, chat=chat, max_new_tokens=max_new_tokens)

    @abstractmethod
    def decode(self, token_ids: list[int]) -> str:
        """The text of these tokens (special tokens kept)."""

    # -- for harnesses that tokenize themselves (l2lang.integrations.lm_eval) ----------------------
    @property
    def tokenizer(self):
        """The model's Hugging Face tokenizer."""
        raise self._lacks("a tokenizer")

    @property
    def context_length(self) -> int | None:
        """The positions the model has (prompt and generated tokens together), None when it does not say."""
        raise self._lacks("a context length")

    def generate_ids(self, strategy: Strategy, prompts: list[list[int]], *, seed: int = 0, max_new_tokens: int = 64,
                     sampling: Sampling | None = None, stop: Sequence[str] = ()) -> Generation:
        """`generate` for prompts given as token ids, fed as they are (no chat template, no special tokens
        added). A sequence also ends once the text it generated (not the prompt) contains one of the `stop`
        strings, which stays in its output; the strategy sees it finish there."""
        raise self._lacks("generation from token ids")

    def score(self, strategy: Strategy, sequences: list[list[int]], *, seed: int = 0) -> Scores:
        """Each sequence read in one prefill pass (each its own request): the strategy's prefill-phase rules act
        at every position but the last; decode-phase rules never act (there is no decode step). Refused for a
        strategy with `sample`/`select`, which choose among generated answers."""
        raise self._lacks("scoring of token sequences")

    def _lacks(self, what: str) -> UnsupportedError:
        return UnsupportedError.one(f"the {self.name} backend does not offer {what}", path="<backend>")

    def close(self) -> None:
        """Release the engine (processes, memory)."""


BACKENDS = ("hf", "vllm")


def open_backend(name: str, model: str, *, dtype: str = "float32", device: str | None = None) -> Backend:
    """The backend `name` ("hf": Hugging Face transformers, "vllm") with `model` loaded: an alias, a local
    folder, a .gguf file (hf) or a hub id; on `device` (hf: a torch device such as "cuda:0"; default:
    the CPU; vLLM picks its own)."""
    if name == "hf":
        from l2lang.backends.hf.backend import HFBackend

        return HFBackend.load(model, dtype=dtype, device=device)
    if name == "vllm":
        from l2lang.backends.vllm.backend import VLLMBackend

        return VLLMBackend.load(model, dtype=dtype)
    raise UnsupportedError.one(f"unknown backend {name!r}", hint=f"backends: {', '.join(BACKENDS)}",
                               path="<command line>")
