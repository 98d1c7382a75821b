"""The vLLM backend: strategies inside vLLM's engine, per request, under continuous batching.

`worker.py` runs in vLLM's worker process (the engine's hooks, one executor per installed strategy);
`backend.py` is what applications call (`open_backend("vllm", model)`, or `VLLMBackend.from_llm` for an
engine of one's own, created with `**engine_args()`). docs/runtime.md says how to install vLLM.
"""
