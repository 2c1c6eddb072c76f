"""Multi-head self-attention with the stream's masks, a FlexAttention path and a key/value cache.

Two paths give the same numbers:
- dense: scaled_dot_product_attention with the (L, L) boolean mask (every device);
- flex: FlexAttention with a block mask, compiled, which skips the key blocks a query block never
  sees, so the sparse layers save work. torch compiles it on the first call (tens of seconds).
  On CPU it has no backward, so CPU training always takes the dense path.

With a cache (sampling), the prefill takes one of these paths and stores its keys and values;
each decode step then attends to the keys the cache keeps for its layer (dalle1/kv_cache.py).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from dalle1.kv_cache import KVCache
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
        cell: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B, l, D), the stream's first l positions; or, with `cell` (an int, or a (1,)
        long tensor when compiled), (B, 1, D) of image position `cell` alone, attending to the
        cache. Without `cell`, a
        cache is filled with this layer's keys and values."""
        q, k, v = rearrange(self.qkv(x), "b l (three h d) -> three b h l d", three=3, h=self.heads)
        if cell is not None:
            out = cache.attend(layer, q, k, v, cell)
        else:
            out = self._attention(q, k, v, masks)
            if cache is not None:
                cache.fill(layer, k, v)
        return self.proj(rearrange(out, "b h l d -> b l (h d)"))

    def _attention(self, q, k, v, masks: AttentionMasks | None) -> torch.Tensor:
        """(B, H, l, d) each -> (B, H, l, d), over the stream's first l positions."""
        length = q.shape[2]
        if self.mask is None:
            return F.scaled_dot_product_attention(q, k, v)
        if masks is None:  # no stream layout: plain causal (CLIP's text encoder)
            if self.mask != "causal":
                raise ValueError(f"a {self.mask!r} attention layer needs the stream's masks")
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if (
            masks.use_flex
            and length == masks.layout.length
            and (q.device.type != "cpu" or not q.requires_grad)
        ):
            # (FlexAttention has no backward on CPU: CPU training takes the dense path.)
            return _compiled_flex_attention()(q, k, v, block_mask=masks.block(self.mask))
        if self.mask == "causal":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        allowed = masks.dense(self.mask)[:length, :length]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


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
