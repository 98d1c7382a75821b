"""Hypothesis profiles. By default every property test is derandomised: its examples come from a seed
fixed by the test's name, so a semantic regression cannot pass by luck and a failure reproduces on the
next run. `L2LANG_HYPOTHESIS=explore scripts/test` draws fresh random examples instead, to find new
counterexamples; add what it finds as an `@example`."""

import os

from hypothesis import settings

settings.register_profile("derandomised", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile("explore" if os.environ.get("L2LANG_HYPOTHESIS") == "explore" else "derandomised")
