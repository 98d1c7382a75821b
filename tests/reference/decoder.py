"""A Llama-family decoder run one layer at a time, with the keys and values of attention given explicitly.

The reference interpreter keeps no KV cache of Hugging Face's: it keeps, per layer, the *input* state
of every position processed so far (the state the layer's keys and values are computed from) and
recomputes keys and values from those inputs whenever a layer runs. Attention is written out here
(RMSNorm, projections, rotary embedding, grouped-query attention, causal mask, MLP), using only the
model's weights and its rotary module, so which state feeds which key is decided by the caller alone.
Supports Llama, Qwen2 and Mistral (no sliding window).
"""

from __future__ import annotations

import torch
from torch import nn

FAMILIES = ("llama", "qwen2", "mistral")


class Decoder:
    """Embedding, decoder layers and LM head of a Hugging Face causal LM of a supported family."""

    def __init__(self, model: nn.Module):
        config = model.config
        if config.model_type not in FAMILIES:
            raise NotImplementedError(f"the reference decoder runs {', '.join(FAMILIES)}, not {config.model_type}")
        windowed = config.model_type == "mistral" or getattr(config, "use_sliding_window", False)
        if windowed and getattr(config, "sliding_window", None):
            raise NotImplementedError("sliding-window attention is not modelled")
        core = model.model
        self.embedding, self.layers, self.final_norm, self.head = core.embed_tokens, core.layers, core.norm, \
            model.lm_head
        self.rotary = core.rotary_emb
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.hidden_size = config.hidden_size

    @property
    def depth(self) -> int:
        return len(self.layers)

    def embed(self, tokens: list[int]) -> torch.Tensor:
        """[T, hidden]: the embedding output of `tokens`."""
        return self.embedding(torch.tensor(tokens))

    def logits(self, state: torch.Tensor) -> torch.Tensor:
        """[vocab]: the next-token logits from the last layer's output at one position."""
        return self.head(self.final_norm(state[None]))[0]

    def layer(self, index: int, queries: torch.Tensor, positions: list[int], sources: torch.Tensor) -> torch.Tensor:
        """Decoder layer `index` on `queries` [Tq, hidden] at `positions`; the keys and values of position p
        come from `sources[p]` ([Tk, hidden], positions 0..Tk-1), and position q attends to 0..q."""
        layer = self.layers[index]
        attention = layer.self_attn
        q_len, k_len = queries.shape[0], sources.shape[0]
        normed_q, normed_k = layer.input_layernorm(queries), layer.input_layernorm(sources)
        q = attention.q_proj(normed_q).view(q_len, self.heads, self.head_dim).transpose(0, 1)
        k = attention.k_proj(normed_k).view(k_len, self.kv_heads, self.head_dim).transpose(0, 1)
        v = attention.v_proj(normed_k).view(k_len, self.kv_heads, self.head_dim).transpose(0, 1)
        q = self._rotate(q, torch.tensor(positions))
        k = self._rotate(k, torch.arange(k_len))
        group = self.heads // self.kv_heads
        k, v = k.repeat_interleave(group, dim=0), v.repeat_interleave(group, dim=0)
        scores = q @ k.transpose(1, 2) * self.head_dim ** -0.5                    # [heads, Tq, Tk]
        future = torch.arange(k_len)[None, :] > torch.tensor(positions)[:, None]  # [Tq, Tk]
        scores = scores.masked_fill(future, float("-inf"))
        weights = torch.softmax(scores.float(), dim=-1).to(v.dtype)
        mixed = (weights @ v).transpose(0, 1).reshape(q_len, self.heads * self.head_dim)
        h = queries + attention.o_proj(mixed)
        return h + layer.mlp(layer.post_attention_layernorm(h))

    def _rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotary position embedding of x [heads, T, head_dim] at `positions`."""
        cos, sin = self.rotary(x, positions[None])
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin
