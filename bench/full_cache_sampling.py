"""The sampling path before the windowed cache, kept as the baseline of bench/sampling_speed.py.

Every layer caches every position's keys and values, (B, H, L, d), and each step attends to all
of them through its row of the layer's dense mask; every row runs the text through the prefill;
torch.multinomial draws the codes; batches of 32 candidates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from dalle1.transformer import DALLE


def run_blocks(model: DALLE, x: torch.Tensor, cache: list, start: int) -> torch.Tensor:
    """(B, l, D) at positions start.. -> (B, l, D) features; cache: per layer [keys, values]."""
    masks = model.masks(x.device)
    length = x.shape[1]
    for block, layer in zip(model.blocks, cache, strict=True):
        attn = block.attn
        q, k, v = rearrange(
            attn.qkv(block.norm1(x)), "b l (three h d) -> three b h l d", three=3, h=attn.heads
        )
        if layer[0] is None:
            shape = (*k.shape[:2], model.config.layout.length, k.shape[-1])
            layer[0], layer[1] = k.new_zeros(shape), v.new_zeros(shape)
        end = start + length
        layer[0][:, :, start:end], layer[1][:, :, start:end] = k, v
        allowed = masks.dense(attn.mask)[start:end, :end]
        out = F.scaled_dot_product_attention(
            q, layer[0][:, :, :end], layer[1][:, :, :end], attn_mask=allowed
        )
        x = x + attn.proj(rearrange(out, "b h l d -> b l (h d)"))
        x = x + block.mlp(block.norm2(x))
    return model.norm(x)


@torch.no_grad()
def generate(model: DALLE, text: torch.Tensor, greedy: bool, generator=None) -> torch.Tensor:
    """(B, T) text ids -> (B, h*w) codes, sampled at temperature 1 (or greedy)."""
    c = model.config
    batch = text.shape[0]
    codes = torch.zeros(batch, c.grid**2, dtype=torch.long, device=text.device)
    cache = [[None, None] for _ in model.blocks]
    start = torch.full((batch, 1), model.start_token, device=text.device)
    features = run_blocks(model, model.embed(text, start), cache, 0)[:, -1]
    for cell in range(c.grid**2):
        if cell:
            x = model.embed_cell(codes[:, cell - 1 : cell], cell)
            features = run_blocks(model, x, cache, c.text_length + cell)[:, -1]
        logits = model.image_head(features).float()
        if greedy:
            codes[:, cell] = logits.argmax(-1)
        else:
            probs = torch.softmax(logits, dim=-1)
            codes[:, cell] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return codes


def sample_candidates(model: DALLE, text: torch.Tensor, n: int, generator=None, batch=32):
    """n candidates of one caption's (T,) text ids, `batch` at a time -> (n, h*w) codes."""
    rows = text[None].expand(n, -1)
    return torch.cat([generate(model, part, False, generator) for part in rows.split(batch)])
