"""The bounds on the work any input can cause, in one place (stated in docs/language.md, *Limits*).

Every bound is checked before the work it bounds is done, so that `l2lang check` of any file finishes
quickly (docs/language.md states the measured figure) and a plan never allocates more than stated:

- source: a file's size and nesting depth, and a program's (a file and every file it `use`s,
  counted once per `use`) number of units and total size;
- compilation: the plan items a program expands to (`for` rules, layer ranges, expressions) and the
  layer count of a model;
- run time: the memory banks may hold per request;
- reporting: the diagnostics printed for one failure.
"""

from __future__ import annotations

MAX_FILE_BYTES = 16 * 1024        # one strategy file
MAX_DEPTH = 64                    # nesting of one expression
MAX_USE_DEPTH = 8                 # `use` inside `use`
MAX_UNITS = 64                    # units of a program: the root file and one per `use`, transitively
MAX_PROGRAM_BYTES = 16 * 1024     # source text of every unit of a program together (so: of the parses too)
MAX_PLAN_ITEMS = 10_000           # rules, actions, layers and expression nodes a program compiles to
MAX_LAYERS = 1024                 # decoder layers of a model a plan is compiled for
MAX_HIDDEN_SIZE = 1 << 20         # hidden size of a model a plan is compiled for
MAX_BANK_KEEP = 4096              # states one bank keeps per request and layer
MAX_BANK_BYTES = 64 * 1024 * 1024  # every bank's states together, per request, at 4 bytes per value
MAX_SHOWN_ERRORS = 20             # diagnostics printed for one failure; the rest are counted
