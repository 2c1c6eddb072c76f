"""Captioned images in webdataset tar shards: KEY.{jpg,png,webp} + KEY.txt per sample.

Shards are named by local paths, brace patterns ("data/shard-{000000..000009}.tar") or anything
webdataset can open ("pipe:..."). With several processes, each rank (and each DataLoader worker)
reads its own subset of the shards. A bad sample or an unreadable shard is skipped, counted and
reported once; a source with no usable sample stops with an error.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from pathlib import Path

import braceexpand
import torch
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.tariterators import tarfile_samples

from dalle1.data.transforms import (
    MAX_PIXELS,
    BadSample,
    SkipLog,
    decode_caption,
    decode_image,
    make_sample,
)

logger = logging.getLogger(__name__)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def expand_shards(patterns: str | list[str]) -> list[str]:
    """'a-{0..2}.tar' or a list of such -> ['a-0.tar', 'a-1.tar', 'a-2.tar'].

    Local files must exist.
    """
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    urls = [u for pattern in patterns for u in braceexpand.braceexpand(pattern)]
    if not urls:
        raise ValueError("no shards given")
    local = [u for u in urls if "://" not in u and not u.startswith("pipe:")]
    missing = [u for u in local if not Path(u).is_file()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise FileNotFoundError(f"shard(s) not found: {', '.join(missing[:3])}{more}")
    return urls


def rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class TarShardDataset(IterableDataset):
    """(image (3, S, S) float in [0, 1], caption str) pairs from tar shards.

    Args:
        shards: brace pattern(s) or a list of shard paths / urls.
        image_size: side S of the square crops.
        train: shuffles shard order per epoch, random crops and captions; otherwise in order with
            centre crops and the first caption.
        all_captions: give every caption of an image, joined by newlines, instead of one.
        seed: seeds the shard order, crops and captions together with the epoch.
    """

    def __init__(
        self,
        shards: str | list[str],
        image_size: int,
        train: bool = True,
        seed: int = 0,
        max_pixels: int = MAX_PIXELS,
        all_captions: bool = False,
    ) -> None:
        self.urls = expand_shards(shards)
        self.image_size, self.train, self.seed = image_size, train, seed
        self.max_pixels, self.all_captions = max_pixels, all_captions
        self.epoch = 0
        self.skips = SkipLog("shards")
        if next(self._samples(self.urls), None) is None:
            logger.warning(self.skips.summary())
            raise ValueError(f"no usable image-caption pair in shards {self.urls[:3]}...")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _my_shards(self) -> list[str]:
        """This rank's and this worker's share of the (shuffled) shard list."""
        urls = list(self.urls)
        if self.train:
            random.Random(f"{self.seed}/{self.epoch}").shuffle(urls)
        rank, world = rank_and_world()
        worker = get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker else (1, 0)
        return urls[rank * workers + worker_id :: world * workers]

    def _on_error(self, err: Exception) -> bool:
        self.skips.add(str(err.args[-1] if err.args else "?"), f"unreadable: {err.args[0]!r}")
        return True  # keep going

    def _samples(self, urls: list[str]) -> Iterator[tuple[torch.Tensor, str]]:
        for sample in tarfile_samples([{"url": u} for u in urls], handler=self._on_error):
            name = f"{Path(sample['__url__']).name}:{sample['__key__']}"
            try:
                image_key = next((k for k in IMAGE_KEYS if k in sample), None)
                if image_key is None:
                    raise BadSample("no image (.jpg, .png or .webp)")
                if "txt" not in sample:
                    raise BadSample("no caption (.txt)")
                captions = decode_caption(sample["txt"])
                image = decode_image(sample[image_key], self.max_pixels)
            except BadSample as err:
                self.skips.add(name, str(err))
                continue
            rng = random.Random(f"{self.seed}/{self.epoch}/{name}") if self.train else None
            yield make_sample(image, captions, self.image_size, rng, self.all_captions)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, str]]:
        yield from self._samples(self._my_shards())
        if self.skips.count:
            logger.warning(self.skips.summary())
