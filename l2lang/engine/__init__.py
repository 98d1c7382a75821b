"""The engine: runs a plan over the token rows of each forward pass, whatever the inference engine."""
