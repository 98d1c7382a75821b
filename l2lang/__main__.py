"""`python -m l2lang`: the command line."""

from l2lang.cli.main import main

if __name__ == "__main__":  # (vLLM's spawned processes import this module again: they must not run it)
    raise SystemExit(main())
