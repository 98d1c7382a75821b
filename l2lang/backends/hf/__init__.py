"""The Hugging Face `transformers` backend: wrapped decoder-layer forwards inside `model.generate`."""
