"""Policy bundles: `l2lang pack` → run equals the file's run; changed, hostile and foreign bundles refused."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import struct
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import l2lang
from l2lang import L2Error
from l2lang.apps.evaluate import parse_arms
from l2lang.backends.hf.models import folder_sha256
from l2lang.cli.main import main
from l2lang.lang import bundle as B
from l2lang.lang.compose import load_program
from tests.tiny_models import tiny_model, tiny_tokenizer

MAIN = """\
param tau = 1e9
use "lib/inner.l2" as inner with k = 2
use "suppress-high" as sh
threshold cal = calibrated("profiles/p.json", q=0.9)
vector r = contrast(["Think step by step."], ["Answer:"]) at 20
if norm[L-4] < tau recurse layers 20..24 twice; steer +4*r
if norm[10] > cal mark "high"
"""
INNER = """\
param k = 1
vector w = load("v.safetensors")
if norm[12] > k steer 0.05*w
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[str, str]:
    """Two tiny Llama folders (28 layers) with different weights."""
    folders = []
    for seed in (0, 5):
        folder = tmp_path_factory.mktemp(f"tiny-llama-{seed}")
        tiny_model("llama", 28, seed=seed).save_pretrained(folder)
        tiny_tokenizer().save_pretrained(folder)
        folders.append(str(folder))
    return folders[0], folders[1]


def make_project(root: Path, model: str) -> Path:
    """A strategy using a file in a subfolder (with its own vector file), a shipped strategy, a profile."""
    (root / "lib").mkdir(parents=True)
    (root / "profiles").mkdir()
    (root / "main.l2").write_text(MAIN, encoding="utf-8")
    (root / "lib" / "inner.l2").write_text(INNER, encoding="utf-8")
    save_file({"w": torch.linspace(-1, 1, 64)}, str(root / "lib" / "v.safetensors"))
    layers = {str(i): {"p50": 1.0, "p75": 2.0, "p90": 3.0 + i, "p95": 4.0 + i, "p99": 5.0 + i} for i in range(28)}
    profile = {"format": "l2lang-profile/1", "model": model, "weights_sha256": folder_sha256(Path(model)),
               "layers": layers}
    (root / "profiles" / "p.json").write_text(json.dumps(profile), encoding="utf-8")
    return root / "main.l2"


@pytest.fixture(scope="module")
def packed(models, tmp_path_factory) -> tuple[Path, Path]:
    """(the strategy file, its bundle packed for the first model with --set tau=1e8)."""
    model, _ = models
    root = tmp_path_factory.mktemp("project")
    strategy = make_project(root / "p", model)
    out = root / "policy.l2b"
    assert main(["pack", str(strategy), "--model", model, "--set", "tau=1e8", "--out", str(out)]) == 0
    return strategy, out


