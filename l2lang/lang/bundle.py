"""Policy bundles: a strategy with every file it needs, sealed when packed and verified when loaded.

A bundle (`.l2b`, a zip archive) holds

    manifest.json              what is inside (`Manifest`), with the sha256 of every other member
    strategy/NAME.l2 ...       the strategy and the files of its folder that it reaches, same layout
    shipped/NAME.l2            shipped strategies it `use`s by name, as they were when it was packed
    derived/NAME.safetensors   its `contrast(...)` vectors, computed once on the model it was packed for

and the archive comment `l2lang-bundle sha256:ID`, where ID, the sha256 of manifest.json, is the
bundle's id. `l2lang pack` (l2lang.apps.pack) writes bundles. Loading reads every member into
memory (nothing is extracted to disk), refuses hostile archives (unsafe or duplicate names, symbolic
links, encryption, oversized members, compression ratios of zip bombs), then checks the seal, that
the members are exactly those the manifest lists, each member's sha256, and, once the strategy is
composed, its fingerprint. The id detects any change to the manifest only against a known id:
whoever can rewrite the archive can reseal it, so publish the id with the bundle.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import stat
import struct
import unicodedata
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from l2lang.errors import CheckError, CompileError, L2Error
from l2lang.lang.files import LIMITS, FileRef, FileRefused, FileRoot, parse_json, read_regular
from l2lang.lang.parser import command_line_number
from l2lang.paths import write_new

FORMAT = "l2lang-bundle/1"
SUFFIXES = (".l2b", ".zip")
MANIFEST = "manifest.json"
AREAS = ("strategy", "shipped", "derived")
SEAL = b"l2lang-bundle sha256:"
MAX_MEMBERS = 256
MAX_MEMBER_BYTES = 64 << 20
MAX_TOTAL_BYTES = 256 << 20
MAX_MANIFEST_BYTES = 1 << 20
MAX_DIRECTORY_RECORDS = 4 * MAX_MEMBERS  # (compressed data may hold the 4-byte signature by chance)
MAX_RATIO = 100           # uncompressed / compressed size, for members over RATIO_FLOOR bytes
RATIO_FLOOR = 64 << 10
PACK_HINT = "make bundles with `l2lang pack STRATEGY --out FILE.l2b`"
_SHA256 = re.compile(r"[0-9a-f]{64}")
# characters no member name has: controls, format (bidi) characters, surrogates, private and unassigned
# code points, line and paragraph separators
UNSAFE_CATEGORIES = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")


class PackedModel(BaseModel):
    """The model a bundle was packed for."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    weights_sha256: str
    layers: int
    hidden_size: int | None = None


