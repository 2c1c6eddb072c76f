"""Multi-head self-attention with the stream's masks, a FlexAttention path and a key/value cache.

Three paths give the same numbers:
- dense: scaled_dot_product_attention with the (L, L) boolean mask (every device);
- flex: FlexAttention with a block mask, compiled, which skips the key blocks a query block never
  sees, so the sparse layers save work. torch compiles it on the first call (tens of seconds).
  On CPU it has no backward;
- banded (any device, with a backward): the row and conv layers' image queries in blocks of a few
  grid rows, each attending to the text and to the band of image keys its window reaches; the
  column layers' the same in column-major order (permute, attend, permute back). A band of w + 1
  keys instead of all L: the work follows the mask. Plain causal layers stay dense.

With a cache (sampling), the prefill takes one of these paths and stores its keys and values;
each decode step then attends to the keys the cache keeps for its layer (dalle1/kv_cache.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

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


PATHS = ("dense", "flex", "banded")


@dataclass
class Band:
    """How one sparse mask's image queries attend in blocks over a band of keys.

    order: (N,) the image cells in the band's order (raster; column-major for the column mask),
    inverse: its inverse permutation; back: how many image keys before a block's first query its
    window holds; block: queries per block; allowed: (blocks, block, T + back + block) bool, for
    each query of each block, which of the text keys and of its window's keys it may attend to
    (a window starting before the first cell is padded in front and never allowed).
    """

    order: torch.Tensor
    inverse: torch.Tensor
    back: int
    block: int
    allowed: torch.Tensor


BAND_BLOCK = 128  # queries per block, about: fewer, larger blocks keep the CPU kernel busy


def make_band(layout: StreamLayout, mask: str, device: torch.device, rows: int = 0) -> Band:
    """The Band of a row, column or conv mask, in blocks of `rows` grid rows (0: the most that
    divide the grid and hold at most BAND_BLOCK cells, at least one). Built from
    layout.allowed, so it is exact for any grid and kernel (checked: no allowed key lies after
    a query in the band's order; the window reaches back to its first allowed key)."""
    text, cells, w = layout.text_length, layout.image_length, layout.grid
    rows = rows or max(r for r in range(1, w + 1) if w % r == 0 and (r == 1 or r * w <= BAND_BLOCK))
    index = torch.arange(cells, device=device)
    order = (index % w) * w + index // w if mask == "column" else index
    position = text + order  # stream positions, in the band's order
    allowed = layout.allowed(mask, position[:, None], position[None, :])  # (N, N)
    if (allowed & (index[None, :] > index[:, None])).any():
        raise ValueError(f"the {mask} mask is not causal in its band order")
    first = torch.where(allowed, index[None, :], cells).min(1).values  # first key of each query
    block = w * rows
    if cells % block:
        raise ValueError(f"blocks of {rows} rows do not tile a {w}x{w} grid")
    back = int((index - index % block - first).clamp(min=0).max())
    blocks = cells // block
    window = (index[:blocks, None] * block - back) + torch.arange(back + block, device=device)
    queries = index.view(blocks, block)  # (blocks, block) in band order
    inside = (window >= 0)[:, None, :]  # (blocks, 1, back + block)
    image = inside & allowed[queries[:, :, None], window.clamp(min=0)[:, None, :]]
    keys = torch.arange(text, device=device)
    to_text = layout.allowed(mask, position[queries][..., None], keys)  # (blocks, block, T)
    return Band(order, torch.argsort(order), back, block, torch.cat([to_text, image], -1))


def banded_attention(q, k, v, band: Band, text: int) -> torch.Tensor:
    """(B, H, L, d) each, the whole stream -> (B, H, L, d): text causally over the text, image
    queries block by block over the text and their band of image keys."""
    text_out = F.scaled_dot_product_attention(
        q[:, :, :text], k[:, :, :text], v[:, :, :text], is_causal=True
    )
    b, h, _, d = q.shape
    blocks = band.allowed.shape[0]

    def windows(
        x: torch.Tensor,
    ) -> torch.Tensor:  # (B, H, N, d) -> (B, H, blocks, T + back + block, d)
        image = F.pad(x[:, :, text:][:, :, band.order], (0, 0, band.back, 0))
        bands = image.unfold(2, band.back + band.block, band.block).transpose(-1, -2)
        shared = x[:, :, None, :text].expand(b, h, blocks, text, d)
        return torch.cat([shared, bands], dim=3)

    queries = q[:, :, text:][:, :, band.order].reshape(b, h, blocks, band.block, d)
    out = F.scaled_dot_product_attention(queries, windows(k), windows(v), attn_mask=band.allowed)
    image_out = out.reshape(b, h, -1, d)[:, :, band.inverse]
    return torch.cat([text_out, image_out], dim=2)


class AttentionMasks:
    """The masks of one stream layout on one device, built once and shared by all layers.
    path: how the sparse layers attend over the whole stream (dense, flex or banded)."""

    def __init__(self, layout: StreamLayout, device: torch.device, path: str) -> None:
        if path not in PATHS:
            raise ValueError(f"the attention path must be one of {PATHS}, got {path!r}")
        self.layout, self.device, self.path = layout, device, path
        self._dense: dict[str, torch.Tensor] = {}
        self._block: dict[str, object] = {}
        self._band: dict[str, Band] = {}

    def band(self, mask: str) -> Band:
        if mask not in self._band:
            self._band[mask] = make_band(self.layout, mask, self.device)
        return self._band[mask]

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
        if self.mask == "causal":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        whole = length == masks.layout.length  # not a prefill of the first positions only
        if whole and masks.path == "banded":
            return banded_attention(q, k, v, masks.band(self.mask), masks.layout.text_length)
        if whole and masks.path == "flex" and (q.device.type != "cpu" or not q.requires_grad):
            # (FlexAttention has no backward on CPU: CPU training takes the dense path.)
            return _compiled_flex_attention()(q, k, v, block_mask=masks.block(self.mask))
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
