"""Odd inputs to the commands that load a model get one clean message, never a traceback: prompts,
numbers, output paths, task files, model folders and names, Ctrl-C and closed pipes (one test per class)."""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from l2lang import L2Error, load
from l2lang.backends.hf.generate import generate
from l2lang.backends.hf.layers import adapt
from l2lang.backends.hf.models import load_model
from l2lang.backends.hf.vectors import contrast_vector
from l2lang.cli.main import main
from l2lang.errors import CompileError, GenerationError
from l2lang.plan import VectorPlan
from tests.tiny_models import tiny_model, tiny_tokenizer

ROOT = Path(__file__).parents[1]
CLI = [sys.executable, "-m", "l2lang.cli.main"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama", 8).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)


def _usage_error(argv: list[str], capsys) -> str:
    """argparse's refusal of a bad number: exit 2 with a usage line, before anything loads."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


# -- prompts -------------------------------------------------------------------------------------------

def test_empty_prompts_are_refused(model_folder: str, tmp_path: Path, capsys) -> None:
    assert main(["run", "baseline", "--model", model_folder, "--prompt", "", "--no-chat"]) == 1
    assert "--prompt is empty" in capsys.readouterr().err
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "fine"}\n{"prompt": ""}\n')
    assert main(["run", "baseline", "--model", model_folder, "--prompts", str(prompts)]) == 1
    assert "p.jsonl:2: error: the prompt is empty" in capsys.readouterr().err
    prompts.write_text('{"prompt": 7}\n')
    assert main(["run", "baseline", "--model", model_folder, "--prompts", str(prompts)]) == 1
    assert '"prompt" must be a string, not int' in capsys.readouterr().err
    loaded = load_model(model_folder)
    with pytest.raises(GenerationError, match="prompt 0 .* gives no tokens"):  # the library, without a template
        generate(loaded.model, loaded.tokenizer, load("baseline"), [""], chat=False, max_new_tokens=2)


def test_prompt_and_task_files_that_are_not_regular_text_files_are_refused_without_waiting(
        model_folder: str, tmp_path: Path, capsys) -> None:
    fifo = tmp_path / "p.jsonl"
    os.mkfifo(fifo)  # (reading one would wait for a writer forever)
    assert main(["run", "baseline", "--model", model_folder, "--prompts", str(fifo)]) == 1
    assert "p.jsonl: error: the prompts file is a FIFO, not a regular file" in capsys.readouterr().err
    assert main(["eval", "--model", model_folder, "--strategies", "baseline", "--task", str(fifo),
                 "--out", str(tmp_path / "out")]) == 1
    assert "p.jsonl: error: the task file is a FIFO, not a regular file" in capsys.readouterr().err
    (tmp_path / "latin1.jsonl").write_bytes(b'{"prompt": "caf\xe9"}\n')
    assert main(["run", "baseline", "--model", model_folder, "--prompts", str(tmp_path / "latin1.jsonl")]) == 1
    assert "the prompts file is not UTF-8 text" in capsys.readouterr().err


def test_prompts_with_lone_surrogates_are_refused(model_folder: str, tmp_path: Path, capsys) -> None:
    assert main(["run", "baseline", "--model", model_folder, "--prompt", "a\udcff"]) == 1
    assert "--prompt is not valid text: character 2 is a lone surrogate" in capsys.readouterr().err
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "x\\ud800"}\n')
    assert main(["run", "baseline", "--model", model_folder, "--prompts", str(prompts)]) == 1
    assert "lone surrogate" in capsys.readouterr().err
    loaded = load_model(model_folder)
    with pytest.raises(GenerationError, match="prompt 0 is not valid text"):
        generate(loaded.model, loaded.tokenizer, load("baseline"), ["\udcff"], max_new_tokens=2)


# -- numbers -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["run", "baseline", "--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens: 0 is out of range"),
    (["run", "baseline", "--prompt", "x", "--temperature", "1", "--top-k", "-1"], "--top-k: -1 is out of range"),
    (["run", "baseline", "--prompt", "x", "--seed", str(2**64)], "--seed: 18446744073709551616 is out of range"),
    (["run", "baseline", "--prompt", "x", "--seed", "-1"], "--seed: -1 is out of range"),
    (["run", "baseline", "--prompt", "x", "--temperature", "nan"], "--temperature: 'nan': it is not a number"),
    (["run", "baseline", "--prompt", "x", "--temperature", "\u0660.\u0665"], "it is not a number (digits 0-9"),
    (["run", "baseline", "--prompt", "x", "--temperature", "1_0"], "--temperature: '1_0': it is not a number"),
    (["run", "baseline", "--prompt", "x", "--temperature", "1e-400"], "'1e-400': it is too small"),
    (["run", "baseline", "--prompt", "x", "--temperature", "1", "--top-p", "1.5"], "--top-p: 1.5 is out of range"),
    (["run", "baseline", "--prompt", "x", "--max-new-tokens", "9" * 5000], "is out of range"),
    (["calibrate", "--prompts", "p.jsonl", "--out", "p.json", "--batch-size", "0"], "--batch-size: 0 is out of range"),
    (["eval", "--strategies", "baseline", "--task", "t.jsonl", "--batch-size", "0"], "--batch-size: 0 is out of range"),
    (["trace", "baseline", "--prompt", "x", "--out", "t", "--max-new-tokens", "-3"], "--max-new-tokens: -3 is out"),
])
def test_numbers_out_of_range_are_usage_errors(argv: list[str], message: str, capsys) -> None:
    err = _usage_error(argv, capsys)
    assert message in err and "Traceback" not in err


def test_the_library_refuses_bad_generation_settings(model_folder: str) -> None:
    loaded = load_model(model_folder)
    for kwargs, message in [({"seed": 2**64}, "seed must be a whole number"), ({"max_new_tokens": 0}, "max_new_tokens"),
                            ({"do_sample": True, "top_k": -1, "max_new_tokens": 2}, "top_k must be"),
                            ({"do_sample": True, "temperature": float("inf"), "max_new_tokens": 2}, "temperature"),
                            ({"max_new_tokens": 10**20}, "go past the model's 256 positions")]:
        with pytest.raises(GenerationError, match=message):
            generate(loaded.model, loaded.tokenizer, load("baseline"), ["x"], **kwargs)


# -- output paths --------------------------------------------------------------------------------------

def test_out_naming_a_file_or_a_missing_folder_is_refused_before_the_model_loads(tmp_path: Path, capsys) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "x"}\n')
    never = str(tmp_path / "never-loaded")  # a model folder that would fail to load, were it tried
    (tmp_path / "never-loaded").mkdir()
    (tmp_path / "never-loaded" / "config.json").write_text("{}")
    cases = [
        (["trace", "baseline", "--prompt", "x", "--out", str(afile)], "this is a file, not a folder"),
        (["eval", "--strategies", "baseline", "--task", str(ROOT / "tests" / "data" / "arithmetic.jsonl"),
          "--out", str(afile)], "this is a file, not a folder"),
        (["calibrate", "--prompts", str(prompts), "--out", str(tmp_path / "missing" / "p.json")], "no such folder"),
        (["calibrate", "--prompts", str(prompts), "--out", str(tmp_path)], "this is a folder; name the file"),
    ]
    for argv, message in cases:
        assert main(argv[:1] + ["--model", never] + argv[1:]) == 1
        err = capsys.readouterr().err
        assert message in err and "cannot load model" not in err, err


# -- task files, model folders and names ---------------------------------------------------------------

@pytest.mark.parametrize("name, text, message", [
    ("list.json", "[1, 2]", 'expected an object with "examples"'),
    ("number.json", '{"examples": 5}', '"examples" must be a list of objects'),
    ("items.json", '{"examples": [1]}', 'example 0 needs a text "input"'),
    ("empty-target.json", '{"examples": [{"input": "q", "target": []}]}', 'example 0 needs a text "input"'),
    ("scores.json", '{"examples": [{"input": "q", "target_scores": {"a": "x"}}]}', 'example 0 needs'),
    ("string.jsonl", '"x"\n', 'each line must be a JSON object with a text "question"'),
    ("list.jsonl", "[1]\n", 'each line must be a JSON object'),
    ("null.jsonl", '{"question": "q", "answer": null}\n', 'each line must be a JSON object'),
    ("object.jsonl", '{"question": {"a": 1}, "answer": "1"}\n', 'each line must be a JSON object'),
    ("deep.jsonl", "[" * 100_000 + "\n", 'each line must be a JSON object'),
])
def test_task_files_of_the_wrong_shape_are_named(name: str, text: str, message: str, tmp_path: Path) -> None:
    from l2lang.apps.tasks import load_task

    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(L2Error, match=message.replace("(", r"\(")):
        load_task(str(path), 1)


def test_unknown_reasoning_gym_tasks_list_close_names() -> None:
    from l2lang.apps.tasks import load_task

    with pytest.raises(L2Error) as error:
        load_task("reasoning_gym:chain_summ", 1)
    assert "no task 'chain_summ'" in error.value.render() and "did you mean chain_sum" in error.value.render()


@pytest.mark.parametrize("config, message", [
    ('{"num_hidden_layers": 28, "hidden_size": 1' + "0" * 4250 + "}", "config.json gives hidden size inf"),
    ('{"num_hidden_layers": 28, "hidden_size": "wide"}', "config.json gives hidden size wide"),
    ('{"num_hidden_layers": 28, "hidden_size": 10000000}', "hidden size is from 1 to 1048576, not 10000000"),
    ('{"num_hidden_layers": 28, "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "config.json is nested too deeply"),
    ('{"num_hidden_layers": NaN}', "config.json is not JSON"),
])
def test_a_config_of_impossible_sizes_is_refused_before_any_work(config: str, message: str, tmp_path: Path,
                                                                  capsys) -> None:
    (tmp_path / "config.json").write_text(config)
    (tmp_path / "s.l2").write_text("bank b keep 4096\nif norm[3] > 1 store in b\n")
    assert main(["check", str(tmp_path / "s.l2"), "--model", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


@pytest.mark.parametrize("config", ["[1, 2]", '{"text_config": 5}', '{"num_hidden_layers": true}',
                                    '{"num_hidden_layers": -3}', "not json", '{"n_layer": "12"}'])
def test_a_model_folder_whose_config_is_not_usable_is_named(config: str, tmp_path: Path, capsys) -> None:
    (tmp_path / "config.json").write_text(config)
    assert main(["check", "baseline", "--model", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "config.json" in err and "Traceback" not in err
    assert main(["run", "baseline", "--model", str(tmp_path), "--prompt", "x"]) == 1
    assert "cannot load model" in capsys.readouterr().err


def test_mistyped_aliases_and_missing_folders_are_named_at_once_without_the_network(tmp_path: Path, capsys) -> None:
    start = time.perf_counter()
    assert main(["run", "baseline", "--model", "smollm-135m", "--prompt", "x"]) == 1
    assert "did you mean `smollm2-135m`?" in capsys.readouterr().err
    assert main(["check", "baseline", "--model", "qwen2.5-coder-05b"]) == 1
    assert "did you mean `qwen2.5-coder-0.5b`?" in capsys.readouterr().err
    assert main(["trace", "baseline", "--model", str(tmp_path / "nowhere"), "--prompt", "x", "--out", "t"]) == 1
    assert f"--model {tmp_path / 'nowhere'}: no such folder" in capsys.readouterr().err
    assert main(["run", "baseline", "--model", str(tmp_path), "--prompt", "x"]) == 1
    assert "this folder has no config.json" in capsys.readouterr().err
    assert time.perf_counter() - start < 10
    with pytest.raises(L2Error, match="did you mean `smollm2-135m`"):
        load_model("smollm-135m")


def test_a_hub_id_is_looked_up_once_and_fails_in_one_line(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(L2Error, match="cannot look up 'someorg/somemodel' on the Hugging Face hub"):
        load_model("someorg/somemodel")
    assert time.perf_counter() - start < 10


def test_contrast_prompts_that_give_no_tokens_are_named(model_folder: str) -> None:
    loaded = load_model(model_folder)
    spec = VectorPlan(name="v", source="contrast", positive=("",), negative=("x",), layer=3)
    with pytest.raises(CompileError, match="vector `v`: the contrast prompt '' gives no tokens"):
        contrast_vector(loaded.model, adapt(loaded.model), loaded.tokenizer, spec)


# -- signals and pipes ---------------------------------------------------------------------------------

def test_ctrl_c_exits_130_with_one_line(monkeypatch, capsys) -> None:
    from l2lang.cli import check

    def interrupted(args) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(check, "run", interrupted)
    assert main(["check", "baseline"]) == 130
    assert capsys.readouterr().err == "l2lang: interrupted\n"


def test_ctrl_c_in_a_real_process() -> None:
    """SIGINT while `run` waits for its prompts (on a pipe nobody writes to): one line, exit 130."""
    # (SIGINT as a terminal delivers it: a job started in the background by a shell inherits it ignored)
    process = subprocess.Popen(CLI + ["run", "baseline", "--prompts", "/dev/stdin"], env=ENV, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    syscall = Path(f"/proc/{process.pid}/syscall")
    read = {"x86_64": "0", "aarch64": "63"}.get(platform.machine())  # read(2)'s number
    deadline = time.monotonic() + (60 if read else 0)
    while time.monotonic() < deadline:  # wait until it blocks in read(2) of the pipe, inside the command
        try:                               # (not of a module it imports: the first argument is the fd read)
            number, fd = syscall.read_text().split()[:2]
            if number == read and os.readlink(f"/proc/{process.pid}/fd/{int(fd, 16)}").startswith("pipe:"):
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    else:
        process.kill()
        pytest.skip("cannot see the process block (no /proc/PID/syscall here)")
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130 and err.strip().splitlines() == ["l2lang: interrupted"], err


def test_a_closed_pipe_ends_the_command_quietly(tmp_path: Path) -> None:
    files = [str(ROOT / "strategies" / "baseline.l2")] * 2000
    process = subprocess.Popen(CLI + ["check", *files], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.readline()
    process.stdout.close()  # as `| head -1` does
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141 and err == "", err


def test_outputs_replace_a_link_planted_at_their_name_instead_of_writing_through_it(model_folder: str,
                                                                                     tmp_path: Path) -> None:
    """Every file a command writes goes through `paths.write_new`: a new file of its own, renamed over the name."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "trace"
    out.mkdir()
    for name in ("norms.jsonl", "norms.csv", "report.html"):
        (out / name).symlink_to(victim)
    assert main(["trace", "baseline", "--model", model_folder, "--prompt", "x", "--max-new-tokens", "2",
                 "--out", str(out)]) == 0
    assert victim.read_text() == "precious"
    assert all((out / name).is_file() and not (out / name).is_symlink() for name in ("norms.jsonl", "norms.csv"))
    assert not list(out.glob(".*.partial"))


def test_names_and_files_that_would_act_on_a_terminal_or_block_are_made_harmless(model_folder: str, tmp_path: Path,
                                                                                 capsys) -> None:
    odd = tmp_path / "e\x1b]0;T\x07.l2"
    odd.write_text("observe 0\n")
    assert main(["check", str(odd), "--layers", "4"]) == 0
    assert "\x1b" not in capsys.readouterr().out
    folder = tmp_path / "model"
    shutil.copytree(model_folder, folder)
    os.mkfifo(folder / "extra.safetensors")  # (hashing it would wait for a writer forever)
    assert main(["run", "baseline", "--model", str(folder), "--prompt", "x", "--max-new-tokens", "1"]) == 1
    assert "extra.safetensors is not a regular file" in capsys.readouterr().err
    out = tmp_path / "trace"
    (out / "norms.csv").mkdir(parents=True)  # a folder where a file is written: a clean error
    assert main(["trace", "baseline", "--model", model_folder, "--prompt", "x", "--max-new-tokens", "1",
                 "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "norms.csv" in err and "error:" in err and "Traceback" not in err
