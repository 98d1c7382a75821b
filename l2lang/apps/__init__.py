"""Applications built on the engine: tasks and evaluation, statistics, traces, calibration, reports."""
