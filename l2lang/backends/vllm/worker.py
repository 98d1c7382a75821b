"""The l2lang engine inside vLLM's worker process (vLLM 0.32, V1 model runner, eager mode).

`L2LangWorker` is mixed into vLLM's worker (`LLM(..., worker_extension_cls=WORKER_EXTENSION)`); the
application side talks to it with `llm.collective_rpc("l2lang_...", args=...)`, in plain data only.
It installs, on the model runner:

- a wrapper of `execute_model` that reads each step's scheduler output: new requests (those whose
  `SamplingParams.extra_args["l2lang"]` names an installed strategy get a slot of that strategy's
  executor), and refuses preemption (a preempted request would be recomputed as if new);
- a pre-hook and a hook on the top model: step boundaries. vLLM flattens a step into token rows
  `[num_tokens, hidden]`; the input batch's `req_ids` and `query_start_loc` give each row's request,
  and a row is a decode token when its position is past its request's prompt;
- hooks on the decoder layers the plans read: vLLM's layer returns `(hidden, residual)`, whose sum is
  the residual stream (Hugging Face's layer output); a changed stream goes back as `(stream, 0)`.

Recursion re-runs decoder layers inside the step, with the forward context's `slot_mapping` deciding
what the extra passes write to the KV cache: nothing (`kv frozen`), or only the recursing rows
(`kv refresh`; a rejected pass's K/V are written back from the previous ones). Every executor keys
its state by request, never by row: vLLM reuses and compacts rows as requests come and go.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from l2lang import plan as P
from l2lang.engine.backend import Capabilities, KVMode, StepRows
from l2lang.engine.executor import Executor
from l2lang.engine.records import build_report, request_rows
from l2lang.engine.state import request_key

CAPABILITIES = Capabilities(kv_modes=frozenset({"frozen", "refresh"}), sequence_selection=True, name="vLLM")


@dataclass
class _Request:
    key: str            # the executor (strategy and seed) it runs under
    tag: str            # the application's name for it
    slot: int
    uid: int
    first_record: int   # its executor's first step record that may hold its rows


class L2LangWorker:
    """Methods vLLM's worker gains (names prefixed: vLLM refuses names its worker class already has)."""

    def l2lang_install(self) -> dict:
        """Install the hooks (once); return what the application needs to compile plans."""
        if getattr(self, "_l2lang", None) is None:
            self._l2lang = _Hooks(self.model_runner)
        hooks = self._l2lang
        return {"layers": len(hooks.layers), "hidden_size": hooks.hidden_size, "dtype": str(hooks.dtype)}

    def l2lang_add(self, key: str, plan_json: str, vectors: dict[str, list[float]]) -> None:
        """Install an executor for a compiled plan under `key` (once per key); requests bring their seeds."""
        self._l2lang.add(key, P.Plan.model_validate_json(plan_json), vectors)

    def l2lang_collect(self, tags: list[str]) -> list[dict]:
        """The rows and report of each finished request named (in order); their state is freed."""
        return self._l2lang.collect(tags)


