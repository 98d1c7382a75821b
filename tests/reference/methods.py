"""The paper's methods in plain PyTorch, written from ../shared/docs/tell-tale-norm.md and the
semantics of docs/semantics.md, with no l2lang code: ALRR, ERSS, high-norm and matched random
suppression, and LRS scores. One request at a time, greedy or seeded sampling, KV cache on.

Each method is a set of forward hooks on a Llama-style model (`model.model.layers`). Loops over
rows and layers are fine here: this code is for clarity, not speed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from tests.reference.quartiles import Quartiles

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def mix(x: int) -> int:
    """splitmix64's finaliser on unsigned 64-bit integers."""
    x &= MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def request_key(prompt: list[int]) -> int:
    """docs/semantics.md §2: the key of a request from its prompt tokens (first of its kind)."""
    n = len(prompt)
    total = sum(mix(t + 1) * mix(n - 1 - i + GOLDEN) for i, t in enumerate(prompt)) & MASK
    return mix(mix(total + n))


def coin(seed: int, key: int, step: int, slot: int) -> float:
    salt = mix(seed * 1_000_003 + step * 7919 + slot * 104_729)
    return (mix(key ^ salt) >> 11) * 2.0 ** -53


class ReadOnly(DynamicCache):
    def __init__(self, cache):
        super().__init__()
        self.layers = cache.layers

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return self.layers[layer_idx].keys, self.layers[layer_idx].values


@dataclass
class Method:
    """Shared plumbing: step counting, per-layer hooks, intervention counts."""

    model: torch.nn.Module
    layers: list[int]
    k: float = 1.5
    warmup: int = 5
    seed: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    step: int = 0
    key: int = 0

    def run(self, prompt: list[int], **generate_kwargs) -> torch.Tensor:
        self.key = request_key(prompt)
        self.estimators = {layer: Quartiles() for layer in self.layers}
        handles = [self.model.register_forward_pre_hook(self._begin, with_kwargs=True)]
        for layer in self.layers:
            handles.append(self.model.model.layers[layer].register_forward_hook(
                self._hook(layer), with_kwargs=True))
        handles.append(self.model.register_forward_hook(self._end))
        try:
            torch.manual_seed(self.seed)
            return self.model.generate(torch.tensor([prompt]), pad_token_id=0, **generate_kwargs)
        finally:
            for handle in handles:
                handle.remove()

    def _begin(self, module, args, kwargs):
        cache = kwargs.get("past_key_values")
        self.step = 0 if cache is None or cache.get_seq_length() == 0 else self.step + 1
        self.norms: dict[int, float] = {}

    def _end(self, module, args, output):
        if self.step > 0:
            for layer, norm in self.norms.items():
                self.estimators[layer].add(norm)

    def _hook(self, layer: int):
        def hook(module, args, kwargs, output):
            if self.step == 0:
                return output
            h = output[0, -1]
            norm = float(torch.linalg.vector_norm(h, dtype=torch.float32))
            self.norms[layer] = norm
            tau = self.estimators[layer].threshold(self.k, 1e-3, self.warmup)
            new = self.act(layer, module, args, kwargs, h, norm, tau)
            if new is None:
                return output
            output = output.clone()
            output[0, -1] = new
            return output
        return hook

    def count(self, label: str) -> None:
        self.counts[label] = self.counts.get(label, 0) + 1

    def act(self, layer, module, args, kwargs, h, norm, tau):
        raise NotImplementedError


@dataclass
class ALRR(Method):
    """Re-run a layer on its own output while τ < norm < B·τ and it grows by ε (KV frozen)."""

    k_max: int = 1
    epsilon: float = 0.2
    blowup: float = 1.5

    def act(self, layer, module, args, kwargs, h, norm, tau):
        if tau is None or not tau < norm < self.blowup * tau:
            return None
        cache = kwargs["past_key_values"]
        current, accepted = h[None, None], False
        for _ in range(self.k_max):
            candidate = module.forward(current, **{**kwargs, "past_key_values": ReadOnly(cache)})
            new = float(torch.linalg.vector_norm(candidate[0, -1], dtype=torch.float32))
            old = float(torch.linalg.vector_norm(current[0, -1], dtype=torch.float32))
            if not (new > tau and new / old - 1 >= self.epsilon and new < self.blowup * tau):
                break
            current, accepted = candidate, True
        if accepted:
            self.count(f"recurse@{layer}")
            return current[0, -1]
        return None


