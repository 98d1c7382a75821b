"""Seeded coins of `chance(p)`, as docs/semantics.md §2 defines them, in plain Python integers.

`mix` is splitmix64's finaliser on unsigned 64-bit integers (arithmetic mod 2^64).
"""

from __future__ import annotations

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def mix(z: int) -> int:
    z &= MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def request_key(prompt: list[int], earlier_same: int = 0) -> int:
    """The request key of a prompt `t_0 .. t_{n-1}`; `earlier_same` counts the earlier rows of the batch
    whose prompt has the same `key0`."""
    n = len(prompt)
    total = sum(mix(t + 1) * mix(n - 1 - i + GOLDEN) for i, t in enumerate(prompt))
    key0 = mix(total + n)
    return mix(key0 + earlier_same * GOLDEN)


def draw(seed: int, key: int, step: int, slot: int) -> float:
    """The uniform draw in [0, 1) of chance slot `slot` for a request at `step` (its decode step, or
    `-1 - p` for prompt position p)."""
    salt = mix(seed * 1000003 + step * 7919 + slot * 104729)
    return (mix(key ^ salt) >> 11) * 2.0 ** -53
