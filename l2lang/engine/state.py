"""Per-request state: one slot per running request, every field a tensor over slots.

`RequestTable` hands out slots when requests start and takes them back when they finish; its
tensors have one extra *scratch* slot at the end, where row-wise writes of rows that must not write
anything are sent (so a scatter needs no data-dependent indexing). Also here: the P² quartile
estimator, seeded coins and state banks, all as masked tensor operations over many streams at once.
"""

from __future__ import annotations

import functools
import math
import os
import warnings

import numpy
import torch

from l2lang.plan import Plan

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
    """splitmix64's finaliser; int64 arithmetic wraps, as the algorithm needs (torch tensors or numpy
    arrays alike)."""
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


def _mix(x: int) -> int:
    """`mix64` on a Python int (unsigned 64-bit arithmetic)."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def request_key(prompt: list[int], ordinal: int = 0) -> int:
    """`request_keys` for one request, computed on the host: its prompt's tokens and `ordinal`, the number
    of earlier requests of its batch with the same prompt (docs/semantics.md §2). A signed 64-bit int."""
    n = len(prompt)
    total = sum(_mix(token + 1) * _mix(n - 1 - i + _GOLDEN) for i, token in enumerate(prompt))
    return _signed(_mix(_mix(total + n) + ordinal * _GOLDEN))


def coin_salts(seed: int, slot: int) -> int:
    """The part of a coin's salt fixed by the run seed and the chance slot (docs/semantics.md §2)."""
    return _signed(seed * 1_000_003 + slot * 104_729)


def uniform_from_salts(keys: torch.Tensor, bases: torch.Tensor, offsets: torch.Tensor | int) -> torch.Tensor:
    """Uniform draws in [0, 1), [slots, N]: for chance slot c and row i,
    u = (mix(key_i XOR mix(bases[c] + offsets_i)) >> 11) · 2^-53, arithmetic mod 2^64, where the salt
    seed·1000003 + step·7919 + slot·104729 is split into `bases` (see `coin_salts`) and `offsets` (a number,
    or one per row). On a CPU the integer mixing runs on numpy views (the same bits, for a fraction of
    the cost per operation)."""
    if keys.device.type == "cpu":
        keys, bases = keys.numpy(), bases.numpy()
        offsets = offsets if isinstance(offsets, int) else offsets.numpy()
    per_row = not isinstance(offsets, int)
    salts = mix64(bases[:, None] + offsets[None, :]) if per_row else mix64(bases + offsets)
    mixed = _shift(mix64(keys[None, :] ^ (salts if per_row else salts[:, None])), 11)
    if isinstance(mixed, numpy.ndarray):
        return torch.from_numpy(mixed.astype(numpy.float64) * (2.0 ** -53))
    return mixed.to(torch.float64) * (2.0 ** -53)


def uniform(seed: int, keys: torch.Tensor, steps: torch.Tensor | int, slot: int) -> torch.Tensor:
    """One uniform draw in [0, 1) per row for one chance slot (see `uniform_from_salts`)."""
    bases = torch.tensor([coin_salts(seed, slot)], dtype=torch.int64, device=keys.device)
    return uniform_from_salts(keys, bases, steps * 7919)[0]


TAU_BOUND = 1e30  # an adaptive threshold larger than this (in size) has no value, like one warming up


