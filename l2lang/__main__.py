"""`python -m l2lang`: the command line."""

from l2lang.cli.main import main

raise SystemExit(main())
