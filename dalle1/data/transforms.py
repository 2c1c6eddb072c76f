"""Image decoding and cropping shared by every data source.

`decode_image` turns file bytes into an RGB PIL image or raises `BadSample` with the reason, so
that a data source can skip and count a bad file instead of crashing. `to_training_tensor`
resizes on the short side and crops to S x S (random crop in training, centre crop otherwise;
never flipped, since images may contain text).
"""

from __future__ import annotations

import io
import logging
import random
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageMode, ImageOps

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
MAX_PIXELS = 8192 * 8192  # larger images are refused as decompression bombs


class BadSample(Exception):
    """A sample that cannot be used; the message says why."""


def decoded_bytes(image: Image.Image) -> int:
    """The bytes an opened (not yet decoded) image takes once decoded, from its size and mode."""
    mode = ImageMode.getmode(image.mode)
    return image.width * image.height * np.dtype(mode.typestr).itemsize * len(mode.bands)


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS, max_bytes: int = 0) -> Image.Image:
    """File bytes -> RGB image, with EXIF orientation applied.

    Greyscale, palette, CMYK and 16-bit images become 8-bit RGB; transparent pixels are laid on
    white. Raises BadSample for empty, corrupt, truncated or oversized (decompression bomb) data:
    more than max_pixels pixels, or (max_bytes > 0) more than max_bytes once decoded.
    """
    if not data:
        raise BadSample("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > max_pixels:
                raise BadSample(
                    f"{image.width}x{image.height} pixels exceeds the limit of {max_pixels} "
                    "(possible decompression bomb)"
                )
            if max_bytes and decoded_bytes(image) > max_bytes:
                raise BadSample(
                    f"{image.width}x{image.height} {image.mode} pixels take "
                    f"{decoded_bytes(image) / 2**20:.0f} MiB decoded, over the limit of "
                    f"{max_bytes / 2**20:.0f} MiB"
                )
            image.load()  # decode now, so truncated data fails here
            image = ImageOps.exif_transpose(image)
    except BadSample:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadSample(f"decompression bomb: {err}") from err
    except Exception as err:  # PIL raises many types for corrupt data
        raise BadSample(f"cannot decode image: {type(err).__name__}: {err}") from err
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; alpha is composited on white."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16-bit (or float) greyscale: scale to 8 bits instead of clipping at 255.
        values = np.array(image, dtype=np.float32)  # a copy, scaled in place: one at a time
        top = 1.0 if image.mode == "F" and values.max() <= 1.0 else 65535.0
        values *= 255 / top
        image = Image.fromarray(values.clip(0, 255, out=values).round(out=values).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def decode_caption(data: bytes) -> list[str]:
    """UTF-8 caption file -> its non-empty lines (one caption each). Raises BadSample."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadSample(f"caption is not UTF-8 ({err})") from err
    captions = [line.strip() for line in text.lstrip("\ufeff").splitlines() if line.strip()]
    if not captions:
        raise BadSample("empty caption")
    return captions


def pick_caption(captions: list[str], rng: random.Random | None, all_captions: bool = False) -> str:
    """One caption: drawn by rng in training, the first otherwise; or all, joined by newlines."""
    if all_captions:
        return "\n".join(captions)
    return rng.choice(captions) if rng is not None else captions[0]


def resize_and_crop(image: Image.Image, size: int, rng: random.Random | None) -> Image.Image:
    """Resize so the short side is `size`, then crop to size x size.

    rng: a random crop when given (training), the centre crop when None (evaluation).
    """
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_w, new_h) != (width, height):
        # reducing_gap first shrinks by an integer factor: fast on large photos, same quality.
        image = image.resize((new_w, new_h), Image.Resampling.LANCZOS, reducing_gap=3.0)
    if rng is None:
        left, top = (new_w - size) // 2, (new_h - size) // 2
    else:
        left, top = rng.randint(0, new_w - size), rng.randint(0, new_h - size)
    return image.crop((left, top, left + size, top + size))


def make_sample(
    image: Image.Image,
    captions: list[str],
    size: int,
    rng: random.Random | None,
    all_captions: bool = False,
) -> tuple[torch.Tensor, str]:
    """A decoded image and its captions -> ((3, size, size) float in [0, 1], caption).

    rng: random crop and caption in training; None: centre crop and the first caption.
    """
    caption = pick_caption(captions, rng, all_captions)
    return to_tensor(resize_and_crop(image, size, rng)), caption


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float32 in [0, 1]."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)  # HWC -> CHW


def read_image(path: str | Path, size: int, max_pixels: int = MAX_PIXELS, max_bytes: int = 0):
    """An image file -> (3, size, size) float in [0, 1], centre-cropped. Raises BadSample
    (limits: as decode_image's)."""
    image = decode_image(Path(path).read_bytes(), max_pixels, max_bytes)
    return to_tensor(resize_and_crop(image, size, None))


class SkipLog:
    """Counts skipped samples by reason and reports each file once."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.skipped: dict[str, list[str]] = defaultdict(list)
        self._seen: set[str] = set()

    def add(self, name: str, reason: str) -> None:
        if name in self._seen:
            return
        self._seen.add(name)
        self.skipped[reason].append(name)
        logger.warning("%s: skipped %s: %s", self.source, name, reason)

    @property
    def count(self) -> int:
        return len(self._seen)

    def summary(self) -> str:
        lines = [f"{self.source}: skipped {self.count} sample(s)"]
        for reason, names in sorted(self.skipped.items()):
            shown = ", ".join(names[:10]) + (
                f" and {len(names) - 10} more" if len(names) > 10 else ""
            )
            lines.append(f"  {reason}: {shown}")
        return "\n".join(lines)
