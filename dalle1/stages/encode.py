"""`python train.py encode`: encode a data set once with a trained dVAE (the token cache)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from dalle1.checkpoint import resolve_checkpoint
from dalle1.data import open_source
from dalle1.training import pick_device
from vqvae.model import DiscreteVAE

logger = logging.getLogger(__name__)


def encode_dataset(
    vqvae: str | Path,
    source: str,
    out: str | Path,
    batch_size: int = 64,
    shard_size: int = 10000,
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """Encode every usable image of `source` (centre crops) into a token cache at `out`.

    Returns the cache's meta dict (count, shards, skipped, grid and codebook sizes).
    """
    from tqdm import tqdm

    checkpoint = resolve_checkpoint(vqvae)
    run_device = pick_device(device)
    model = DiscreteVAE.from_pretrained(checkpoint, map_location=str(run_device)).eval()
    config = model.config
    dataset = open_source(source, config.image_size, train=False, all_captions=True)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    dtype = torch.uint16 if config.codebook_size <= 2**16 else torch.int32
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shards: list[str] = []
    pending_codes: list[torch.Tensor] = []
    pending_captions: list[list[str]] = []
    count = 0

    def flush() -> None:
        name = f"{len(shards):05d}"
        codes = torch.cat(pending_codes)
        save_file({"codes": codes.to(dtype).contiguous()}, out / f"codes_{name}.safetensors")
        (out / f"captions_{name}.json").write_text(json.dumps(pending_captions))
        shards.append(name)
        pending_codes.clear()
        pending_captions.clear()

    size = len(dataset) if hasattr(dataset, "__len__") else None
    with tqdm(total=size, desc="encoding", unit="img", disable=not progress) as bar:
        for images, captions in loader:
            codes = model.encode(images.to(run_device)).cpu()
            for i in range(len(codes)):
                pending_codes.append(codes[i : i + 1])
                pending_captions.append(captions[i].split("\n"))
                if len(pending_codes) == shard_size:
                    flush()
            count += len(codes)
            bar.update(len(codes))
    if pending_codes:
        flush()
    meta = {
        "vqvae": str(checkpoint),
        "source": source,
        "image_size": config.image_size,
        "grid_size": config.grid_size,
        "codebook_size": config.codebook_size,
        "dtype": str(dtype).removeprefix("torch."),
        "count": count,
        "skipped": dataset.skips.count,
        "shards": shards,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    if dataset.skips.count:
        logger.warning(dataset.skips.summary())
    logger.info("encoded %d images into %s (%d shards)", count, out, len(shards))
    return meta
