"""Attention alone at the paper's stream length: one layer's forward + backward on the dense
path (scaled_dot_product_attention with the (L, L) mask) against the banded path, for each
sparse mask and block size (dalle1/attention.py).

    python bench/attention_speed.py      # 256 text + 32x32 image positions, batch 2, 4 heads of 64
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from dalle1.attention import banded_attention, make_band
from dalle1.masks import StreamLayout


def seconds(run, repeats: int = 3) -> float:
    """Mean time of forward + backward after one warm-up."""
    for step in range(repeats + 1):
        if step == 1:
            start = time.perf_counter()
        run().sum().backward()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    layout = StreamLayout(256, 32, 11)
    q, k, v = (torch.randn(2, 4, layout.length, 64, requires_grad=True) for _ in "qkv")
    print(f"{layout.length} positions, forward + backward, ms (keys per query in brackets)")
    for mask in ("row", "column", "conv"):
        allowed = layout.dense_mask(mask)
        dense = seconds(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=allowed))  # noqa: B023
        cells = [f"{mask:>6}: dense {dense * 1000:.0f} ({layout.length})"]
        for rows in (1, 2, 4, 8):
            band = make_band(layout, mask, torch.device("cpu"), rows)
            banded = seconds(lambda: banded_attention(q, k, v, band, layout.text_length))  # noqa: B023
            cells.append(f"{rows} rows {banded * 1000:.0f} ({band.allowed.shape[-1]})")
        print(", ".join(cells))


if __name__ == "__main__":
    main()
