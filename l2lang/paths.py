"""What a path given by a user names, asked so that the system's refusals (a name too long for the
file system, a folder without permission, an embedded NUL) answer "nothing there" instead of
escaping as tracebacks (`Path.is_file()` lets ENAMETOOLONG and EACCES through)."""

from __future__ import annotations

import stat
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