class Manifest(BaseModel):
    """manifest.json: what the bundle holds and how it was made."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["l2lang-bundle/1"] = FORMAT
    l2lang: str                     # the version that packed it
    strategy: str                   # the member of the root strategy
    fingerprint: str                # the composed program's fingerprint, params included
    overrides: dict[str, str] = {}  # `--set` values, frozen
    model: PackedModel | None = None
    derived: dict[str, str] = {}    # qualified vector name -> member holding it (key "vector")
    created: dict = {}              # creation settings and library versions
    members: dict[str, str]         # member -> sha256, every member but manifest.json

    def to_bytes(self) -> bytes:
        return (json.dumps(self.model_dump(), indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def is_bundle_path(target: str) -> bool:
    return target.lower().endswith(SUFFIXES)


def bundle_id(manifest: bytes) -> str:
    return hashlib.sha256(manifest).hexdigest()


@dataclass
class Bundle:
    """A verified bundle, its members in memory."""

    path: str
    id: str
    manifest: Manifest
    members: dict[str, bytes] = field(repr=False)
    allow_other_model: bool = False
    ran_on_other_model: bool = False  # set when a run used the override

    @property
    def entry(self) -> FileRef:
        area, name = self.manifest.strategy.split("/", 1)
        return FileRef(BundleRoot(self, area), name)

    def derived_file(self, vector: str, weights_sha256: str | None) -> FileRef | None:
        """Where the bundle stores the `contrast(...)` vector `vector`, unless the weights are known to be
        others than those it was computed on (allowed to run there, it is derived again, as the file would be)."""
        member = self.manifest.derived.get(vector)
        packed = self.manifest.model
        known = weights_sha256 is not None and _SHA256.fullmatch(weights_sha256)
        if member is None or packed and known and weights_sha256 != packed.weights_sha256:
            return None
        return FileRef(BundleRoot(self, "derived"), member.split("/", 1)[1])

    def verify_fingerprint(self, fingerprint: str) -> None:
        if fingerprint != self.manifest.fingerprint:
            raise self.error(f"the strategy's fingerprint is {fingerprint}; the manifest says "
                             f"{self.manifest.fingerprint}",
                             hint=f"it was packed with l2lang {self.manifest.l2lang}; pack it again with this "
                             "version from its strategy file")

    def check_model(self, weights_sha256: str | None) -> None:
        """Refuse weights other than those packed for, unless the loader allowed it (then remember that)."""
        packed = self.manifest.model
        if packed is None or weights_sha256 == packed.weights_sha256:
            return
        if self.allow_other_model:
            self.ran_on_other_model = True
            return
        these = f"are {weights_sha256[:12]}…" if weights_sha256 and _SHA256.fullmatch(weights_sha256) else \
            "are not known (load the model with `l2lang.load_model`, the command line or a local folder)"
        raise CompileError.one(f"the bundle was packed for {packed.id} (weights sha256 {packed.weights_sha256[:12]}…); "
                               f"this model's weights {these}", path=self.path,
                               hint="pass --allow-other-model (Python: allow_other_model=True) to run it anyway; "
                               "the run's manifest records that")

    def record(self) -> dict:
        """What a run's manifest says about the bundle."""
        packed = self.manifest.model
        return {"id": self.id, "file": self.path, "packed_for": packed.model_dump() if packed else None,
                "allow_other_model": self.allow_other_model, "ran_on_other_model": self.ran_on_other_model}

    def error(self, message: str, hint: str | None = None) -> L2Error:
        return CheckError.one(message, hint=hint, path=self.path)


class BundleRoot(FileRoot):
    """The members of one area of a bundle (`strategy/`, `shipped/`, `derived/`)."""

    def __init__(self, bundle: Bundle, area: str):
        self.bundle, self.area = bundle, area

    def read(self, name: str, kind: str) -> bytes:
        data = self.bundle.members.get(f"{self.area}/{name}")
        if data is None:
            raise FileRefused("is not in the bundle", hint="pack the bundle again from the strategy's folder")
        if len(data) > LIMITS[kind]:
            raise FileRefused(f"is too large ({len(data)} bytes; the limit is {LIMITS[kind]})")
        return data

    def display(self, name: str) -> str:
        return f"{self.bundle.path}!{self.area}/{name}"

    def shipped(self, target: str) -> FileRef | None:
        name = f"{target}.l2"
        return FileRef(BundleRoot(self.bundle, "shipped"), name) if f"shipped/{name}" in self.bundle.members \
            else None


def member_name_problem(name: str) -> str | None:
    """Why `name` is not a safe member name (None if it is): relative, `/`-separated, in a known area."""
    parts = name.split("/")
    if not name or len(name) > 255 or any(c in "\\:" or unicodedata.category(c) in UNSAFE_CATEGORIES for c in name):
        return "it has characters a member name may not have (controls, format or direction marks, `\\`, `:`)"
    if name.startswith("/"):
        return "it is absolute"
    if any(part in ("", ".", "..") for part in parts):
        return "it has an empty, `.` or `..` part"
    if name != MANIFEST and (len(parts) < 2 or parts[0] not in AREAS):
        return f"it is outside the bundle's areas ({', '.join(a + '/' for a in AREAS)})"
    return None


