"""Per-request state primitives: the P² quartile estimator, request keys, seeded coins, banks."""

from __future__ import annotations

import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from l2lang.engine.state import Bank, Quartiles, request_keys, uniform

CPU = torch.device("cpu")


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 2**31), st.floats(0.1, 100), st.floats(-50, 50))
@example(0, 1.0, 0.0)
def test_p2_quartiles_track_the_sample_quartiles(seed: int, scale: float, shift: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(2, 900, generator=generator, dtype=torch.float64) * scale + shift
    estimator = Quartiles(2, CPU)
    for t in range(values.shape[1]):
        estimator.add(values[:, t], torch.tensor([True, t % 3 == 0]))
    exact = [torch.quantile(values[0], torch.tensor([0.25, 0.75], dtype=torch.float64)),
             torch.quantile(values[1, ::3], torch.tensor([0.25, 0.75], dtype=torch.float64))]
    for row in range(2):
        assert torch.allclose(estimator.heights[row, [1, 3]], exact[row], atol=0.15 * scale)
    assert estimator.count.tolist() == [900, 300]


VALUES = st.one_of(st.floats(-1e6, 1e6), st.sampled_from([0.0, -0.0, 1.0, 2.0, float("inf"), float("nan")]))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.tuples(VALUES, st.booleans()), min_size=4, max_size=4), min_size=1, max_size=40),
       st.sampled_from([0.0, 1.5, 3.0]), st.sampled_from([0.0, -0.0, 1e-3, 0.5]), st.sampled_from([5, 6, 20]))
@example([[(float(t % 7), True), (-float(t), t % 2 == 0), (float("nan"), True), (1e300, True)] for t in range(30)],
         1.5, 1e-3, 5)
@example([[(0.0, True), (-0.0, True), (1.0, True), (-1.0, True)] for _ in range(12)], 1.5, 0.0, 5)
@example([[(v, True), (-v, True), (v, t % 2 == 0), (-0.0, True)] for t, v in enumerate([0.0, -0.0, 0.0, -0.0, 0.0, 1.0, -0.0])],
         1.5, -0.0, 5)
def test_every_way_of_running_p2_gives_the_same_bits(steps, k, floor, warmup) -> None:
    """The P² step one stream at a time in Python floats and vectorised on numpy views (a CPU's, for few
    and for many streams) and as torch operations (a GPU's, uncompiled) agree bit for bit after every
    step: markers, positions, counts and thresholds, for masked, repeated, huge and non-finite values
    (docs/performance.md)."""
    scalar, vectorised, on_torch = runs = [Quartiles(4, CPU, k, floor, warmup, mode=m) for m in ("numpy", "numpy", "torch")]
    scalar.SCALAR_STREAMS, vectorised.SCALAR_STREAMS = 4, 0
    for step in steps:
        values = torch.tensor([v for v, _ in step], dtype=torch.float32)
        mask = torch.tensor([m for _, m in step])
        for q in runs:
            q.add(values, mask)
        for name in ("count", "heights", "positions", "desired", "tau"):
            expected = getattr(on_torch, name)
            for q in (scalar, vectorised):
                value = getattr(q, name)
                assert torch.equal(value.nan_to_num(-7.0), expected.nan_to_num(-7.0)), name
                assert torch.equal(value.signbit(), expected.signbit()), name


def test_threshold_is_silent_until_warm_and_then_q3_plus_k_iqr() -> None:
    estimator = Quartiles(1, CPU, k=1.5, iqr_floor=1e-3, warmup=9)
    for value in range(1, 10):
        estimator.add(torch.tensor([float(value)]), torch.tensor([True]))
        tau = estimator.tau
        assert torch.isnan(tau).item() == (value < 9)
    q1, q3 = estimator.heights[0, 1], estimator.heights[0, 3]
    assert torch.isclose(tau[0].double(), q3 + 1.5 * (q3 - q1))


def test_request_keys_ignore_padding_and_batch_position_but_separate_repeats() -> None:
    ids = torch.tensor([[0, 0, 5, 6], [5, 6, 7, 8], [0, 0, 5, 6]])
    valid = ids != 0
    keys = request_keys(ids, valid)
    alone = request_keys(torch.tensor([[5, 6]]), torch.tensor([[True, True]]))
    assert keys[0] == alone[0] and keys[0] != keys[2] and len(set(keys.tolist())) == 3
    assert torch.equal(request_keys(ids[1:2], valid[1:2]), keys[1:2])


def test_a_request_key_computed_on_the_host_equals_the_batched_one() -> None:
    from l2lang.engine.state import request_key

    ids = torch.tensor([[0, 0, 5, 6], [5, 6, 7, 8], [0, 0, 5, 6]])
    keys = request_keys(ids, ids != 0).tolist()
    assert [request_key([5, 6]), request_key([5, 6, 7, 8]), request_key([5, 6], ordinal=1)] == keys


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(-2**63, 2**63 - 1), min_size=1, max_size=6), st.integers(0, 2**31),
       st.one_of(st.integers(-10**6, 10**6), st.lists(st.integers(-10**9, 10**9), min_size=6, max_size=6)))
