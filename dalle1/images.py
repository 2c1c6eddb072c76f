"""Tensor <-> PIL conversions and image grids."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image


def make_grid(images: torch.Tensor, columns: int = 8, padding: int = 2) -> torch.Tensor:
    """(N, 3, H, W) float in [0, 1] -> (3, H', W') grid on a white background, row-major."""
    count, channels, height, width = images.shape
    columns = max(1, min(columns, count))
    rows = (count + columns - 1) // columns
    grid = torch.ones(
        channels, rows * (height + padding) + padding, columns * (width + padding) + padding
    )
    for i in range(count):
        top = padding + (i // columns) * (height + padding)
        left = padding + (i % columns) * (width + padding)
        grid[:, top : top + height, left : left + width] = images[i].float().clamp(0, 1).cpu()
    return grid


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) float in [0, 1] -> RGB PIL image."""
    array = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0)  # CHW -> HWC
    return Image.fromarray(array.cpu().numpy())


def save_image(image: torch.Tensor, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(image).save(path)
