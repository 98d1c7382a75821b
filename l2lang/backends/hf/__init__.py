"""The Hugging Face `transformers` backend: hooks on decoder layers inside `model.generate`."""
