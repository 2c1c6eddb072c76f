"""`python train.py encode`: encode a data set once with a trained image tokenizer (the token
cache, dalle1/data/token_cache.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import DataLoader

from dalle1.data import open_source
from dalle1.data.token_cache import TokenCacheWriter
from dalle1.device import pick_device
from pretrained import resolve_model_folder
from vqvae import load_image_tokenizer

logger = logging.getLogger(__name__)


@dataclass
class EncodeConfig:
    """What `python train.py encode` writes."""

    vqvae: str = ""  # the image tokenizer: a dVAE run, or any tokenizer's model folder
    data: str = ""  # the images: a folder or tar shards
    out: str = ""  # the token cache folder to write
    batch_size: int = 64  # images per encoder call
    shard_size: int = 10000  # images per cache shard
    device: str = "auto"  # auto, cpu, cuda, ...
    # also each image mirrored left-right, with its captions: twice the images, for pictures
    # that a mirror does not change the meaning of (drawings, most photos; not text)
    mirror: bool = False

    def __post_init__(self) -> None:
        if not self.vqvae or not self.data or not self.out:
            raise ValueError("give the image tokenizer (--vqvae), the images (--data) and --out")


def encode_dataset(
    vqvae: str | Path,
    source: str,
    out: str | Path,
    batch_size: int = 64,
    shard_size: int = 10000,
    device: str = "auto",
    progress: bool = True,
    mirror: bool = False,
) -> dict:
    """Encode every usable image of `source` (centre crops) into a token cache at `out`.

    mirror: each batch of images is followed by their left-right mirrors, with the same captions.
    Returns the cache's meta dict (count, shards, skipped, grid and codebook sizes, mirrored).
    """
    from tqdm import tqdm

    folder = resolve_model_folder(vqvae)
    run_device = pick_device(device)
    tokenizer = load_image_tokenizer(folder, map_location=str(run_device))
    dataset = open_source(source, tokenizer.image_size, train=False, all_captions=True)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    writer = TokenCacheWriter(out, tokenizer.codebook_size, shard_size)
    size = len(dataset) if hasattr(dataset, "__len__") else None
    with tqdm(total=size, desc="encoding", unit="img", disable=not progress) as bar:
        for images, captions in loader:
            images, captions = images.to(run_device), [c.split("\n") for c in captions]
            writer.add(tokenizer.encode(images), captions)
            if mirror:
                writer.add(tokenizer.encode(images.flip(-1)), captions)
            bar.update(len(images))
    meta = writer.finish(
        vqvae=str(folder),
        source=source,
        image_size=tokenizer.image_size,
        grid=tokenizer.grid,
        codebook_size=tokenizer.codebook_size,
        skipped=dataset.skips.count,
        mirrored=mirror,
    )
    if dataset.skips.count:
        logger.warning(dataset.skips.summary())
    logger.info("encoded %d images into %s (%d shards)", meta["count"], out, len(meta["shards"]))
    return meta
