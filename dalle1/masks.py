"""Which positions each position of the text + image stream may attend to (Ramesh et al. 2021, B.1).

The stream has `text_length` text positions, then `h * w` image positions. Image position i (the
start-of-image token for i = 0, the code of cell i - 1 otherwise) predicts the code of cell i, so
"the window of w + 1 positions ending at itself" reaches back to the cell above the one predicted.

- text -> text: causal. Text never sees the image.
- image -> text: every image position sees every text position, in every layer.
- image -> image, causal in raster order, and by mask:
    row:    the last w + 1 positions (i - k <= w);
    column: the last h + 1 positions of the transposed image, i.e. the same column above and the
            cell one to the left (still raster-causal);
    conv:   a causal kernel x kernel neighbourhood (rows above within kernel // 2, columns within
            kernel // 2 either side);
    causal: every earlier image position (plain causal attention; also the text part is causal).

`allowed(...)` is the single definition: it builds the dense boolean masks and serves as the
FlexAttention mask_mod, so both attention paths see exactly the same pattern.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MASKS = ("row", "column", "conv", "causal")


def layer_masks(depth: int, attention: str) -> list[str]:
    """The mask of each layer. sparse: the paper's schedule (layer i, 1-based, uses the column
    mask where (i - 2) % 4 == 0, the row mask otherwise, and the last layer the conv mask);
    causal: plain causal attention everywhere."""
    if attention == "causal":
        return ["causal"] * depth
    if attention != "sparse":
        raise ValueError(f"attention must be sparse or causal, got {attention!r}")
    masks = ["column" if (i - 2) % 4 == 0 else "row" for i in range(1, depth + 1)]
    if depth > 1:
        masks[-1] = "conv"
    return masks


@dataclass(frozen=True)
class StreamLayout:
    """Lengths of the stream: text_length text positions, then grid x grid image positions."""

    text_length: int
    grid: int  # h = w
    conv_kernel: int = 11

    @property
    def image_length(self) -> int:
        return self.grid * self.grid

    @property
    def length(self) -> int:
        return self.text_length + self.image_length

    def allowed(self, mask: str, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Boolean tensor: may query position q attend to key position k? (broadcasting)."""
        text, w = self.text_length, self.grid
        causal = k <= q
        if mask == "causal":
            return causal
        q_image, k_image = q - text, k - text
        k_is_text = k < text
        if mask == "row":
            image_part = q_image - k_image <= w
        elif mask == "column":
            # Window of h + 1 in the transposed (column-major) order.
            q_t = (q_image % w) * w + q_image // w
            k_t = (k_image % w) * w + k_image // w
            image_part = (q_t >= k_t) & (q_t - k_t <= w)
        elif mask == "conv":
            reach = self.conv_kernel // 2
            rows_up = q_image // w - k_image // w
            columns_apart = (q_image % w - k_image % w).abs()
            image_part = (rows_up <= reach) & (columns_apart <= reach)
        else:
            raise ValueError(f"mask must be one of {MASKS}, got {mask!r}")
        # text queries: causal over text; image queries: all text, and the image pattern.
        return causal & (k_is_text | image_part)

    def dense_mask(self, mask: str, device: torch.device | str = "cpu") -> torch.Tensor:
        """(L, L) bool, True where attention is allowed."""
        index = torch.arange(self.length, device=device)
        return self.allowed(mask, index[:, None], index[None, :])
