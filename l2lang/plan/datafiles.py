"""The data files a plan reads, validated: calibration profiles and safetensors vectors.

Both are parsed from bytes (read through `l2lang.lang.files`), never unpickled. A file that is not
what it claims raises `FileRefused` with what is wrong and how to fix it; the caller names the place
that referenced it.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import struct
from dataclasses import dataclass

from l2lang.lang.files import FileRefused, parse_json
from l2lang.plan.nodes import QUANTILE_KEYS

PROFILE_HINT = "make one with `l2lang calibrate --model M --prompts FILE.jsonl --out PROFILE.json`"
SAFETENSORS_HINT = "write vectors with `safetensors.torch.save_file({\"v\": tensor}, PATH)`"
# bytes per element of each safetensors dtype; vectors must be one of the floating-point ones
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
MAX_HEADER_BYTES = 1 << 20
MAX_DIMENSIONS = 16  # of one tensor (so checking its size against its data is cheap)
_LAYER_KEY = re.compile(r"0|[1-9][0-9]{0,5}")


@dataclass(frozen=True)
class Profile:
    """A calibration profile: per layer, the recorded norm quantiles (`p50` ... `p99`)."""

    model: str | None
    weights_sha256: str | None
    layers: dict[int, dict[str, float]]


def parse_profile(data: bytes) -> Profile:
    """Validate a profile (`l2lang calibrate`'s JSON): layers 0..n-1, every quantile, finite numbers."""
    try:
        profile = parse_json(data)
    except FileRefused as exc:
        raise FileRefused(f"{exc.reason}: not an l2lang calibration profile", hint=PROFILE_HINT) from None
    if not isinstance(profile, dict) or not isinstance(profile.get("layers"), dict) or not profile["layers"]:
        raise FileRefused("has no `layers` object: not an l2lang calibration profile", hint=PROFILE_HINT)
    for field in ("model", "weights_sha256"):
        if profile.get(field) is not None and not isinstance(profile[field], str):
            raise FileRefused(f"has a `{field}` that is not text", hint=PROFILE_HINT)
    layers: dict[int, dict[str, float]] = {}
    for key, stats in profile["layers"].items():
        if not _LAYER_KEY.fullmatch(key):
            raise FileRefused(f"has layer key {json.dumps(key)[:40]}, which is not a layer index (0, 1, 2, ...)",
                              hint=PROFILE_HINT)
        if not isinstance(stats, dict):
            raise FileRefused(f"has no object of quantiles for layer {key}", hint=PROFILE_HINT)
        values = {}
        for quantile in QUANTILE_KEYS.values():
            value = stats.get(quantile)
            if value is None:
                raise FileRefused(f"has no `{quantile}` for layer {key}", hint=PROFILE_HINT)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise FileRefused(f"has {quantile} = {json.dumps(value)[:40]} for layer {key}, not a finite number",
                                  hint=PROFILE_HINT)
            values[quantile] = float(value)
        layers[int(key)] = values
    missing = sorted(set(range(len(layers))) - set(layers))
    if missing:
        raise FileRefused(f"has no entry for layer {missing[0]} (its layers must be 0..{len(layers) - 1})",
                          hint=PROFILE_HINT)
    return Profile(profile.get("model"), profile.get("weights_sha256"), dict(sorted(layers.items())))


@dataclass(frozen=True)
class Tensor:
    """One entry of a safetensors header."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def parse_safetensors(data: bytes) -> dict[str, Tensor]:
    """Validate a safetensors file: its header, every entry, and that the data matches them exactly."""
    def refuse(why: str) -> FileRefused:
        return FileRefused(f"is not a valid safetensors file: {why}", hint=SAFETENSORS_HINT)

    if len(data) < 8:
        raise refuse("it is shorter than the 8-byte header length")
    (length,) = struct.unpack("<Q", data[:8])
    if length > min(len(data) - 8, MAX_HEADER_BYTES):
        raise refuse(f"its header length ({length} bytes) runs past the end of the file")
    try:
        header = parse_json(data[8:8 + length])
    except FileRefused as exc:
        raise refuse(f"its header {exc.reason}") from None
    if not isinstance(header, dict):
        raise refuse("its header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise refuse("its `__metadata__` is not an object of strings")
    tensors: dict[str, Tensor] = {}
    for name, entry in header.items():
        if not isinstance(entry, dict):
            raise refuse(f"the header entry of `{name}` is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPE_BYTES:
            raise refuse(f"`{name}` has dtype {json.dumps(dtype)[:20]}, which safetensors does not define")
        if not isinstance(shape, list) or len(shape) > MAX_DIMENSIONS or not all(_count(d) for d in shape):
            raise refuse(f"`{name}` has no valid shape (a list of at most {MAX_DIMENSIONS} sizes)")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_count(o) for o in offsets) or \
                offsets[0] > offsets[1]:
            raise refuse(f"`{name}` has no valid data_offsets ([begin, end])")
        size = math.prod(shape) * DTYPE_BYTES[dtype]
        if offsets[1] - offsets[0] != size:
            need = size if size < 1 << 64 else "more than the file has"
            raise refuse(f"`{name}` spans {offsets[1] - offsets[0]} bytes; its dtype and shape need {need}")
        tensors[name] = Tensor(dtype, tuple(shape), offsets[0], offsets[1])
    end = 0
    for tensor in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if tensor.begin != end:
            raise refuse("its tensors' data overlap or leave gaps")
        end = tensor.end
    body = len(data) - 8 - length
    if body != end:
        raise refuse(f"its data is {body} bytes; the header describes {end}" +
                     (" (the file is truncated)" if body < end else ""))
    return tensors


def vector_entry(tensors: dict[str, Tensor], key: str | None, file: str) -> tuple[str, Tensor]:
    """The tensor a `load(FILE[, KEY])` names: the only one, or `key`; a floating-point vector."""
    if key is None:
        if len(tensors) != 1:
            raise FileRefused(f"holds {len(tensors)} tensors: name one with `load(\"{file}\", \"KEY\")`",
                              hint=f"keys: {', '.join(tensors) or 'none'}")
        key = next(iter(tensors))
    if key not in tensors:
        near = difflib.get_close_matches(key, list(tensors), n=1)
        raise FileRefused(f"has no tensor `{key}`",
                          hint=f"did you mean `{near[0]}`?" if near else f"keys: {', '.join(tensors) or 'none'}")
    tensor = tensors[key]
    if not tensor.shape:
        raise FileRefused(f"holds `{key}` as a scalar (no dimensions); a vector has shape [hidden] or "
                          "[1, hidden]")
    if tensor.dtype not in FLOAT_DTYPES:
        raise FileRefused(f"holds `{key}` as {tensor.dtype}; a vector must be floating point "
                          f"({', '.join(FLOAT_DTYPES)})")
    return key, tensor


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 53
