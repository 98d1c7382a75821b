"""The `l2lang` command line (`main`); each command's code lives in this package."""

from l2lang.cli.main import main

__all__ = ["main"]
