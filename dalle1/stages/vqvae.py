"""`python train.py vqvae`: train the discrete VAE, the image tokenizer (vqvae/; the objective is
vqvae/objective.py). On many processes (`torchrun`) the Gumbel noise is seeded per image and the
dead-code restarts see the code usage and encoder features of the whole global batch, so N
processes train the weights of one."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset

from dalle1.data import open_source
from dalle1.images import make_grid
from dalle1.stages import Stage
from dalle1.training import OptimConfig, TrainConfig, Trainer
from dalle1.training.distributed import all_gather_cat, all_reduce_sum
from vqvae import DiscreteVAE, DVAEConfig, DVAELossConfig, dvae_loss
from vqvae.losses import codebook_usage, map_pixels, psnr

logger = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Where the images come from. Captions are read but not used by this stage."""

    source: str = "data/shapes/train"  # a folder of images with captions, or tar shards
    eval_source: str | None = None  # held-out images for PSNR and previews; None: from source
    eval_images: int = 64  # size of the held-out batch


@dataclass
class VQVAERunConfig:
    model: DVAEConfig = field(default_factory=DVAEConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: DVAELossConfig = field(default_factory=DVAELossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(run_dir="runs/vqvae", ema_decay=0.999)
    )


def held_out_batch(config: VQVAERunConfig) -> torch.Tensor:
    """(N, 3, S, S) centre-cropped images for evaluation."""
    source = config.data.eval_source or config.data.source
    dataset = open_source(source, config.model.image_size, train=False, seed=config.train.seed)
    images, _ = next(iter(DataLoader(dataset, batch_size=config.data.eval_images)))
    return images


def step_seed(config: TrainConfig, step: int) -> int:
    """A seed per (run seed, step): the same draws after a resume and on any number of ranks."""
    return config.seed * 1_000_003 + step


class VQVAEStage(Stage):
    """The dVAE stage's parts: data, model, trainer, code usage, and its step and evaluation."""

    def __init__(
        self, config: VQVAERunConfig, resume: bool, restart: bool, init_from: str | None = None
    ) -> None:
        self.config = config
        torch.manual_seed(config.train.seed)
        size, seed = config.model.image_size, config.train.seed
        dataset = open_source(config.data.source, size, train=True, seed=seed)
        if not isinstance(dataset, IterableDataset):
            logger.info("training data: %d images from %s", len(dataset), config.data.source)
        self.eval_images = held_out_batch(config)
        model = DiscreteVAE(config.model)
        first_batch = next(iter(DataLoader(dataset, batch_size=config.data.eval_images)))[0]
        model.init_output_bias(first_batch)
        self.trainer = Trainer(config.train, config.optim, model, dataset, config)
        # Code use since the last restart, summed over every process; resumed with the run.
        self.usage = torch.zeros(config.model.codebook_size, device=self.trainer.device)
        self.trainer.stage_state["code_usage"] = self.usage
        self.trainer.start(resume, restart, init_from)

    def restart_dead_codes(self, images: torch.Tensor, step: int) -> None:
        dvae = self.trainer.model
        with torch.no_grad():  # the global batch's features, in rank order
            features = all_gather_cat(dvae.encoder(map_pixels(images)))
        generator = torch.Generator().manual_seed(step_seed(self.config.train, step))
        restarted = dvae.quantizer.restart_dead_codes(
            self.usage, features, self.trainer.optimizer, generator
        )
        logger.info("step %d: restarted %d unused codes", step, restarted)
        self.usage.zero_()

    def step(self, model, batch, step: int):
        trainer, restart_every = self.trainer, self.config.loss.restart_dead_codes_every
        images = batch[0].to(trainer.device, non_blocking=True)
        if restart_every and step and step % restart_every == 0:
            self.restart_dead_codes(images, step)
        first = step_seed(self.config.train, step) * 1009 + trainer.sample_offset
        seeds = [first + i for i in range(len(images))]  # by place in the global batch
        loss, metrics, codes = dvae_loss(model, images, step, self.config.loss, seeds)
        if restart_every:
            counts = torch.bincount(codes.flatten(), minlength=self.usage.numel()).float()
            self.usage.add_(all_reduce_sum(counts))
        return loss, metrics

    def evaluate(self, model: DiscreteVAE, step: int):
        images = self.eval_images.to(self.trainer.device)
        codes = model.encode(images)
        reconstructions = model.decode(codes)
        perplexity, used = codebook_usage(codes, model.codebook_size)
        shown = min(16, len(images))
        # Inputs in odd columns, their hard-code reconstructions beside them.
        pairs = torch.stack([images[:shown].float(), reconstructions[:shown].float()], 1)
        scalars = {"loss": F.mse_loss(reconstructions, images).item()}  # pixels in [0, 1]
        scalars |= {"psnr": psnr(reconstructions, images), "perplexity": perplexity}
        scalars["codes_used"] = used
        return scalars, {"reconstructions": make_grid(pairs.flatten(0, 1), columns=8)}


train_vqvae = VQVAEStage.train