def open_bundle(path: str, *, allow_other_model: bool = False) -> Bundle:
    """Read and verify the bundle at `path`; every problem is an `L2Error` naming the member."""
    def refuse(message: str, hint: str | None = None) -> L2Error:
        return CheckError.one(message, hint=hint, path=path)

    try:
        data = read_regular(path, LIMITS["bundle"])
    except FileRefused as exc:
        raise refuse(f"the bundle {exc.reason}", exc.hint) from None
    records = data.count(b"PK\x01\x02")  # (each central directory record starts so; `zipfile` builds them all)
    if records > MAX_DIRECTORY_RECORDS:
        raise refuse(f"the archive has {records} directory records; a bundle has at most {MAX_MEMBERS} members")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, struct.error, NotImplementedError):
        raise refuse("not an l2lang bundle: not a zip archive", PACK_HINT) from None
    names = [info.orig_filename for info in infos]
    if MANIFEST not in names:
        raise refuse(f"not an l2lang bundle: the archive has no {MANIFEST}", PACK_HINT)
    _check_members(infos, refuse)
    comment = archive.comment
    if not comment.startswith(SEAL):
        raise refuse("the archive is not sealed as an l2lang bundle (its comment is not `l2lang-bundle sha256:…`)",
                     PACK_HINT)
    manifest_bytes = _read_member(archive, archive.getinfo(MANIFEST), refuse)
    identity = bundle_id(manifest_bytes)
    if comment[len(SEAL):].decode("ascii", "replace") != identity:
        raise refuse(f"{MANIFEST} was changed after packing: its sha256 is {identity[:16]}…, the bundle was sealed "
                     f"as {comment[len(SEAL):len(SEAL) + 16].decode('ascii', 'replace')}…",
                     "use the bundle as it was published, or pack it again from its strategy")
    manifest = _parse_manifest(manifest_bytes, refuse)
    members = {info.filename: _read_member(archive, info, refuse) for info in infos if info.filename != MANIFEST}
    unlisted, missing = sorted(set(members) - set(manifest.members)), sorted(set(manifest.members) - set(members))
    if unlisted:
        raise refuse(f"member {unlisted[0]} is not listed in {MANIFEST}: the bundle was changed after packing")
    if missing:
        raise refuse(f"member {missing[0]}, listed in {MANIFEST}, is missing from the archive")
    for name in sorted(members):
        actual = hashlib.sha256(members[name]).hexdigest()
        if actual != manifest.members[name]:
            raise refuse(f"member {name} was changed after packing: its sha256 is {actual[:16]}…, the manifest "
                         f"says {manifest.members[name][:16]}…", "use the bundle as it was published")
    return Bundle(path, identity, manifest, members, allow_other_model)


def _check_members(infos: list[zipfile.ZipInfo], refuse) -> None:
    """Refuse what a bundle never holds, from the central directory alone (nothing is decompressed yet)."""
    if len(infos) > MAX_MEMBERS:
        raise refuse(f"the archive has {len(infos)} members; a bundle has at most {MAX_MEMBERS}")
    duplicates = [name for name, count in Counter(i.orig_filename for i in infos).items() if count > 1]
    if duplicates:
        raise refuse(f"member {duplicates[0]!r} appears more than once: refusing an ambiguous archive")
    total = 0
    for info in infos:
        name = info.orig_filename
        mode = info.external_attr >> 16
        if info.is_dir() or stat.S_IFMT(mode) not in (0, stat.S_IFREG):
            kind = "a symbolic link" if stat.S_ISLNK(mode) else "a folder" if info.is_dir() else "a special file"
            raise refuse(f"member {name!r} is {kind}: a bundle holds regular files only")
        problem = member_name_problem(name) if name == info.filename else "it has a NUL byte"
        if problem:
            raise refuse(f"member {name!r} has an unsafe name: {problem}")
        if info.flag_bits & 0x1:
            raise refuse(f"member {name} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise refuse(f"member {name} uses a compression a bundle does not (only stored or deflated)")
        limit = MAX_MANIFEST_BYTES if name == MANIFEST else MAX_MEMBER_BYTES
        if info.file_size > limit:
            raise refuse(f"member {name} is {info.file_size} bytes; the limit is {limit}")
        if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise refuse(f"member {name} expands {info.file_size // max(info.compress_size, 1)} times when "
                         f"decompressed (the limit is {MAX_RATIO}): refusing a possible zip bomb")
        total += info.file_size
        if total > MAX_TOTAL_BYTES:
            raise refuse(f"the members add up to more than {MAX_TOTAL_BYTES} bytes")


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, refuse) -> bytes:
    try:
        with archive.open(info) as handle:
            data = handle.read(info.file_size + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError, RuntimeError):
        raise refuse(f"member {info.filename} is corrupt") from None
    if len(data) != info.file_size:
        raise refuse(f"member {info.filename} is corrupt: its size is not the one the archive declares")
    return data


