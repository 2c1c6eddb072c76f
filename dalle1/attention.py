"""Multi-head self-attention with the stream's masks, a FlexAttention path and a key/value cache.

Two paths give the same numbers:
- dense: scaled_dot_product_attention with the (L, L) boolean mask (every device);
- flex: FlexAttention with a block mask, compiled, which skips the key blocks a query block never
  sees, so the sparse layers save work. torch compiles it on the first call (tens of seconds).
  On CPU it has no backward, so CPU training always takes the dense path.

With a cache (sampling), the new queries attend to every cached key through the rows of the same
dense mask, so one cache serves every mask, the sparse ones included.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from einops import rearrange
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

    def dense(self, mask: str) -> torch.Tensor:
        """(L, L) bool, True where allowed."""
        if mask not in self._dense:
            self._dense[mask] = self.layout.dense_mask(mask, self.device)
        return self._dense[mask]

    def block(self, mask: str):
        """FlexAttention BlockMask of `mask` over the whole stream."""
        if mask not in self._block:
            from torch.nn.attention.flex_attention import create_block_mask

            def mask_mod(batch, head, q, k):
                return self.layout.allowed(mask, q, k)

            length = self.layout.length
            self._block[mask] = create_block_mask(
                mask_mod, None, None, length, length, device=str(self.device)
            )
        return self._block[mask]


class KVCache:
    """Keys and values of every layer for a batch, filled position by position.

    Per layer (B, H, L, d), allocated at the first update with the dtype the layer computes in
    (bf16 under autocast).
    """

    def __init__(self, depth: int, length: int) -> None:
        self.length = length
        self.keys: list[torch.Tensor | None] = [None] * depth
        self.values: list[torch.Tensor | None] = [None] * depth

    def update(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor):
        """Store (B, H, l, d) k, v at positions start..start+l-1; return all keys/values so far."""
        if self.keys[layer] is None:
            batch, heads, _, head_width = k.shape
            self.keys[layer] = k.new_zeros(batch, heads, self.length, head_width)
            self.values[layer] = v.new_zeros(batch, heads, self.length, head_width)
        end = start + k.shape[2]
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class SelfAttention(nn.Module):
    """(B, L, D) -> (B, L, D). mask: this layer's mask (dalle1/masks.py), or None for none."""

    def __init__(self, width: int, heads: int, mask: str | None = None) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads, self.mask = heads, mask
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(
        self,
        x: torch.Tensor,
        masks: AttentionMasks | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
        start: int = 0,
    ) -> torch.Tensor:
        """x: (B, l, D) at stream positions start..start+l-1 (start > 0 only with a cache)."""
        length = x.shape[1]
        q, k, v = rearrange(self.qkv(x), "b l (three h d) -> three b h l d", three=3, h=self.heads)
        if self.mask is None:
            out = F.scaled_dot_product_attention(q, k, v)
        elif masks is None:  # no stream layout: plain causal (CLIP's text encoder)
            if self.mask != "causal":
                raise ValueError(f"a {self.mask!r} attention layer needs the stream's masks")
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif cache is not None:
            k, v = cache.update(layer, start, k, v)
            allowed = masks.dense(self.mask)[start : start + length, : start + length]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        elif (
            masks.use_flex
            and length == masks.layout.length
            and (q.device.type != "cpu" or not q.requires_grad)
        ):
            # (FlexAttention has no backward on CPU: CPU training takes the dense path.)
            flex = _compiled_flex_attention()
            out = flex(q, k, v, block_mask=masks.block(self.mask))
        elif self.mask == "causal":
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            allowed = masks.dense(self.mask)[:length, :length]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.proj(rearrange(out, "b h l d -> b l (h d)"))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x)). (B, L, D) -> (B, L, D)."""

    def __init__(self, width: int, heads: int, mlp_ratio: int = 4, mask: str | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, mask)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width)
        )

    def forward(self, x: torch.Tensor, *attention_args) -> torch.Tensor:
        """attention_args: what SelfAttention.forward takes after x (masks, cache, ...)."""
        x = x + self.attn(self.norm1(x), *attention_args)
        return x + self.mlp(self.norm2(x))
