"""Running plans inside Hugging Face generation: adapters, cache views, per-request state, executor."""
