"""Named Llama shapes with random weights: speed and memory checks that need no weights file.

``harness run --model random:llama2-7b`` and ``harness train --from-scratch 1b`` build a
LlamaForCausalLM of a published shape, initialised from a fixed seed on the target device. Such a
model measures time, memory, reuse, exactness and MFU at the real shape; it retrieves nothing, so
its scores mean nothing. ``tiny`` is the CPU from-scratch base of `harness ablate --preset tiny`.

The vocabulary is the tokenizer's when it is larger than the shape's (token ids must be valid), and
the shape's otherwise (the embedding and LM-head cost as published). A random shape evaluated with
``harness run`` gets at least 128K positions: random weights have no trained length.
"""

from __future__ import annotations

from harness.errors import UserError

RANDOM_PREFIX = "random:"
DEFAULT_TOKENIZER = "smollm2-135m"
RANDOM_POSITIONS = 131072

# name -> LlamaConfig fields (vocab: the shape's own vocabulary; None = the tokenizer's).
SHAPES: dict[str, dict] = {
    "tiny": dict(vocab=None, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=2048, rope_theta=10000.0, tie_word_embeddings=True),
    "smollm2-135m": dict(vocab=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         rope_theta=100000.0, tie_word_embeddings=True),
    "tinyllama-1.1b": dict(vocab=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                           num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                           rope_theta=10000.0, tie_word_embeddings=False),
    "llama2-7b": dict(vocab=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                      rope_theta=10000.0, tie_word_embeddings=False),
    "llama2-13b": dict(vocab=32000, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                       num_attention_heads=40, num_key_value_heads=40, max_position_embeddings=4096,
                       rope_theta=10000.0, tie_word_embeddings=False),
    "llama3-8b": dict(vocab=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                      rope_theta=500000.0, tie_word_embeddings=False),
}
ALIASES = {"1b": "tinyllama-1.1b", "7b": "llama2-7b", "13b": "llama2-13b", "8b": "llama3-8b"}
NAMES = (*SHAPES, *ALIASES)


def canonical(name: str, what: str) -> str:
    name = ALIASES.get(name, name)
    if name not in SHAPES:
        raise UserError(f"{what}: no shape {name!r}; accepted: {', '.join(SHAPES)} "
                        f"(aliases {', '.join(f'{a}={b}' for a, b in ALIASES.items())})")
    return name


def is_random(spec: str) -> bool:
    return isinstance(spec, str) and spec.startswith(RANDOM_PREFIX)


def random_shape(spec: str) -> str:
    """``random:llama2-7b`` -> ``llama2-7b`` (checked)."""
    return canonical(spec[len(RANDOM_PREFIX):], "--model random:SHAPE")


def config(name: str, tokenizer, seq_len: int = 0):
    """The LlamaConfig of shape ``name`` for ``tokenizer``, with at least ``seq_len`` positions."""
    from transformers import LlamaConfig

    fields = dict(SHAPES[canonical(name, "shape")])
    vocab = fields.pop("vocab")
    fields["max_position_embeddings"] = max(fields["max_position_embeddings"], seq_len)
    return LlamaConfig(vocab_size=max(vocab or 0, len(tokenizer)), bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id, **fields)
