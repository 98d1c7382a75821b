"""Attaching a strategy to a Hugging Face model for the length of a `with` block.

    s = l2lang.load("alrr", warmup=50)
    with s.attach(model, tokenizer) as run:
        model.generate(...)
    run.report()

`Run` installs a pre-hook and a hook on the model (step boundaries) and wraps the `forward` of the
decoder layers the plan needs (an instance attribute: a module with forward hooks takes PyTorch's
slower call path, which costs more per layer than l2lang's own work), and undoes both on exit. It
sees a layer's output as the layer's `forward` returns it, before any forward hooks others put there.
It turns `generate`'s padded `[batch, time]` steps into the engine's flat token rows: the prefill
step starts one request per batch row, each decode step feeds one row per request. It is also the
engine's `LayerBackend`: `block()` re-runs decoder layers with the arguments their first pass got,
the KV cache swapped for a view that freezes or refreshes this position (`l2lang.backends.hf.cache`).
"""

from __future__ import annotations

import torch
from torch import nn

from l2lang import plan as P
from l2lang.backends.hf.cache import FrozenView, RefreshView
from l2lang.backends.hf.layers import ModelAdapter, adapt
from l2lang.backends.hf.vectors import vector_for
from l2lang.engine.backend import Capabilities, KVMode, StepRows
from l2lang.engine.executor import Executor
from l2lang.engine.records import Report, StepRecord, build_report
from l2lang.engine.state import request_keys
from l2lang.engine.strategy import Strategy
from l2lang.errors import GenerationError

CAPABILITIES = Capabilities(kv_modes=frozenset({"frozen", "refresh"}), sequence_selection=True,
                            name="Hugging Face")


