"""`python train.py dalle`: train the transformer on text + image codes, on one or many processes.

The data is a token cache (`train.py encode`) or captioned images that the frozen dVAE encodes on
the fly. Captions are tokenized with BPE dropout; with `data.caption_drop` > 0 that fraction of
captions becomes the padding-only text, for classifier-free guidance at sampling. Every
`train.eval_every` steps: the held-out loss and a grid of samples for fixed captions.

Many processes: `torchrun --nproc_per_node=N train.py dalle ...` (gloo on CPU, NCCL on CUDA),
with DDP or, `train.parallel=fsdp`, sharded (dalle1/distributed.py); `train.batch_size` is the
global batch, each rank reads its own part, only rank 0 writes.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader

from dalle1.checkpoint import resolve_checkpoint
from dalle1.data import open_source
from dalle1.data.token_cache import TokenCacheDataset
from dalle1.distributed import init_distributed
from dalle1.images import make_grid
from dalle1.sampling import SamplingConfig, generate, padding_text
from dalle1.stages.clip import load_tokenizer
from dalle1.training import OptimConfig, TrainConfig, Trainer
from dalle1.transformer import DALLE, DALLEConfig
from vqvae.model import DiscreteVAE

logger = logging.getLogger(__name__)


@dataclass
class DALLEDataConfig:
    source: str = "runs/token_cache"  # token cache folder, or images encoded on the fly
    eval_source: str | None = None  # held-out cache or images for the eval loss
    eval_samples: int = 64
    vqvae: str = "runs/vqvae"  # dVAE run or checkpoint: encodes images, decodes samples
    tokenizer: str = "runs/tokenizer.model"
    clip: str | None = None  # CLIP run that `python -m dalle1 sample` reranks with
    bpe_dropout: float = 0.1  # the paper's 10%; off at sampling
    caption_drop: float = 0.0  # share of captions replaced by padding (guidance); 0 = off
    sample_captions: list[str] = field(
        default_factory=lambda: ["a small red circle in the top left", "a blue square"]
    )
    samples_per_caption: int = 4

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


def open_codes(source: str, dvae: DiscreteVAE, train: bool, seed: int):
    """A data set of (codes (h, w), caption): a token cache as is, images through the dVAE."""
    if os.path.isdir(source) and os.path.isfile(os.path.join(source, "meta.json")):
        dataset = TokenCacheDataset(source, train=train, seed=seed)
        grid = dataset.codes.shape[-1]
        if grid != dvae.config.grid_size:
            raise ValueError(
                f"token cache {source!r} has {grid}x{grid} codes but the dVAE makes "
                f"{dvae.config.grid_size}x{dvae.config.grid_size}"
            )
        return dataset, False
    return open_source(source, dvae.config.image_size, train=train, seed=seed), True


def check_model_fits(config: DALLEConfig, dvae: DiscreteVAE, text_vocab: int) -> None:
    """Fill the sizes that come from the dVAE and tokenizer; refuse ones that disagree."""
    for key, value in (
        ("image_grid", dvae.config.grid_size),
        ("image_vocab_size", dvae.config.codebook_size),
        ("text_vocab_size", text_vocab),
    ):
        given = getattr(config, key)
        if given and given != value:
            raise ValueError(f"model.{key} is {given} but the dVAE / tokenizer gives {value}")
        setattr(config, key, value)


def train_dalle(config: DALLERunConfig, resume: bool = False) -> Trainer:
    init_distributed()
    torch.manual_seed(config.train.seed)
    dvae = DiscreteVAE.from_pretrained(resolve_checkpoint(config.data.vqvae)).eval()
    data = config.data
    tokenizer = load_tokenizer(data.tokenizer, config.model.text_length, 0)
    check_model_fits(config.model, dvae, tokenizer.vocab_size)
    dataset, encode_images = open_codes(data.source, dvae, True, config.train.seed)
    eval_set, eval_encode = open_codes(
        data.eval_source or data.source, dvae, False, config.train.seed
    )
    model = DALLE(config.model)
    trainer = Trainer(config.train, config.optim, model, dataset, config)
    trainer.tokens_per_sample = config.model.layout.length
    dvae = dvae.to(trainer.device)
    if resume and not trainer.resume():
        logger.info("no checkpoint in %s: starting from scratch", trainer.checkpoint_root)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "transformer: %.2fM parameters, %d positions", n_params / 1e6, config.model.layout.length
    )

    def to_inputs(batch, encode: bool, dropout: float, seed: int | None):
        images_or_codes, captions = batch
        if encode:
            codes = dvae.encode(images_or_codes.to(trainer.device))
        else:
            codes = images_or_codes.to(trainer.device)
        text = torch.stack(
            [
                tokenizer.encode(c, dropout, None if seed is None else seed + i)
                for i, c in enumerate(captions)
            ]
        )
        return text.to(trainer.device), codes.flatten(1)

    def step_fn(model, batch, step: int):
        # Seeded by (seed, step, place in the global batch): BPE dropout and caption drops
        # repeat on resume and do not depend on the number of processes.
        base = (config.train.seed * 1_000_003 + step) * 1009 + trainer.rank * trainer.local_batch
        text, codes = to_inputs(batch, encode_images, data.bpe_dropout, base)
        if data.caption_drop > 0:
            draws = [random.Random(base + i).random() for i in range(len(text))]
            dropped = torch.tensor([d < data.caption_drop for d in draws])
            text[dropped] = padding_text(trainer.model, 1, text.device)
        out = model(text, codes)
        return out.loss, {"text_loss": out.text_loss.item(), "image_loss": out.image_loss.item()}

    eval_batch = next(iter(DataLoader(eval_set, batch_size=data.eval_samples)))
    eval_text, eval_codes = to_inputs(eval_batch, eval_encode, 0.0, None)
    sample_text = tokenizer.encode_batch(
        [c for c in data.sample_captions for _ in range(data.samples_per_caption)]
    )

    def eval_fn(model: DALLE, step: int):
        out = model(eval_text, eval_codes)
        scalars = {"text_loss": out.text_loss.item(), "image_loss": out.image_loss.item()}
        grids = {}
        if len(sample_text):
            generator = torch.Generator(trainer.device).manual_seed(config.train.seed)
            codes = generate(
                model, sample_text.to(trainer.device), SamplingConfig(), generator=generator
            )
            grid = config.model.image_grid
            images = dvae.decode(codes.view(-1, grid, grid))
            grids["samples"] = make_grid(images.float(), columns=data.samples_per_caption)
        return scalars, grids

    trainer.fit(step_fn, eval_fn)
    return trainer
