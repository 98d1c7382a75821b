"""`l2lang eval`: task sources, the answer convention, the statistics, and a smoke eval on SmolLM2."""

from __future__ import annotations

import json
from math import comb
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from l2lang import L2Error
from l2lang.apps.evaluate import parse_arms, read_records, rescore_results
from l2lang.apps.stats import mcnemar_exact, paired_delta, wilson
from l2lang.apps.tasks import _choose, load_task, matches
from l2lang.cli.main import main
from l2lang.engine.answers import ANSWER_CONVENTION, extract_answer

DATA = Path(__file__).parent / "data"


# -- statistics ------------------------------------------------------------------------------------
def test_wilson_and_mcnemar_known_values() -> None:
    low, high = wilson(0, 10)
    assert low == 0 and abs(high - 0.2775) < 1e-4  # textbook value
    low, high = wilson(5, 10)
    assert abs(low - 0.2366) < 1e-4 and abs(high - 0.7634) < 1e-4
    assert mcnemar_exact(0, 5) == 2 / 32 and mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert abs(mcnemar_exact(1, 9) - 2 * (1 + 10) / 1024) < 1e-12


@given(st.integers(0, 300), st.integers(0, 300))
def test_wilson_contains_the_estimate(successes: int, extra: int) -> None:
    n = successes + extra
    low, high = wilson(successes, n)
    assert 0 <= low <= high <= 1
    if n:  # exactly: the chart's error bars are these differences, and matplotlib refuses negative ones
        assert low <= successes / n <= high
        assert (low == 0) == (successes == 0) and (high == 1) == (extra == 0)


@pytest.mark.parametrize("n", [1, 3, 6, 24, 50])
@pytest.mark.parametrize("right", ["none", "all"])
def test_the_report_is_written_at_0_and_100_percent(n: int, right: str, tmp_path: Path) -> None:
    from l2lang.apps.eval_report import write_report

    correct = 0 if right == "none" else n
    rows = [{"strategy": name, "n": n, "correct": correct, "accuracy": correct / n, "wilson95": wilson(correct, n),
             "mean_tokens": 1.0, "tokens_per_s": 1.0, "interventions_per_answer": 0.0,
             "extra_layer_passes_per_token": 0.0} for name in ("baseline", "alrr")]
    settings = {"task": "reasoning_gym:basic_arithmetic:min_terms=2,max_terms=5", "model": "qwen2.5-coder-0.5b",
                "seed": 0, "max_new_tokens": 256, "dtype": "float32"}
    write_report(rows, settings, tmp_path)
    assert "data:image/png;base64," in (tmp_path / "report.html").read_text()


@given(st.integers(0, 60), st.integers(0, 60))
def test_mcnemar_is_the_two_sided_binomial_test(b: int, c: int) -> None:
    n = b + c
    brute = sum(comb(n, i) for i in range(n + 1) if comb(n, i) <= comb(n, b)) / 2 ** n if n else 1.0
    assert abs(mcnemar_exact(b, c) - min(1.0, brute)) < 1e-9 and mcnemar_exact(b, c) == mcnemar_exact(c, b)


@given(st.integers(0, 50), st.integers(0, 50), st.integers(0, 50))
def test_paired_delta_is_antisymmetric_and_brackets_the_difference(b: int, c: int, ties: int) -> None:
    n = b + c + ties
    delta, low, high = paired_delta(b, c, n)
    assert low <= delta <= high
    if n:
        assert delta == (b - c) / n
        minus = paired_delta(c, b, n)
        assert abs(minus[0] + delta) < 1e-12 and abs(minus[1] + high) < 1e-12


# -- tasks -----------------------------------------------------------------------------------------
def test_extract_answer_convention() -> None:
    assert extract_answer("so 3 + 4\nAnswer: 7.") == "7"
    assert extract_answer("it is 12, or 1,500") == "1500"
    assert extract_answer("**Answer:** $\\boxed{-14}$") == "-14"
    assert extract_answer("Answer: 3\nwait\nThe answer is: 5") == "5"
    assert extract_answer("no idea") == "no idea"


def test_matches_normalises_case_punctuation_and_numbers() -> None:
    assert matches("No.", ("No",)) and matches("8.0", ("8",)) and matches(" Nine ", ("9", "nine"))
    assert not matches("80", ("8",)) and not matches("yes", ("No",))


