"""Prompt sets from task generators: `reasoning_gym:NAME[:k=v,...]` (or a bare NAME).

reasoning-gym is optional (`pip install 'l2lang[tasks]'`); its seeded generators give the same items
for the same seed everywhere.
"""

from __future__ import annotations

from l2lang.diagnostics import L2Error

INSTRUCTION = "Think step by step, then end with a final line 'Answer: <answer>'."


def parse_task(spec: str) -> tuple[str, dict]:
    """`reasoning_gym:chain_sum:min_terms=2,max_terms=3` → ("chain_sum", {"min_terms": 2, "max_terms": 3})."""
    parts = spec.split(":")
    if parts[0] == "reasoning_gym":
        parts = parts[1:]
    if not parts or not parts[0] or len(parts) > 2:
        raise L2Error.one(f"--task {spec}: write reasoning_gym:NAME or reasoning_gym:NAME:k=v,...",
                          path="<command line>")
    config = {}
    for item in (parts[1].split(",") if len(parts) == 2 and parts[1] else []):
        key, sep, value = item.partition("=")
        if not sep:
            raise L2Error.one(f"--task {spec}: `{item}` is not k=v", path="<command line>")
        try:
            config[key] = int(value)
        except ValueError:
            try:
                config[key] = float(value)
            except ValueError:
                config[key] = value
    return parts[0], config


def task_items(spec: str, n: int, seed: int = 0) -> list[dict]:
    """n items ({"question", "answer", "prompt"}) of a reasoning-gym task, seeded."""
    name, config = parse_task(spec)
    try:
        import reasoning_gym
    except ImportError:
        raise L2Error.one("--task needs the reasoning-gym package: pip install 'l2lang[tasks]'",
                          path="<command line>") from None
    try:
        dataset = reasoning_gym.create_dataset(name, size=n, seed=seed, **config)
    except Exception as exc:  # reasoning-gym raises ValueError/TypeError/KeyError for unknown names and keys
        raise L2Error.one(f"--task {spec}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                          path="<command line>") from None
    return [{"question": item["question"], "answer": str(item["answer"]),
             "prompt": f"{item['question']}\n{INSTRUCTION}"} for item in dataset]
