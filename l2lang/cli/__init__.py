"""The `l2lang` command line: `main.py` dispatches, one module per command, `options.py` shared."""
