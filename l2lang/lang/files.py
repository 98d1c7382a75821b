"""Reading the files a strategy reaches, confined to the strategy's folder or bundle.

Every file a strategy references (`use` targets, `calibrated(...)` profiles, `load(...)` vectors)
is read here, from a `FileRoot`: a folder on disk (`FolderRoot`) or the members of a bundle
(`l2lang.lang.bundle.BundleRoot`). A reference is a path relative to the folder of the file that
makes it; it is a `FileRef`, a name inside its root (`profiles/p.json`).

Confinement, for folders: the root is the real folder of the strategy being loaded (shipped
strategies: the shipped folder). A name that leaves it as text (`..`, absolute paths) is refused
before the disk is touched; a name whose real path leaves it (a symbolic link to a file or a folder
elsewhere) is refused before the file is opened; only regular files are opened (a FIFO or a device
is refused from its `stat`, and opening never blocks); sizes are capped before reading.
"""

from __future__ import annotations

import json
import os
import posixpath
import stat
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from l2lang.errors import L2Error
from l2lang.lang.parser import MAX_FILE_BYTES
from l2lang.resources import shipped_strategies, strategies_dir

# The most bytes read for each kind of file.
LIMITS = {"strategy": MAX_FILE_BYTES, "profile": 4 << 20, "vectors": 64 << 20, "bundle": 256 << 20,
          "data": 256 << 20}  # (data: prompts and task files)


