"""Captioned images in a folder tree: IMAGE.{png,jpg,jpeg,webp} beside IMAGE.txt.

A caption file holds one or more captions, one per line; each epoch draws one of them. The folder
is indexed once at start: files without a usable caption, empty files and files that are not
images (or too large to decode safely) are skipped, counted and reported together. An image that
turns out corrupt only when decoded is skipped then, reported once, and replaced by the next one.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from dalle1.data.transforms import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    BadSample,
    SkipLog,
    decode_caption,
    decode_image,
    make_sample,
)

logger = logging.getLogger(__name__)


def check_image_header(path: Path, max_pixels: int) -> None:
    """Cheap check of an image file without decoding its pixels. Raises BadSample."""
    if path.stat().st_size == 0:
        raise BadSample("empty file")
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Image.DecompressionBombError as err:
        raise BadSample(f"decompression bomb: {err}") from err
    except Exception as err:
        raise BadSample(f"not a readable image: {type(err).__name__}: {err}") from err
    if width * height > max_pixels:
        raise BadSample(f"{width}x{height} pixels exceeds the limit of {max_pixels}")


class ImageFolderDataset(Dataset):
    """(image (3, S, S) float in [0, 1], caption str) pairs from a folder tree.

    Args:
        root: the folder; searched recursively.
        image_size: side S of the square crops.
        train: random crops and a random caption per epoch; otherwise centre crops and the first
            caption.
        all_captions: give every caption of an image, joined by newlines, instead of one.
        seed: seeds crops and caption choice together with the epoch and the index, so that a
            resumed run sees the same samples.
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int,
        train: bool = True,
        seed: int = 0,
        max_pixels: int = MAX_PIXELS,
        all_captions: bool = False,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {str(self.root)!r} does not exist")
        self.image_size, self.train, self.seed = image_size, train, seed
        self.max_pixels, self.all_captions = max_pixels, all_captions
        self.epoch = 0
        self.skips = SkipLog(str(self.root))
        self.items: list[tuple[Path, list[str]]] = []
        images = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        for path in images:
            name = str(path.relative_to(self.root))
            try:
                captions = self._read_captions(path)
                check_image_header(path, max_pixels)
            except BadSample as err:
                self.skips.add(name, str(err))
                continue
            self.items.append((path, captions))
        if self.skips.count:
            logger.warning(self.skips.summary())
        if not self.items:
            raise ValueError(
                f"no usable image-caption pair in {str(self.root)!r} (expected IMAGE.png, .jpg, "
                f".jpeg or .webp beside IMAGE.txt; found {len(images)} image file(s))"
            )

    @staticmethod
    def _read_captions(image_path: Path) -> list[str]:
        caption_path = image_path.with_suffix(".txt")
        if not caption_path.is_file():
            raise BadSample(f"no caption file {caption_path.name}")
        return decode_caption(caption_path.read_bytes())

    def set_epoch(self, epoch: int) -> None:
        """Choose which crops and captions the next pass draws."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        if not 0 <= index < len(self.items):
            raise IndexError(f"index {index} out of range for {len(self.items)} samples")
        # A file that fails to decode is replaced by the next usable one, so batches stay full.
        for offset in range(len(self.items)):
            path, captions = self.items[(index + offset) % len(self.items)]
            try:
                image = decode_image(path.read_bytes(), self.max_pixels)
            except (BadSample, OSError) as err:
                self.skips.add(str(path.relative_to(self.root)), str(err))
                continue
            rng = random.Random(f"{self.seed}/{self.epoch}/{index}") if self.train else None
            return make_sample(image, captions, self.image_size, rng, self.all_captions)
        raise RuntimeError(f"no image in {str(self.root)!r} could be decoded")


def example_pictures(folder: str | Path, limit: int = 12) -> list[Path]:
    """The first `limit` pictures of a folder (not its subfolders), by name."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)[:limit]


def first_caption(picture: Path) -> str:
    """The first caption of a picture's NAME.txt ('' without a readable one)."""
    try:
        return decode_caption(picture.with_suffix(".txt").read_bytes())[0]
    except (OSError, BadSample):
        return ""
