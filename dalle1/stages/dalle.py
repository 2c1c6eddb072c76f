"""`python train.py dalle`: train the transformer on text + image codes, on one or many processes.

The data is a token cache (`train.py encode`) or captioned images that the frozen image
tokenizer encodes on the fly. Captions are tokenized with BPE dropout; with
`data.caption_drop` > 0 that share of captions becomes the padding-only text, for
classifier-free guidance at sampling. Every `train.eval_every` steps: the held-out loss and a
grid of samples for fixed captions.

Many processes: `torchrun --nproc_per_node=N train.py dalle ...` (gloo on CPU, NCCL on CUDA),
with DDP or, `train.parallel=fsdp`, sharded (dalle1/training/distributed.py);
`train.batch_size` is the global batch, each rank reads its own part, only rank 0 writes.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from einops import rearrange
from torch.utils.data import DataLoader

from dalle1.data import TokenCacheDataset, image_source, is_token_cache, open_source
from dalle1.images import make_grid
from dalle1.sampling import SamplingConfig, generate, padding_text
from dalle1.stages import Stage
from dalle1.tokenizer import TextTokenizer
from dalle1.training import OptimConfig, TrainConfig, Trainer
from dalle1.transformer import DALLE, DALLEConfig
from pretrained.run import write_manifest
from vqvae import ImageTokenizer, load_image_tokenizer

logger = logging.getLogger(__name__)


@dataclass
class DALLEDataConfig:
    source: str = "runs/token_cache"  # token cache folder, or images encoded on the fly
    eval_source: str | None = None  # held-out cache or images for the eval loss
    eval_samples: int = 64  # held-out samples in the eval loss
    image_tokenizer: str = "runs/vqvae"  # dVAE run or model folder: encodes, decodes samples
    text_tokenizer: str = "runs/tokenizer.model"  # from `train.py tokenizer`
    clip: str | None = None  # CLIP run that `python -m dalle1 sample` reranks with
    bpe_dropout: float = 0.1  # the paper's 10%; off at sampling
    caption_drop: float = 0.0  # share of captions replaced by padding (guidance); 0 = off
    sample_captions: list[str] = field(  # captions of the preview grids
        default_factory=lambda: ["a small red circle in the top left", "a blue square"]
    )
    samples_per_caption: int = 4  # images per preview caption
    # train on each image and on its left-right mirror: twice the images, for pictures that a
    # mirror does not change the meaning of (drawings, most photos; not text). A token cache
    # must hold the mirrors (`train.py encode --mirror`; `train.py all` writes them); images
    # encoded on the fly are mirrored half of the time.
    mirror: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.bpe_dropout < 1 or not 0 <= self.caption_drop <= 1:
            raise ValueError("bpe_dropout must lie in [0, 1) and caption_drop in [0, 1]")


@dataclass
class DALLERunConfig:
    model: DALLEConfig = field(default_factory=DALLEConfig)
    data: DALLEDataConfig = field(default_factory=DALLEDataConfig)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            lr=3e-4,
            final_lr=3e-5,
            warmup_steps=100,
            betas=[0.9, 0.96],
            eps=1e-8,
            weight_decay=4.5e-2,
            grad_clip=4.0,
        )
    )
    train: TrainConfig = field(default_factory=lambda: TrainConfig(run_dir="runs/dalle"))
    # How this run is drawn from unless told otherwise: its preview grids, `python -m dalle1
    # sample | complete | eval`, the web page (whose flags and sliders override it).
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


def open_codes(source: str, image_tokenizer: ImageTokenizer, train: bool, seed: int):
    """(data set of (codes (h, w), caption) or of (image, caption), whether it needs encoding)."""
    if is_token_cache(source):
        dataset = TokenCacheDataset(source, train=train, seed=seed)
        if dataset.grid != image_tokenizer.grid:
            raise ValueError(
                f"token cache {source!r} has {dataset.grid}x{dataset.grid} codes but the image "
                f"tokenizer makes {image_tokenizer.grid}x{image_tokenizer.grid}"
            )
        return dataset, False
    return open_source(source, image_tokenizer.image_size, train=train, seed=seed), True


class DALLEStage(Stage):
    """The transformer stage's parts: tokenizers, data, trainer, and its step and evaluation."""

    def __init__(
        self, config: DALLERunConfig, resume: bool, restart: bool, init_from: str | None = None
    ) -> None:
        torch.manual_seed(config.train.seed)
        data, seed = config.data, config.train.seed
        self.image_tokenizer = load_image_tokenizer(data.image_tokenizer)
        self.text_tokenizer = TextTokenizer.load(data.text_tokenizer, config.model.text_length)
        model_config = config.model.resolved(
            self.text_tokenizer.vocab_size,
            self.image_tokenizer.grid,
            self.image_tokenizer.codebook_size,
        )
        self.config = config = replace(config, model=model_config)
        dataset, self.encode_train = open_codes(data.source, self.image_tokenizer, True, seed)
        if data.mirror and not self.encode_train and not dataset.meta.get("mirrored"):
            raise ValueError(
                f"data.mirror is set but the token cache {data.source!r} holds no mirrored "
                "images: write it with `python train.py encode --mirror` (for `train.py all`: "
                "remove that folder and run it again)"
            )
        eval_set, encode_eval = open_codes(
            data.eval_source or data.source, self.image_tokenizer, False, seed
        )
        model = DALLE(model_config)
        self.trainer = trainer = Trainer(config.train, config.optim, model, dataset, config)
        trainer.tokens_per_sample = model_config.layout.length
        self.image_tokenizer.to(trainer.device)
        trainer.start(resume, restart, init_from)
        if trainer.rank == 0:  # what sampling from this run needs, relative to it
            held_out = image_source(data.eval_source or data.source)  # pictures to complete
            write_manifest(
                config.train.run_dir,
                image_tokenizer=data.image_tokenizer,
                text_tokenizer=data.text_tokenizer,
                clip=data.clip,
                eval_data=held_out if Path(held_out).is_dir() else None,  # not tar shards
            )
        n_params = sum(p.numel() for p in model.parameters())
        logger.info(
            "transformer: %.2fM parameters, %d positions",
            n_params / 1e6,
            model_config.layout.length,
        )
        eval_batch = next(iter(DataLoader(eval_set, batch_size=data.eval_samples)))
        self.eval_text, self.eval_codes = self.to_inputs(eval_batch, encode_eval, 0.0, None)
        captions = [c for c in data.sample_captions for _ in range(data.samples_per_caption)]
        self.sample_text = self.text_tokenizer.encode_batch(captions)

    def to_inputs(self, batch, encode: bool, dropout: float, seed: int | None):
        """A batch -> ((B, T) text ids, (B, h*w) codes) on the device."""
        images_or_codes, captions = batch
        device = self.trainer.device
        codes = images_or_codes.to(device)
        if encode:
            codes = self.image_tokenizer.encode(codes)
        text = torch.stack(
            [
                self.text_tokenizer.encode(c, dropout, None if seed is None else seed + i)
                for i, c in enumerate(captions)
            ]
        )
        return text.to(device), rearrange(codes, "b h w -> b (h w)")

    def step(self, model, batch, step: int):
        trainer, data = self.trainer, self.config.data
        # Seeded by (seed, step, place in the global batch): BPE dropout and caption drops
        # repeat on resume and do not depend on the number of processes.
        base = (self.config.train.seed * 1_000_003 + step) * 1009
        base += trainer.sample_offset
        if data.mirror and self.encode_train:  # images (B, 3, H, W): half of them mirrored
            images, captions = batch
            draws = [random.Random(f"mirror/{base + i}").random() for i in range(len(images))]
            mirrored = torch.tensor(draws)[:, None, None, None] < 0.5
            batch = torch.where(mirrored, images.flip(-1), images), captions
        text, codes = self.to_inputs(batch, self.encode_train, data.bpe_dropout, base)
        if data.caption_drop > 0:
            draws = [random.Random(base + i).random() for i in range(len(text))]
            dropped = torch.tensor([d < data.caption_drop for d in draws])
            text[dropped] = padding_text(trainer.model, 1, text.device)
        out = model(text, codes)
        return out.loss, {"text_loss": out.text_loss.item(), "image_loss": out.image_loss.item()}

    def evaluate(self, model: DALLE, step: int):
        out = model(self.eval_text, self.eval_codes)
        scalars = {"loss": out.loss.item(), "text_loss": out.text_loss.item()}
        scalars["image_loss"] = out.image_loss.item()
        if not len(self.sample_text):
            return scalars, {}
        device = self.trainer.device
        generator = torch.Generator(device).manual_seed(self.config.train.seed)
        text = self.sample_text.to(device)
        codes = generate(model, text, self.config.sampling, generator=generator)
        grid = model.config.grid
        images = self.image_tokenizer.decode(rearrange(codes, "b (h w) -> b h w", h=grid))
        columns = self.config.data.samples_per_caption
        return scalars, {"samples": make_grid(images.float(), columns=columns)}


train_dalle = DALLEStage.train
