"""Tiny random models of every supported family, built in code (no downloads), 8 decoder layers each."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import transformers as tf

IDS = dict(pad_token_id=0, eos_token_id=1, bos_token_id=2)
VOCAB = 260  # 3 special tokens + 256 bytes, rounded up
CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant: {% endif %}")


def tiny_tokenizer() -> tf.PreTrainedTokenizerFast:
    """A real byte-level BPE tokenizer (no merges: one token per byte) with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<pad>": 0, "</s>": 1, "<s>": 2}
    vocab.update({char: 3 + i for i, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))})
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = tf.PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>",
                                           bos_token="<s>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _common(layers: int) -> dict:
    return dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, **IDS)


CONFIGS = {
    "llama": lambda n: tf.LlamaConfig(**_common(n)),
    "qwen2": lambda n: tf.Qwen2Config(**_common(n)),
    "qwen3": lambda n: tf.Qwen3Config(**_common(n), head_dim=16),
    "mistral": lambda n: tf.MistralConfig(**_common(n), sliding_window=None),
    "gemma": lambda n: tf.GemmaConfig(**_common(n), head_dim=16),
    "gemma3": lambda n: tf.Gemma3TextConfig(**_common(n), head_dim=16, sliding_window=256),
    "phi3": lambda n: tf.Phi3Config(**_common(n)),
    "gpt2": lambda n: tf.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=n, n_head=4, n_positions=256, **IDS),
    "gpt_neox": lambda n: tf.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                           num_hidden_layers=n, num_attention_heads=4,
                                           max_position_embeddings=256, **IDS),
}
FAMILIES = sorted(CONFIGS)


def tiny_model(family: str = "llama", layers: int = 8, seed: int = 0) -> torch.nn.Module:
    """A random model of `family` with `layers` decoder layers (hidden size 64), in eval mode."""
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(CONFIGS[family](layers))
    model.eval()
    model.generation_config.pad_token_id = 0
    return model


@contextlib.contextmanager
def layer_outputs_edited(layers, edits: dict[int, Callable[[torch.Tensor], torch.Tensor]]):
    """Inside the block, decoder layer i's `forward` returns its output hidden state passed through
    `edits[i]`: what l2lang, which wraps `forward`, then sees as the layer's output."""

    def edited(forward, edit):
        def layer_forward(*args, **kwargs):
            output = forward(*args, **kwargs)
            if isinstance(output, tuple):
                return (edit(output[0]), *output[1:])
            return edit(output)
        return layer_forward

    for index, edit in edits.items():
        layers[index].forward = edited(layers[index].forward, edit)
    try:
        yield
    finally:
        for index in edits:
            del layers[index].forward
