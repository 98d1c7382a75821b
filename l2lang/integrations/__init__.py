"""l2lang inside third-party tools (lm-evaluation-harness); each module needs its tool's optional extra."""
