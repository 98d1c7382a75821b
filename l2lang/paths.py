"""What a path given by a user names, asked so that the system's refusals (a name too long for the
file system, a folder without permission, an embedded NUL) answer "nothing there" instead of
escaping as tracebacks (`Path.is_file()` lets ENAMETOOLONG and EACCES through)."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path


def _mode(path: str | Path) -> int | None:
    try:
        return Path(path).stat().st_mode
    except (OSError, ValueError):
        return None


def is_file(path: str | Path) -> bool:
    """A regular file (after symlinks) that can be looked at."""
    mode = _mode(path)
    return mode is not None and stat.S_ISREG(mode)


def is_folder(path: str | Path) -> bool:
    mode = _mode(path)
    return mode is not None and stat.S_ISDIR(mode)


def exists(path: str | Path) -> bool:
    return _mode(path) is not None


def write_new(path: str | Path, data: bytes | str) -> None:
    """Write `data` (text as UTF-8) to `path` through a new file of our own beside it, then renamed over it:
    never through a link planted at the name (or at a fixed temporary name), never left half-written.
    Raises OSError; the temporary file is removed."""
    path = Path(path)
    handle, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data.encode("utf-8") if isinstance(data, str) else data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(partial, 0o644)
        os.replace(partial, path)
    except BaseException:
        if os.path.lexists(partial):
            os.remove(partial)
        raise