class _Hooks:
    def __init__(self, runner):
        self.runner = runner
        self.model = runner.model
        self.layers = self.model.model.layers
        parameter = next(self.model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.hidden_size = int(runner.model_config.get_hidden_size())
        self.executors: dict[str, Executor] = {}
        self.requests: dict[str, _Request] = {}      # by vLLM's request id
        self.by_tag: dict[str, str] = {}
        self.layer_hooks: dict[int, object] = {}
        self.input_hooks: dict[int, object] = {}
        self.kv_hooks: dict[str, object] = {}
        self.kv_last: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.pending = None    # the scheduler output of the step about to run
        self.step: _Step | None = None
        self.model.register_forward_pre_hook(self._begin_step, with_kwargs=True)
        self.model.register_forward_hook(self._end_step)
        execute = runner.execute_model

        def execute_model(scheduler_output, *args, **kwargs):
            self._schedule(scheduler_output)
            return execute(scheduler_output, *args, **kwargs)

        runner.execute_model = execute_model

    # -- strategies ----------------------------------------------------------------------------
    def add(self, key: str, plan: P.Plan, vectors: dict[str, list[float]]) -> None:
        if key in self.executors:
            return
        tensors = {name: torch.tensor(values, dtype=self.dtype, device=self.device) for name, values in vectors.items()}
        capacity = self.runner.scheduler_config.max_num_seqs
        executor = Executor(plan, _Layers(self), tensors, seed=None, hidden_size=self.hidden_size, dtype=self.dtype,
                            device=self.device, capacity=capacity)
        self.executors[key] = executor
        for index in executor.hooked:
            if index not in self.layer_hooks:
                self.layer_hooks[index] = self.layers[index].register_forward_hook(self._layer_hook(index))
            if executor.wants_input(index) and index not in self.input_hooks:
                self.input_hooks[index] = self.layers[index].register_forward_pre_hook(self._input_hook(index))
        refreshed = {j for rule in plan.rules for a in rule.actions
                     if isinstance(a, P.RecursePlan) and a.kv == "refresh" for j in range(a.first, a.layer + 1)}
        for j in refreshed:
            attention = self.layers[j].self_attn.attn
            if attention.layer_name not in self.kv_hooks:
                self.kv_hooks[attention.layer_name] = attention.register_forward_pre_hook(self._kv_hook(attention))

    # -- requests ------------------------------------------------------------------------------
    def _schedule(self, scheduler_output) -> None:
        if set(scheduler_output.preempted_req_ids or ()) & self.requests.keys():
            raise RuntimeError("l2lang: vLLM preempted a request that runs a strategy; its recomputation would "
                               "not repeat the interventions. Give the engine a KV cache that holds every "
                               "request (l2lang's vLLM backend sizes it so).")
        for new in scheduler_output.scheduled_new_reqs:
            extra = (new.sampling_params.extra_args or {}).get("l2lang") if new.sampling_params else None
            if not extra or extra.get("strategy") not in self.executors:
                continue
            executor = self.executors[extra["strategy"]]
            key = request_key(list(new.prompt_token_ids or []), int(extra.get("ordinal", 0)))
            slots, uids = executor.start_requests(torch.tensor([key], dtype=torch.int64),
                                                  torch.tensor([int(extra.get("seed", 0))], dtype=torch.int64))
            self.requests[new.req_id] = _Request(extra["strategy"], extra["tag"], int(slots[0]), uids[0],
                                                 len(executor.records))
            self.by_tag[extra["tag"]] = new.req_id
        self.pending = scheduler_output

    def collect(self, tags: list[str]) -> list[dict]:
        out = []
        for tag in tags:
            request = self.requests.pop(self.by_tag.pop(tag))
            executor = self.executors[request.key]
            records = executor.records[request.first_record:]
            rows = request_rows(records, [request.uid])[request.uid]
            report = build_report(executor.plan, records, [request.uid])
            executor.finish_requests([request.slot])
            out.append({"rows": rows.to_plain(), "interventions": report.requests[0]["interventions"],
                        "counts": report.requests[0]["counts"], "labels": list(report.interventions),
                        "extra_layer_passes": report.requests[0]["extra_layer_passes"],
                        "nonfinite": executor.nonfinite_states()})
        for key, executor in self.executors.items():  # records no running request needs any more
            firsts = [r.first_record for r in self.requests.values() if r.key == key]
            keep = min(firsts) if firsts else len(executor.records)
            if keep:
                del executor.records[:keep]
                for request in self.requests.values():
                    if request.key == key:
                        request.first_record -= keep
        return out

    # -- steps ---------------------------------------------------------------------------------
    def _begin_step(self, module, args, kwargs):
        scheduler_output, self.pending = self.pending, None
        if scheduler_output is None or not self.requests:  # a warm-up run, or no request of ours
            self.step = None
            return None
        self.step = _Step(self, kwargs["positions"] if "positions" in kwargs else args[1])
        return None

    def _end_step(self, module, args, output):
        step, self.step = self.step, None
        if step is not None:
            for executor in step.active:
                executor.end_step()
        return None

    def _input_hook(self, index: int):
        def hook(module, args):
            step = self.step
            if step is not None:
                _, hidden, residual = args[:3]
                step.inputs[index] = hidden if residual is None else hidden + residual
            return None
        return hook

    def _layer_hook(self, index: int):
        def hook(module, args, output):
            step = self.step
            if step is None:
                return None
            hidden, residual = output
            stream = hidden + residual
            changed = False
            for executor in step.active:
                if index not in executor.hooked or executor.defer(index, stream):
                    continue
                new = executor.after_layer(index, stream, step.inputs.get(index))
                changed |= new is not stream
                stream = new
            return (stream, torch.zeros_like(stream)) if changed else None
        return hook

    def _kv_hook(self, attention):
        def hook(module, args):
            if self.step is not None:
                _, key, value = args[:3]
                self.kv_last[attention.layer_name] = (key.view(-1, attention.num_kv_heads, attention.head_size),
                                                      value.view(-1, attention.num_kv_heads, attention.head_size_v))
            return None
        return hook


class _Step:
    """Who each token row of this step belongs to, as `StepRows` for every executor with rows in it."""

    def __init__(self, hooks: _Hooks, positions: torch.Tensor):
        runner = hooks.runner
        batch = runner.input_batch
        n = batch.num_reqs
        starts = runner.query_start_loc.np[: n + 1]
        size = int(starts[-1])
        request_of_row = np.repeat(np.arange(n), np.diff(starts))
        position = batch.num_computed_tokens_cpu[:n][request_of_row] + (np.arange(size) - starts[request_of_row])
        decode = position >= batch.num_prompt_tokens[:n][request_of_row]
        self.positions = positions[:size]
        self.inputs: dict[int, torch.Tensor] = {}
        self.active: list[Executor] = []
        ours = [hooks.requests.get(request_id) for request_id in batch.req_ids[:n]]
        for key, executor in hooks.executors.items():
            mine = np.array([r is not None and r.key == key for r in ours], dtype=bool)
            if not mine.any():
                continue
            slot = np.array([r.slot if r is not None and r.key == key else executor.table.scratch for r in ours])
            valid = mine[request_of_row]
            to_device = lambda array: torch.from_numpy(array).to(hooks.device)  # noqa: E731
            rows = StepRows(slots=to_device(slot[request_of_row].astype(np.int64)), decode=to_device(decode),
                            valid=to_device(valid), positions=to_device(position.astype(np.int64)),
                            phase="mixed" if (valid & decode).any() else "prefill")
            executor.begin_step(rows)
            self.active.append(executor)


class _Layers:
    """The executor's `LayerBackend` in vLLM: extra passes of decoder layers inside the current step."""

    capabilities = CAPABILITIES

    def __init__(self, hooks: _Hooks):
        self.hooks = hooks

    def block(self, first: int, last: int, kv: KVMode) -> _Block:
        return _Block(self.hooks, first, last, kv)


class _Block:
    """Layers `first..last` run again on the step's rows. The K/V the extra passes would write go through
    the forward context's `slot_mapping`: left out (kv frozen), or kept for the recursing rows only (kv
    refresh; a pass a row rejects has its K/V written back from the previous ones)."""

    def __init__(self, hooks: _Hooks, first: int, last: int, kv: KVMode):
        from vllm.forward_context import get_forward_context

        self.hooks, self.kv = hooks, kv
        self.layers = list(hooks.layers[first:last + 1])
        self.attentions = [layer.self_attn.attn for layer in self.layers]
        self.context = get_forward_context()
        self.slots = {a.layer_name: self.context.slot_mapping[a.layer_name] for a in self.attentions}
        self.kept = {a.layer_name: hooks.kv_last[a.layer_name] for a in self.attentions} if kv == "refresh" else {}
        self.active: torch.Tensor | None = None

    def run(self, hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        original = self.context.slot_mapping
        mapping = dict(original)  # (the step's tensors are shared by every layer: never changed in place)
        for name, slots in self.slots.items():
            if self.kv == "frozen":
                mapping.pop(name, None)
            else:
                mapping[name] = self._only(slots, rows)
        self.context.slot_mapping, self.active = mapping, rows
        positions = self.hooks.step.positions
        try:
            out, residual = self.layers[0].forward(positions, hidden.clone(), None)  # (a fused norm may write in place)
            for layer in self.layers[1:]:
                out, residual = layer.forward(positions, out, residual)
        finally:
            self.context.slot_mapping = original
        return out + residual

    def accept(self, rows: torch.Tensor) -> None:
        if self.kv != "refresh":
            return
        rejected = self.active & ~rows
        for attention in self.attentions:
            name = attention.layer_name
            (key, value), (old_key, old_value) = self.hooks.kv_last[name], self.kept[name]
            size = rows.shape[0]
            attention.impl.do_kv_cache_update(attention, old_key[:size], old_value[:size], attention.kv_cache,
                                              self._only(self.slots[name], rejected))
            keep = rows[:, None, None]
            self.kept[name] = (torch.where(keep, key[:size], old_key[:size]), torch.where(keep, value[:size], old_value[:size]))

    def commit(self) -> None:
        """Nothing to do: each pass wrote its K/V for the rows that kept it."""

    @staticmethod
    def _only(slots: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The slot mapping with -1 (write nothing) for the rows outside `rows`."""
        size = rows.shape[0]
        return torch.cat([torch.where(rows, slots[:size], -1), slots[size:]])