@dataclass
class ERSS(Method):
    """Bank high-norm states; after a streak of low norms, a coin and no cooldown, steer toward the
    nearest banked state (cosine ≥ min_cos): convex mix (`mix`) or the figure's x + λ·v (`add`)."""

    bank_size: int = 32
    streak_length: int = 40
    gamma: float = 1.0
    p: float = 0.2
    cooldown: int = 32
    beta: float = 0.5
    min_cos: float = 0.5
    update: str = "mix"

    def __post_init__(self):
        self.banks = {layer: [] for layer in self.layers}
        self.streaks = {layer: 0 for layer in self.layers}
        self.cool_until = {layer: -1 for layer in self.layers}

    def act(self, layer, module, args, kwargs, h, norm, tau):
        if tau is not None and norm > tau:  # store first (its rule comes first), offering the first pass
            bank = self.banks[layer]
            if len(bank) < self.bank_size:
                bank.append((norm, h.clone()))
                self.count(f"store@{layer}")
            else:
                weakest = min(range(len(bank)), key=lambda i: (bank[i][0], i))
                if norm > bank[weakest][0]:
                    bank[weakest] = (norm, h.clone())
                self.count(f"store@{layer}")
        low = tau is not None and norm < self.gamma * tau
        self.streaks[layer] = self.streaks[layer] + 1 if low else 0
        slot = self.layers.index(layer)
        if not (self.streaks[layer] >= self.streak_length and coin(self.seed, self.key, self.step, slot) < self.p
                and self.step > self.cool_until[layer]):
            return None
        bank = self.banks[layer]
        if not bank:
            return None
        cosines = [float(torch.cosine_similarity(s.float(), h.float(), dim=0)) for _, s in bank]
        best = max(range(len(bank)), key=lambda i: (cosines[i], -i))
        if cosines[best] < self.min_cos:
            return None
        v = bank[best][1]
        self.count(f"steer@{layer}")
        self.cool_until[layer] = self.step + self.cooldown
        self.streaks[layer] = 0
        return (1 - self.beta) * h + self.beta * v if self.update == "mix" else h + self.beta * v


@dataclass
class Suppress(Method):
    """Scale the state by `factor` where norm > τ (`high`), or on a seeded coin with probability
    equal to the fraction of this request's earlier steps whose norm exceeded τ (`random`)."""

    factor: float = 0.1
    random: bool = False

    def __post_init__(self):
        self.hits = {layer: 0 for layer in self.layers}

    def act(self, layer, module, args, kwargs, h, norm, tau):
        high = tau is not None and norm > tau
        if self.random:
            rate = self.hits[layer] / max(self.step - 1, 1)  # earlier steps only: independent of this one
            self.hits[layer] += high
            if not coin(self.seed, self.key, self.step, self.layers.index(layer)) < rate:
                return None
        elif not high:
            return None
        self.count(f"suppress@{layer}")
        return h * self.factor


def lrs_scores(step_norms: list[list[float]], tau: float, metric: str, late: float = 0.3,
               per_token: bool = False) -> float:
    """A–D of the paper for one answer: `step_norms[t][j]` is the norm at decode step t, layer j."""
    steps = len(step_norms)
    total = 0.0
    for t, norms in enumerate(step_norms):
        for norm in norms:
            if metric == "total":
                total += norm
            elif metric == "area":
                total += max(0.0, norm - tau)
            elif metric == "events":
                total += float(norm > tau)
            elif metric == "late_area" and t + 1 > (1 - late) * steps:
                total += max(0.0, norm - tau)
    return total / steps if per_token and steps else total
