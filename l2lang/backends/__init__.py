"""Inference engines l2lang runs inside; each backend is its own package."""