class Quartiles:
    """P² estimators of the quartiles (markers at 0, ¼, ½, ¾, 1) for many streams at once, each with the
    threshold it gives, `tau` = Q3 + k·max(Q3 − Q1, iqr_floor) once `warmup` values were absorbed (else
    NaN; NaN too when it exceeds `TAU_BOUND`, so that arithmetic on a threshold cannot overflow).

    One `add` is one P² step for every stream (`p2_step`), and recomputes `tau`. How it runs depends on
    the device (`p2_mode`): on a GPU as one compiled function (`torch.compile`: a few kernel launches
    instead of about a hundred); on a CPU over numpy views of the same memory, updating the fields in
    place: the streams that take a value one by one in Python floats when they are few (`add_at`,
    `p2_scalar_step`), else all at once in numpy (a numpy operation on a few numbers costs a fraction of
    a torch one). Python floats, numpy and plain torch operations give the same bits; a compiler may
    fuse a multiply and an add, and so round differently in the last bit.
    """

    PROBS = (0.0, 0.25, 0.5, 0.75, 1.0)
    # Up to this many streams to update, a CPU steps them one by one in Python floats. During generation on
    # tiny28 (docs/performance.md): 6 streams 0.14 ms one by one, 0.34 ms vectorised (a hundred numpy
    # operations, whatever the count); 48 streams 0.26 and 0.27 ms.
    SCALAR_STREAMS = 32

    def __init__(self, streams: int, device: torch.device, k: torch.Tensor | float = 1.5,
                 iqr_floor: torch.Tensor | float = 1e-3, warmup: torch.Tensor | float = 5, mode: str | None = None):
        self.count = torch.zeros(streams, dtype=torch.int64, device=device)
        # the markers' heights, positions and desired positions: views of one [streams, 3, 5] tensor
        self.markers_state = torch.arange(1, 6, dtype=torch.float64, device=device).repeat(streams, 3, 1)
        self.heights, self.positions, self.desired = self.markers_state.unbind(1)
        self.heights.zero_()
        self.k, self.iqr_floor, self.warmup = (torch.as_tensor(v, dtype=torch.float64, device=device).expand(streams)
                                               for v in (k, iqr_floor, warmup))
        self.tau = torch.full((streams,), float("nan"), device=device)
        self.markers = torch.arange(5, device=device)
        self.increments = torch.tensor(self.PROBS, dtype=torch.float64, device=device)
        self.mode = mode or p2_mode(device)
        if self.mode == "numpy":  # views of the tensors' memory: the tensors stay the state, updated in place
            self.arrays = [t.numpy() for t in (self.count, self.heights, self.positions, self.desired, self.k,
                                               self.iqr_floor, self.warmup, self.markers, self.increments)]
            self.markers_array = self.markers_state.numpy()
            self.constants = [t.tolist() for t in (self.k, self.iqr_floor, self.warmup)]  # fixed per stream

    def reset(self, streams: torch.Tensor) -> None:
        """Empty the streams whose indices are given (a slot handed to a new request)."""
        self.count[streams] = 0
        self.heights[streams] = 0
        self.positions[streams] = torch.arange(1, 6, dtype=torch.float64, device=self.count.device)
        self.desired[streams] = self.positions[streams]
        self.tau[streams] = float("nan")

    def add(self, value: torch.Tensor, mask: torch.Tensor) -> None:
        """Absorb `value[i]` into stream i where `mask[i]` (and the value is finite)."""
        if self.mode == "numpy":
            streams = numpy.flatnonzero(mask.numpy())
            self.add_at(streams, value.numpy()[streams])
            return
        args = (self.count, self.heights, self.positions, self.desired, value.to(torch.float64), mask, self.k,
                self.iqr_floor, self.warmup, self.markers, self.increments)
        if self.mode == "compiled":
            try:
                self.count, self.heights, self.positions, self.desired, self.tau = _compiled_p2_step()(*args)
                return
            except Exception as exc:  # a missing or broken compiler must not stop generation
                warnings.warn(f"l2lang: torch.compile failed ({type(exc).__name__}); estimators run uncompiled",
                              RuntimeWarning, stacklevel=1)
                self.mode = "torch"
        self.count, self.heights, self.positions, self.desired, self.tau = _p2_step_torch(*args)

    def add_at(self, streams: numpy.ndarray, values: numpy.ndarray) -> None:
        """On a CPU, `add` for the distinct `streams` (indices), absorbing `values[j]` into stream `streams[j]`
        (unless it is not finite), in place on numpy views: a few streams one by one in Python floats
        (`p2_scalar_step`), many at once (`p2_step`); the two give the same bits."""
        count, heights, positions, desired, k, iqr_floor, warmup, *rest = self.arrays
        tau = self.tau.numpy()  # (float64 to float32 as `Tensor.float` rounds)
        if len(streams) > self.SCALAR_STREAMS:
            mask, x = numpy.zeros(len(count), dtype=bool), numpy.zeros(len(count))
            mask[streams], x[streams] = True, values
            new = p2_step(numpy, count, heights, positions, desired, x, mask, k, iqr_floor, warmup, *rest)
            for old, updated in zip((count, heights, positions, desired, tau), new):
                old[...] = updated
            return
        values = values.tolist()
        finite = [j for j, value in enumerate(values) if abs(value) < math.inf]
        if len(finite) < len(values):
            streams, values = streams[finite], [values[j] for j in finite]
        if not values:
            return
        index, markers = streams.tolist(), self.markers_array[streams].tolist()
        new = zip(*map(p2_scalar_step, count[streams].tolist(), markers, values,
                       *([c[i] for i in index] for c in self.constants)))
        count[streams], self.markers_array[streams], tau[streams] = new


