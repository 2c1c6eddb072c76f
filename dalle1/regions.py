"""Regions of an image to regenerate: a box or a mask in pixels -> the code cells to sample.

    mask = box_mask((x0, y0, x1, y1), height, width)    # (H, W) bool, True inside
    cells = cell_region(mask_at_model_size, grid=16)   # (16, 16) bool: the cells to sample

A cell is in the region when any of its pixels is; by default the region then grows by one cell
on every side, so that the new cells blend with the kept ones around them (the seams are drawn
by the model, not cut by the box).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dalle1.data.transforms import resize_and_crop


def box_mask(box: tuple[int, int, int, int], height: int, width: int) -> torch.Tensor:
    """A box (x0, y0, x1, y1) in pixels, x1 and y1 excluded -> (height, width) bool mask."""
    x0, y0, x1, y1 = box
    if not (x0 < x1 and y0 < y1):
        raise ValueError(f"the box {box} is empty: it needs x0 < x1 and y0 < y1")
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise ValueError(f"the box {box} lies outside the {width}x{height} image")
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
    return mask


def read_mask(path: str, height: int, width: int) -> torch.Tensor:
    """A mask image (white or any non-black pixel: the region) of the image's size -> (H, W)
    bool."""
    try:
        with Image.open(path) as image:
            mask = image.convert("L")
    except OSError as err:
        raise ValueError(f"cannot read the mask {path!r}: {err}") from err
    if mask.size != (width, height):
        raise ValueError(
            f"the mask {path!r} is {mask.width}x{mask.height}; it must have the image's size, "
            f"{width}x{height}"
        )
    return torch.from_numpy(np.asarray(mask) > 0)


def to_model_size(mask: torch.Tensor, size: int) -> torch.Tensor:
    """(H, W) bool mask of an image file -> (size, size): resized and centre-cropped as the
    image is (dalle1.data.transforms.resize_and_crop)."""
    picture = Image.fromarray(mask.numpy().astype("uint8") * 255)
    return torch.from_numpy(np.asarray(resize_and_crop(picture, size, None)) > 127)


def cell_region(mask: torch.Tensor, grid: int, dilate: bool = True) -> torch.Tensor:
    """(S, S) bool pixels -> (grid, grid) bool cells: a cell is in when any of its pixels is,
    then (dilate) the region grows by one cell on every side."""
    size = mask.shape[-1]
    if mask.shape != (size, size) or size % grid:
        raise ValueError(
            f"the region must be a square mask of a multiple of {grid} pixels, got "
            f"{tuple(mask.shape)}"
        )
    cells = F.max_pool2d(mask[None, None].float(), size // grid)
    if dilate:
        cells = F.max_pool2d(cells, 3, stride=1, padding=1)
    cells = cells[0, 0].bool()
    if not cells.any():
        raise ValueError("the region is empty: it covers no pixel of the image")
    return cells


def parse_box(text: str) -> tuple[int, int, int, int]:
    """'X0,Y0,X1,Y1' (pixels) -> a box; a clear error for anything else."""
    parts = text.split(",")
    try:
        box = tuple(int(part) for part in parts)
    except ValueError:
        box = ()
    if len(box) != 4:
        raise ValueError(f"a box is X0,Y0,X1,Y1 in whole pixels, got {text!r}")
    return box


def highlight(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(3, S, S) image and (S, S) bool region -> a copy with the region tinted red."""
    red = torch.tensor([1.0, 0.0, 0.0], device=image.device)[:, None, None]
    tint = 0.45 * mask.to(image.device, image.dtype)
    return image * (1 - tint) + red * tint
