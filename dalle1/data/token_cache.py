"""The token cache: a data set encoded once by the image tokenizer, so later stages skip it.

    CACHE/meta.json                 count, skipped, grid, codebook size, the tokenizer it came from
    CACHE/codes_00000.safetensors   {"codes": (N, h, w) uint16 (int32 when K > 65536)}
    CACHE/captions_00000.json       [[caption, ...], ...]: every caption of each image

This module is the one place that knows the layout: `TokenCacheWriter` writes it,
`TokenCacheDataset` reads it as (codes (h, w) int64, caption), one caption drawn per epoch in
training, `cache_captions` lists every caption without loading any codes, and `image_source`
names the images a cache was encoded from.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from dalle1.data.transforms import pick_caption

META_FILE = "meta.json"


def is_token_cache(path: str | Path) -> bool:
    return (Path(path) / META_FILE).is_file()


def _read_meta(folder: Path) -> dict:
    if not is_token_cache(folder):
        raise FileNotFoundError(f"{str(folder)!r} is not a token cache: {META_FILE} missing")
    return json.loads((folder / META_FILE).read_text())


def image_source(source: str | Path) -> str:
    """The images behind a data source: a token cache's own source, any other source itself."""
    if not is_token_cache(source):
        return str(source)
    return str(_read_meta(Path(source)).get("source", source))


def cache_captions(folder: str | Path) -> Iterator[str]:
    """Every caption of every image in the cache."""
    folder = Path(folder)
    for shard in _read_meta(folder)["shards"]:
        for captions in json.loads((folder / f"captions_{shard}.json").read_text()):
            yield from captions


class TokenCacheWriter:
    """Appends (codes (B, h, w), captions) batches; shards every `shard_size` images.

    Use as a context manager: meta.json, written last on a clean exit, marks the cache complete.
    """

    def __init__(self, folder: str | Path, codebook_size: int, shard_size: int = 10000) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.dtype = torch.uint16 if codebook_size <= 2**16 else torch.int32
        self.shard_size, self.shards, self.count = shard_size, [], 0
        self._codes: list[torch.Tensor] = []
        self._captions: list[list[str]] = []

    def add(self, codes: torch.Tensor, captions: list[list[str]]) -> None:
        """codes: (B, h, w) int; captions: every caption of each of the B images."""
        for i in range(len(codes)):
            self._codes.append(codes[i : i + 1].cpu())
            self._captions.append(captions[i])
            if len(self._codes) == self.shard_size:
                self._flush()
        self.count += len(codes)

    def _flush(self) -> None:
        name = f"{len(self.shards):05d}"
        codes = torch.cat(self._codes).to(self.dtype).contiguous()
        save_file({"codes": codes}, self.folder / f"codes_{name}.safetensors")
        (self.folder / f"captions_{name}.json").write_text(json.dumps(self._captions))
        self.shards.append(name)
        self._codes, self._captions = [], []

    def finish(self, **meta) -> dict:
        """Write the last shard and meta.json (with `meta`'s keys added); returns the meta."""
        if self._codes:
            self._flush()
        meta = {**meta, "dtype": str(self.dtype).removeprefix("torch."), "count": self.count}
        meta["shards"] = self.shards
        (self.folder / META_FILE).write_text(json.dumps(meta, indent=1))
        return meta


class TokenCacheDataset(Dataset):
    """(codes (h, w) int64, caption) per cached image."""

    def __init__(self, folder: str | Path, train: bool = True, seed: int = 0) -> None:
        self.folder = Path(folder)
        self.meta = _read_meta(self.folder)
        codes, captions = [], []
        for shard in self.meta["shards"]:
            codes.append(load_file(self.folder / f"codes_{shard}.safetensors")["codes"])
            captions += json.loads((self.folder / f"captions_{shard}.json").read_text())
        self.codes = torch.cat(codes) if codes else torch.zeros(0, 1, 1, dtype=torch.int32)
        self.captions = captions
        if len(self.codes) != len(self.captions) or not len(self.codes):
            raise ValueError(
                f"token cache {str(self.folder)!r} is empty or broken: "
                f"{len(self.codes)} code grids, {len(self.captions)} caption lists"
            )
        self.train, self.seed, self.epoch = train, seed, 0

    @property
    def grid(self) -> int:
        return self.codes.shape[-1]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        rng = random.Random(f"{self.seed}/{self.epoch}/{index}") if self.train else None
        return self.codes[index].long(), pick_caption(self.captions[index], rng)
