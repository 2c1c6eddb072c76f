"""The order in which a run reads its data, resumable mid-epoch and the same on any number of
processes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler


class ResumableSampler(Sampler[int]):
    """A fresh permutation per epoch, seeded by (seed, epoch), that can start mid-epoch.

    With world > 1 processes, each global batch of `global_batch` indices is cut into world
    equal parts and this rank yields its part, so that the ranks together see exactly the batches
    of a single-process run.
    """

    def __init__(
        self, size: int, seed: int, global_batch: int = 1, rank: int = 0, world: int = 1
    ) -> None:
        self.size, self.seed = size, seed
        self.global_batch, self.rank, self.world = global_batch, rank, world
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int) -> None:
        """start: the position in the epoch's permutation, counted in global samples."""
        self.epoch, self.start = epoch, start

    def _indices(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator)[self.start :]
        if self.world == 1:
            return order
        whole = len(order) // self.global_batch * self.global_batch
        per_rank = self.global_batch // self.world
        return order[:whole].view(-1, self.world, per_rank)[:, self.rank].flatten()

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices().tolist())

    def __len__(self) -> int:
        return len(self._indices())


class DataOrder:
    """Micro-batches of this rank from a saved position on, epoch after epoch.

    Each optimizer step reads one global batch: on each of the `world` ranks, its part of it
    (local_batch samples) in `accumulation` micro-batches of micro_batch samples. position:
    epoch and batch_in_epoch (optimizer steps), advanced by `advance()` after each optimizer
    step and saved with every checkpoint.
    """

    def __init__(
        self,
        dataset: Dataset | IterableDataset,
        global_batch: int,
        seed: int,
        num_workers: int,
        pin_memory: bool,
        rank: int,
        world: int,
        accumulation: int = 1,
    ) -> None:
        if global_batch % (world * accumulation):
            raise ValueError(
                f"batch_size {global_batch} is not divisible by the {world} processes x "
                f"{accumulation} accumulation steps"
            )
        self.dataset, self.global_batch, self.seed = dataset, global_batch, seed
        self.local_batch = global_batch // world
        self.accumulation, self.micro_batch = accumulation, self.local_batch // accumulation
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.sampler = None
        if not isinstance(dataset, IterableDataset):
            if len(dataset) < global_batch:
                raise ValueError(
                    f"the data set has {len(dataset)} samples, fewer than one batch of "
                    f"{global_batch}"
                )
            self.sampler = ResumableSampler(len(dataset), seed, global_batch, rank, world)
        self.epoch, self.batch_in_epoch = 0, 0

    def advance(self) -> None:
        self.batch_in_epoch += 1

    def __iter__(self) -> Iterator[Any]:
        while True:
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(self.epoch)
            skip = self.batch_in_epoch * self.accumulation  # in micro-batches
            if self.sampler is not None:
                self.sampler.set_position(self.epoch, skip * self.global_batch)
                skip = 0
            loader = DataLoader(
                self.dataset,
                batch_size=self.micro_batch,
                sampler=self.sampler,
                drop_last=True,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                # Its own generator: a loader seeds its workers from the global RNG otherwise,
                # which would shift the training noise whenever a resume starts a new loader.
                generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch),
            )
            for i, batch in enumerate(loader):
                if i >= skip:  # an iterable data set cannot seek: read past what was used
                    yield batch
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
