"""Files a strategy reaches (`use`, `calibrated(...)`, `load(...)`): confined to its folder, read without
blocking or unbounded memory, and validated with clean errors naming the file and the fix."""

from __future__ import annotations

import json
import os
import struct
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save, save_file

from l2lang import L2Error, compile_plan, load_program
from l2lang.cli.main import main
from l2lang.lang.files import LIMITS

SECRET = "this line is a secret outside the folder"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """tmp/strategy/ is the strategy's folder; tmp/outside/ holds a file and a folder it must not reach."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.l2").write_text(SECRET + "\n", encoding="utf-8")
    save_file({"v": torch.ones(16)}, str(outside / "v.safetensors"))
    (outside / "p.json").write_text(json.dumps(profile(4)), encoding="utf-8")
    inside = tmp_path / "strategy"
    inside.mkdir()
    return inside


def profile(layers: int, **changes) -> dict:
    stats = {str(i): {"p50": i + 1.0, "p75": i + 2.0, "p90": i + 3.0, "p95": i + 4.0, "p99": i + 5.0}
             for i in range(layers)}
    return {"format": "l2lang-profile/1", "layers": {**stats, **changes}}


def check(capsys, path: Path, layers: int = 4) -> str:
    """`l2lang check FILE --layers N` must fail cleanly; its error output."""
    assert main(["check", str(path), "--layers", str(layers)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and SECRET not in err
    return err


def write(folder: Path, text: str, name: str = "s.l2") -> Path:
    (folder / name).write_text(text, encoding="utf-8")
    return folder / name


USES = {
    "use": 'use "{}"\n',
    "profile": 'threshold tau = calibrated("{}", q=0.9)\nif norm[2] > tau mark "x"\n',
    "vector": 'vector v = load("{}")\nif norm[1] > 1 steer 0.5*v\n',
}
TARGETS = {"use": "x.l2", "profile": "p.json", "vector": "v.safetensors"}


@pytest.mark.parametrize("kind", sorted(USES))
def test_text_paths_leaving_the_folder_are_refused_before_reading(kind: str, folder: Path, capsys) -> None:
    for target in (f"../outside/{TARGETS[kind]}", str(folder.parent / "outside" / TARGETS[kind])):
        err = check(capsys, write(folder, USES[kind].format(target)))
        assert "leaves the strategy's folder" in err or "must stay inside the strategy's folder" in err


@pytest.mark.parametrize("kind", sorted(USES))
def test_symlinked_files_and_folders_escaping_the_folder_are_refused(kind: str, folder: Path, capsys) -> None:
    (folder / TARGETS[kind]).symlink_to(folder.parent / "outside" / TARGETS[kind])
    (folder / "lib").symlink_to(folder.parent / "outside", target_is_directory=True)
    for target in (TARGETS[kind], f"lib/{TARGETS[kind]}"):
        err = check(capsys, write(folder, USES[kind].format(target)))
        assert "resolves outside the strategy's folder (through a symbolic link)" in err


def test_links_inside_the_folder_are_followed(folder: Path, capsys) -> None:
    (folder / "real").mkdir()
    (folder / "real" / "inner.l2").write_text('param k = 2\n', encoding="utf-8")
    (folder / "lib").symlink_to(folder / "real", target_is_directory=True)
    program = load_program(write(folder, 'use "lib/inner.l2" as a\n'))
    assert program.units[1].params == {"k": 2}
    # a used file may reach `..` of its own folder, as long as it stays inside the root
    (folder / "real" / "up.l2").write_text('use "../top.l2" as t\n', encoding="utf-8")
    (folder / "top.l2").write_text('param j = 1\n', encoding="utf-8")
    program = load_program(write(folder, 'use "real/up.l2" as u\n'))
    assert [u.namespace for u in program.units] == ["", "u.", "u.t."]


def _finishes(fn, seconds: float = 20.0):
    """Run `fn` in a thread; fail (instead of hanging) if it blocks."""
    result: dict = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "reading blocked"
    return result


@pytest.mark.parametrize("kind", sorted(USES))
def test_a_fifo_is_refused_without_blocking(kind: str, folder: Path) -> None:
    os.mkfifo(folder / TARGETS[kind])
    path = write(folder, USES[kind].format(TARGETS[kind]))
    result = _finishes(lambda: compile_plan(load_program(path), 4, 16))
    assert isinstance(result.get("error"), L2Error)
    assert "is a FIFO, not a regular file" in str(result["error"])


def test_a_fifo_or_device_named_as_the_strategy_is_refused(tmp_path: Path, capsys) -> None:
    os.mkfifo(tmp_path / "fifo.l2")
    (tmp_path / "zero.l2").symlink_to("/dev/zero")
    result = _finishes(lambda: main(["check", str(tmp_path / "fifo.l2"), str(tmp_path / "zero.l2")]))
    assert result["value"] == 1
    err = capsys.readouterr().err
    assert "fifo.l2: error: the strategy file is a FIFO, not a regular file" in err
    assert "error: the strategy file is a device, not a regular file" in err


def test_a_link_to_dev_zero_is_refused_without_reading_it(folder: Path, capsys) -> None:
    (folder / "p.json").symlink_to("/dev/zero")
    err = check(capsys, write(folder, USES["profile"].format("p.json")))
    assert "resolves outside the strategy's folder" in err


@pytest.mark.parametrize("kind", sorted(USES))
def test_oversized_files_are_refused_before_reading(kind: str, folder: Path, capsys) -> None:
    limit = LIMITS[{"use": "strategy", "profile": "profile", "vector": "vectors"}[kind]]
    with open(folder / TARGETS[kind], "wb") as handle:
        handle.truncate(limit + 1)  # sparse: large without being written
    err = check(capsys, write(folder, USES[kind].format(TARGETS[kind])))
    assert f"is too large ({limit + 1} bytes; the limit is {limit})" in err


def test_folders_and_missing_files_are_clean_errors(folder: Path, capsys) -> None:
    (folder / "d.json").mkdir()
    err = check(capsys, write(folder, USES["profile"].format("d.json")))
    assert "`d.json` is a folder, not a regular file" in err
    err = check(capsys, write(folder, USES["vector"].format("none.safetensors")))
    assert "`none.safetensors` does not exist" in err
    err = check(capsys, write(folder, 'use "none.l2"\n'))
    assert "`use none.l2`: " in err and "none.l2 does not exist" in err


# ---- profiles --------------------------------------------------------------------------------------

BAD_PROFILES = {
    "not JSON": (b"{nope", "is not JSON"),
    "a list": (b"[1, 2]", "has no `layers` object"),
    "no layers": (json.dumps({"model": "m"}).encode(), "has no `layers` object"),
    "a word as a layer": (json.dumps(profile(4, a={"p50": 1})).encode(), 'has layer key "a", which is not a layer'),
    "a signed layer": (json.dumps(profile(3, **{"-1": profile(1)["layers"]["0"]})).encode(), 'layer key "-1"'),
    "a padded layer": (json.dumps({"layers": {"00": profile(1)["layers"]["0"]}}).encode(), 'layer key "00"'),
    "a gap": (json.dumps({"layers": {k: v for k, v in profile(5)["layers"].items() if k != "2"}}).encode(),
              "has no entry for layer 2 (its layers must be 0..3)"),
    "other indices": (json.dumps({"layers": {str(i + 4): v for i, v in enumerate(profile(4)["layers"].values())}})
                      .encode(), "has no entry for layer 0"),
    "a missing quantile": (json.dumps(profile(4, **{"1": {"p50": 1, "p75": 2, "p95": 3, "p99": 4}})).encode(),
                           "has no `p90` for layer 1"),
    "a null": (json.dumps(profile(4, **{"3": {**profile(4)["layers"]["3"], "p90": None}})).encode(),
               "has no `p90` for layer 3"),
    "a string": (json.dumps(profile(4, **{"3": {**profile(4)["layers"]["3"], "p90": "12"}})).encode(),
                 'has p90 = "12" for layer 3, not a finite number'),
    "NaN": (json.dumps(profile(4, **{"0": {**profile(4)["layers"]["0"], "p90": float("nan")}})).encode(),
            "is not JSON (`NaN` is not a JSON number)"),
    "a 400-digit integer": (json.dumps(profile(4)).replace("2.0", "1" + "0" * 400, 1).encode(),
                            "= Infinity for layer 0, not a finite number"),
    "nested too deeply": (b'{"layers": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "is nested too deeply"),
    "a bool": (json.dumps(profile(4, **{"0": {**profile(4)["layers"]["0"], "p90": True}})).encode(),
               "has p90 = true for layer 0"),
    "stats not an object": (json.dumps(profile(4, **{"2": [1, 2]})).encode(), "has no object of quantiles for layer 2"),
    "weights not text": (json.dumps({**profile(4), "weights_sha256": 5}).encode(), "has a `weights_sha256` that is not"),
    "not UTF-8": (b'{"layers": "\xff"}', "is not UTF-8 text"),
}


@pytest.mark.parametrize("case", sorted(BAD_PROFILES))
def test_malformed_profiles_are_clean_errors_naming_the_file_and_the_fix(case: str, folder: Path, capsys) -> None:
    data, expected = BAD_PROFILES[case]
    (folder / "p.json").write_bytes(data)
    err = check(capsys, write(folder, USES["profile"].format("p.json")))
    assert "s.l2:1:1: error: `p.json` " in err and expected in err, err
    assert "hint: make one with `l2lang calibrate" in err


def test_a_valid_profile_still_resolves_and_its_layer_count_is_checked(folder: Path, capsys) -> None:
    (folder / "p.json").write_text(json.dumps(profile(4)), encoding="utf-8")
    path = write(folder, USES["profile"].format("p.json"))
    assert compile_plan(load_program(path), 4).thresholds["tau"].values == {i: i + 3.0 for i in range(4)}
    assert "recorded on a model with 4 layers; this one has 6" in check(capsys, path, layers=6)


# ---- safetensors -----------------------------------------------------------------------------------

def safetensors_bytes(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _valid() -> bytes:
    return save({"v": torch.ones(16)})


BAD_SAFETENSORS = {
    "a scalar": (lambda: save({"v": torch.tensor(1.0)}),
                 "holds `v` as a scalar (no dimensions)"),
    "an entry that is a number": (lambda: safetensors_bytes({"v": 5}, b""), "the header entry of `v` is not an object"),
    "an entry without offsets": (lambda: safetensors_bytes({"v": {"dtype": "F32", "shape": [16]}}, bytes(64)),
                                 "`v` has no valid data_offsets"),
    "a negative size": (lambda: safetensors_bytes({"v": {"dtype": "F32", "shape": [-16], "data_offsets": [0, 64]}},
                                                  bytes(64)), "`v` has no valid shape"),
    "an unknown dtype": (lambda: safetensors_bytes({"v": {"dtype": "Q4", "shape": [16], "data_offsets": [0, 64]}},
                                                   bytes(64)), "dtype \"Q4\", which safetensors does not define"),
    "truncated data": (lambda: _valid()[:-10], "its data is 54 bytes; the header describes 64 (the file is truncated)"),
    "trailing data": (lambda: _valid() + b"\0" * 8, "its data is 72 bytes; the header describes 64"),
    "a header past the end": (lambda: struct.pack("<Q", 1 << 40) + b"{}", "runs past the end of the file"),
    "too short": (lambda: b"\1\2", "shorter than the 8-byte header length"),
    "a header that is a list": (lambda: safetensors_bytes([1], b""), "its header is not a JSON object"),  # type: ignore[arg-type]
    "size and offsets disagree": (lambda: safetensors_bytes({"v": {"dtype": "F32", "shape": [16],
                                                                   "data_offsets": [0, 32]}}, bytes(32)),
                                  "`v` spans 32 bytes; its dtype and shape need 64"),
    "overlapping tensors": (lambda: safetensors_bytes({"v": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]},
                                                       "w": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]}},
                                                      bytes(64)), "overlap or leave gaps"),
    "integer values": (lambda: save({"v": torch.ones(16, dtype=torch.int64)}),
                       "holds `v` as I64; a vector must be floating point"),
    "metadata that is not text": (lambda: safetensors_bytes({"__metadata__": {"a": 1}}, b""), "`__metadata__`"),
    "a pickle": (lambda: b"\x80\x04\x95" + bytes(40), "is not a valid safetensors file"),
    "too many dimensions": (lambda: safetensors_bytes({"v": {"dtype": "F32", "shape": [1] * 17 + [16],
                                                             "data_offsets": [0, 64]}}, bytes(64)),
                            "`v` has no valid shape (a list of at most 16 sizes)"),
    "a huge shape": (lambda: safetensors_bytes({"v": {"dtype": "F32", "shape": [1 << 52] * 16, "data_offsets": [0, 64]}},
                                               bytes(64)), "its dtype and shape need more than the file has"),
    "a header nested too deeply": (lambda: struct.pack("<Q", 200_000) + b"[" * 100_000 + b"]" * 100_000,
                                   "its header is nested too deeply"),
}


@pytest.mark.parametrize("case", sorted(BAD_SAFETENSORS))
def test_malformed_safetensors_are_clean_errors(case: str, folder: Path, capsys) -> None:
    make, expected = BAD_SAFETENSORS[case]
    (folder / "v.safetensors").write_bytes(make())
    err = check(capsys, write(folder, USES["vector"].format("v.safetensors")), layers=4)
    assert "s.l2:1:1: error: `v.safetensors` " in err and expected in err, err


def test_a_vector_file_changed_into_a_truncated_one_after_checking_is_refused_at_run_time(folder: Path) -> None:
    from l2lang.engine.strategy import Strategy
    from tests.tiny_models import tiny_model

    save_file({"v": torch.ones(64)}, str(folder / "v.safetensors"))
    strategy = Strategy(load_program(write(folder, USES["vector"].format("v.safetensors"))))
    model = tiny_model("llama", 4)
    strategy.plan_for_shape(4, 64)  # compiled with the valid file
    (folder / "v.safetensors").write_bytes(_valid()[:-10])
    with pytest.raises(L2Error, match="the file is truncated"):
        with strategy.attach(model):
            pass
    save_file({"v": torch.full((64,), float("nan"))}, str(folder / "v.safetensors"))
    with pytest.raises(L2Error, match="NaN or infinite values"):
        with strategy.attach(model):
            pass