class Run:
    """Hooks installed on entry, removed on exit (also on error): the model is restored exactly."""

    capabilities = CAPABILITIES

    def __init__(self, strategy: Strategy, model: nn.Module, tokenizer, seed: int, observe_all: bool = False,
                 caller_selects: bool = False):
        self.strategy, self.model, self.tokenizer, self.seed = strategy, model, tokenizer, seed
        self.adapter: ModelAdapter = adapt(model)
        self.plan = plan_for(strategy, model)
        if self.plan.sample is not None and not caller_selects:
            raise GenerationError.one(
                f"{self.plan.source}: `sample`/`select` pick one answer among several; `attach` cannot do that "
                "inside your own `model.generate` call", path=self.plan.source,
                hint="use `l2lang.generate(model, tokenizer, strategy, prompts)`, which samples and selects")
        if observe_all:
            self.plan = self.plan.model_copy(update={"observe": tuple(range(self.adapter.num_layers))})
        self.executor: Executor | None = None
        self.handles: list = []
        self.forwards: dict[int, object] = {}        # each hooked layer's own forward
        self.wrapped: dict[int, object | None] = {}  # what the layer's instance `forward` was before
        self.calls: list[tuple[int, list[int]]] = []  # per generate call: first record, request uids
        self.eos, self.eos_id = torch.tensor([-1]), -1

    # -- lifetime ------------------------------------------------------------------------------
    def __enter__(self) -> Run:
        parameter = next(self.model.parameters())
        vectors = {name: vector_for(v, self.strategy, self.model, self.adapter, self.tokenizer)
                   for name, v in self.plan.vectors.items()}
        self._set_eos(getattr(self.model, "generation_config", None), {})
        self.executor = Executor(self.plan, self, vectors, seed=self.seed, hidden_size=self.adapter.hidden_size,
                                 dtype=parameter.dtype, device=parameter.device)
        self.handles.append(self.model.register_forward_pre_hook(self._begin_step, with_kwargs=True))
        self.handles.append(self.model.register_forward_hook(self._end_step, with_kwargs=True))
        for index in self.executor.hooked:
            layer = self.adapter.layers[index]
            self.forwards[index] = layer.forward
            self.wrapped[index] = layer.__dict__.get("forward")  # another tool's wrapper, put back on exit
            layer.forward = self._layer_forward(index, layer.forward)
        self.model.generate = self._generate(self.model.generate)  # an instance attribute, deleted on exit
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        for index, previous in self.wrapped.items():
            layer = self.adapter.layers[index]
            if previous is None:
                del layer.forward
            else:
                layer.forward = previous
        self.wrapped.clear()
        self.model.__dict__.pop("generate", None)

    def _generate(self, generate):
        """`model.generate`, first reading the call's end-of-sequence ids and refusing beam search."""
        def wrapper(*args, **kwargs):
            config = kwargs.get("generation_config") or getattr(self.model, "generation_config", None)
            if kwargs.get("num_beams", getattr(config, "num_beams", 1) or 1) > 1:
                raise GenerationError.one("beam search is not supported: per-request state does not follow beam "
                                          "reordering", path="<generate>", hint="use greedy decoding or sampling")
            self._set_eos(config, kwargs)
            return generate(*args, **kwargs)
        return wrapper

    def _set_eos(self, config, kwargs: dict) -> None:
        """A request finishes when it emits one of these: generate's `eos_token_id`, else the config's."""
        eos = kwargs["eos_token_id"] if kwargs.get("eos_token_id") is not None else \
            getattr(config, "eos_token_id", None)
        ids = eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else []
        self.eos = torch.tensor(sorted(set(ids)) or [-1], device=next(self.model.parameters()).device)
        self.eos_id = self.eos.tolist()[0] if len(self.eos) == 1 else None  # one id: compared as a number

    # -- step boundaries -----------------------------------------------------------------------
    def _begin_step(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        reference = input_ids if input_ids is not None else kwargs.get("inputs_embeds")
        batch, width = reference.shape[0], reference.shape[1]
        cache = kwargs.get("past_key_values")
        past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
        device = reference.device
        self.cache, self.layer_calls, self.shape = cache, {}, (batch, width)
        executor = self.executor
        if past == 0:
            if cache is None and kwargs.get("use_cache") is False and self._acts_in_decode():
                raise GenerationError.one("l2lang runs decode-step rules with the KV cache: generate with "
                                          "use_cache=True", path="<generate>")
            mask = kwargs.get("attention_mask")
            valid = mask[:, -width:].bool() if mask is not None else torch.ones(batch, width, dtype=torch.bool,
                                                                                device=device)
            ids = input_ids if input_ids is not None else torch.zeros(batch, width, dtype=torch.long, device=device)
            # a new generate call: the previous call's requests are done, and slots follow batch rows
            executor.finish_requests([s for s, uid in enumerate(executor.table.uids) if uid is not None])
            slots, uids = executor.start_requests(request_keys(ids, valid))
            assert executor.table.uids[:batch] == uids  # a fresh table: the slots are the batch rows
            self.calls.append((len(executor.records), uids))
            self.decode_step = 0
            self.running = torch.ones(batch, dtype=torch.bool, device=device)  # requests not finished yet
            self.request_rows = torch.arange(batch, device=device)
            self.all_decode = torch.ones(batch, dtype=torch.bool, device=device)
            rows = StepRows(slots=torch.arange(batch, device=device).repeat_interleave(width),
                            decode=torch.zeros(batch * width, dtype=torch.bool, device=device),
                            valid=valid.reshape(-1), phase="prefill",
                            positions=(valid.cumsum(dim=1) - 1).reshape(-1))
            executor.begin_step(rows)
        else:
            if width != 1:
                raise GenerationError.one(f"l2lang decodes one token per step; this call feeds {width}",
                                          path="<generate>", hint="assisted or speculative decoding is not supported")
            if input_ids is not None:  # a request that fed back an end-of-sequence token has finished
                last = input_ids[:, -1]
                # (a new tensor: earlier steps' records hold the old one)
                self.running = self.running & (last != self.eos_id if self.eos_id is not None else
                                               torch.isin(last, self.eos, invert=True))
            self.decode_step += 1
            rows = StepRows(slots=self.request_rows, decode=self.all_decode,
                            valid=self.running, phase="decode", step=self.decode_step)
            executor.begin_step(rows)
        return None

    def _end_step(self, module, args, kwargs, output):
        self.executor.end_step()
        return output

    def _acts_in_decode(self) -> bool:
        return any(rule.phase != "prefill" for rule in self.plan.rules)

    def _layer_forward(self, index: int, forward):
        executor = self.executor
        wants_input, recorded = executor.wants_input(index), index in executor.block_layers

        def act(output, args, kwargs):
            if executor.rows is None:
                return output
            hidden = output[0] if isinstance(output, tuple) else output
            if recorded:
                self.layer_calls[index] = (args, kwargs)
            size = hidden.shape[-1]
            before = (args[0] if args else kwargs["hidden_states"]).view(-1, size) if wants_input else None
            flat = hidden.view(-1, size)
            new = executor.after_layer(index, flat, before)
            if new is flat:
                return output
            new = new.view(hidden.shape)
            return (new, *output[1:]) if isinstance(output, tuple) else new

        if index not in executor.deferrable:
            return lambda *args, **kwargs: act(forward(*args, **kwargs), args, kwargs)

        def observe_only(*args, **kwargs):  # the least work per layer: most layers are only observed
            output = forward(*args, **kwargs)
            if executor.defer(index, output[0] if isinstance(output, tuple) else output):  # (a decode step)
                return output
            return act(output, args, kwargs)
        return observe_only

    # -- the engine's LayerBackend ---------------------------------------------------------------
    def block(self, first: int, last: int, kv: KVMode) -> _Block:
        return _Block(self, first, last, kv)

    # -- results -------------------------------------------------------------------------------
    def last_call(self) -> tuple[list[StepRecord], list[int]]:
        """The step records and request uids of the last generate call."""
        start, uids = self.calls[-1]
        return self.executor.records[start:], uids

    def report(self) -> Report:
        """Interventions of every generate call inside the `with` block, requests in call order."""
        uids = [uid for _, call in self.calls for uid in call]
        return build_report(self.plan, self.executor.records, uids, self.executor.warn_nonfinite())


class _Block:
    """Extra passes of layers `first..last` over the current decode step (batch rows = requests)."""

    def __init__(self, run: Run, first: int, last: int, kv: KVMode):
        self.run_, self.first, self.last = run, first, last
        self.view = (RefreshView if kv == "refresh" else FrozenView)(run.cache)

    def run(self, hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        run, cache, view = self.run_, self.run_.cache, self.view
        state = hidden.view(*run.shape, -1)
        for j in range(self.first, self.last + 1):
            args, kwargs = run.layer_calls[j]
            args = tuple(view if a is cache else a for a in args)
            kwargs = {k: (view if v is cache else v) for k, v in kwargs.items()}
            forward = run.forwards[j]  # the layer's own: another pass is not observed
            out = forward(state, *args[1:], **kwargs) if args else forward(**{**kwargs, "hidden_states": state})
            state = out[0] if isinstance(out, tuple) else out
        return state.reshape(hidden.shape)

    def accept(self, rows: torch.Tensor) -> None:
        if isinstance(self.view, RefreshView):
            self.view.accept(rows)

    def commit(self) -> None:
        if isinstance(self.view, RefreshView):
            self.view.commit()


def plan_for(strategy: Strategy, model: nn.Module) -> P.Plan:
    """The strategy's plan for this model's depth, width and weights (refused if the backend cannot run it)."""
    adapter = adapt(model)
    plan = strategy.plan_for_shape(adapter.num_layers, adapter.hidden_size, _weights_sha256(model))
    CAPABILITIES.check(plan)
    return plan


def attach(strategy: Strategy, model: nn.Module, tokenizer=None, seed: int = 0, observe_all: bool = False) -> Run:
    """Hooks for the `with` block; `observe_all` records every layer's norm (for traces)."""
    return Run(strategy, model, tokenizer, seed, observe_all)


def _weights_sha256(model: nn.Module) -> str | None:
    """The weights hash `load_model` recorded on the model, if it was loaded that way."""
    return getattr(model, "l2lang_weights_sha256", None)