class FileRefused(Exception):
    """A referenced file that cannot be used: why (a predicate: "is a FIFO, not a regular file"), and how to
    fix it. Callers say which file and where it was named."""

    def __init__(self, reason: str, hint: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.hint = hint


class FileRoot(ABC):
    """Where a strategy's files come from. `area` is the part of a bundle its files are packed into:
    `strategy` (the strategy's own folder) or `shipped` (shipped strategies used by name)."""

    area: str

    @abstractmethod
    def read(self, name: str, kind: str) -> bytes:
        """The bytes of the file `name` (a normalised relative POSIX path); `kind` picks the size cap."""

    @abstractmethod
    def display(self, name: str) -> str:
        """How the file is shown in messages and plans (unique among a program's files)."""

    @abstractmethod
    def shipped(self, target: str) -> FileRef | None:
        """The strategy `use TARGET` names by shipped name, as this root provides it."""

    def identity(self, name: str) -> str:
        """What makes two names the same file (cycles of `use`)."""
        return self.display(name)


@dataclass(frozen=True)
class FileRef:
    """One file inside a root."""

    root: FileRoot
    name: str

    @property
    def display(self) -> str:
        return self.root.display(self.name)

    @property
    def identity(self) -> str:
        return self.root.identity(self.name)

    @property
    def member(self) -> str:
        """Its name inside a bundle."""
        return f"{self.root.area}/{self.name}"

    def read(self, kind: str) -> bytes:
        return self.root.read(self.name, kind)

    def sibling(self, relative: str) -> FileRef:
        """The file `relative` names from this file's folder; refused if the text leaves the root."""
        return FileRef(self.root, join(posixpath.dirname(self.name), relative))

    def use_target(self, target: str) -> FileRef | None:
        """`use TARGET` from this file: a `.l2` path next to it, else a shipped name (None if unknown)."""
        return self.sibling(target) if target.endswith(".l2") else self.root.shipped(target)


def join(folder: str, relative: str) -> str:
    """`folder/relative` normalised, refusing names that are not plain relative paths inside the root."""
    if not relative or "\\" in relative or any(ord(c) < 32 for c in relative):
        raise FileRefused("is not a plain relative path", hint="write a path relative to the strategy file, with `/`")
    if relative.startswith("/") or (len(relative) > 1 and relative[0].isalpha() and relative[1] == ":"):
        raise FileRefused("leaves the strategy's folder: paths must stay inside it",
                          hint="write a path relative to the strategy file, not an absolute one")
    name = posixpath.normpath(posixpath.join(folder, relative))
    if name == ".." or name.startswith("../"):
        raise FileRefused("leaves the strategy's folder: paths must stay inside it",
                          hint="write a path relative to the strategy file, without `..` leaving its folder")
    if name == ".":
        raise FileRefused("names a folder, not a file")
    return name


class FolderRoot(FileRoot):
    """Files under one real folder on disk; `shown` is how the folder is written in messages."""

    def __init__(self, folder: str | Path, shown: str | None = None, area: str = "strategy"):
        self.real = os.path.realpath(folder)
        self.shown = str(folder) if shown is None else shown
        self.area = area

    def __repr__(self) -> str:
        return f"FolderRoot({self.real!r})"

    def path(self, name: str) -> str:
        """The real path of `name`, refused if it leaves the root through a symbolic link."""
        real = os.path.realpath(os.path.join(self.real, name))
        if os.path.commonpath([real, self.real]) != self.real:
            raise FileRefused("resolves outside the strategy's folder (through a symbolic link)",
                              hint="copy the file into the strategy's folder")
        return real

    def read(self, name: str, kind: str) -> bytes:
        return read_regular(self.path(name), LIMITS[kind])

    def display(self, name: str) -> str:
        return os.path.join(self.shown, name) if self.shown else name

    def identity(self, name: str) -> str:
        return os.path.realpath(os.path.join(self.real, name))

    def shipped(self, target: str) -> FileRef | None:
        return shipped_file(target)


def shipped_file(target: str) -> FileRef | None:
    """The shipped strategy `target` (`alrr`), in the shipped folder."""
    if target not in shipped_strategies():
        return None
    folder = strategies_dir()
    return FileRef(FolderRoot(folder, str(folder), area="shipped"), f"{target}.l2")


def file_argument(target: str | Path) -> FileRef:
    """A file named on the command line (or to `l2lang.load`): its root is its own real folder, shown as
    the user wrote it when that is the same folder."""
    real = os.path.realpath(target)
    folder, typed = os.path.dirname(real), os.path.dirname(str(target))
    shown = typed if os.path.realpath(typed or ".") == folder else folder
    return FileRef(FolderRoot(folder, shown), os.path.basename(real))


def read_regular(path: str, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; anything else is refused without blocking."""
    try:
        before = os.stat(path)
    except OSError as exc:
        raise FileRefused(_no_such(exc)) from None
    if not stat.S_ISREG(before.st_mode):
        raise FileRefused(f"is {_what(before.st_mode)}, not a regular file")
    if before.st_size > limit:
        raise FileRefused(f"is too large ({before.st_size} bytes; the limit is {limit})")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | \
        getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise FileRefused(_no_such(exc)) from None
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino):
            raise FileRefused("changed while it was being opened")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise FileRefused(_no_such(exc)) from None
    finally:
        os.close(fd)
    if size > limit:
        raise FileRefused(f"is too large (more than {limit} bytes)")
    return b"".join(chunks)


def read_text_file(path: str, what: str) -> str:
    """A data file the user names (prompts, tasks) as UTF-8 text: a regular file of at most `LIMITS["data"]`
    bytes (a FIFO or a device is refused, never waited on), else an `L2Error` naming it."""
    try:
        return read_regular(path, LIMITS["data"]).decode("utf-8")
    except FileRefused as exc:
        raise L2Error.one(f"{what} {exc.reason}", path=path) from None
    except UnicodeError:
        raise L2Error.one(f"{what} is not UTF-8 text", path=path) from None


def _no_such(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "does not exist"
    return f"cannot be read ({(exc.strerror or str(exc)).lower()})"


def _what(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def parse_json(data: bytes | str) -> object:
    """Untrusted JSON (profiles, safetensors headers, manifests, model configs) → Python values, or
    `FileRefused` saying why not: not UTF-8, not JSON, nested too deeply, or a number JSON does not have
    (`NaN`, `Infinity`). An integer too long to be exact as a float is read as a float (so one of 400
    digits is `inf`, which callers refuse as any non-finite number), never converted digit by digit.
    A leading byte-order mark is allowed."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text.removeprefix("\ufeff"), parse_constant=_no_constant, parse_int=_json_int)
    except UnicodeError:
        raise FileRefused("is not UTF-8 text") from None
    except RecursionError:
        raise FileRefused("is nested too deeply to be read") from None
    except ValueError as exc:
        raise FileRefused(f"is not JSON ({exc})" if isinstance(exc, _NotJSON) else "is not JSON") from None


class _NotJSON(ValueError):
    pass


def _no_constant(name: str) -> float:
    raise _NotJSON(f"`{name}` is not a JSON number")


def _json_int(text: str) -> int | float:
    return int(text) if len(text.lstrip("-")) <= 18 else float(text)
