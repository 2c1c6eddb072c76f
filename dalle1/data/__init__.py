"""Data sources of captioned images. Each yields (image (3, S, S) float in [0, 1], caption)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from torch.utils.data import Dataset, IterableDataset

from dalle1.data.folder import ImageFolderDataset
from dalle1.data.shards import TarShardDataset
from dalle1.data.token_cache import (
    TokenCacheDataset,
    cache_captions,
    image_source,
    is_token_cache,
)


def open_source(
    source: str, image_size: int, train: bool = True, seed: int = 0, all_captions: bool = False
) -> Dataset | IterableDataset:
    """A folder of images with captions, or tar shards (a path ending in .tar, a brace pattern or
    a 'pipe:' command)."""
    options = {"train": train, "seed": seed, "all_captions": all_captions}
    if Path(source).is_dir():
        return ImageFolderDataset(source, image_size, **options)
    if ".tar" in source or "{" in source or source.startswith("pipe:"):
        return TarShardDataset(source, image_size, **options)
    raise FileNotFoundError(
        f"data source {source!r} is neither a folder nor tar shards (e.g. data/shard-{{0..9}}.tar)"
    )


def iter_captions(source: str) -> Iterator[str]:
    """Every caption of a source: an image folder, tar shards or a token cache (for the
    tokenizer). Folders and caches are read without decoding any image."""
    path = Path(source)
    if is_token_cache(path):
        yield from cache_captions(path)
    elif path.is_dir():
        for _, captions in ImageFolderDataset(path, 8).items:
            yield from captions
    else:
        for _, joined in open_source(source, 8, train=False, all_captions=True):
            yield from joined.split("\n")


__all__ = [
    "ImageFolderDataset",
    "TarShardDataset",
    "TokenCacheDataset",
    "image_source",
    "is_token_cache",
    "iter_captions",
    "open_source",
]
