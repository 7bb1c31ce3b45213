"""A KV cache allocated once: appending writes in place, cropping moves a length.

transformers' ``DynamicCache`` appends by concatenation: every decode step copies the whole cache
(measured: about 60% of a step at 8K on CPU) and a prefill chunk briefly holds the cache twice
(Llama-2-7B at 128K: 64 GiB of KV, so 128 GiB at the peak). Here each layer's keys and values live
in one buffer of ``capacity`` positions, allocated at the first write with the layer's own head
count and size; ``update`` copies only the new positions and hands attention a view of the filled
part (the same shape a DynamicCache would hand it, so the attention kernels, and the outputs, are
the same), and ``crop`` for the prefix-tree walk only moves the fill mark back.

Sliding-window models: every layer keeps the whole history (memory is not bounded by the window)
and the window is applied by the attention mask, which transformers builds from ``get_mask_sizes``
(the full length, offset 0) for sliding layers as for the others. Models with other layer kinds
(linear attention, shared KV) are refused by :func:`check_config`.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from harness.errors import UserError

SUPPORTED_LAYERS = {"full_attention", "sliding_attention"}


class PreallocatedLayer(CacheLayerMixin):
    is_sliding = False      # the whole history is kept; the mask applies a window
    is_croppable = True
    is_compileable = False

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0
        self._keys = self._values = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.allocate(key_states.shape[0], key_states.shape[1], key_states.shape[3], value_states.shape[3],
                      key_states.dtype, key_states.device)

    def allocate(self, batch: int, heads: int, key_dim: int, value_dim: int, dtype, device) -> None:
        self.dtype, self.device = dtype, device
        self._keys = torch.empty(batch, heads, self.capacity, key_dim, dtype=dtype, device=device)
        self._values = torch.empty(batch, heads, self.capacity, value_dim, dtype=dtype, device=device)
        self.length = 0
        self._expose()
        self.is_initialized = True

    def _expose(self) -> None:
        self.keys = self._keys[:, :, :self.length]
        self.values = self._values[:, :, :self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:  # the caller sized the cache too small: grow once, exactly (one copy)
            self._grow(end)
        self._keys[:, :, self.length:end] = key_states
        self._values[:, :, self.length:end] = value_states
        self.length = end
        self._expose()
        return self.keys, self.values

    def _grow(self, capacity: int) -> None:
        keys, values, filled = self.keys, self.values, self.length
        self.capacity = capacity
        self.allocate(keys.shape[0], keys.shape[1], keys.shape[3], values.shape[3], keys.dtype, keys.device)
        self._keys[:, :, :filled] = keys  # allocate() reset the fill mark: the contents are copied back
        self._values[:, :, :filled] = values
        self.length = filled

    def write_row(self, row: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Fill batch row ``row`` with one sequence's keys/values [1, H, n, D] (all rows the same n)."""
        n = keys.shape[2]
        self._keys[row:row + 1, :, :n] = keys
        self._values[row:row + 1, :, :n] = values
        self.length = n
        self._expose()

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1  # not a limit: a write past the capacity grows the buffer

    def crop(self, tokens_to_remove: int) -> None:
        """Negative: drop that many positions from the end. Nothing is freed or copied."""
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes the number of positions to remove as a negative int, not {tokens_to_remove}")
        self.length = max(0, self.length + tokens_to_remove)
        if self.is_initialized:
            self._expose()

    def reset(self) -> None:
        self.length = 0
        if self.is_initialized:
            self._expose()

    def nbytes(self) -> int:
        return 0 if self._keys is None else self._keys.nbytes + self._values.nbytes


class PreallocatedCache(Cache):
    """One :class:`PreallocatedLayer` per decoder layer, each of ``capacity`` positions."""

    def __init__(self, config, capacity: int):
        check_config(config)
        n_layers = config.get_text_config(decoder=True).num_hidden_layers
        super().__init__(layers=[PreallocatedLayer(capacity) for _ in range(n_layers)])

    @classmethod
    def from_rows(cls, config, rows: list[list[tuple[torch.Tensor, torch.Tensor]]], capacity: int) -> "PreallocatedCache":
        """A batch cache whose row i holds ``rows[i]`` (per layer (keys, values) [1, H, n, D], one n)."""
        cache = cls(config, capacity)
        for index, layer in enumerate(cache.layers):
            keys, values = rows[0][index]
            layer.allocate(len(rows), keys.shape[1], keys.shape[3], values.shape[3], keys.dtype, keys.device)
            for row, kv in enumerate(rows):
                layer.write_row(row, *kv[index])
        return cache

    @property
    def capacity(self) -> int:
        """Positions each layer's buffer holds (or will, once allocated)."""
        return self.layers[0].capacity if self.layers else 0

    def nbytes(self) -> int:
        """Bytes the buffers hold (allocated capacity, not the filled part)."""
        return sum(layer.nbytes() for layer in self.layers)


def check_config(config) -> None:
    """Refuse, in one line, a model whose layers are not all (full or sliding-window) attention."""
    text = config.get_text_config(decoder=True)
    kinds = set(getattr(text, "layer_types", None) or ["full_attention"])
    other = kinds - SUPPORTED_LAYERS
    if other or getattr(text, "num_kv_shared_layers", 0):
        what = ", ".join(sorted(other)) or "shared KV layers"
        raise UserError(f"model: layer kinds {what} are not supported by the hf backend's KV cache "
                        f"(accepted: attention layers, {' and '.join(sorted(SUPPORTED_LAYERS))})")
