"""Per-request state as tensors over the batch: quartile estimators, seeded coins, state banks.

Nothing here loops over rows in Python: every update is a masked tensor operation.
"""

from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)


def _shift(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's `>>` is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser; int64 arithmetic wraps, as the algorithm needs."""
    x = (x ^ _shift(x, 30)) * _MIX1
    x = (x ^ _shift(x, 27)) * _MIX2
    return x ^ _shift(x, 31)


def request_keys(input_ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """A key per row from its prompt tokens (independent of padding and batch position).

    Rows with identical prompts (e.g. `num_return_sequences`) are told apart by their order.
    """
    rows, width = input_ids.shape
    distance = torch.arange(width - 1, -1, -1, device=input_ids.device)  # from the end: padding-proof
    weights = mix64(distance.to(torch.int64) + _GOLDEN)
    tokens = mix64(input_ids.to(torch.int64) + 1)
    key = mix64((tokens * weights * valid.to(torch.int64)).sum(dim=1) + valid.sum(dim=1))
    same = key[:, None] == key[None, :]
    ordinal = torch.tril(same, diagonal=-1).sum(dim=1)
    return mix64(key + ordinal * _GOLDEN)


def _mix_int(x: int) -> int:
    """mix64 on a Python int (so a salt never needs a host-to-device copy)."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return _signed(x ^ (x >> 31))


def uniform(seed: int, keys: torch.Tensor, step: int, slot: int) -> torch.Tensor:
    """One uniform draw in [0, 1) per row, determined by (seed, request key, step, slot)."""
    salt = _mix_int(seed * 1_000_003 + step * 7919 + slot * 104_729)
    bits = mix64(keys ^ salt)
    return _shift(bits, 11).to(torch.float64) * (2.0 ** -53)


class Quartiles:
    """P² estimator of the quartiles (markers at 0, ¼, ½, ¾, 1) for many streams at once."""

    PROBS = (0.0, 0.25, 0.5, 0.75, 1.0)

    def __init__(self, streams: int, device: torch.device):
        self.count = torch.zeros(streams, dtype=torch.int64, device=device)
        self.heights = torch.zeros(streams, 5, dtype=torch.float64, device=device)
        self.positions = torch.arange(1, 6, dtype=torch.float64, device=device).repeat(streams, 1)
        self.desired = self.positions.clone()
        self.step = torch.tensor(self.PROBS, dtype=torch.float64, device=device)
        self._markers = torch.arange(5, device=device)[None, :]

    def add(self, value: torch.Tensor, mask: torch.Tensor) -> None:
        """Absorb `value[i]` into stream i where `mask[i]` (and the value is finite)."""
        x = value.to(torch.float64)
        mask = mask & torch.isfinite(x)
        x = torch.where(mask, x, torch.zeros_like(x))
        filling = mask & (self.count < 5)
        slot = self.count.clamp(max=4)
        filled = self.heights.scatter(1, slot[:, None], x[:, None])
        self.heights = torch.where(filling[:, None], filled, self.heights)
        just_full = filling & (self.count == 4)
        self.heights = torch.where(just_full[:, None], self.heights.sort(dim=1).values, self.heights)
        self._update(x, mask & (self.count >= 5))
        self.count = self.count + mask.to(torch.int64)

    def _update(self, x: torch.Tensor, mask: torch.Tensor) -> None:
        """One P² step. Every change is masked, so streams outside `mask` keep their markers exactly.

        Markers are handled as lists of columns (one `unbind`, one `stack`) rather than indexed in place.
        """
        q, n = self.heights, self.positions
        cell = (x[:, None] >= q[:, 1:4]).sum(dim=1)  # 0..3: the cell x falls in
        n = n + ((self._markers > cell[:, None]) & mask[:, None]).to(n.dtype)
        desired = self.desired + self.step * mask[:, None].to(n.dtype)
        qs, ns, ds = list(q.unbind(1)), list(n.unbind(1)), desired.unbind(1)
        qs[0] = torch.where(mask & (x < qs[0]), x, qs[0])
        qs[4] = torch.where(mask & (x > qs[4]), x, qs[4])
        for i in (1, 2, 3):
            d = ds[i] - ns[i]
            left, right = ns[i] - ns[i - 1], ns[i + 1] - ns[i]
            move = mask & (((d >= 1) & (right > 1)) | ((d <= -1) & (left > 1)))
            sign = torch.sign(d)
            parabolic = qs[i] + sign / (ns[i + 1] - ns[i - 1]) * (
                (left + sign) * (qs[i + 1] - qs[i]) / right + (right - sign) * (qs[i] - qs[i - 1]) / left)
            up = sign > 0
            neighbour = torch.where(up, qs[i + 1], qs[i - 1])
            neighbour_n = torch.where(up, ns[i + 1], ns[i - 1])
            linear = qs[i] + sign * (neighbour - qs[i]) / (neighbour_n - ns[i])
            inside = (qs[i - 1] < parabolic) & (parabolic < qs[i + 1])
            qs[i] = torch.where(move, torch.where(inside, parabolic, linear), qs[i])
            ns[i] = torch.where(move, ns[i] + sign, ns[i])
        self.heights, self.positions, self.desired = torch.stack(qs, dim=1), torch.stack(ns, dim=1), desired

    def threshold(self, k: float, iqr_floor: float, warmup: int) -> torch.Tensor:
        """Q3 + k·max(IQR, floor) per stream; NaN until `warmup` values were absorbed."""
        q1, q3 = self.heights[:, 1], self.heights[:, 3]
        value = q3 + k * torch.clamp(q3 - q1, min=iqr_floor)
        return torch.where(self.count >= warmup, value, torch.full_like(value, float("nan")))


class Bank:
    """Top-K states by norm, per row, for one (bank, layer)."""

    def __init__(self, rows: int, capacity: int, hidden: int, dtype: torch.dtype, device: torch.device):
        self.states = torch.zeros(rows, capacity, hidden, dtype=dtype, device=device)
        self.norms = torch.full((rows, capacity), float("-inf"), device=device)

    def offer(self, state: torch.Tensor, norm: torch.Tensor, mask: torch.Tensor) -> None:
        """Keep `state` for rows in `mask` whose norm beats the bank's smallest (ties keep the old).

        Writes one slot per row in place: the bank is never copied whole.
        """
        rows = torch.arange(self.norms.shape[0], device=self.norms.device)
        weakest = self.norms.argmin(dim=1)
        old_norm = self.norms[rows, weakest]
        take = mask & (norm > old_norm)
        self.norms[rows, weakest] = torch.where(take, norm, old_norm)
        self.states[rows, weakest] = torch.where(take[:, None], state.to(self.states.dtype), self.states[rows, weakest])

    def nearest(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The banked state with the highest cosine to `state`, per row, and that cosine (-inf if empty)."""
        cos = torch.nn.functional.cosine_similarity(self.states.float(), state.float()[:, None, :], dim=-1)
        cos = torch.where(torch.isfinite(self.norms), cos, torch.full_like(cos, float("-inf")))
        best = cos.argmax(dim=1)
        chosen = self.states.gather(1, best[:, None, None].expand(-1, 1, self.states.shape[-1])).squeeze(1)
        return chosen, cos.gather(1, best[:, None]).squeeze(1)
