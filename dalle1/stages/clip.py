"""`python train.py clip`: train the CLIP reranker on captioned images.

Logs the contrastive loss, the temperature and, on a held-out batch, the text -> image and
image -> text top-1 retrieval accuracy among the batch. With `data.hard_negative_groups`, each
image also meets an altered copy of its caption (`negative_accuracy`: how often it prefers its
own); with `data.mirror_words` (`data.flip_words`), scenes whose captions say left or right
(above or below) also join the batch mirrored left to right (flipped top to bottom).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader

from dalle1.caption_negatives import CaptionNegatives, caption_words, mirror_caption
from dalle1.clip import CLIP, CLIPConfig
from dalle1.data import open_source
from dalle1.tokenizer import TextTokenizer
from dalle1.training import OptimConfig, TrainConfig, Trainer

logger = logging.getLogger(__name__)


@dataclass
class CLIPDataConfig:
    source: str = "data/shapes/train"  # image folder or tar shards
    eval_source: str | None = None  # held-out images for retrieval accuracy; None: from source
    eval_images: int = 64
    tokenizer: str = "runs/tokenizer.model"  # from `train.py tokenizer`
    # Groups of interchangeable words, e.g. [[red, green, blue], [left, right]]: each caption
    # gets an altered copy (two words of a group swapped, or one replaced) as a hard negative
    # for its image; see dalle1/caption_negatives.py. Empty: off.
    hard_negative_groups: list[list[str]] = field(default_factory=list)
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


def load_tokenizer(path: str, text_length: int, model_vocab: int) -> TextTokenizer:
    """The tokenizer a model was (or will be) trained with; its vocabulary must match."""
    tokenizer = TextTokenizer(path, text_length)
    if model_vocab and model_vocab != tokenizer.vocab_size:
        raise ValueError(
            f"the tokenizer {path!r} has {tokenizer.vocab_size} ids but the model expects "
            f"text_vocab_size {model_vocab}"
        )
    return tokenizer


def retrieval_accuracy(model: CLIP, images: torch.Tensor, text: torch.Tensor) -> dict:
    """Top-1 accuracy of matching each caption to its image among the batch, and back."""
    similarity = model.encode_text(text) @ model.encode_images(images).t()
    labels = torch.arange(len(similarity), device=similarity.device)
    return {
        "text_to_image": (similarity.argmax(1) == labels).float().mean().item(),
        "image_to_text": (similarity.argmax(0) == labels).float().mean().item(),
    }


def add_mirrored(
    images: torch.Tensor,
    captions: list[str],
    pairs: list[list[str]],
    dim: int = -1,
    unless: list[str] | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """(B, 3, S, S) images and their captions, followed by the mirror along `dim` (-1: left to
    right, -2: top to bottom) of each one whose caption changes under it (see mirror_caption)
    and holds no word of `unless`: (B + M, 3, S, S), B + M captions."""
    mirrored = [
        mirror_caption(c, pairs) if set(caption_words(c)).isdisjoint(unless or ()) else None
        for c in captions
    ]
    keep = [i for i, m in enumerate(mirrored) if m is not None]
    if not keep:
        return images, captions
    flipped = images[keep].flip(dim)
    return torch.cat([images, flipped]), captions + [mirrored[i] for i in keep]


def train_clip(config: CLIPRunConfig, resume: bool = False) -> Trainer:
    torch.manual_seed(config.train.seed)
    tokenizer = load_tokenizer(
        config.data.tokenizer, config.model.text_length, config.model.text_vocab_size
    )
    config.model.text_vocab_size = tokenizer.vocab_size
    size = config.model.image_size
    dataset = open_source(config.data.source, size, train=True, seed=config.train.seed)
    eval_source = config.data.eval_source or config.data.source
    eval_set = open_source(eval_source, size, train=False, seed=config.train.seed)
    eval_images, eval_captions = next(
        iter(DataLoader(eval_set, batch_size=config.data.eval_images))
    )
    eval_text = tokenizer.encode_batch(list(eval_captions))
    trainer = Trainer(config.train, config.optim, CLIP(config.model), dataset, config)
    if resume and not trainer.resume():
        logger.info("no checkpoint in %s: starting from scratch", trainer.checkpoint_root)

    data = config.data
    negatives = CaptionNegatives(data.hard_negative_groups)

    def step_fn(model: CLIP, batch, step: int):
        images, captions = batch
        captions = list(captions)
        if data.mirror_words:
            images, captions = add_mirrored(images, captions, data.mirror_words)
        if data.flip_words:
            images, captions = add_mirrored(
                images, captions, data.flip_words, dim=-2, unless=data.flip_unless
            )
        text = tokenizer.encode_batch(captions).to(trainer.device)
        images = images.to(trainer.device)
        if not data.hard_negative_groups:
            return model(images, text)
        # Seeded by (seed, step): the same negatives after a resume.
        rng = random.Random(config.train.seed * 1_000_003 + step)
        altered = [negatives.make(c, rng) for c in captions]
        has_negative = torch.tensor([a is not None for a in altered], device=trainer.device)
        negative_text = tokenizer.encode_batch([a or "" for a in altered]).to(trainer.device)
        return model(images, text, negative_text, has_negative)

    def eval_fn(model: CLIP, step: int):
        accuracy = retrieval_accuracy(
            model, eval_images.to(trainer.device), eval_text.to(trainer.device)
        )
        return accuracy, {}

    trainer.fit(step_fn, eval_fn)
    return trainer