def test_jsonl_and_bigbench_sources(tmp_path: Path) -> None:
    task = load_task(str(DATA / "arithmetic.jsonl"), 10)
    assert len(task.items) == 6 and {i.id for i in task.items} == {str(n) for n in range(6)}
    by_id = {i.id: n for n, i in enumerate(task.items)}
    assert task.score(by_id["4"], "nine") == 1.0 and task.score(by_id["2"], "8") == 1.0
    assert task.items[0].prompt.endswith("Answer: <answer>'.")
    bench = load_task(str(DATA / "bigbench_task.json"), 4, seed=1)
    by_id = {i.id: (n, i) for n, i in enumerate(bench.items)}
    n, cat = by_id["0"]
    assert cat.answers == ("No",) and "Options: Yes; No" in cat.question and bench.score(n, "no") == 1.0
    assert bench.score(by_id["3"][0], "seven") == 1.0 and bench.score(by_id["2"][0], "8") == 0.0
    (tmp_path / "bad.jsonl").write_text('{"question": "q"}\n')
    (tmp_path / "bad.json").write_text('{"examples": [{"input": "q"}]}')
    for bad, message in [("bad.jsonl", ":1: error: each line"), ("bad.json", "example 0 needs"),
                         ("missing.jsonl", "the task file does not exist")]:
        with pytest.raises(L2Error) as caught:
            load_task(str(tmp_path / bad), 3)
        assert message in caught.value.render()


@given(st.integers(1, 200), st.integers(1, 200), st.integers(0, 10**6))
def test_asking_for_more_items_keeps_the_ones_drawn(total: int, n: int, seed: int) -> None:
    fewer, more = _choose(total, n, seed), _choose(total, n + 7, seed)
    assert more[: len(fewer)] == fewer and len(set(more)) == len(more) == min(total, n + 7)


def test_reasoning_gym_items_are_seeded_and_scored_by_the_task() -> None:
    task = load_task("reasoning_gym:chain_sum", 3, seed=5)
    assert [i.question for i in task.items] == [i.question for i in load_task("chain_sum", 3, seed=5).items]
    assert task.score(0, task.items[0].answers[0]) == 1.0 and task.score(0, "nonsense") < 1.0


def test_strategy_lists_split_at_commas_and_keep_params() -> None:
    arms = parse_arms(["baseline,alrr:warmup=32,k=1", "lrs:n=2"])
    assert [a.label for a in arms] == ["baseline", "alrr:warmup=32,k=1", "lrs:n=2"]
    assert arms[1].strategy.program.root.params["warmup"] == 32 and arms[1].strategy.program.root.params["k"] == 1
    with pytest.raises(L2Error, match="listed twice"):
        parse_arms(["alrr,alrr"])
    with pytest.raises(L2Error, match="no_such"):
        parse_arms(["no_such_strategy"])


# -- the smoke eval (real model, real tokenizer, real files) ----------------------------------------
def _eval(out: Path, *extra: str) -> int:
    return main(["eval", "--model", "smollm2-135m", "--task", str(DATA / "arithmetic.jsonl"), "--n", "5",
                 "--max-new-tokens", "24", "--out", str(out), *extra])


def test_smoke_eval_on_smollm2_resumes_and_batches_like_one_at_a_time(tmp_path: Path, capsys) -> None:
    arms = ["--strategies", "baseline,alrr:warmup=5,vote:n=2"]
    assert _eval(tmp_path / "a", *arms, "--batch-size", "2") == 0
    table = capsys.readouterr().out
    assert table.startswith("| strategy | n | accuracy") and "| alrr:warmup=5 | 5 |" in table
    records = read_records(tmp_path / "a" / "results.jsonl")
    assert len(records) == 15 and {r["strategy"] for r in records} == {"baseline", "alrr:warmup=5", "vote:n=2"}
    assert all(r["convention"] == ANSWER_CONVENTION and r["extracted"] == extract_answer(r["text"]) for r in records)
    assert sum(r["interventions"] for r in records if r["strategy"] == "alrr:warmup=5") > 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert [r["n"] for r in summary["rows"]] == [5, 5, 5] and "mcnemar_p" in summary["rows"][1]
    html = (tmp_path / "a" / "report.html").read_text()
    assert "data:image/png;base64," in html and "alrr:warmup=5" in html

    # resume: a line cut off mid-write and a lost chunk are redone, nothing else is
    path = tmp_path / "a" / "results.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-4]) + lines[-4][:20])
    assert _eval(tmp_path / "a", *arms, "--batch-size", "2") == 0
    rows = json.loads((tmp_path / "a" / "summary.json").read_text())["rows"]
    assert [_untimed(r) for r in rows] == [_untimed(r) for r in summary["rows"]]
    again = read_records(path)
    assert len(again) == 15 and _answers(again) == _answers(records)

    # greedy arms give the same answers whatever the batch size
    assert _eval(tmp_path / "b", "--strategies", "baseline,alrr:warmup=5", "--batch-size", "5") == 0
    alone = read_records(tmp_path / "b" / "results.jsonl")
    greedy = {k: v for k, v in _answers(records).items() if not k[0].startswith("vote")}
    assert _answers(alone) == greedy


