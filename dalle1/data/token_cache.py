"""The token cache: a data set encoded once by the dVAE, so later stages skip the encoder.

    CACHE/meta.json                 grid size, codebook size, count, the dVAE it came from
    CACHE/codes_00000.safetensors   {"codes": (N, h, w) uint16 (int32 when K > 65536)}
    CACHE/captions_00000.json       [[caption, ...], ...]: every caption of each image

Each item is (codes (h, w) int64, caption): one caption drawn per epoch in training.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch.utils.data import Dataset

from dalle1.data.transforms import pick_caption


class TokenCacheDataset(Dataset):
    def __init__(self, folder: str | Path, train: bool = True, seed: int = 0) -> None:
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{str(self.folder)!r} is not a token cache: meta.json missing")
        self.meta = json.loads(meta_path.read_text())
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

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        rng = random.Random(f"{self.seed}/{self.epoch}/{index}") if self.train else None
        return self.codes[index].long(), pick_caption(self.captions[index], rng)