def run_json(capsys, *args: str) -> dict:
    assert main(["run", *args, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def refused(capsys, argv: list[str]) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# ---- round trip --------------------------------------------------------------------------------------

@pytest.mark.parametrize("decoding", [[], ["--temperature", "0.9", "--seed", "7"]], ids=["greedy", "sampled"])
def test_a_bundle_runs_exactly_as_its_file_with_the_same_set(decoding, models, packed, capsys) -> None:
    model, _ = models
    strategy, bundle = packed
    common = ["--model", model, "--prompts", str(Path(__file__).parents[1] / "examples" / "prompts.jsonl"),
              "--max-new-tokens", "8", *decoding]
    from_file = run_json(capsys, str(strategy), "--set", "tau=1e8", *common)
    from_bundle = run_json(capsys, str(bundle), *common)
    assert [o["token_ids"] for o in from_bundle["outputs"]] == [o["token_ids"] for o in from_file["outputs"]]
    for key in ("fingerprint", "params", "interventions", "thresholds", "extra_layer_passes"):
        assert from_bundle["manifest"][key] == from_file["manifest"][key], key
    assert from_file["manifest"]["interventions"]["recurse@24"] > 0
    record = from_bundle["manifest"]["bundle"]
    assert record["id"] == hashlib.sha256(zipfile.ZipFile(bundle).read("manifest.json")).hexdigest()
    assert record["packed_for"]["weights_sha256"] == folder_sha256(Path(model))
    assert record["ran_on_other_model"] is False and "bundle" not in from_file["manifest"]


def test_a_bundle_holds_everything_and_needs_neither_the_folder_nor_rederivation(models, packed, tmp_path) -> None:
    model, _ = models
    strategy, bundle = packed
    members = set(zipfile.ZipFile(bundle).namelist())
    assert members == {"manifest.json", "strategy/main.l2", "strategy/lib/inner.l2", "strategy/lib/v.safetensors",
                       "strategy/profiles/p.json", "shipped/suppress-high.l2", "derived/r.safetensors"}
    moved = tmp_path / "copy.l2b"
    shutil.copy(bundle, moved)
    loaded = l2lang.load_model(model)
    prompt = ["What is 17 * 6? Think step by step."]
    expected = l2lang.generate(loaded.model, loaded.tokenizer, l2lang.load(str(strategy), tau=1e8), prompt,
                               max_new_tokens=8)
    shutil.rmtree(strategy.parent / "lib")  # the bundle does not read the folder it was packed from
    try:
        s = l2lang.load(str(moved))
        result = l2lang.generate(loaded.model, loaded.tokenizer, s, prompt, max_new_tokens=8)
    finally:
        make_project(tmp_path / "restored", model)
        shutil.copytree(tmp_path / "restored" / "lib", strategy.parent / "lib")
    assert result.outputs[0]["token_ids"] == expected.outputs[0]["token_ids"]
    assert result.plan.vectors["r"].path.endswith("copy.l2b!derived/r.safetensors")
    assert len(s.derived) == 0  # the contrast vector was loaded, not derived again
    with pytest.raises(L2Error, match="params are frozen"):
        l2lang.load(str(moved), tau=1)


def test_packing_is_reproducible_and_inspect_shows_the_hashes(models, packed, tmp_path, capsys) -> None:
    _, bundle = packed
    strategy = make_project(tmp_path / "p", models[0])
    first, second = tmp_path / "a.l2b", tmp_path / "b.l2b"
    text = strategy.read_text().replace('use "suppress-high" as sh\n', "").replace("vector r", "# vector r")
    strategy.write_text(text.replace("; steer +4*r", ""))
    for out in (first, second):
        assert main(["pack", str(strategy), "--out", str(out)]) == 0
    assert first.read_bytes() == second.read_bytes()
    capsys.readouterr()
    assert main(["inspect", str(bundle), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    manifest = shown["manifest"]
    assert shown["id"] == hashlib.sha256(zipfile.ZipFile(bundle).read("manifest.json")).hexdigest()
    assert manifest["overrides"] == {"tau": "1e8"} and manifest["derived"] == {"r": "derived/r.safetensors"}
    assert manifest["model"]["layers"] == 28 and manifest["model"]["hidden_size"] == 64
    with zipfile.ZipFile(bundle) as archive:
        for name, digest in manifest["members"].items():
            assert hashlib.sha256(archive.read(name)).hexdigest() == digest
    assert main(["inspect", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert shown["id"] in out and "tau=1e8 (frozen)" in out and "strategy/lib/v.safetensors" in out
    assert main(["check", str(bundle), "--layers", "28"]) == 0
    assert f"{bundle}: ok for 28 layers (fingerprint {manifest['fingerprint']})" in capsys.readouterr().out
    (arm,) = parse_arms([str(bundle)])
    assert arm.strategy.fingerprint == manifest["fingerprint"]
    with pytest.raises(L2Error, match="params are frozen"):
        parse_arms([f"{bundle}:tau=3"])


def test_packing_refuses_what_it_cannot_pack(packed, tmp_path, capsys) -> None:
    strategy, bundle = packed
    out = str(tmp_path / "x.l2b")
    assert "vector `r` is derived from the model: pack with --model M" in \
        refused(capsys, ["pack", str(strategy), "--out", out])
    assert "the file exists" in refused(capsys, ["pack", "baseline", "--out", str(bundle)])
    assert "already a bundle" in refused(capsys, ["pack", str(bundle), "--out", out])
    assert "ends in .l2b" in refused(capsys, ["pack", "baseline", "--out", str(tmp_path / "x.tar")])
    assert "cannot write the bundle" in refused(capsys, ["pack", "baseline", "--out", str(tmp_path / "no" / "x.l2b")])
    assert "a bundle is sealed" in refused(capsys, ["fmt", str(bundle)])


# ---- another model ---------------------------------------------------------------------------------

def test_another_models_weights_are_refused_unless_allowed_and_then_recorded(models, packed, capsys) -> None:
    model, other = models
    strategy, bundle = packed
    common = ["--model", other, "--prompt", "x", "--max-new-tokens", "4"]
    err = refused(capsys, ["run", str(bundle), *common])
    assert f"the bundle was packed for {model}" in err and "--allow-other-model" in err
    # the profile inside was recorded on the first model too: allowing the bundle does not allow the profile
    err = refused(capsys, ["run", str(bundle), *common, "--allow-other-model"])
    assert "`profiles/p.json` was recorded on other weights" in err
    # without the profile it runs on the other model when allowed, says so, and derives its contrast
    # vector on that model again, as the file does there
    plain = strategy.with_name("plain.l2")
    plain.write_text(MAIN.replace('threshold cal = calibrated("profiles/p.json", q=0.9)\n', "")
                     .replace('if norm[10] > cal mark "high"\n', ""), encoding="utf-8")
    packed_plain = bundle.with_name("plain.l2b")
    assert main(["pack", str(plain), "--model", model, "--out", str(packed_plain)]) == 0
    assert "the bundle was packed for" in refused(capsys, ["run", str(packed_plain), *common])
    result = run_json(capsys, str(packed_plain), *common, "--allow-other-model")
    record = result["manifest"]["bundle"]
    assert record["allow_other_model"] is True and record["ran_on_other_model"] is True
    assert result["manifest"]["weights_sha256"] == folder_sha256(Path(other))
    assert result["outputs"] == run_json(capsys, str(plain), *common)["outputs"]
    # a model whose weights l2lang did not hash is not taken for the right one
    with pytest.raises(L2Error, match="weights are not known"):
        with l2lang.load(str(packed_plain)).attach(tiny_model("llama", 28), tiny_tokenizer()):
            pass
    with l2lang.load(str(packed_plain), allow_other_model=True).attach(tiny_model("llama", 28), tiny_tokenizer()) \
            as run:
        assert run.plan.vectors["r"].path.endswith("plain.l2b!derived/r.safetensors")  # unknown weights: as packed


# ---- tampering -------------------------------------------------------------------------------------

def rewrite(source: Path, target: Path, changes: dict[str, bytes | None] | None = None,
            extra: dict[str, bytes] | None = None, comment: bytes | None = None) -> Path:
    """A copy of the archive with some members changed (None: dropped) or added, and maybe a new comment."""
    changes = changes or {}
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            data = changes.get(info.filename, old.read(info))
            if data is not None:
                new.writestr(info, data)
        for name, data in (extra or {}).items():
            new.writestr(name, data)
        new.comment = old.comment if comment is None else comment
    return target


def resealed(source: Path, target: Path, edit) -> Path:
    """The archive with its manifest edited by `edit(dict)` and sealed again with the new id."""
    manifest = json.loads(zipfile.ZipFile(source).read("manifest.json"))
    edit(manifest)
    text = json.dumps(manifest).encode()
    return rewrite(source, target, {"manifest.json": text}, comment=B.SEAL + hashlib.sha256(text).hexdigest().encode())


def test_changing_any_member_is_refused_naming_it(packed, tmp_path, capsys) -> None:
    _, bundle = packed
    names = zipfile.ZipFile(bundle).namelist()
    for name in names:
        original = zipfile.ZipFile(bundle).read(name)
        changed = rewrite(bundle, tmp_path / "changed.l2b", {name: original[:-1] + bytes([original[-1] ^ 1])})
        err = refused(capsys, ["check", str(changed)])
        expected = "manifest.json was changed after packing" if name == "manifest.json" else \
            f"member {name} was changed after packing"
        assert expected in err, (name, err)


def test_a_resealed_manifest_must_still_match_its_members_and_strategy(packed, tmp_path, capsys) -> None:
    _, bundle = packed
    cases = {
        "the strategy's fingerprint is": lambda m: m["overrides"].update(tau="1"),
        "the manifest says 0000": lambda m: m.update(fingerprint="0000000000000000"),
        "member strategy/main.l2 was changed": lambda m: m["members"].update({"strategy/main.l2": "0" * 64}),
        "is missing from the archive": lambda m: m["members"].update({"strategy/extra.l2": "0" * 64}),
        "is not listed in manifest.json": lambda m: m["members"].pop("strategy/lib/v.safetensors"),
        "not a valid bundle manifest: model.weights_sha256": lambda m: m["model"].pop("weights_sha256"),
        "gives no valid weights sha256": lambda m: m["model"].update(weights_sha256="any"),
        "not a valid bundle manifest: surprise": lambda m: m.update(surprise=1),
        "this l2lang reads l2lang-bundle/1": lambda m: m.update(format="l2lang-bundle/2"),
    }
    for expected, edit in cases.items():
        err = refused(capsys, ["check", str(resealed(bundle, tmp_path / "t.l2b", edit))])
        assert expected in err, (expected, err)
    err = refused(capsys, ["check", str(rewrite(bundle, tmp_path / "t.l2b", extra={"strategy/x.l2": b"param y = 1\n"}))])
    assert "member strategy/x.l2 is not listed in manifest.json" in err
    err = refused(capsys, ["check", str(rewrite(bundle, tmp_path / "t.l2b", {"derived/r.safetensors": None}))])
    assert "member derived/r.safetensors, listed in manifest.json, is missing" in err


# ---- hostile archives ------------------------------------------------------------------------------

def archive(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]], sealed: bool = True) -> Path:
    """A zip of `entries` with a well-formed, sealed manifest listing them (so only the hostile part is wrong)."""
    members = {(e.filename if isinstance(e, zipfile.ZipInfo) else e): hashlib.sha256(d).hexdigest()
               for e, d in entries}
    manifest = json.dumps({"format": B.FORMAT, "l2lang": "0.1.0", "strategy": "strategy/s.l2",
                           "fingerprint": "0" * 16, "members": members}).encode()
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names
        out.writestr("manifest.json", manifest)
        for entry, data in entries:
            out.writestr(entry, data)
        if sealed:
            out.comment = B.SEAL + hashlib.sha256(manifest).hexdigest().encode()
    return path


def patch_central_directory(path: Path, name: str, offset: int, fmt: str, value: int) -> None:
    """Overwrite a field of `name`'s central directory record (what zip readers trust for sizes and flags)."""
    data = bytearray(path.read_bytes())
    start = 0
    while True:
        start = data.index(b"PK\x01\x02", start)
        length = struct.unpack_from("<H", data, start + 28)[0]
        if data[start + 46:start + 46 + length].decode() == name:
            struct.pack_into(fmt, data, start + offset, value)
            break
        start += 4
    path.write_bytes(bytes(data))


def link(name: str, target: bytes) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target


STRATEGY = ("strategy/s.l2", b"observe 0..L-1\n")
HOSTILE = {
    "traversal": ([STRATEGY, ("../evil.l2", b"x")], "member '../evil.l2' has an unsafe name"),
    "traversal inside": ([STRATEGY, ("strategy/../../evil.l2", b"x")], "has an empty, `.` or `..` part"),
    "absolute": ([STRATEGY, ("/etc/evil.l2", b"x")], "member '/etc/evil.l2' has an unsafe name: it is absolute"),
    "backslash": ([STRATEGY, ("strategy\\..\\evil.l2", b"x")], "has characters a member name may not have"),
    "drive": ([STRATEGY, ("C:/evil.l2", b"x")], "has characters a member name may not have"),
    "unknown area": ([STRATEGY, ("evil.l2", b"x")], "outside the bundle's areas"),
    "symlink": ([STRATEGY, link("strategy/p.json", b"/etc/passwd")], "member 'strategy/p.json' is a symbolic link"),
    "folder entry": ([STRATEGY, ("strategy/sub/", b"")], "member 'strategy/sub/' is a folder"),
    "duplicate": ([STRATEGY, ("strategy/s.l2", b"observe 1\n")], "'strategy/s.l2' appears more than once"),
    "zip bomb": ([STRATEGY, ("strategy/bomb.l2", bytes(16 << 20))], "expands 1"),
    "too many members": ([STRATEGY] + [(f"strategy/{i}.l2", b"") for i in range(300)], "a bundle has at most 256"),
    "a direction override in a name": ([STRATEGY, ("strategy/\u202egnp.l2", b"x")], "format or direction marks"),
    "a DEL in a name": ([STRATEGY, ("strategy/a\x7f.l2", b"x")], "has characters a member name may not have"),
    "a C1 control in a name": ([STRATEGY, ("strategy/a\x9b2J.l2", b"x")], "has characters a member name may not have"),
    "a line separator in a name": ([STRATEGY, ("strategy/a\u2028.l2", b"x")], "has characters a member name may"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archives_are_refused_cleanly(case: str, tmp_path: Path, capsys) -> None:
    entries, expected = HOSTILE[case]
    err = refused(capsys, ["check", str(archive(tmp_path / "h.l2b", entries))])
    assert expected in err, err
    assert not (tmp_path / "evil.l2").exists() and list(tmp_path.iterdir()) == [tmp_path / "h.l2b"]


def test_sizes_declared_by_the_archive_are_capped_before_decompressing(tmp_path: Path, capsys) -> None:
    path = archive(tmp_path / "h.l2b", [STRATEGY, ("strategy/big.l2", b"x" * 100)])
    patch_central_directory(path, "strategy/big.l2", 24, "<I", 0xFFFF0000)  # uncompressed size
    assert f"member strategy/big.l2 is {0xFFFF0000} bytes; the limit is {B.MAX_MEMBER_BYTES}" in \
        refused(capsys, ["check", str(path)])
    entries = [STRATEGY] + [(f"strategy/{i}.l2", bytes(1 << 20)) for i in range(6)]
    path = archive(tmp_path / "h.l2b", entries)
    for i in range(6):
        patch_central_directory(path, f"strategy/{i}.l2", 24, "<I", 50 << 20)
        patch_central_directory(path, f"strategy/{i}.l2", 20, "<I", 1 << 20)  # compressed: no bomb ratio
    assert "the members add up to more than" in refused(capsys, ["check", str(path)])
    path = archive(tmp_path / "h.l2b", [STRATEGY])
    patch_central_directory(path, "strategy/s.l2", 8, "<H", 1)  # encrypted
    assert "member strategy/s.l2 is encrypted" in refused(capsys, ["check", str(path)])
    path = archive(tmp_path / "h.l2b", [STRATEGY, ("strategy/liar.l2", b"observe 0\n")])
    patch_central_directory(path, "strategy/liar.l2", 24, "<I", 5)  # smaller than the data
    assert "member strategy/liar.l2 is corrupt" in refused(capsys, ["check", str(path)])


def test_a_directory_or_manifest_larger_than_a_bundle_has_is_refused_before_it_is_read(packed, tmp_path,
                                                                                       capsys) -> None:
    path = archive(tmp_path / "h.l2b", [STRATEGY] + [(f"strategy/{i}.l2", b"") for i in range(B.MAX_DIRECTORY_RECORDS)])
    assert f"the archive has {B.MAX_DIRECTORY_RECORDS + 2} directory records" in refused(capsys, ["check", str(path)])
    _, bundle = packed
    many = resealed(bundle, tmp_path / "m.l2b", lambda m: m["members"].update(
        {f"strategy/{i}.l2": "0" * 64 for i in range(B.MAX_MEMBERS)}))
    assert f"members; a bundle has at most {B.MAX_MEMBERS}" in \
        refused(capsys, ["check", str(many)])
    deep = b"[" * 10_000 + b"]" * 10_000  # (small enough not to look like a zip bomb)
    nested = rewrite(bundle, tmp_path / "d.l2b", {"manifest.json": deep},
                     comment=B.SEAL + hashlib.sha256(deep).hexdigest().encode())
    assert "manifest.json is nested too deeply" in refused(capsys, ["check", str(nested)])
    with pytest.raises(L2Error, match="nested too deeply"):
        load_program(str(nested))


def test_packing_never_writes_through_a_planted_link_nor_fails_on_a_name_that_is_not_utf8(tmp_path, capsys) -> None:
    (tmp_path / "s.l2").write_text('observe 0\n')
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "out.l2b.partial").symlink_to(victim)
    assert main(["pack", str(tmp_path / "s.l2"), "--out", str(tmp_path / "out.l2b")]) == 0
    assert victim.read_text() == "precious" and not (tmp_path / "out.l2b").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.l2b", "out.l2b.partial", "s.l2", "victim.txt"]
    odd = os.fsencode(str(tmp_path)) + b"/\xff.l2"
    with open(odd, "wb") as file:
        file.write(b"observe 0\n")
    err = refused(capsys, ["pack", os.fsdecode(odd), "--out", str(tmp_path / "odd.l2b")])
    assert "cannot pack 'strategy/\\udcff.l2': it has characters a member name may not have" in err


def test_inspect_shows_the_packers_text_inert(packed, tmp_path, capsys) -> None:
    _, bundle = packed
    hostile = resealed(bundle, tmp_path / "e.l2b", lambda m: m.update(l2lang="0.1\x1b]0;PWNED\x07\x1b[2J\u202e"))
    for json_output in ([], ["--json"]):  # (a valid bundle: only its text is hostile)
        assert main(["inspect", str(hostile), *json_output]) == 0
        out = capsys.readouterr().out
        assert "PWNED" in out and "\x1b" not in out and "\x07" not in out and "\u202e" not in out


def test_archives_that_are_not_bundles_get_clean_errors(tmp_path: Path, capsys) -> None:
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as out:
        out.writestr("readme.txt", "hello")
    assert "not an l2lang bundle: the archive has no manifest.json" in refused(capsys, ["check", str(plain)])
    (tmp_path / "text.l2b").write_text("not a zip")
    assert "not an l2lang bundle: not a zip archive" in refused(capsys, ["run", str(tmp_path / "text.l2b"),
                                                                        "--prompt", "x"])
    unsealed = archive(tmp_path / "u.l2b", [STRATEGY], sealed=False)
    assert "not sealed as an l2lang bundle" in refused(capsys, ["check", str(unsealed)])
    assert "the bundle does not exist" in refused(capsys, ["inspect", str(tmp_path / "missing.l2b")])
    assert "inspect reads bundles" in refused(capsys, ["inspect", "examples/card.l2"])
    assert "the bundle does not exist" in refused(capsys, ["explain", str(tmp_path / "missing.l2b")])


def test_the_example_bundle_is_verified_and_is_the_card_as_it_is_now(capsys) -> None:
    """examples/card.l2b is `l2lang pack examples/card.l2 --model smollm2-135m --out examples/card.l2b`:
    pack it again when the card changes (docs/runtime.md, "Sharing strategies")."""
    card = Path(__file__).parents[1] / "examples" / "card.l2"
    program = l2lang.load_program(str(card.with_suffix(".l2b")))
    assert program.fingerprint == l2lang.load_program(str(card)).fingerprint
    assert program.bundle.manifest.model.id == "smollm2-135m" and set(program.bundle.manifest.derived) == {"v_reason"}
    assert program.root.source == card.read_text(encoding="utf-8")