def _untimed(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "tokens_per_s"}


def _answers(records: list[dict]) -> dict:
    return {(r["strategy"], r["item"]): (r["text"], r["interventions"]) for r in records}


def test_eval_errors_are_clean(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        _eval(tmp_path, "--strategies", "baseline", "--n", "0")
    assert exit_.value.code == 2 and "argument --n: 0 is out of range: it must be at least 1" in capsys.readouterr().err
    assert main(["eval", "--strategies", "baseline", "--task", "reasoning_gym:nope", "--out", str(tmp_path)]) == 1
    assert "--task reasoning_gym:nope" in capsys.readouterr().err


def test_a_damaged_results_file_is_named_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text('{"run": "x"}\nnot json\n')
    with pytest.raises(L2Error, match="not a results line"):
        read_records(path)


@pytest.mark.parametrize("line", ["{}", "null", "[1, 2]", '"text"', "7", '{"run": "x", "fingerprint": "f"}',
                                  "[" * 100_000])
def test_results_lines_that_are_json_but_not_records_are_named(line: str, tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    good = {"run": "r", "fingerprint": "f", "item": "0", "strategy": "s", "correct": True, "tokens": 1,
            "generated": 1, "seconds": 0.1, "interventions": 0, "extra_layer_passes": 0}
    path.write_text(json.dumps(good) + "\n" + line + "\n")
    with pytest.raises(L2Error, match=f"{path.name}:2: error: not a results line"):
        read_records(path)
    path.write_text(json.dumps(good) + "\n")
    assert read_records(path) == [good]


def test_a_finished_run_says_it_is_already_done(tmp_path: Path, capsys) -> None:
    from tests.tiny_models import tiny_model, tiny_tokenizer

    folder = tmp_path / "tiny"
    tiny_model("llama", 8).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    argv = ["eval", "--model", str(folder), "--strategies", "baseline", "--task", str(DATA / "arithmetic.jsonl"),
            "--n", "2", "--max-new-tokens", "2", "--out", f"{tmp_path / 'out'}/"]
    assert main(argv) == 0
    assert "already done" not in capsys.readouterr().err
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"already done: every answer is in {tmp_path / 'out' / 'results.jsonl'}" in err
    assert "0it" not in err and "//" not in err


def test_unknown_reference_arm_is_refused_before_any_work(tmp_path: Path, capsys) -> None:
    assert _eval(tmp_path, "--strategies", "baseline,alrr", "--baseline", "erss") == 1
    assert "--baseline erss: not one of the strategies listed" in capsys.readouterr().err
    assert not (tmp_path / "results.jsonl").exists()


# -- re-scoring recorded answers under the current answer convention --------------------------------
OLD_RECORDS = [  # item, text, what answer convention 1 read, its score
    ("0", "2 + 3 = 5\nTherefore, the final answer is:\n\nAnswer: 5", "Answer: 5", 0.0),
    ("1", "10 - 4 = 6\n\nAnswer: \\(6\\)", "\\(6\\)", 0.0),
    ("2", "3 + 5 = 8\nTherefore, the final answer is:\n\\[\n\\boxed{8}\n\\]", "\\[", 0.0),
    ("4", "Half of 18 is 9.\nAnswer: nine.", "nine", 1.0),
    ("5", "100 / 4 = 20\nAnswer: 20", "20", 0.0),
]


def _old_run(folder: Path, model: str = "no-such-model") -> Path:
    """A run folder as `l2lang eval` wrote it under answer convention 1 (its records name no convention)."""
    folder.mkdir()
    settings = {"model": model, "weights_sha256": "x", "task": str(DATA / "arithmetic.jsonl"), "seed": 0,
                "max_new_tokens": 24, "chat": None, "batch_size": 8, "dtype": "float32", "run": "r1"}
    (folder / "settings.json").write_text(json.dumps(settings))
    fingerprint = parse_arms(["baseline"])[0].strategy.fingerprint
    lines = [{"run": "r1", "strategy": "baseline", "fingerprint": fingerprint, "item": item,
              "expected": {"0": "5", "1": "6", "2": "8", "4": "9", "5": "25"}[item], "extracted": extracted,
              "score": score, "correct": score >= 1.0, "tokens": 9, "generated": 9, "seconds": 0.1,
              "interventions": 0, "extra_layer_passes": 0.0, "text": text} for item, text, extracted, score in OLD_RECORDS]
    lines.append({**lines[0], "run": "r0"})  # another run's line: kept as it is
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return folder


def _rescore(folder: Path, *extra: str) -> int:
    return main(["eval", "--model", "no-such-model", "--strategies", "baseline", "--task", str(DATA / "arithmetic.jsonl"),
                 "--n", "5", "--max-new-tokens", "24", "--out", str(folder), "--rescore", *extra])


def test_rescore_rereads_recorded_texts_without_loading_the_model(tmp_path: Path, capsys) -> None:
    folder = _old_run(tmp_path / "run")
    assert _rescore(folder) == 0  # the model named does not exist: nothing is loaded
    out, err = capsys.readouterr()
    assert "| baseline | 5 | 80.0 % |" in out
    assert "baseline: 1 of 5 right under answer convention 1, 4 under 2 (+3 −0; 3 answers read differently)" in err
    records = read_records(folder / "results.jsonl")
    mine = {r["item"]: r for r in records if r["run"] == "r1"}
    assert {i: r["extracted"] for i, r in mine.items()} == {"0": "5", "1": "6", "2": "8", "4": "nine", "5": "20"}
    assert all(r["convention"] == ANSWER_CONVENTION and r["score"] == r["task_score"] for r in mine.values())
    assert mine["0"]["previous"] == {"convention": 1, "extracted": "Answer: 5", "score": 0.0, "correct": False}
    assert mine["0"]["correct"] and not mine["5"]["correct"] and list(mine["0"])[-1] == "text"
    assert records[-1]["run"] == "r0" and "convention" not in records[-1] and records[-1]["extracted"] == "Answer: 5"
    assert json.loads((folder / "summary.json").read_text())["rows"][0]["correct"] == 4
    assert sorted(p.name for p in folder.iterdir()) == ["report.html", "results.jsonl", "results.md", "settings.json",
                                                          "summary.json"]
    before = (folder / "results.jsonl").read_bytes()
    assert _rescore(folder) == 0 and (folder / "results.jsonl").read_bytes() == before  # the old reading is kept


def test_only_records_of_an_older_convention_are_rescored_unless_asked(tmp_path: Path) -> None:
    folder = _old_run(tmp_path / "run")
    path = folder / "results.jsonl"
    records = read_records(path)
    records[1].update(convention=ANSWER_CONVENTION, extracted="kept")  # current convention: left alone
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    task = load_task(str(DATA / "arithmetic.jsonl"), 5)
    assert rescore_results(folder, "r1", task) == 4
    assert read_records(path)[1]["extracted"] == "kept"
    assert rescore_results(folder, "r1", task) == 0
    assert rescore_results(folder, "r1", task, every=True) == 1 and read_records(path)[1]["extracted"] == "6"


def test_rescore_refuses_a_run_made_otherwise(tmp_path: Path, capsys) -> None:
    folder = _old_run(tmp_path / "run")
    assert _rescore(folder, "--seed", "1") == 1
    assert "seed 1 (the run's: 0)" in capsys.readouterr().err
    assert _rescore(tmp_path / "nothing") == 1
    assert "settings.json" in capsys.readouterr().err
    records = read_records(folder / "results.jsonl")
    records[0]["expected"] = "6"
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert _rescore(folder) == 1
    assert "its items changed since the run" in capsys.readouterr().err
    assert all("convention" not in r for r in read_records(folder / "results.jsonl"))  # nothing half-done