def p2_scalar_step(count: int, markers: list[list[float]], x: float, k: float, iqr_floor: float, warmup: float):
    """`p2_step` for one stream absorbing the finite value `x`, in Python floats: the same operations in the
    same order, hence the same bits. `markers`: [heights, positions, desired], updated in place. Returns
    (count, markers, tau)."""
    q, n, desired = markers  # heights, positions, desired positions
    x = x + 0.0
    if count < 5:  # the first five values, sorted once five
        q[count] = x
        if count == 4:
            q.sort()
    else:
        cell = (x >= q[1]) + (x >= q[2]) + (x >= q[3])
        n[:] = [p + (1.0 if marker > cell else 0.0) for marker, p in enumerate(n)]
        desired[:] = [p + step for p, step in zip(desired, Quartiles.PROBS)]
        q[0], q[4] = (x if x < q[0] else q[0]), (x if x > q[4] else q[4])
        for i in (1, 2, 3):
            d = desired[i] - n[i]
            left, right = n[i] - n[i - 1], n[i + 1] - n[i]
            if (d >= 1 and right > 1) or (d <= -1 and left > 1):
                sign = 1.0 if d > 0 else -1.0
                parabolic = q[i] + sign / (n[i + 1] - n[i - 1]) * (
                    (left + sign) * (q[i + 1] - q[i]) / right + (right - sign) * (q[i] - q[i - 1]) / left)
                if q[i - 1] < parabolic < q[i + 1]:
                    q[i] = parabolic
                else:
                    neighbour, neighbour_n = (q[i + 1], n[i + 1]) if sign > 0 else (q[i - 1], n[i - 1])
                    q[i] = q[i] + sign * (neighbour - q[i]) / (neighbour_n - n[i])
                n[i] = n[i] + sign
    count += 1
    spread = q[3] - q[1]  # max(spread, iqr_floor) as numpy's `maximum`: NaN stays NaN
    tau = q[3] + k * (spread if spread >= iqr_floor or spread != spread else iqr_floor)
    return count, markers, tau if count >= warmup and abs(tau) <= TAU_BOUND else math.nan


def p2_step(xp, count, heights, positions, desired, x, mask, k, iqr_floor, warmup, markers, increments):
    """One P² step (Jain & Chlamtac, 1985) for every stream, masked so that streams outside `mask` keep
    their markers exactly; then each stream's threshold (float64). `xp` is the array namespace, `torch` or
    `numpy`: the step uses only what both spell alike. `x`: float64 values; `markers`: 0..4;
    `increments`: `Quartiles.PROBS`. Returns (count, heights, positions, desired, tau).

    Markers are handled as lists of columns rather than indexed in place. A value -0.0 is absorbed as 0.0
    (so that no marker holds -0.0: numpy and torch sort ±0, and take the larger of them, differently).
    """
    mask = mask & (abs(x) < math.inf)
    x = xp.where(mask, x, 0.0) + 0.0  # (-0.0 + 0.0 is 0.0)
    filling = mask & (count < 5)
    heights = xp.where(filling[:, None] & (markers == count[:, None]), x[:, None], heights)  # the first five
    full = filling & (count == 4)
    ordered = xp.sort(heights, 1)
    heights = xp.where(full[:, None], getattr(ordered, "values", ordered), heights)          # sorted once five
    update = mask & (count >= 5)
    cell = (x[:, None] >= heights[:, 1:4]).sum(1)  # 0..3: the cell x falls in
    positions = positions + ((markers > cell[:, None]) & update[:, None]) * 1.0
    desired = desired + increments * update[:, None]
    qs, ns = [heights[:, i] for i in range(5)], [positions[:, i] for i in range(5)]
    qs[0] = xp.where(update & (x < qs[0]), x, qs[0])
    qs[4] = xp.where(update & (x > qs[4]), x, qs[4])
    for i in (1, 2, 3):
        d = desired[:, i] - ns[i]
        left, right = ns[i] - ns[i - 1], ns[i + 1] - ns[i]
        move = update & (((d >= 1) & (right > 1)) | ((d <= -1) & (left > 1)))
        sign = xp.sign(d)
        parabolic = qs[i] + sign / (ns[i + 1] - ns[i - 1]) * (
            (left + sign) * (qs[i + 1] - qs[i]) / right + (right - sign) * (qs[i] - qs[i - 1]) / left)
        up = sign > 0
        neighbour = xp.where(up, qs[i + 1], qs[i - 1])
        neighbour_n = xp.where(up, ns[i + 1], ns[i - 1])
        linear = qs[i] + sign * (neighbour - qs[i]) / (neighbour_n - ns[i])
        inside = (qs[i - 1] < parabolic) & (parabolic < qs[i + 1])
        qs[i] = xp.where(move, xp.where(inside, parabolic, linear), qs[i])
        ns[i] = xp.where(move, ns[i] + sign, ns[i])
    heights, positions = xp.stack(qs, 1), xp.stack(ns, 1)
    count = count + mask
    q1, q3 = heights[:, 1], heights[:, 3]
    tau = q3 + k * xp.maximum(q3 - q1, iqr_floor)
    tau = xp.where((count >= warmup) & (abs(tau) <= TAU_BOUND), tau, math.nan)
    return count, heights, positions, desired, tau


