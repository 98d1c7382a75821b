"""`l2lang calibrate`: per-layer norm statistics over decode steps, the input of `calibrated(profile, q)`.

A profile records, for every decoder layer, the quantiles p50, p75, p90, p95 and p99, the mean and
the standard deviation of the norm over the decode steps of a prompt set, and the hash of the
weights it was measured on: a strategy refuses a profile recorded on another model.
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import torch

from l2lang.apps.progress import progress
from l2lang.backends.base import Backend
from l2lang.engine.strategy import Strategy, observe_only
from l2lang.paths import write_new
from l2lang.plan import QUANTILE_KEYS

PROFILE_FORMAT = "l2lang-profile/1"


def calibrate(backend: Backend, prompts: list[str], *, max_new_tokens: int = 64, chat: bool | None = None,
              seed: int = 0, batch_size: int = 8) -> dict:
    """Generate greedily for `prompts` while observing every layer; return the profile."""
    observe_all = Strategy(observe_only())
    per_layer: list[list[torch.Tensor]] = []
    starts = range(0, len(prompts), batch_size)
    for start in progress(starts, len(starts), "calibrating"):
        chunk = prompts[start:start + batch_size]
        result = backend.generate(observe_all, chunk, seed=seed, chat=chat, max_new_tokens=max_new_tokens)
        if not per_layer:
            per_layer = [[] for _ in range(result.plan.layers)]
        for mine in result.rows:  # each request's generated tokens (its decode rows)
            decode = mine.norms[[i for i, phase in enumerate(mine.phases) if phase == "decode"]]
            for layer in range(result.plan.layers):
                per_layer[layer].append(decode[:, mine.layers.index(layer)])
    layers = {}
    for layer, chunks in enumerate(per_layer):
        values = torch.cat(chunks) if chunks else torch.zeros(0)
        if values.numel() == 0:
            continue
        quantiles = torch.quantile(values.double(), torch.tensor(list(QUANTILE_KEYS), dtype=torch.float64))
        stats = {key: float(v) for key, v in zip(QUANTILE_KEYS.values(), quantiles)}
        stats.update(mean=float(values.mean()), std=float(values.std()) if values.numel() > 1 else 0.0,
                     count=int(values.numel()))
        layers[str(layer)] = stats
    return {"format": PROFILE_FORMAT, "model": backend.model_id, "weights_sha256": backend.weights_sha256,
            "prompts": len(prompts), "max_new_tokens": max_new_tokens, "layers": layers,
            "versions": {name: version(name) for name in ("l2lang", "torch", "transformers")}}


def write_profile(profile: dict, path: str | Path) -> None:
    write_new(path, json.dumps(profile, indent=2) + "\n")
