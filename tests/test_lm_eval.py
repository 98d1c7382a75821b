"""l2lang as an lm-evaluation-harness model (`python -m l2lang.lm_eval`, docs/evaluation.md), on SmolLM2,
offline: local tasks over the files in tests/data/lm_eval (a generation task and a multiple-choice one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from l2lang.backends.hf.models import PACKAGED, ensure_converted  # noqa: E402
from l2lang.errors import L2Error  # noqa: E402
from l2lang.integrations.lm_eval import GenerationSettings, L2LangLM, cut, read_settings  # noqa: E402

ROOT = Path(__file__).parents[1]
TASKS = ROOT / "tests" / "data" / "lm_eval"
LIMIT = 4  # documents per task: 4 generations, 12 loglikelihoods (3 choices each)


@pytest.fixture(scope="module")
def cli_baseline(tmp_path_factory) -> dict:
    """`baseline` through the shipped command line, in its own process, offline."""
    out = tmp_path_factory.mktemp("lm_eval_cli")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(out / "cache"),
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "l2lang.lm_eval", "--model", "l2lang", "--model_args",
         f"pretrained=smollm2-135m,strategy=baseline,interventions={out / 'interventions.jsonl'}",
         "--tasks", "l2lang_arith,l2lang_choice", "--include_path", str(TASKS.relative_to(ROOT)),
         "--limit", str(LIMIT), "--batch_size", "2", "--log_samples", "--output_path", str(out / "results")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    folder = next((out / "results").iterdir())
    samples = {task: [json.loads(line) for line in next(folder.glob(f"samples_{task}_*.jsonl")).read_text().splitlines()]
               for task in ("l2lang_arith", "l2lang_choice")}
    lines = [json.loads(line) for line in (out / "interventions.jsonl").read_text().splitlines()]
    return {"results": json.loads(next(folder.glob("results_*.json")).read_text()), "samples": samples,
            "interventions": lines, "stderr": run.stderr}


@pytest.fixture(scope="module")
def tasks() -> TaskManager:
    return TaskManager(include_path=str(TASKS), include_defaults=False)


def evaluate(model, tasks: TaskManager, names=("l2lang_arith", "l2lang_choice"), **kwargs) -> dict:
    """simple_evaluate in this process (the tasks' data paths are relative to the repository root)."""
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        return simple_evaluate(model=model, tasks=list(names), limit=LIMIT, task_manager=tasks, log_samples=True,
                               batch_size=2, device="cpu", **kwargs)
    finally:
        os.chdir(cwd)


def generations(samples: list[dict]) -> list[str]:
    return [s["resps"][0][0] for s in sorted(samples, key=lambda s: s["doc_id"])]


def loglikelihoods(samples: list[dict]) -> list[tuple[float, bool]]:
    return [(float(r[0][0]), str(r[0][1]) == "True") for s in sorted(samples, key=lambda s: s["doc_id"])
            for r in s["resps"]]


def test_the_harness_runs_a_strategy_end_to_end_from_the_command_line(cli_baseline) -> None:
    results = cli_baseline["results"]
    assert set(results["results"]) == {"l2lang_arith", "l2lang_choice"}
    assert "exact_match,none" in results["results"]["l2lang_arith"] and "acc,none" in results["results"]["l2lang_choice"]
    mine = results["config"]["l2lang"]
    assert mine["strategy"] == "baseline" and mine["model"] == "smollm2-135m" and mine["layers"] == 30
    assert mine["interventions"] == {
        "generate_until": {"requests": 4, "with_interventions": 0, "interventions": 0, "by_action": {}},
        "loglikelihood": {"requests": 12, "with_interventions": 0, "interventions": 0, "by_action": {}}}
    assert "l2lang: generate_until: 4 requests, 0 with interventions, 0 interventions (none)" in cli_baseline["stderr"]
    lines = cli_baseline["interventions"]
    assert [(x["request_type"], x["task"]) for x in lines] == \
        [("generate_until", "l2lang_arith")] * 4 + [("loglikelihood", "l2lang_choice")] * 12
    assert sorted((x["doc_id"], x["idx"]) for x in lines[4:]) == [(d, i) for d in range(4) for i in range(3)]
    assert "Traceback" not in cli_baseline["stderr"]


def test_baseline_answers_as_lm_evals_own_hf_model(cli_baseline, tasks) -> None:
    folder = ensure_converted(PACKAGED["smollm2-135m"])  # the converted folder the alias loads
    hf = evaluate("hf", tasks, model_args={"pretrained": str(folder), "dtype": "float32"})["samples"]
    assert generations(hf["l2lang_arith"]) == generations(cli_baseline["samples"]["l2lang_arith"])
    theirs, mine = loglikelihoods(hf["l2lang_choice"]), loglikelihoods(cli_baseline["samples"]["l2lang_choice"])
    assert [g for _, g in mine] == [g for _, g in theirs]
    assert [v for v, _ in mine] == pytest.approx([v for v, _ in theirs], abs=1e-4)


@pytest.fixture(scope="module")
def card(tmp_path_factory) -> L2LangLM:
    """The design card with a threshold it always passes: it recurses and steers on every decode step."""
    return L2LangLM(pretrained="smollm2-135m", strategy=str(ROOT / "examples" / "card.l2"), set="tau:1e9",
                    device="cpu", batch_size=2, interventions=str(tmp_path_factory.mktemp("card") / "i.jsonl"))


def test_a_strategy_that_fires_changes_generations_but_not_loglikelihoods(cli_baseline, card, tasks, capsys) -> None:
    out = evaluate(card, tasks)
    baseline = cli_baseline["samples"]
    changed = generations(out["samples"]["l2lang_arith"])
    assert any(a != b for a, b in zip(changed, generations(baseline["l2lang_arith"]))), changed
    # decode-phase rules never act on a scored text: the loglikelihoods are baseline's
    mine, theirs = loglikelihoods(out["samples"]["l2lang_choice"]), loglikelihoods(baseline["l2lang_choice"])
    assert [g for _, g in mine] == [g for _, g in theirs]
    assert [v for v, _ in mine] == pytest.approx([v for v, _ in theirs], abs=1e-6)
    counts = out["config"]["l2lang"]["interventions"]
    assert counts["generate_until"]["with_interventions"] == LIMIT
    assert counts["generate_until"]["by_action"] == {"recurse@24": counts["generate_until"]["interventions"] // 2,
                                                     "steer@24": counts["generate_until"]["interventions"] // 2}
    assert counts["loglikelihood"]["interventions"] == 0
    assert "every rule of" in capsys.readouterr().err
    lines = [json.loads(line) for line in card.settings.interventions.read_text().splitlines()]
    generated = [x for x in lines if x["request_type"] == "generate_until"]
    assert sorted(x["doc_id"] for x in generated) == list(range(LIMIT)) and all(x["interventions"] for x in generated)
    assert sum(x["interventions"] for x in generated) == counts["generate_until"]["interventions"]


def test_a_prefill_rule_changes_loglikelihoods(cli_baseline, tasks) -> None:
    out = evaluate("l2lang", tasks, names=("l2lang_choice",),  # by the name the import registered
                   model_args={"pretrained": "smollm2-135m", "strategy": str(TASKS / "prefill.l2")})
    mine, baseline = loglikelihoods(out["samples"]["l2lang_choice"]), loglikelihoods(
        cli_baseline["samples"]["l2lang_choice"])
    assert all(abs(a - b) > 1e-3 for (a, _), (b, _) in zip(mine, baseline))
    counts = out["config"]["l2lang"]["interventions"]["loglikelihood"]
    assert counts["with_interventions"] == 3 * LIMIT and counts["by_action"] == {"suppress@20": counts["interventions"]}


def test_rolling_loglikelihoods_add_up_windows_as_lm_evals_hf_model_does() -> None:
    from lm_eval.models.huggingface import HFLM

    texts = ["The quick brown fox jumps over the lazy dog. " * 3, "Hello"]
    requests = [Instance("loglikelihood_rolling", {}, (t,), idx=0, metadata=("t", n, 1)) for n, t in enumerate(texts)]
    hf = HFLM(pretrained=str(ensure_converted(PACKAGED["smollm2-135m"])), dtype="float32", device="cpu",
              batch_size=2, max_length=16)  # 16 tokens: the first text takes three windows
    theirs = hf.loglikelihood_rolling(requests, disable_tqdm=True)
    mine = L2LangLM(pretrained="smollm2-135m", strategy="baseline", device="cpu", batch_size=2, max_length=16)
    assert mine.loglikelihood_rolling(requests, disable_tqdm=True) == pytest.approx(theirs, abs=1e-4)
    prefill = L2LangLM(pretrained="smollm2-135m", strategy=str(TASKS / "prefill.l2"), device="cpu", batch_size=2,
                       max_length=16)
    changed = prefill.loglikelihood_rolling(requests, disable_tqdm=True)
    assert all(abs(a - b) > 1e-3 for a, b in zip(changed, theirs))
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    windows = [make_disjoint_window(w) for t in texts for w in get_rolling_token_windows(
        token_list=mine.tok_encode(t), prefix_token=mine.prefix_token_id, max_seq_len=16, context_len=1)]
    assert len(windows) > len(texts)
    counts = prefill.log.totals["loglikelihood_rolling"]  # the rule acts at every position a window reads
    assert counts["interventions"] == sum(len(c) + len(x) - 1 for c, x in windows) and counts["requests"] == 2


def test_sampled_generation_draws_per_request_and_greedy_does_not(card) -> None:
    def requests(gen_kwargs: dict) -> list[Instance]:
        prompts = ["Question: What is 7 * 6?\nAnswer:", "Once upon a time"]
        return [Instance("generate_until", {}, (p, dict(gen_kwargs)), idx=0, metadata=("t", n, 1))
                for n, p in enumerate(prompts * 2)]  # each prompt twice, in different batches

    greedy = card.generate_until(requests({"until": ["\n\n"], "max_gen_toks": 12}), disable_tqdm=True)
    assert greedy[:2] == greedy[2:]
    sampled = card.generate_until(requests({"until": ["\n\n"], "max_gen_toks": 12, "do_sample": True,
                                            "temperature": 1.5, "top_k": 50}), disable_tqdm=True)
    assert sampled[:2] != sampled[2:] and sampled != greedy


def test_model_arguments_and_generation_arguments_are_checked() -> None:
    assert read_settings({"pretrained": "m", "strategy": "s", "set": "tau:1e9; warmup:3", "seed": "7",
                          "batch_size": "4", "max_batch_size": 64}).params == {"tau": "1e9", "warmup": "3"}
    for args, message in [({"strategy": "s"}, "needs pretrained"), ({"pretrained": "m", "strategy": "s", "sett": 1},
                          "unknown model argument 'sett'"),
                          ({"pretrained": "m", "strategy": "s", "set": "tau"}, "tau is not NAME:VALUE"),
                          ({"pretrained": "m", "strategy": "s", "backend": "tgi"}, "backend=tgi"),
                          ({"pretrained": "m", "strategy": "s", "batch_size": "auto"}, "fixed batch size"),
                          ({"pretrained": "m", "strategy": "s", "dtype": "float8"}, "dtype=float8"),
                          ({"pretrained": "m", "strategy": "s", "seed": -1}, "seed=-1"),
                          ({"pretrained": "m", "strategy": "s", "seed": "9" * 5000}, "seed=9+.*must be a whole"),
                          ({"pretrained": "m", "strategy": "s", "seed": "\u0667"}, "must be a whole number")]:
        with pytest.raises(L2Error, match=message):
            read_settings(args)
    greedy = GenerationSettings.read({"until": "Q:", "max_new_tokens": 5, "temperature": 0.7, "do_sample": False}, 256)
    assert greedy == GenerationSettings(("Q:",), 5, None)
    sampled = GenerationSettings.read({"temperature": 0.7, "top_p": 0.9}, 256)
    assert sampled.sampling is not None and sampled.sampling.temperature == 0.7 and sampled.max_gen_toks == 256
    for kwargs, message in [({"do_sample": True}, "needs a temperature above 0"),
                            ({"repetition_penalty": 1.1}, "'repetition_penalty' is not supported")]:
        with pytest.raises(L2Error, match=message):
            GenerationSettings.read(kwargs, 256)
    assert cut(" 5\nQuestion: next", ("\n", "Question:")) == " 5"


def test_mistakes_fail_before_the_first_request_with_l2langs_message(tmp_path: Path, monkeypatch, capsys) -> None:
    with pytest.raises(L2Error, match="no strategy file or shipped strategy named 'nope'"):
        L2LangLM(pretrained="smollm2-135m", strategy="nope")
    with pytest.raises(L2Error, match="tauu"):
        L2LangLM(pretrained="smollm2-135m", strategy=str(ROOT / "examples" / "card.l2"), set="tauu:3")
    with pytest.raises(L2Error, match="a bundle's params are frozen"):
        L2LangLM(pretrained="smollm2-135m", strategy=str(ROOT / "examples" / "card.l2b"), set="tau:3")
    deep = tmp_path / "deep.l2"
    deep.write_text("# reads a layer SmolLM2 does not have\nif norm[40] > 1 suppress scale 0.5\n", encoding="utf-8")
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["l2lang.lm_eval", "--model", "l2lang", "--model_args",
                                      f"pretrained=smollm2-135m,strategy={deep}", "--tasks", "l2lang_arith",
                                      "--include_path", str(TASKS), "--device", "cpu"])
    from l2lang.integrations.lm_eval import main

    assert main() == 1
    err = capsys.readouterr().err
    assert f"{deep}:2:9: error: layer 40" in err and "Traceback" not in err
    assert "generate_until" not in err  # no request ran
