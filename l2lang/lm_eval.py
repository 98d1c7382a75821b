"""`python -m l2lang.lm_eval ARGS`: lm-evaluation-harness's own command line (every argument as `lm_eval`
takes it) with l2lang registered as the model `l2lang`; needs the extra: `pip install 'l2lang[lm-eval]'`.
docs/evaluation.md shows the commands; l2lang/integrations/lm_eval.py is the model."""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from l2lang.integrations.lm_eval import main as run
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != "lm_eval":
            raise
        print("error: lm-evaluation-harness is not installed\n  hint: pip install 'l2lang[lm-eval]'", file=sys.stderr)
        return 1
    return run()


if __name__ == "__main__":
    raise SystemExit(main())