def _parse_manifest(data: bytes, refuse) -> Manifest:
    try:
        raw = parse_json(data)
    except FileRefused as exc:
        raise refuse(f"{MANIFEST} {exc.reason}") from None
    if not isinstance(raw, dict):
        raise refuse(f"{MANIFEST} is not a JSON object")
    if isinstance(raw.get("members"), dict) and len(raw["members"]) > MAX_MEMBERS:
        raise refuse(f"{MANIFEST} lists {len(raw['members'])} members; a bundle has at most {MAX_MEMBERS}")
    if raw.get("format") != FORMAT:
        raise refuse(f"{MANIFEST} has format {json.dumps(raw.get('format'))[:40]}; this l2lang reads {FORMAT}",
                     "a newer l2lang may read it" if str(raw.get("format", "")).startswith("l2lang-bundle/") else None)
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise refuse(f"{MANIFEST} is not a valid bundle manifest: {where}: {first['msg']}") from None
    for name, digest in manifest.members.items():
        if member_name_problem(name) or name == MANIFEST or not _SHA256.fullmatch(digest):
            raise refuse(f"{MANIFEST} lists {name!r} with sha256 {digest[:16]!r}: not a valid member entry")
    if manifest.strategy not in manifest.members or not manifest.strategy.endswith(".l2") or \
            manifest.strategy.split("/")[0] == "derived":
        raise refuse(f"{MANIFEST} names {manifest.strategy!r} as the strategy: not a strategy member")
    for vector, member in manifest.derived.items():
        if member not in manifest.members or not member.startswith("derived/"):
            raise refuse(f"{MANIFEST} stores vector `{vector}` in {member!r}: not a derived member")
    for name, value in manifest.overrides.items():
        try:
            command_line_number(value)
        except ValueError as exc:
            raise refuse(f"{MANIFEST} freezes {name}={value[:40]}: {exc}") from None
    if manifest.model is not None and not _SHA256.fullmatch(manifest.model.weights_sha256):
        raise refuse(f"{MANIFEST} gives no valid weights sha256 for {manifest.model.id}")
    return manifest


def write_bundle(out: str, manifest: Manifest, files: dict[str, bytes]) -> tuple[str, Manifest]:
    """Write `files` and `manifest` (its `members` filled in here) as a sealed bundle; returns its id and
    the manifest written.

    The archive is reproducible: members in name order, fixed timestamps and permissions.
    """
    for name in files:
        problem = member_name_problem(name)
        if problem:
            raise CheckError.one(f"cannot pack {name!r}: {problem}", path=out)
    manifest = manifest.model_copy(update={"members": {name: hashlib.sha256(data).hexdigest()
                                                       for name, data in sorted(files.items())}})
    text = manifest.to_bytes()
    identity = bundle_id(text)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in [(MANIFEST, text), *sorted(files.items())]:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # unix: the mode below is a regular file's
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            archive.writestr(info, data)
        archive.comment = SEAL + identity.encode("ascii")
    try:
        write_new(out, buffer.getvalue())
    except OSError as exc:
        raise CheckError.one(f"cannot write the bundle: {(exc.strerror or str(exc)).lower()}", path=out) from None
    return identity, manifest
