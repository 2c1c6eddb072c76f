"""`python train.py clip`: train the CLIP reranker on captioned images.

Logs the contrastive loss, the temperature and, on a held-out batch, the text -> image and
image -> text top-1 retrieval accuracy among the batch. With `data.hard_negative_groups`, each
image also meets an altered copy of its caption (`negative_accuracy`: how often it prefers its
own); with `data.mirror_words` (`data.flip_words`), scenes whose captions say left or right
(above or below) also join the batch mirrored left to right (flipped top to bottom).

On many processes (`torchrun`) the contrastive loss is that of the whole global batch: each
process scores its own rows against every process's embeddings.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from dalle1.caption_negatives import CaptionNegatives, caption_words, mirror_caption
from dalle1.clip import CLIP, CLIPConfig, contrastive_loss
from dalle1.data import open_source
from dalle1.stages import Stage
from dalle1.tokenizer import TextTokenizer
from dalle1.training import OptimConfig, TrainConfig, Trainer
from dalle1.training.distributed import all_gather_cat

logger = logging.getLogger(__name__)


@dataclass
class CLIPDataConfig:
    source: str = "data/shapes/train"  # image folder or tar shards
    eval_source: str | None = None  # held-out images for retrieval accuracy; None: from source
    eval_images: int = 64
    text_tokenizer: str = "runs/tokenizer.model"  # from `train.py tokenizer`
    # Groups of interchangeable words, e.g. [[red, green, blue], [left, right]]: each caption
    # gets an altered copy (two words of a group swapped, or one replaced) as a hard negative
    # for its image; see dalle1/caption_negatives.py. Empty: off.
    hard_negative_groups: list[list[str]] = field(default_factory=list)
    # Captions that no group changes get a copy with two of their words swapped (any captions).
    word_swap_negatives: bool = False
    # Word pairs a left-right mirror swaps, e.g. [[left, right]]: each image whose caption holds
    # one joins the batch flipped, with the words swapped. Empty: off.
    mirror_words: list[list[str]] = field(default_factory=list)
    # The same top to bottom, e.g. [[top, bottom], [above, below]], except for captions holding
    # a word of flip_unless (what a flip makes false, e.g. a triangle turned over). Empty: off.
    flip_words: list[list[str]] = field(default_factory=list)
    flip_unless: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for pair in self.mirror_words + self.flip_words:
            if len(pair) != 2 or pair[0] == pair[1]:
                raise ValueError(
                    f"mirror_words and flip_words take pairs of two different words, got {pair}"
                )


@dataclass
class CLIPRunConfig:
    model: CLIPConfig = field(default_factory=CLIPConfig)
    data: CLIPDataConfig = field(default_factory=CLIPDataConfig)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            lr=5e-4, final_lr=1e-5, warmup_steps=100, betas=[0.9, 0.98], weight_decay=0.1
        )
    )
    train: TrainConfig = field(default_factory=lambda: TrainConfig(run_dir="runs/clip"))


def retrieval_accuracy(model: CLIP, images: torch.Tensor, text: torch.Tensor) -> dict:
    """Top-1 accuracy of matching each caption to its image among the batch, and back; and
    the symmetric contrastive loss over the batch (the held-out loss)."""
    similarity = model.encode_text(text) @ model.encode_images(images).t()
    labels = torch.arange(len(similarity), device=similarity.device)
    logits = similarity * model.log_scale.clamp(max=math.log(100)).exp()
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    return {
        "loss": loss.item(),
        "text_to_image": (similarity.argmax(1) == labels).float().mean().item(),
        "image_to_text": (similarity.argmax(0) == labels).float().mean().item(),
    }


def add_mirrored(
    images: torch.Tensor,
    captions: list[str],
    pairs: list[list[str]],
    dim: int = -1,
    unless: list[str] | None = None,
) -> tuple[torch.Tensor, list[str], list[int]]:
    """(B, 3, S, S) images and their captions, followed by the mirror along `dim` (-1: left to
    right, -2: top to bottom) of each one whose caption changes under it (see mirror_caption)
    and holds no word of `unless`: (B + M, 3, S, S), B + M captions, and the M indices mirrored."""
    mirrored = [
        mirror_caption(c, pairs) if set(caption_words(c)).isdisjoint(unless or ()) else None
        for c in captions
    ]
    keep = [i for i, m in enumerate(mirrored) if m is not None]
    if not keep:
        return images, captions, keep
    flipped = images[keep].flip(dim)
    return torch.cat([images, flipped]), captions + [mirrored[i] for i in keep], keep


def training_batch(images: torch.Tensor, captions: list[str], ids: list[int], data: CLIPDataConfig):
    """The batch with its mirrored and flipped scenes, and an id per row that names the scene
    and its variant (4 x index in the global batch, + 1 mirrored, + 2 flipped), so that what
    is drawn for a row does not depend on which process holds it."""
    if data.mirror_words:
        images, captions, kept = add_mirrored(images, captions, data.mirror_words)
        ids = ids + [ids[i] + 1 for i in kept]
    if data.flip_words:
        images, captions, kept = add_mirrored(
            images, captions, data.flip_words, dim=-2, unless=data.flip_unless
        )
        ids = ids + [ids[i] + 2 for i in kept]
    return images, captions, ids


class CLIPStage(Stage):
    """The CLIP stage's parts: tokenizer, data, trainer, and its step and evaluation."""

    def __init__(
        self, config: CLIPRunConfig, resume: bool, restart: bool, init_from: str | None = None
    ) -> None:
        torch.manual_seed(config.train.seed)
        data = config.data
        self.tokenizer = TextTokenizer.load(
            data.text_tokenizer, config.model.text_length, config.model.text_vocab_size
        )
        model_config = replace(config.model, text_vocab_size=self.tokenizer.vocab_size)
        self.config = config = replace(config, model=model_config)
        size, seed = model_config.image_size, config.train.seed
        dataset = open_source(data.source, size, train=True, seed=seed)
        eval_set = open_source(data.eval_source or data.source, size, train=False, seed=seed)
        loader = DataLoader(eval_set, batch_size=data.eval_images)
        self.eval_images, eval_captions = next(iter(loader))
        self.eval_text = self.tokenizer.encode_batch(list(eval_captions))
        self.trainer = Trainer(config.train, config.optim, CLIP(model_config), dataset, config)
        self.trainer.start(resume, restart, init_from)
        self.negatives = CaptionNegatives(data.hard_negative_groups, data.word_swap_negatives)

    def altered_captions(self, captions: list[str], ids: list[int], step: int) -> torch.Tensor:
        """(B, T) ids of each caption's hard negative (padding-only where it has none) and
        (B,) bool: which have one. Seeded by (seed, step, row id): the same after a resume and
        on any number of processes."""
        seed = self.config.train.seed * 1_000_003 + step
        altered = [
            self.negatives.make(c, random.Random(seed * 1009 + i))
            for c, i in zip(captions, ids, strict=True)
        ]
        has_negative = torch.tensor([a is not None for a in altered])
        return self.tokenizer.encode_batch([a or "" for a in altered]), has_negative

    def step(self, model: CLIP, batch, step: int):
        trainer, device = self.trainer, self.trainer.device
        images, captions = batch
        first = trainer.sample_offset
        ids = [4 * (first + i) for i in range(len(images))]
        images, captions, ids = training_batch(images, list(captions), ids, self.config.data)
        rows = len(images)
        text = self.tokenizer.encode_batch(captions)
        if self.config.data.hard_negative_groups or self.config.data.word_swap_negatives:
            negative_text, has_negative = self.altered_captions(captions, ids, step)
            text = torch.cat([text, negative_text])
        out = model(images.to(device), text.to(device))
        # The loss of the whole global batch: every process's embeddings, gradients to its own.
        sizes = all_gather_cat(torch.tensor([rows], device=device))
        first_row = int(sizes[: trainer.rank].sum())
        negative_emb = negative_mask = None
        if len(out.text) > rows:
            negative_emb = all_gather_cat(out.text[rows:], with_grad=True)
            negative_mask = all_gather_cat(has_negative.byte().to(device)).bool()
        loss, metrics = contrastive_loss(
            all_gather_cat(out.images, with_grad=True),
            all_gather_cat(out.text[:rows], with_grad=True),
            out.scale,
            negative_emb,
            negative_mask,
            slice(first_row, first_row + rows),
        )
        return loss * trainer.world, metrics  # DDP averages the processes' gradients

    def evaluate(self, model: CLIP, step: int):
        device = self.trainer.device
        return retrieval_accuracy(model, self.eval_images.to(device), self.eval_text.to(device)), {}


train_clip = CLIPStage.train
