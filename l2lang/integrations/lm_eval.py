"""l2lang as a model of EleutherAI's lm-evaluation-harness (the `lm-eval` package, 0.4.x):

    python -m l2lang.lm_eval --model l2lang --tasks gsm8k \\
        --model_args pretrained=smollm2-135m,strategy=alrr,set=warmup:20 --batch_size 8 --output_path out/

lm-eval 0.4 finds models only in its own registry (it has no plugin entry point), so `python -m
l2lang.lm_eval` is lm-eval's own command line, every argument as lm-eval takes it, with this model
registered as `l2lang`. Model arguments: `pretrained` (what `--model` takes elsewhere: an alias, a
folder, a .gguf file, a hub id), `strategy` (a shipped name, a .l2 file or a .l2b bundle), `set`
(`name:value;name2:value2`, the strategy's params), `backend`, `dtype`, `seed`, `allow_other_model`,
`max_length`, `interventions` (a JSONL file of each request's interventions); lm-eval's
`--batch_size` and `--device`.

Each harness request is one l2lang request with its own state, in batches of `--batch_size`.
`generate_until` generates from the context's tokens until a stop string appears in the generated
text (the text is cut before it, as lm-eval's `hf` model cuts), `max_gen_toks` or the end of sequence,
greedy or sampled as the request's generation arguments say. `loglikelihood` and
`loglikelihood_rolling` read each scored text in one prefill pass: the strategy's prefill-phase rules
act on it, its decode-phase rules never do (there is no decode step), and a strategy with
`sample`/`select` is refused. The strategy is loaded, the model loaded and the plan compiled for it
when the model is constructed, before the harness loads any task: a mistake fails there, with
l2lang's message. docs/evaluation.md has the commands and the files written.
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import lm_eval.models  # noqa: F401  (registers lm-eval's own models, which `get_model` skips once one is known)
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from l2lang.backends.base import Backend, Sampling, open_backend
from l2lang.engine.strategy import Strategy
from l2lang.errors import GenerationError, L2Error, UnsupportedError
from l2lang.lang.compose import load_program

# Backends that offer what the harness needs (`Backend.generate_ids`, `Backend.score`, the tokenizer).
BACKENDS = ("hf", "vllm")  # (vllm: generation; loglikelihoods need hf)
DTYPES = ("float32", "bfloat16")
DEFAULT_MAX_LENGTH = 2048  # as lm-eval's `hf` model, for a model whose config states no context length
DEFAULT_MAX_GEN_TOKS = 256  # as lm-eval's `hf` model
WHERE = "<model_args>"


@dataclass(frozen=True)
class Settings:
    """The model arguments, checked."""

    pretrained: str
    strategy: str
    params: dict[str, str] = field(default_factory=dict)
    backend: str = "hf"
    dtype: str = "float32"
    seed: int = 0
    batch_size: int = 1
    device: str | None = None
    allow_other_model: bool = False
    max_length: int | None = None
    interventions: Path | None = None


def read_settings(args: dict[str, object]) -> Settings:
    """`--model_args` (as lm-eval parsed them: `true` is True, digits are numbers) with lm-eval's
    `batch_size`, `max_batch_size` and `device`; anything else is refused, naming what is accepted."""
    args = dict(args)
    args.pop("max_batch_size", None)  # lm-eval passes it for `--batch_size auto`, which is refused below
    accepted = ("pretrained", "strategy", "set", "backend", "dtype", "seed", "batch_size", "device",
                "allow_other_model", "max_length", "interventions")
    unknown = [name for name in args if name not in accepted]
    if unknown:
        raise L2Error.one(f"unknown model argument {unknown[0]!r}", path=WHERE, hint=f"accepted: {', '.join(accepted)}")
    for name in ("pretrained", "strategy"):
        if name not in args:
            raise L2Error.one(f"the l2lang model needs {name}=...", path=WHERE,
                              hint="e.g. --model_args pretrained=smollm2-135m,strategy=baseline")
    backend = _text(args, "backend", "hf")
    if backend not in BACKENDS:
        raise UnsupportedError.one(f"backend={backend}: the l2lang model of lm-eval runs on {', '.join(BACKENDS)}",
                                   path=WHERE, hint=f"backend={BACKENDS[0]}")
    dtype = _text(args, "dtype", "float32")
    if dtype not in DTYPES:
        raise L2Error.one(f"dtype={dtype}: not a dtype l2lang runs in", path=WHERE, hint=f"dtypes: {', '.join(DTYPES)}")
    interventions = _text(args, "interventions", "")
    return Settings(pretrained=_text(args, "pretrained"), strategy=_text(args, "strategy"),
                    params=read_params(_text(args, "set", "")), backend=backend, dtype=dtype,
                    seed=_whole(args, "seed", 0, 0, 2**63 - 1), batch_size=_batch_size(args.get("batch_size", 1)),
                    device=_text(args, "device", "") or None, allow_other_model=_flag(args, "allow_other_model"),
                    max_length=_whole(args, "max_length", None, 2), interventions=Path(interventions) if interventions
                    else None)


def read_params(text: str) -> dict[str, str]:
    """`set=name:value;name2:value2` → the strategy's param overrides (`ns.name` for a used file's)."""
    params = {}
    for piece in text.split(";") if text.strip() else []:
        name, sep, value = piece.partition(":")
        if not sep or not name.strip() or not value.strip():
            raise L2Error.one(f"set={text}: {piece.strip() or 'an empty piece'} is not NAME:VALUE", path=WHERE,
                              hint="set=name:value;name2:value2")
        params[name.strip()] = value.strip()
    return params


def _text(args: dict, name: str, default: str | None = None) -> str:
    value = args.get(name, default)
    if isinstance(value, bool) or value is None:
        raise L2Error.one(f"{name}={value}: give text", path=WHERE)
    return str(value).strip()


def _whole(args: dict, name: str, default: int | None, low: int, high: int | None = None) -> int | None:
    value = args.get(name, default)
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() and len(value.strip()) <= 30:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise L2Error.one(f"{name}={value}: must be a whole number {bound}", path=WHERE)
    return value


def _flag(args: dict, name: str) -> bool:
    value = args.get(name, False)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    if not isinstance(value, bool):
        raise L2Error.one(f"{name}={value}: must be true or false", path=WHERE)
    return value


def _batch_size(value: object) -> int:
    if isinstance(value, str) and value.startswith("auto"):
        raise L2Error.one(f"--batch_size {value}: the l2lang model takes a fixed batch size", path=WHERE,
                          hint="--batch_size 8")
    return _whole({"batch_size": value}, "batch_size", 1, 1)


@dataclass(frozen=True)
class GenerationSettings:
    """One `generate_until` request's generation arguments, read as lm-eval's `hf` model reads them."""

    until: tuple[str, ...]
    max_gen_toks: int
    sampling: Sampling | None

    @classmethod
    def read(cls, kwargs: dict, default_max_gen_toks: int) -> GenerationSettings:
        """`until` (a string or a list), `max_gen_toks` (or `max_new_tokens`, `max_tokens`,
        `max_completion_tokens`), `do_sample`, `temperature`, `top_p`, `top_k`. Sampling when `do_sample`
        is true, or unset with `temperature` > 0; greedy otherwise (then temperature, top_p and top_k
        do nothing)."""
        supported = ("until", "max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens", "do_sample",
                     "temperature", "top_p", "top_k")
        other = [k for k in kwargs if k not in supported]
        if other:
            raise GenerationError.one(f"generation argument {other[0]!r} is not supported by the l2lang model",
                                      path="<gen_kwargs>", hint=f"supported: {', '.join(supported)}")
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else until
        if not isinstance(until, list) or not all(isinstance(s, str) for s in until):
            raise GenerationError.one(f"until={until!r}: give a string or a list of strings", path="<gen_kwargs>")
        budget = next((kwargs[k] for k in supported[1:5] if kwargs.get(k) is not None), default_max_gen_toks)
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise GenerationError.one(f"max_gen_toks={budget!r}: must be a whole number of at least 1",
                                      path="<gen_kwargs>")
        temperature = _number(kwargs, "temperature", 0.0)
        do_sample = kwargs.get("do_sample")
        if do_sample is None:
            do_sample = temperature > 0
        if not isinstance(do_sample, bool):
            raise GenerationError.one(f"do_sample={do_sample!r}: must be true or false", path="<gen_kwargs>")
        if not do_sample:
            return cls(tuple(until), budget, None)
        if temperature <= 0:
            raise GenerationError.one("do_sample=True needs a temperature above 0", path="<gen_kwargs>",
                                      hint="e.g. temperature=0.7; or do_sample=False for greedy decoding")
        top_p, top_k = _number(kwargs, "top_p", 1.0), kwargs.get("top_k") or 0
        if not 0 < top_p <= 1 or isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise GenerationError.one(f"top_p={top_p!r}, top_k={top_k!r}: top_p must be in (0, 1] and top_k a whole "
                                      "number (0: every token)", path="<gen_kwargs>")
        return cls(tuple(until), budget, Sampling(temperature=temperature, top_p=top_p, top_k=top_k))


def _number(kwargs: dict, name: str, default: float) -> float:
    value = kwargs.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise GenerationError.one(f"{name}={value!r}: must be a finite number of at least 0", path="<gen_kwargs>")
    return float(value)


def cut(text: str, until: tuple[str, ...]) -> str:
    """The text before the first of each stop string, in turn (as lm-eval's `hf` model cuts it)."""
    for term in until:
        if term:
            text = text.split(term)[0]
    return text


class InterventionLog:
    """Interventions per request: totals per request type (the results' `config.l2lang`, a line on stderr
    after each request type) and, with `interventions=FILE`, one JSON line per request."""

    def __init__(self, path: Path | None):
        self.path = path
        self.totals: dict[str, dict] = {}
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("", encoding="utf-8")
            except OSError as exc:
                raise L2Error.one(f"interventions={path}: cannot write there ({exc.strerror or exc})",
                                  path=WHERE) from None

    def add(self, request_type: str, requests: list, counts: list[Counter]) -> str:
        """Record one call's requests (lm-eval `Instance`s) and their counts per `action@layer`; the summary."""
        total = self.totals.setdefault(request_type, {"requests": 0, "with_interventions": 0, "interventions": 0,
                                                      "by_action": Counter()})
        total["requests"] += len(requests)
        total["with_interventions"] += sum(1 for c in counts if c)
        total["interventions"] += sum(sum(c.values()) for c in counts)
        total["by_action"].update(sum(counts, Counter()))
        if self.path is not None:
            seen: Counter = Counter()
            with self.path.open("a", encoding="utf-8") as out:
                for request, count in zip(requests, counts):
                    repeat = seen[id(request)]
                    seen[id(request)] += 1
                    out.write(json.dumps({"request_type": request_type, "task": request.task_name,
                                          "doc_id": request.doc_id, "idx": request.idx, "repeat": repeat,
                                          "interventions": sum(count.values()),
                                          "by_action": dict(sorted(count.items()))}) + "\n")
        return self.summary(request_type)

    def summary(self, request_type: str) -> str:
        total = self.totals[request_type]
        actions = ", ".join(f"{label}: {n}" for label, n in sorted(total["by_action"].items())) or "none"
        return (f"{request_type}: {total['requests']} requests, {total['with_interventions']} with interventions, "
                f"{total['interventions']} interventions ({actions})")

    def as_dict(self) -> dict:
        return {kind: {**total, "by_action": dict(sorted(total["by_action"].items()))}
                for kind, total in self.totals.items()}


@register_model("l2lang")
class L2LangLM(TemplateLM):
    """An l2lang strategy attached to a model, as an lm-eval model (see the module's docstring)."""

    def __init__(self, **model_args):
        super().__init__()
        self.settings = settings = read_settings(model_args)
        self.strategy = Strategy(load_program(settings.strategy, settings.params,
                                              allow_other_model=settings.allow_other_model))
        self.log = InterventionLog(settings.interventions)
        self.backend: Backend = open_backend(settings.backend, settings.pretrained, dtype=settings.dtype,
                                             device=_device(settings.device))
        self.plan = self.backend.plan_for(self.strategy)  # a strategy that does not fit the model fails here
        self.tokenizer = self.backend.tokenizer
        self.batch_size = settings.batch_size
        self.requests_run = 0  # the seed of a batch is the run's seed plus the requests run before it

    # -- what lm-eval asks of a model --------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """The token a text with no context is scored after: BOS, else EOS (as lm-eval's `hf` model)."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        """Prompt and generated tokens together: `max_length=`, else the model's positions, else 2048."""
        return self.settings.max_length or self.backend.context_length or DEFAULT_MAX_LENGTH

    @property
    def max_gen_toks(self) -> int:
        return DEFAULT_MAX_GEN_TOKS

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """The tokenizer's ids, special tokens added unless asked not to or the text starts with BOS."""
        if add_special_tokens is None:
            bos = self.tokenizer.bos_token
            add_special_tokens = not (bos and string.startswith(bos))
        return self.tokenizer.encode(string, add_special_tokens=add_special_tokens)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise GenerationError.one("--apply_chat_template: this tokenizer has no chat template", path="<tokenizer>",
                                      hint="leave out --apply_chat_template")
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    def get_model_info(self) -> dict:
        """Added to the results' `config` once the harness has run: the strategy, its interventions and, for
        a bundle, what `l2lang run` records of it (id, the model it was packed for, whether it ran on other weights)."""
        plan = self.plan
        return {"l2lang": {
            "strategy": self.settings.strategy, "fingerprint": plan.fingerprint, "params": plan.params,
            "backend": self.backend.name, "model": self.backend.model_id,
            "weights_sha256": self.backend.weights_sha256, "layers": plan.layers, "seed": self.settings.seed,
            "dtype": self.settings.dtype, "interventions": self.log.as_dict(),
            "interventions_file": str(self.settings.interventions) if self.settings.interventions else None,
            "bundle": bundle.record() if (bundle := self.strategy.program.bundle) is not None else None,
        }}

    # -- requests ----------------------------------------------------------------------------------
    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        asked = [(req.args[0], GenerationSettings.read(req.args[1], self.max_gen_toks)) for req in requests]
        tokens = [self.tok_encode(context) for context, _ in asked]
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):  # one batch never mixes generation arguments
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        texts: list[str] = [""] * len(requests)
        counts: list[Counter] = [Counter() for _ in requests]
        with tqdm(total=len(requests), disable=disable_tqdm, desc="Running generate_until requests") as bar:
            for members in groups.values():
                members.sort(key=lambda i: (-len(tokens[i]), asked[i][0]))  # longest first, as lm-eval's `hf`
                for batch in _chunks(members, self.batch_size):
                    wanted = asked[batch[0]][1]
                    room = self.max_length - wanted.max_gen_toks
                    if room < 1:
                        raise GenerationError.one(f"max_gen_toks ({wanted.max_gen_toks}) leaves no room for a prompt "
                                                  f"in max_length ({self.max_length})", path="<gen_kwargs>")
                    result = self.backend.generate_ids(
                        self.strategy, [self._left_truncated(tokens[i], room) for i in batch], seed=self._seed(batch),
                        max_new_tokens=wanted.max_gen_toks, sampling=wanted.sampling, stop=wanted.until)
                    per = result.plan.sample.count if result.plan.sample else 1  # candidates per prompt
                    for n, (i, output) in enumerate(zip(batch, result.outputs)):
                        texts[i] = cut(output["text"], wanted.until)
                        counts[i] = sum((Counter(r["counts"]) for r in result.report.requests[n * per:(n + 1) * per]),
                                        Counter())
                        self.cache_hook.add_partial("generate_until", requests[i].args, texts[i])
                    bar.update(len(batch))
        _say(self.log.add("generate_until", requests, counts))
        return texts

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self._encode(context, continuation) for context, continuation in (req.args for req in requests)]
        scored = self._score(pairs, disable_tqdm, "loglikelihood")
        for req, (logprob, greedy, _) in zip(requests, scored):
            self.cache_hook.add_partial("loglikelihood", req.args, (logprob, greedy))
        _say(self.log.add("loglikelihood", requests, [c for _, _, c in scored]))
        return [(logprob, greedy) for logprob, greedy, _ in scored]

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """Each text in windows of at most `max_length` tokens, every token predicted once (as lm-eval's `hf`
        model): each window is its own request; a text's log-likelihood and counts add up its windows'."""
        owners, windows = [], []
        for r, req in enumerate(requests):
            for window in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(req.args[0]), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                owners.append(r)
                windows.append(window)
        totals = [0.0] * len(requests)
        counts = [Counter() for _ in requests]
        for r, (logprob, _, count) in zip(owners, self._score(windows, disable_tqdm, "loglikelihood_rolling")):
            totals[r] += logprob
            counts[r] += count
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        _say(self.log.add("loglikelihood_rolling", requests, counts))
        return totals

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """lm-eval's hook for scoring encoded (context, continuation) pairs."""
        return [(logprob, greedy) for logprob, greedy, _ in
                self._score([(context, continuation) for _, context, continuation in requests], disable_tqdm,
                            "loglikelihood")]

    # -- helpers -----------------------------------------------------------------------------------
    def _encode(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context tokens, continuation tokens), as lm-eval's `TemplateLM.loglikelihood` encodes them: an
        empty context is the prefix token (BOS, else EOS)."""
        if context:
            return self._encode_pair(context, continuation)
        tokens = self.tok_encode(continuation, add_special_tokens=False)
        if tokens and tokens[0] == self.prefix_token_id:
            return tokens[:1], tokens[1:]
        return [self.prefix_token_id], tokens

    def _score(self, pairs: list[tuple[list[int], list[int]]], disable_tqdm: bool,
               request_type: str) -> list[tuple[float, bool, Counter]]:
        """Per (context, continuation): the continuation's log-likelihood, whether it is the greedy
        continuation, and the interventions while reading it. Longest first, in batches."""
        if self.plan.rules and all(rule.phase == "decode" for rule in self.plan.rules):
            _say(f"{request_type}: every rule of {self.settings.strategy} acts in decode steps; a scored text is "
                 "read in one prefill pass, so none acts here")
        lengths = {len(continuation) for _, continuation in pairs}
        if 0 in lengths or max(lengths, default=0) > self.max_length:
            raise GenerationError.one(f"{request_type}: a continuation must have from 1 to max_length "
                                      f"({self.max_length}) tokens", path="<request>")
        sequences = [(context + continuation)[-(self.max_length + 1):] for context, continuation in pairs]
        order = sorted(range(len(pairs)), key=lambda i: (-len(sequences[i]), sequences[i]))
        out: list[tuple[float, bool, Counter]] = [(0.0, True, Counter())] * len(pairs)
        with tqdm(total=len(pairs), disable=disable_tqdm, desc=f"Running {request_type} requests") as bar:
            for batch in _chunks(order, self.batch_size):
                scores = self.backend.score(self.strategy, [sequences[i] for i in batch], seed=self._seed(batch))
                for n, i in enumerate(batch):
                    length = len(pairs[i][1])
                    out[i] = (sum(scores.logprobs[n][-length:]), all(scores.greedy[n][-length:]),
                              Counter(scores.report.requests[n]["counts"]))
                bar.update(len(batch))
        return out

    def _left_truncated(self, tokens: list[int], room: int) -> list[int]:
        if len(tokens) > room:
            _say(f"a prompt of {len(tokens)} tokens is cut to its last {room} (max_length {self.max_length} minus "
                 "max_gen_toks)")
        return tokens[-room:]

    def _seed(self, batch: list[int]) -> int:
        """The seed of this batch (the strategy's coins and sampling): the run's seed plus the requests run
        before it in this process, so repeated requests in different batches draw differently."""
        seed = (self.settings.seed + self.requests_run) % 2**63
        self.requests_run += len(batch)
        return seed


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _device(requested: str | None) -> str | None:
    """`--device` when this machine has it; else a GPU when there is one, else the CPU. lm-eval's `hf` model
    does the same (lm-eval's command line asks for cuda:0 unless told otherwise)."""
    import torch

    if requested:
        try:
            torch.empty(0, device=requested)
            return requested
        except (RuntimeError, AssertionError):  # a malformed name; no CUDA build or no such GPU
            fallback = "cuda" if torch.cuda.is_available() else "the CPU"
            _say(f"device {requested} is not available here: running on {fallback}")
    return "cuda" if torch.cuda.is_available() else None


def _say(message: str) -> None:
    print(f"l2lang: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m l2lang.lm_eval ARGS`: lm-eval's command line with the `l2lang` model; an l2lang error is
    its one message (exit 1), not a traceback."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    try:
        cli_evaluate()
    except L2Error as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("l2lang: interrupted", file=sys.stderr)
        return 130
    return 0
