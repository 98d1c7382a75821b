"""Packing a strategy into a bundle (`l2lang pack`): the strategy, every file it reaches, its vectors.

The bundle holds the strategy file, the files it `use`s (shipped strategies included), its
calibration profiles and vector files, each validated, and its `contrast(...)` vectors computed once
on the model given (float32) and stored as safetensors. `--set` values are frozen into the manifest,
so the bundle runs exactly as the file with the same `--set`. Format: l2lang.lang.bundle.
"""

from __future__ import annotations

import os
import re
from importlib.metadata import PackageNotFoundError, version

from l2lang.errors import CheckError, L2Error
from l2lang.lang import ir
from l2lang.lang.bundle import Manifest, PackedModel, is_bundle_path, write_bundle
from l2lang.lang.check import check_program
from l2lang.lang.compose import Program, Unit, load_program
from l2lang.lang.files import FileRefused
from l2lang.plan.datafiles import parse_profile, parse_safetensors, vector_entry

_SHA256 = re.compile(r"[0-9a-f]{64}")


def pack(target: str, out: str, *, model: str | None = None, overrides: dict[str, str] | None = None,
         force: bool = False) -> tuple[str, Manifest]:
    """Pack `target` (a shipped name or `.l2` file) into the bundle `out`; returns its id and manifest."""
    if is_bundle_path(target):
        raise CheckError.one("this is already a bundle: pack its strategy file", path=target)
    if not is_bundle_path(out):
        raise CheckError.one("a bundle's name ends in .l2b (or .zip)", path=out)
    if os.path.lexists(out) and not force:
        raise CheckError.one("the file exists", path=out, hint="pass --force to replace it")
    overrides = dict(overrides or {})
    program = load_program(target, overrides)
    check_program(program)
    files = {unit.file.member: unit.source.encode("utf-8") for unit in program.units}
    contrast: list[tuple[Unit, ir.Vector]] = []
    for unit in program.units:
        for stmt in unit.strategy.statements:
            match stmt:
                case ir.Vector(source=ir.LoadSource(path=path, key=key)):
                    files.update(_data_file(program, unit, stmt, path, "vectors",  # validated at once
                                            lambda data: vector_entry(parse_safetensors(data), key, path)))
                case ir.Threshold(source=ir.CalibratedSource(profile=path)):
                    files.update(_data_file(program, unit, stmt, path, "profile", parse_profile))
                case ir.Vector(source=ir.ContrastSource()):
                    contrast.append((unit, stmt))
    packed, derived = None, {}
    if model is not None:
        packed, vectors = _derive(program, model)
        for name, data in vectors.items():
            derived[name] = f"derived/{name}.safetensors"
            files[derived[name]] = data
    elif contrast:
        unit, stmt = contrast[0]
        raise unit.error(f"vector `{stmt.name}` is derived from the model: pack with --model M to compute it once "
                         "and store it", stmt.span)
    manifest = Manifest(
        l2lang=_version("l2lang"), strategy=program.root.file.member, fingerprint=program.fingerprint,
        overrides=overrides, model=packed, derived=derived, members={},
        created={"model": model, "set": [f"{k}={v}" for k, v in overrides.items()],
                 "dtype": "float32" if model else None,
                 "versions": {name: _version(name) for name in ("l2lang", "safetensors", "torch", "transformers")}})
    return write_bundle(out, manifest, files)


def _data_file(program: Program, unit: Unit, stmt: ir.Statement, relative: str, kind: str,
               validate) -> dict[str, bytes]:
    """The file `relative` names from `unit`, read and validated, keyed by its member name."""
    try:
        file = program.resolve(unit, relative)
        data = file.read(kind)
        validate(data)
    except FileRefused as exc:
        raise unit.error(f"`{relative}` {exc.reason}", stmt.span, hint=exc.hint) from None
    return {file.member: data}


def _derive(program: Program, model: str) -> tuple[PackedModel, dict[str, bytes]]:
    """Compile for `model` (profiles and layers checked against it) and compute its contrast vectors."""
    from safetensors.torch import save

    from l2lang.backends.base import open_backend
    from l2lang.backends.hf.layers import adapt
    from l2lang.backends.hf.vectors import contrast_vector
    from l2lang.engine.strategy import Strategy

    backend = open_backend("hf", model)
    if not _SHA256.fullmatch(backend.weights_sha256 or ""):
        raise L2Error.one(f"the weights of {model} have no known sha256, so a bundle cannot be tied to them",
                          path=model, hint="pack for a built-in alias, a local folder or a .gguf file")
    plan = backend.plan_for(Strategy(program))
    loaded = backend.loaded
    vectors = {}
    for name, spec in plan.vectors.items():
        if spec.source == "contrast":
            vector = contrast_vector(loaded.model, adapt(loaded.model), loaded.tokenizer, spec)
            vectors[name] = save({"vector": vector.detach().float().cpu().reshape(-1).contiguous()})
    packed = PackedModel(id=model, weights_sha256=backend.weights_sha256, layers=plan.layers,
                         hidden_size=plan.hidden_size)
    return packed, vectors


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None
