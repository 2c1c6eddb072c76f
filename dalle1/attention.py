"""Multi-head self-attention with the stream's masks, a FlexAttention path and a key/value cache.

Two paths give the same numbers:
- dense: scaled_dot_product_attention with the (L, L) boolean mask (every device);
- flex: FlexAttention with a block mask, compiled, which skips the key blocks a query block never
  sees, so the sparse layers save work. torch compiles it on the first call (tens of seconds).
  On CPU it has no backward, so CPU training always takes the dense path.

With a cache (sampling), the new queries attend to every cached key through the rows of the same
dense mask, so one cache serves every mask kind, the sparse ones included.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from dalle1.masks import StreamLayout


@functools.cache
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


class AttentionMasks:
    """The masks of one stream layout on one device, built once and shared by all layers."""

    def __init__(self, layout: StreamLayout, device: torch.device, use_flex: bool) -> None:
        self.layout, self.device, self.use_flex = layout, device, use_flex
        self._dense: dict[str, torch.Tensor] = {}
        self._block: dict[str, object] = {}

    def dense(self, kind: str) -> torch.Tensor:
        """(L, L) bool, True where allowed."""
        if kind not in self._dense:
            self._dense[kind] = self.layout.dense_mask(kind, self.device)
        return self._dense[kind]

    def block(self, kind: str):
        """FlexAttention BlockMask of `kind` over the whole stream."""
        if kind not in self._block:
            from torch.nn.attention.flex_attention import create_block_mask

            def mask_mod(batch, head, q, k):
                return self.layout.allowed(kind, q, k)

            length = self.layout.length
            self._block[kind] = create_block_mask(
                mask_mod, None, None, length, length, device=str(self.device)
            )
        return self._block[kind]


class KVCache:
    """Keys and values of every layer for a batch, filled position by position.

    Per layer (B, heads, length, head_dim), allocated at the first update with the dtype the
    layer computes in (bf16 under autocast).
    """

    def __init__(self, num_layers: int, length: int) -> None:
        self.length = length
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers

    def update(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor):
        """Store (B, H, l, D) k, v at positions start..start+l-1; return all keys/values so far."""
        if self.keys[layer] is None:
            shape = (*k.shape[:2], self.length, k.shape[3])
            self.keys[layer] = k.new_zeros(shape)
            self.values[layer] = v.new_zeros(shape)
        end = start + k.shape[2]
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class SelfAttention(nn.Module):
    """(B, L, D) -> (B, L, D). kind: the mask kind of this layer, or None for no mask."""

    def __init__(self, dim: int, heads: int, kind: str | None = None) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.kind = heads, kind
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        masks: AttentionMasks | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
        start: int = 0,
    ) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        if self.kind is None:
            out = F.scaled_dot_product_attention(q, k, v)
        elif masks is None:  # no stream layout: plain causal (CLIP's text encoder)
            if self.kind != "causal":
                raise ValueError(f"a {self.kind!r} attention layer needs the stream's masks")
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif cache is not None:
            k, v = cache.update(layer, start, k, v)
            mask = masks.dense(self.kind)[start : start + length, : start + length]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        elif (
            masks.use_flex
            and length == masks.layout.length
            and (q.device.type != "cpu" or not q.requires_grad)
        ):
            # (FlexAttention has no backward on CPU: CPU training takes the dense path.)
            flex = _compiled_flex_attention()
            out = flex(q, k, v, block_mask=masks.block(self.kind))
        elif self.kind == "causal":
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            mask = masks.dense(self.kind)[:length, :length]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x)). (B, L, D) -> (B, L, D)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4, kind: str | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, kind)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim)
        )

    def forward(
        self,
        x: torch.Tensor,
        masks: AttentionMasks | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
        start: int = 0,
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), masks, cache, layer, start)
        return x + self.mlp(self.norm2(x))
