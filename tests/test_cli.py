"""The command line: check, fmt, explain, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from l2lang.cli.main import main
from l2lang.plan import Plan
from l2lang.resources import shipped_strategies

ROOT = Path(__file__).parents[1]
CARD = str(ROOT / "examples" / "card.l2")


def test_every_shipped_strategy_and_the_card_check_at_28_layers(capsys) -> None:
    files = [str(p) for p in shipped_strategies().values()] + [CARD]
    assert main(["check", *files, "--layers", "28"]) == 0
    out = capsys.readouterr().out
    assert out.count(": ok for 28 layers") == len(files)


def test_check_by_shipped_name_and_model_alias(capsys) -> None:
    assert main(["check", "alrr", "erss", "--model", "smollm2-135m"]) == 0
    assert "ok for smollm2-135m" in capsys.readouterr().out


def test_model_folder_config_gives_the_layer_count(tmp_path: Path, capsys) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 24, "hidden_size": 896}))
    assert main(["explain", "--json", CARD, "--model", str(tmp_path)]) == 1
    assert "out of range: the model has 24 layers" in capsys.readouterr().err
    assert main(["check", "--model", "nowhere/model", CARD]) == 1
    assert "unknown model 'nowhere/model'" in capsys.readouterr().err


def test_explain_json_is_a_plan(capsys) -> None:
    assert main(["explain", CARD, "--layers", "28", "--json", "--set", "tau=0"]) == 0
    plan = Plan.model_validate_json(capsys.readouterr().out)
    assert plan.params == {"tau": 0} and plan.layers == 28


def test_explain_text_shows_thresholds_rules_and_schedule(capsys) -> None:
    assert main(["explain", "erss", "--layers", "28"]) == 0
    out = capsys.readouterr().out
    for expected in ("tau [adaptive]", "bank high", "steer mix 0.5*retrieve(high, min_cos=0.5) at layer 26",
                     "after layer 21: evaluate #0, #6; act #0.0, #6.0"):
        assert expected in out
    assert main(["explain", "alrr"]) == 0
    assert "layers unresolved" in capsys.readouterr().out


def test_fmt_rewrites_to_canonical_form_and_check_mode_reports(tmp_path: Path, capsys) -> None:
    messy = tmp_path / "messy.l2"
    messy.write_text("param   τ=1  # keep me\nif norm[ L-4 ]<τ   recurse layers 20..24 2 times ;steer +0.3·v\n")
    assert main(["fmt", "--check", str(messy)]) == 1
    assert main(["fmt", str(messy)]) == 0
    expected = "param tau = 1  # keep me\nif norm[L-4] < tau recurse layers 20..24 twice; steer +0.3*v\n"
    assert messy.read_text() == expected
    assert main(["fmt", "--check", str(messy)]) == 0
    assert main(["fmt", "--check", *map(str, shipped_strategies().values())]) == 0


def test_set_with_a_bad_value_is_a_clean_error(capsys) -> None:
    for value in ("lots", "nan", "1_0", "\u0662\u0668", "\u09ea", "0x10"):  # (٢٨, ৪: digits of other scripts)
        assert main(["check", CARD, "--set", f"tau={value}"]) == 1
        assert f"--set tau={value}: it is not a number (digits 0-9" in capsys.readouterr().err
    for value, why in (("1e400", "too large (at most 1e300)"), ("-1e-400", "too small (apart from 0, at least 1e-300)")):
        assert main(["check", CARD, "--set", f"tau={value}"]) == 1
        assert f"--set tau={value}: it is {why}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["check", CARD, "--layers", "\u0662\u0668"])
    assert "is not a whole number" in capsys.readouterr().err
    assert main(["check", CARD, "--set", "nope=1"]) == 1
    assert "has no param `nope`" in capsys.readouterr().err


def test_console_script_reports_bad_files_without_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.l2"
    bad.write_bytes(b"param a = 1\n\xff\n")
    deep = tmp_path / "deep.l2"
    deep.write_text("param a = " + "not " * 20000 + "1\n")
    missing = tmp_path / "missing.l2"
    for path in (bad, deep, missing):
        run = subprocess.run([sys.executable, "-m", "l2lang.cli.main", "check", str(path)], capture_output=True, text=True)
        assert run.returncode == 1, run
        assert "Traceback" not in run.stderr and "error:" in run.stderr, run.stderr
