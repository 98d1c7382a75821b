"""Tiny random models of every supported family, built in code (no downloads), 8 decoder layers each."""

from __future__ import annotations

import torch
import transformers as tf

LAYERS = 8
COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0,
              eos_token_id=1, bos_token_id=2)

CONFIGS = {
    "llama": lambda: tf.LlamaConfig(**COMMON),
    "qwen2": lambda: tf.Qwen2Config(**COMMON),
    "qwen3": lambda: tf.Qwen3Config(**COMMON, head_dim=16),
    "mistral": lambda: tf.MistralConfig(**COMMON, sliding_window=None),
    "gemma": lambda: tf.GemmaConfig(**COMMON, head_dim=16),
    "gemma3": lambda: tf.Gemma3TextConfig(**COMMON, head_dim=16, sliding_window=256),
    "phi3": lambda: tf.Phi3Config(**COMMON),
    "gpt2": lambda: tf.GPT2Config(vocab_size=128, n_embd=64, n_layer=LAYERS, n_head=4, n_positions=256,
                                  pad_token_id=0, eos_token_id=1, bos_token_id=2),
    "gpt_neox": lambda: tf.GPTNeoXConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=LAYERS, num_attention_heads=4,
                                         max_position_embeddings=256, pad_token_id=0, eos_token_id=1,
                                         bos_token_id=2),
}


def tiny_model(family: str = "llama", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(CONFIGS[family]())
    model.eval()
    model.generation_config.pad_token_id = 0
    return model
