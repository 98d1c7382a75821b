"""Inputs at the limits of docs/language.md that cost the checker the most work we know of.

Each case is a set of files (the one to check is `root.l2`), each file at most `MAX_FILE_BYTES` and
all of them together at most `MAX_PROGRAM_BYTES`, to be checked for a model of `LAYERS` layers (the
most a plan may have). tests/test_limits.py holds every case to a time bound;
`benchmarks/worst_case_check.py` times `l2lang check` on each, as a user would run it.
"""

from __future__ import annotations

from pathlib import Path

from l2lang.lang.limits import MAX_FILE_BYTES, MAX_LAYERS, MAX_PROGRAM_BYTES

LAYERS = MAX_LAYERS


def _fill(line: str, size: int = MAX_FILE_BYTES - 64) -> str:
    """`line` repeated to just under `size` bytes."""
    return line * (size // len(line.encode("utf-8")))


def _chain(levels: int = 8, fan: int = 10) -> dict[str, str]:
    """f1 uses f0 ten times, f2 uses f1 ten times, ...: 10**levels units if nothing stopped it."""
    files = {"f0.l2": "param a = 1\nif norm[3] > a mark \"x\"\n"}
    for level in range(1, levels):
        files[f"f{level}.l2"] = "".join(f'use "f{level - 1}.l2" as u{i}\n' for i in range(fan))
    files["root.l2"] = files.pop(f"f{levels - 1}.l2")
    return files


def cases() -> dict[str, dict[str, str]]:
    table = "threshold t = table {" + ", ".join(f"{i}: {i}" for i in range(LAYERS)) + "}\n"
    return {
        "for rules acting at every layer": {"root.l2": _fill('for l in 0..L-1: if norm[l] > 1 mark "x" at 0..L-1\n')},
        "for rules over every layer": {"root.l2": _fill("for l in 0..L-1: if norm[l] > 1 and norm[L-1-l] < 9 "
                                                        "suppress clamp 1\n")},
        "plain rules": {"root.l2": _fill('if norm[3] > 1 mark "x"\n')},
        "layer lists": {"root.l2": "observe [" + _fill("1,", MAX_FILE_BYTES - 16) + "1]\n"},
        "table lookups": {"root.l2": table + _fill("if norm[7] > t and norm[9] < t mark \"x\"\n",
                                                   MAX_FILE_BYTES - len(table) - 64)},
        "reductions over every layer": {"root.l2": _fill("for l in 0..L-1: if mean(norm[0..L-1]) > norm[l] mark \"x\"\n")},
        "an error on every line": {"root.l2": _fill("observe nowhere\n")},
        "misspelt names among many declarations": {"root.l2": "".join(f"param abcd{i} = 1\n" for i in range(330)) +
                                                   "".join(f'if norm[3] > abce{i} mark "x"\n' for i in range(330))},
        "a syntax error at the end": {"root.l2": _fill('if norm[3] > 1 mark "x"\n') + "if if\n"},
        "one long line": {"root.l2": "if norm[3] > 1 " + _fill('mark "x"; ', MAX_FILE_BYTES - 64) + 'mark "x"\n'},
        "deep expressions": {"root.l2": "".join(f"param a{i} = " + "(" * 60 + "1" + ")" * 60 + "\n"
                                                for i in range(MAX_FILE_BYTES // 140))},
        "streaks in streaks": {"root.l2": _fill("if " + "streak(" * 20 + "norm[3] > 1" + ") > 1" * 20 + ' mark "x"\n')},
        "uses fanning out": _chain(),
        "used files up to the program's size": {"root.l2": 'use "a.l2"\nuse "b.l2"\n',
                                                "a.l2": "observe [" + _fill("1,", MAX_PROGRAM_BYTES // 2 - 64) + "1]\n",
                                                "b.l2": "observe [" + _fill("2,", MAX_PROGRAM_BYTES // 2 - 64) + "2]\n"},
    }


def write(files: dict[str, str], folder: Path) -> Path:
    """The case's files in `folder`; returns the root file's path."""
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder / "root.l2"