def _p2_step_torch(*args):
    """`p2_step` on torch tensors, with the threshold in float32."""
    *fields, tau = p2_step(torch, *args)
    return (*fields, tau.float())


@functools.cache
def _compiled_p2_step():
    return torch.compile(_p2_step_torch, dynamic=True, fullgraph=True)


def p2_mode(device: torch.device) -> str:
    """How `Quartiles` runs its P² step: "numpy" on a CPU, "compiled" on other devices, "torch" (plain
    tensor operations) where L2LANG_COMPILE=0 says not to compile; L2LANG_COMPILE=1 compiles on a CPU too."""
    wanted = os.environ.get("L2LANG_COMPILE", "auto")
    if wanted == "1":
        return "compiled"
    if device.type == "cpu":
        return "numpy"
    return "torch" if wanted == "0" else "compiled"


class Bank:
    """Top-K states by norm, per slot, for one (bank, layer). Among states of equal norm the earliest
    offered stay: every entry keeps the order in which it was offered (`ages`)."""

    def __init__(self, slots: int, capacity: int, hidden: int, dtype: torch.dtype, device: torch.device):
        self.states = torch.zeros(slots, capacity, hidden, dtype=dtype, device=device)
        self.norms = torch.full((slots, capacity), float("-inf"), device=device)
        self.ages = torch.zeros(slots, capacity, dtype=torch.int64, device=device)
        self.clock = 0  # offers so far, counted on the host: no device read needed

    def reset(self, slots: torch.Tensor) -> None:
        self.states[slots] = 0
        self.norms[slots] = float("-inf")

    def offer(self, slots: torch.Tensor, state: torch.Tensor, norm: torch.Tensor, mask: torch.Tensor) -> None:
        """Keep row i's `state` in bank slot `slots[i]` where `mask[i]` and its norm beats the slot's
        smallest (ties keep the old; of several smallest, the latest offered goes). Masked rows must
        have distinct slots; rows outside `mask` must point at the scratch slot. Writes one entry per
        row in place: the bank is never copied whole.
        """
        rows = torch.arange(slots.shape[0], device=slots.device)
        norms, ages = self.norms[slots], self.ages[slots]
        smallest = norms.min(dim=1, keepdim=True).values
        weakest = torch.where(norms == smallest, ages, -1).argmax(dim=1)
        old_norm = norms[rows, weakest]
        take = mask & (norm > old_norm)
        self.norms[slots, weakest] = torch.where(take, norm, old_norm)
        self.ages[slots, weakest] = torch.where(take, self.clock + rows, ages[rows, weakest])
        self.states[slots, weakest] = torch.where(take[:, None], state.to(self.states.dtype),
                                                  self.states[slots, weakest])
        self.clock += slots.shape[0]

    def offer_many(self, slots: torch.Tensor, state: torch.Tensor, norm: torch.Tensor, mask: torch.Tensor) -> None:
        """Like `offer`, for steps where a request may offer several rows (its prompt positions): each
        slot's banked states and its masked rows, offered in row order, are merged and the `capacity`
        largest norms kept (ties: the earliest offered)."""
        size, capacity = self.norms.shape
        count = slots.shape[0]
        rows = torch.arange(count, device=norm.device)
        offered = torch.full((size, count), float("-inf"), device=norm.device)
        offered[slots, rows] = torch.where(mask, norm, float("-inf"))
        candidates = torch.cat([self.norms, offered], dim=1)                   # [slots, capacity + rows]
        ages = torch.cat([self.ages, (self.clock + rows).expand(size, -1)], dim=1)
        by_age = ages.argsort(dim=1, stable=True)                              # earliest first, then
        by_norm = candidates.gather(1, by_age).argsort(dim=1, descending=True, stable=True)  # largest first
        order = by_age.gather(1, by_norm)[:, :capacity]
        banked = order < capacity
        hidden = self.states.shape[-1]
        from_bank = self.states.gather(1, order.clamp(max=capacity - 1)[..., None].expand(-1, -1, hidden))
        from_rows = state.to(self.states.dtype)[(order - capacity).clamp(min=0)]
        self.states = torch.where(banked[..., None], from_bank, from_rows)
        self.norms = candidates.gather(1, order)
        self.ages = ages.gather(1, order)
        self.clock += count

    def nearest(self, slots: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row: the banked state of its slot with the highest cosine to `state`, and that cosine
        (-inf where the bank is empty). The banked states' norms are kept, so a cosine is one dot product."""
        states, norms = self.states[slots], self.norms[slots]
        dots = torch.bmm(states.float(), state.float()[:, :, None])[..., 0]                    # [rows, K]
        cos = dots / (norms * torch.linalg.vector_norm(state, dim=-1, dtype=torch.float32)[:, None]).clamp(min=1e-8)
        cos = torch.where(norms > -math.inf, cos, -math.inf)
        best = cos.argmax(dim=1, keepdim=True)
        chosen = states.gather(1, best[..., None].expand(-1, 1, states.shape[-1]))[:, 0]
        return chosen, cos.gather(1, best)[:, 0]


class RequestTable:
    """The state of every running request, one slot each (plus one scratch slot at index `capacity`).

    Fields, each a tensor with one entry per slot: the request key (seeds its coins), decode steps
    taken, streak and rate counters, cooldowns, latched decisions of deferring rules, request-scoped
    quartile estimators and banks. `uids[slot]` names the request holding a slot (None when free).
    """

    def __init__(self, plan: Plan, capacity: int, hidden: int, dtype: torch.dtype, device: torch.device):
        self.plan, self.hidden, self.dtype, self.device = plan, hidden, dtype, device
        self.local = [e for e in plan.estimators if plan.thresholds[e.threshold].scope != "shared"]
        self.local_index = {e.id: i for i, e in enumerate(self.local)}
        self.deferring = [r.id for r in plan.rules if any(a.delay for a in r.actions)]
        self.bank_keys = sorted({(a.bank, a.layer) for r in plan.rules for a in r.actions if getattr(a, "bank", None)})
        self.uids: list[int | None] = []
        self.snapshot: tuple[int | None, ...] = ()  # `uids` as of now, shared by the records of steps
        self.next_uid = 0
        self._allocate(max(capacity, 1))

    def _allocate(self, capacity: int) -> None:
        """(Re)build every field for `capacity` slots, keeping what the current slots hold."""
        old = getattr(self, "capacity", 0)
        size, device, plan = capacity + 1, self.device, self.plan

        def zeros(*shape, dtype=torch.int64) -> torch.Tensor:
            return torch.zeros(*shape, size, dtype=dtype, device=device)

        fields = {
            "keys": zeros(), "seeds": zeros(), "decode_steps": zeros(),
            "streaks": zeros(plan.streak_slots), "rate_hits": zeros(plan.rate_slots),
            "cooldown_until": zeros(len(plan.rules)) - 1,
            "latched": zeros(len(self.deferring), dtype=torch.bool),
        }
        specs = [plan.thresholds[e.threshold] for e in self.local]

        def per_stream(values: list[float]) -> torch.Tensor:  # one entry per (estimator, slot) stream
            return torch.tensor(values, dtype=torch.float64, device=device).repeat_interleave(size)

        quartiles = Quartiles(len(self.local) * size, device, per_stream([t.k for t in specs]),
                              per_stream([t.iqr_floor for t in specs]), per_stream([t.warmup for t in specs]))
        banks = {key: Bank(size, plan.banks[key[0]], self.hidden, self.dtype, device) for key in self.bank_keys}
        if old:
            for name, tensor in fields.items():
                tensor[..., :old] = getattr(self, name)[..., :old]
            for i in range(len(self.local)):
                new, was = slice(i * size, i * size + old), slice(i * (old + 1), i * (old + 1) + old)
                for name in ("count", "heights", "positions", "desired", "tau"):
                    getattr(quartiles, name)[new] = getattr(self.quartiles, name)[was]
            for key, bank in banks.items():
                for name in ("states", "norms", "ages"):
                    getattr(bank, name)[:old] = getattr(self.banks[key], name)[:old]
                bank.clock = self.banks[key].clock
        self.__dict__.update(fields)
        self.quartiles, self.banks, self.capacity = quartiles, banks, capacity
        self.stream_starts = numpy.arange(len(self.local)) * size  # estimator e's streams: e * size + slot
        self.arange = torch.arange(size, device=device)

    @property
    def scratch(self) -> int:
        return self.capacity

    def feed(self, values: torch.Tensor, live: torch.Tensor, slots: torch.Tensor | None) -> None:
        """Each request-scoped estimator e absorbs `values[e, i]` into the stream of row i's slot (`slots[i]`;
        None: row i's slot is i), for the rows in `live` (at most one per slot)."""
        quartiles, size = self.quartiles, self.capacity + 1
        if quartiles.mode == "numpy":  # (a CPU) the live rows' streams, found on the host
            rows = numpy.flatnonzero(live.numpy())
            streams = self.stream_starts[:, None] + (rows if slots is None else slots.numpy()[rows])
            quartiles.add_at(streams.ravel(), values.numpy()[:, rows].ravel())
            return
        if slots is None:  # (padded with torch's own operator: `F.pad` costs more in Python than it does)
            pad = (0, size - values.shape[1])
            per_slot = torch.constant_pad_nd(values, pad)
            mask = torch.constant_pad_nd(live, pad).expand_as(per_slot)
        else:  # rows outside `live` write the scratch slot, and write it as not to be absorbed
            per_slot = values.new_zeros(len(self.local), size)
            mask = torch.zeros_like(per_slot, dtype=torch.bool)
            target = torch.where(live, slots, self.scratch)
            per_slot[:, target], mask[:, target] = values, live.expand_as(values)
        quartiles.add(per_slot.flatten(), mask.flatten())

    def start(self, keys: torch.Tensor, seeds: torch.Tensor | None = None) -> tuple[torch.Tensor, list[int]]:
        """Slots (and new uids) for requests with these keys (and, where requests bring their own, seeds);
        their state starts empty."""
        wanted = keys.shape[0]
        slots = [slot for slot, uid in enumerate(self.uids) if uid is None][:wanted]
        while len(slots) < wanted:
            slots.append(len(self.uids))
            self.uids.append(None)
        if len(self.uids) > self.capacity:
            self._allocate(max(2 * self.capacity, len(self.uids)))
        uids = list(range(self.next_uid, self.next_uid + wanted))
        self.next_uid += wanted
        for slot, uid in zip(slots, uids):
            self.uids[slot] = uid
        self.snapshot = tuple(self.uids)
        index = torch.tensor(slots, dtype=torch.int64, device=self.device)
        self._reset(index)
        self.keys[index] = keys.to(self.device)
        if seeds is not None:
            self.seeds[index] = seeds.to(self.device)
        return index, uids

    def finish(self, slots: list[int]) -> None:
        """Give the slots back; a later request may take them."""
        for slot in slots:
            self.uids[slot] = None
        self.snapshot = tuple(self.uids)

    def _reset(self, slots: torch.Tensor) -> None:
        size = self.capacity + 1
        for name in ("keys", "seeds", "decode_steps", "streaks", "rate_hits", "latched"):
            getattr(self, name)[..., slots] = 0
        self.cooldown_until[..., slots] = -1
        if self.local:
            streams = (torch.arange(len(self.local), device=self.device)[:, None] * size + slots[None, :]).flatten()
            self.quartiles.reset(streams)
        for bank in self.banks.values():
            bank.reset(slots)