@example([2**63 - 1, -2**63, 0], 0, -1)
def test_coins_on_numpy_views_are_the_bits_torch_draws(keys, seed, offsets) -> None:
    """`uniform_from_salts` on a CPU mixes on numpy views; a device tensor mixes with torch operations:
    the same draws, bit for bit, for a step number or one offset per row."""
    from l2lang.engine import state

    keys = torch.tensor(keys, dtype=torch.int64)
    bases = torch.tensor([state.coin_salts(seed, slot) for slot in range(3)], dtype=torch.int64)
    offsets = offsets if isinstance(offsets, int) else torch.tensor(offsets[:len(keys)], dtype=torch.int64)

    class OnDevice(torch.Tensor):  # a CPU tensor that says it is not on the CPU (takes the torch path)
        @property
        def device(self):
            return torch.device("meta")

    on_device = state.uniform_from_salts(keys.as_subclass(OnDevice), bases, offsets)
    assert torch.equal(state.uniform_from_salts(keys, bases, offsets), on_device.as_subclass(torch.Tensor))


def test_coins_are_uniform_and_reproducible() -> None:
    keys = torch.arange(1000, dtype=torch.int64)
    draws = uniform(7, keys, 3, 0)
    assert torch.equal(draws, uniform(7, keys, 3, 0)) and not torch.equal(draws, uniform(8, keys, 3, 0))
    assert 0.45 < draws.mean() < 0.55 and draws.min() >= 0 and draws.max() < 1


def test_bank_keeps_the_top_k_by_norm_and_retrieves_by_cosine() -> None:
    bank = Bank(slots=3, capacity=2, hidden=3, dtype=torch.float32, device=CPU)
    states = [torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]), torch.tensor([[0, 3.0, 0], [0, 0, 2.0]]),
              torch.tensor([[0, 0, 2.0], [5.0, 0, 0]])]
    rows = torch.tensor([1, 0])  # row 0 writes slot 1, row 1 slot 0
    for state in states:
        bank.offer(rows, state, state.norm(dim=-1), torch.tensor([True, True]))
    assert sorted(bank.norms[1].tolist()) == [2.0, 3.0] and sorted(bank.norms[0].tolist()) == [2.0, 5.0]
    chosen, cos = bank.nearest(rows, torch.tensor([[0, 1.0, 0.1], [0.1, 0, 1.0]]))
    assert torch.equal(chosen, torch.tensor([[0, 3.0, 0], [0, 0, 2.0]])) and (cos > 0.9).all()
    assert bank.nearest(torch.tensor([2]), torch.ones(1, 3))[1].item() == float("-inf")  # an empty slot
    bank.reset(torch.tensor([1]))
    assert bank.nearest(torch.tensor([1]), torch.ones(1, 3))[1].item() == float("-inf")


def test_request_table_reuses_freed_slots_with_fresh_state_and_keeps_state_when_it_grows() -> None:
    from l2lang import compile_plan, load_program
    from l2lang.engine.state import RequestTable

    plan = compile_plan(load_program("erss"), 28, 8)
    table = RequestTable(plan, capacity=2, hidden=8, dtype=torch.float32, device=CPU)
    slots, uids = table.start(torch.tensor([11, 12]))
    assert slots.tolist() == [0, 1] and uids == [0, 1]
    table.streaks[:, 1] = 7
    table.decode_steps[1] = 3
    more, _ = table.start(torch.tensor([13, 14, 15]))  # grows past capacity 2
    assert more.tolist() == [2, 3, 4] and table.capacity >= 5
    assert table.streaks[0, 1] == 7 and table.decode_steps[1] == 3 and table.keys[:5].tolist() == [11, 12, 13, 14, 15]
    table.finish([1])
    again, uids = table.start(torch.tensor([16]))
    assert again.tolist() == [1] and uids == [5]
    assert table.streaks[0, 1] == 0 and table.decode_steps[1] == 0 and table.keys[1] == 16
    assert table.snapshot[:5] == (0, 5, 2, 3, 4)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 4), st.booleans(), VALUES), min_size=1, max_size=6), min_size=1,
                max_size=12),
       st.booleans())
@example([[(0, True, 1.0), (0, False, 2.0), (2, True, float("nan")), (4, False, 3.0)]] * 8, False)
def test_feeding_estimators_on_the_host_equals_feeding_them_as_tensors(steps, decode: bool) -> None:
    """`RequestTable.feed` on a CPU (the live rows' streams found on the host) and as a GPU runs it (tensors
    written per slot under a mask, through the scratch slot) leave the same estimators, bit for bit, for
    decode steps (row i is slot i) and mixed steps (any slots, non-live rows sharing one)."""
    from l2lang import compile_plan, load_program
    from l2lang.engine.state import RequestTable

    plan = compile_plan(load_program("alrr", {"warmup": "5"}), 8, 8)
    host, device = (RequestTable(plan, capacity=5, hidden=8, dtype=torch.float32, device=CPU) for _ in range(2))
    device.quartiles.mode = "torch"
    estimators = len(host.local)
    for step in steps:
        if decode:
            step = [(i, live, value) for i, (_, live, value) in enumerate(step)]
        claimed: set[int] = set()  # at most one live row per slot
        rows = [(slot, live and slot not in claimed and not claimed.add(slot), value) for slot, live, value in step]
        slots = torch.tensor([slot for slot, _, _ in rows])
        live = torch.tensor([live for _, live, _ in rows])
        values = torch.tensor([[value * (e + 1) for _, _, value in rows] for e in range(estimators)],
                              dtype=torch.float32)
        for table in (host, device):
            table.feed(values, live, None if decode else slots)
        for name in ("count", "heights", "positions", "desired", "tau"):
            assert torch.equal(getattr(host.quartiles, name).nan_to_num(-7.0),
                               getattr(device.quartiles, name).nan_to_num(-7.0)), name
