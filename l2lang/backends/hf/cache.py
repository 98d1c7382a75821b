"""Views of a KV cache for the extra passes of a recursion. The cache is never copied whole.

`FrozenView` (kv frozen): an extra pass attends over the cache as it stands, this position's
first-pass K/V included, and writes nothing. `RefreshView` (kv refresh): an extra pass attends with
its own K/V at this position; `accept` keeps them for the rows whose candidate was accepted and
`commit` writes the kept K/V over the first pass's, in place, for this position only.
"""

from __future__ import annotations

import torch


class FrozenView:
    def __init__(self, cache):
        self._cache = cache

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        layer = self._cache.layers[layer_idx]
        return layer.keys, layer.values

    def __getattr__(self, name):
        return getattr(self._cache, name)


class RefreshView(FrozenView):
    def __init__(self, cache):
        super().__init__(cache)
        self._pending: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        layer = self._cache.layers[layer_idx]
        width = key_states.shape[-2]
        self._pending[layer_idx] = (key_states, value_states)
        keys = torch.cat([layer.keys[..., :-width, :], key_states], dim=-2)
        values = torch.cat([layer.values[..., :-width, :], value_states], dim=-2)
        return keys, values

    def accept(self, rows: torch.Tensor) -> None:
        """Keep this pass's K/V for `rows` (bool [batch])."""
        select = rows.view(-1, 1, 1, 1)
        for index, (key, value) in self._pending.items():
            layer = self._cache.layers[index]
            width = key.shape[-2]
            old_key, old_value = self._kept.get(index, (layer.keys[..., -width:, :], layer.values[..., -width:, :]))
            self._kept[index] = (torch.where(select, key, old_key), torch.where(select, value, old_value))
        self._pending.clear()

    def commit(self) -> None:
        for index, (key, value) in self._kept.items():
            layer = self._cache.layers[index]
            width = key.shape[-2]
            layer.keys[..., -width:, :] = key
            layer.values[..., -width:, :] = value
        self._kept.clear()
