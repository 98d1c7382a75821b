"""Refactors keep behaviour: every recorded case (tests/golden/cases.py) reproduces exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.golden.cases import cases, run_case

RECORDED = json.loads((Path(__file__).parent / "data" / "golden_tiny.json").read_text())


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("name,target,params", cases(), ids=[c[0] for c in cases()])
def test_recorded_behaviour_is_kept(family, name, target, params, tmp_path) -> None:
    got = run_case(name, target, params, tmp_path, family)
    want = RECORDED[f"{family}/{name}"]
    scores, want_scores = got.pop("scores", None), want.pop("scores", None)
    assert got == want
    if want_scores is not None:
        for row, want_row in zip(scores, want_scores, strict=True):
            assert row == pytest.approx(want_row, rel=1e-4, abs=1e-3)
