"""The commands that load a model: `run`, `trace`, `calibrate` and `eval`."""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path

from l2lang.lang.compose import load_program
from l2lang.errors import L2Error
from l2lang.backends.hf.generate import generate
from l2lang.backends.hf.models import DEFAULT_MODEL, load_model
from l2lang.backends.hf.attach import Strategy


def read_prompts(args) -> list[str]:
    if getattr(args, "prompt", None) is not None:
        return [args.prompt]
    path = Path(args.prompts)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeError) as exc:
        raise L2Error.one(f"cannot read prompts: {exc}", path=str(path)) from None
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            prompts.append(str(item["prompt"]))
        except (ValueError, KeyError, TypeError):
            raise L2Error.one('each line must be a JSON object with a "prompt"', path=f"{path}:{number}") from None
    if not prompts:
        raise L2Error.one("no prompts in the file", path=str(path))
    return prompts


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def trace_command(args, overrides: dict[str, str]) -> int:
    from l2lang.backends.hf.attach import observe_only
    from l2lang.apps.trace import trace

    _quiet_transformers()
    program = observe_only() if args.observe else load_program(args.strategy, overrides)
    if program.sample is not None:
        raise L2Error.one("trace follows one answer per prompt; `sample` strategies are listed by `run --json`",
                          path=str(args.strategy))
    prompts = read_prompts(args)
    loaded = load_model(args.model or DEFAULT_MODEL)
    summary = trace(loaded, program, prompts, args.out, max_new_tokens=args.max_new_tokens, chat=args.chat,
                    seed=args.seed)
    fired = ", ".join(f"{k}: {v}" for k, v in summary["interventions"].items() if v) or "nowhere"
    print(f"{summary['folder']}: {summary['tokens']} tokens traced for {summary['requests']} prompt(s); "
          f"report.html, heatmap.png, fig1.png, norms.jsonl, norms.csv; fired: {fired}")
    return 0


def calibrate_command(args) -> int:
    from l2lang.apps.calibrate import calibrate, write_profile

    _quiet_transformers()
    if args.task:
        from l2lang.apps.tasks import task_items

        prompts = [item["prompt"] for item in task_items(args.task, args.n, args.seed)]
    else:
        prompts = read_prompts(args)
    loaded = load_model(args.model or DEFAULT_MODEL)
    print(f"l2lang: calibrating {loaded.model_id} on {len(prompts)} prompt(s) ...", file=sys.stderr)
    profile = calibrate(loaded, prompts, max_new_tokens=args.max_new_tokens, chat=args.chat, seed=args.seed,
                        batch_size=args.batch_size)
    write_profile(profile, args.out)
    last = profile["layers"][str(len(profile["layers"]) - 1)]
    print(f"{args.out}: {len(profile['layers'])} layers, {last['count']} decode tokens per layer; "
          f"last layer p50 {last['p50']:.1f}, p95 {last['p95']:.1f}")
    return 0


def run_command(args, overrides: dict[str, str]) -> int:
    _quiet_transformers()
    strategy = Strategy(load_program(args.strategy, overrides))
    prompts = read_prompts(args)
    loaded = load_model(args.model or DEFAULT_MODEL)
    kwargs = {"max_new_tokens": args.max_new_tokens}
    if args.temperature > 0:
        kwargs.update(do_sample=True, temperature=args.temperature)
        if args.top_p is not None:
            kwargs["top_p"] = args.top_p
        if args.top_k is not None:
            kwargs["top_k"] = args.top_k
    elif args.top_p is not None or args.top_k is not None:
        raise L2Error.one("--top-p/--top-k need sampling: add --temperature T (T > 0)", path="<command line>")
    result = generate(loaded.model, loaded.tokenizer, strategy, prompts, seed=args.seed, chat=args.chat, **kwargs)
    plan = result.plan
    manifest = {
        "fingerprint": plan.fingerprint, "strategy": str(args.strategy), "model": loaded.model_id,
        "weights_sha256": loaded.weights_sha256, "seed": args.seed, "layers": plan.layers,
        "params": plan.params, "thresholds": {k: v.model_dump(exclude_none=True) for k, v in plan.thresholds.items()},
        "generation": kwargs, "interventions": result.report.interventions,
        "extra_layer_passes": result.report.extra_layer_passes,
        "candidates": [{"chosen": o["chosen"], "scores": [c["score"] for c in o["candidates"]]}
                       for o in result.outputs] if plan.select else None,
        "versions": {name: version(name) for name in ("l2lang", "torch", "transformers")},
    }
    if args.json:
        outputs = [{"prompt": p, **o} for p, o in zip(prompts, result.outputs)]
        json.dump({"outputs": outputs, "manifest": manifest}, sys.stdout, indent=2)
        print()
        return 0
    for prompt, output in zip(prompts, result.outputs):
        print(f"> {prompt}\n{output['text'].strip()}\n")
    fired = ", ".join(f"{k}: {v}" for k, v in result.report.interventions.items() if v) or "nowhere"
    print(f"strategy {args.strategy} ({plan.fingerprint}) on {loaded.model_id}, {plan.layers} layers")
    print(f"fired: {fired}")
    return 0


def eval_command(args) -> int:
    import torch

    from l2lang.apps.eval_report import write_report
    from l2lang.apps.evaluate import evaluate, markdown_table, parse_arms, summarise
    from l2lang.apps.tasks import load_task

    _quiet_transformers()
    if args.batch_size < 1 or args.max_new_tokens < 1:
        raise L2Error.one("--batch-size and --max-new-tokens must be at least 1", path="<command line>")
    arms = parse_arms(args.strategies)
    if args.baseline is not None and args.baseline not in {a.label for a in arms}:
        raise L2Error.one(f"--baseline {args.baseline}: not one of the strategies listed", path="<command line>")
    task = load_task(args.task, args.n, args.seed)
    loaded = load_model(args.model or DEFAULT_MODEL, dtype=getattr(torch, args.dtype))
    print(f"l2lang: {len(arms)} strategies × {len(task.items)} items of {args.task} on {loaded.model_id}",
          file=sys.stderr)
    records, settings = evaluate(loaded, arms, task, args.out, seed=args.seed, max_new_tokens=args.max_new_tokens,
                                 batch_size=args.batch_size, chat=args.chat, dtype=args.dtype)
    rows = summarise(records, arms, args.baseline)
    write_report(rows, settings, args.out)
    print(markdown_table(rows))
    print(f"\n{args.out}/: results.jsonl, results.md, summary.json, report.html", file=sys.stderr)
    return 0
