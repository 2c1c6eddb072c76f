"""`python train.py vqvae`: train the discrete VAE (Ramesh et al. 2021, section 2.1, appendix A).

Loss per image = logit-Laplace NLL of the pixels + beta * KL(q || uniform) of the codes, both
summed and then divided by the number of sub-pixels, so beta means what it means in the paper at
any resolution. beta ramps 0 -> kl_weight (cosine) over kl_warmup_steps; the Gumbel temperature
anneals tau_start -> tau_end (cosine) over tau_steps; the learning rate decays by cosine.

With the vq quantizer (model.quantizer=vq) the prior terms give way to the codebook and
commitment terms of VQ-VAE, and unused codes move onto encoder outputs every
restart_dead_codes_every steps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset

from dalle1.data import open_source
from dalle1.images import make_grid
from dalle1.training import OptimConfig, TrainConfig, Trainer
from vqvae.losses import (
    batch_diversity_gap,
    codebook_usage,
    gradient_mse,
    kl_to_uniform,
    logit_laplace_nll,
    map_pixels,
    psnr,
    unmap_pixels,
)
from vqvae.model import DiscreteVAE, DVAEConfig
from vqvae.quantizer import restart_dead_codes, restart_dead_vectors
from vqvae.schedules import cosine_ramp

logger = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Where the images come from. Captions are read but not used by this stage."""

    source: str = "data/shapes/train"  # a folder of images with captions, or tar shards
    eval_source: str | None = None  # held-out images for PSNR and previews; None: from source
    eval_images: int = 64  # size of the held-out batch


@dataclass
class DVAELossConfig:
    """The loss terms and their schedules; scale the step counts to the run's length."""

    reconstruction: str = "logit_laplace"  # logit_laplace (the paper) or mse (pixels in [0, 1])
    kl_weight: float = 6.6  # beta after warm-up (larger beta: better codebook usage)
    kl_warmup_steps: int = 5000  # cosine ramp of beta from 0
    tau_start: float = 1.0  # Gumbel-softmax temperature at step 0
    tau_end: float = 0.0625  # ... reached at tau_steps (1/16)
    tau_steps: int = 150000
    diversity_weight: float = 0.0  # weight of batch_diversity_gap, against codebook collapse
    restart_dead_codes_every: int = 0  # steps between restarts of unused codes; 0 = never
    edge_weight: float = 0.0  # weight of gradient_mse (sharper outlines); 0 = off

    def __post_init__(self) -> None:
        if self.reconstruction not in ("logit_laplace", "mse"):
            raise ValueError(
                f"reconstruction must be logit_laplace or mse, got {self.reconstruction!r}"
            )


@dataclass
class VQVAERunConfig:
    model: DVAEConfig = field(default_factory=DVAEConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: DVAELossConfig = field(default_factory=DVAELossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(run_dir="runs/vqvae", ema_decay=0.999)
    )


def dvae_loss(
    model: DiscreteVAE, images: torch.Tensor, beta: float, tau: float, loss: DVAELossConfig
) -> tuple[torch.Tensor, dict]:
    """The ELB-style loss of one batch. images: (B, 3, H, W) in [0, 1]."""
    out = model(images, tau)
    reconstruction = unmap_pixels(torch.sigmoid(out.mu.float()))
    if loss.reconstruction == "mse":
        nll = F.mse_loss(reconstruction, images.float())
    else:
        nll = logit_laplace_nll(map_pixels(images), out.mu, out.log_b)
    if out.vq_loss is not None:  # vq quantizer: codebook + commitment terms instead of a prior
        total = nll + out.vq_loss
        metrics = {"recon": nll.item(), "vq_loss": out.vq_loss.item()}
    else:
        kl = kl_to_uniform(out.logits)
        latents_per_subpixel = out.logits[0, 0].numel() / images[0].numel()  # (h w) / (3 H W)
        diversity_gap = batch_diversity_gap(out.logits)
        total = nll + beta * kl * latents_per_subpixel + loss.diversity_weight * diversity_gap
        metrics = {"recon": nll.item(), "kl": kl.item(), "diversity_gap": diversity_gap.item()}
        metrics |= {"beta": beta, "tau": tau}
    if loss.edge_weight > 0:
        edge = gradient_mse(reconstruction, images)
        total = total + loss.edge_weight * edge
        metrics["edge"] = edge.item()
    metrics["perplexity"], _ = codebook_usage(out.codes, model.config.codebook_size)
    return total, metrics | {"codes": out.codes}


def held_out_batch(config: VQVAERunConfig) -> torch.Tensor:
    """(N, 3, S, S) centre-cropped images for evaluation."""
    source = config.data.eval_source or config.data.source
    dataset = open_source(source, config.model.image_size, train=False, seed=config.train.seed)
    loader = DataLoader(dataset, batch_size=config.data.eval_images, shuffle=False)
    images, _ = next(iter(loader))
    return images


def train_vqvae(config: VQVAERunConfig, resume: bool = False) -> Trainer:
    torch.manual_seed(config.train.seed)
    dataset = open_source(
        config.data.source, config.model.image_size, train=True, seed=config.train.seed
    )
    if not isinstance(dataset, IterableDataset):
        logger.info("training data: %d images from %s", len(dataset), config.data.source)
    eval_images = held_out_batch(config)
    model = DiscreteVAE(config.model)
    first_batch = next(iter(DataLoader(dataset, batch_size=config.data.eval_images)))[0]
    model.init_output_bias(first_batch)
    model = model.to(memory_format=torch.channels_last)
    trainer = Trainer(config.train, config.optim, model, dataset, config)
    loss_config = config.loss

    restart_every = loss_config.restart_dead_codes_every
    usage = torch.zeros(config.model.codebook_size, device=trainer.device)
    trainer.stage_state["code_usage"] = usage  # resumed with the run
    if resume and not trainer.resume():
        logger.info("no checkpoint in %s: starting from scratch", trainer.checkpoint_root)

    def step_fn(model: DiscreteVAE, batch, step: int):
        images = (
            batch[0]
            .to(trainer.device, non_blocking=True)
            .contiguous(memory_format=torch.channels_last)
        )
        beta = cosine_ramp(step, loss_config.kl_warmup_steps, 0.0, loss_config.kl_weight)
        tau = cosine_ramp(step, loss_config.tau_steps, loss_config.tau_start, loss_config.tau_end)
        if restart_every and step and step % restart_every == 0:
            if config.model.quantizer == "vq":  # onto encoder vectors of this batch
                with torch.no_grad():
                    vectors = F.normalize(model.encoder(map_pixels(images)).float(), dim=1)
                restarted = restart_dead_vectors(
                    model.decoder.codebook, usage, vectors, trainer.optimizer
                )
            else:
                restarted = restart_dead_codes(
                    model.encoder.layers[-1], model.decoder.codebook, usage, trainer.optimizer
                )
            logger.info("step %d: restarted %d unused codes", step, restarted)
            usage.zero_()
        loss, metrics = dvae_loss(model, images, beta, tau, loss_config)
        if restart_every:
            usage.add_(torch.bincount(metrics.pop("codes").flatten(), minlength=usage.numel()))
        else:
            metrics.pop("codes")
        return loss, metrics

    def eval_fn(model: DiscreteVAE, step: int):
        images = eval_images.to(trainer.device)
        codes = model.encode(images)
        reconstructions = model.decode(codes)
        perplexity, used = codebook_usage(codes, config.model.codebook_size)
        shown = min(16, len(images))
        # Inputs in odd columns, their hard-code reconstructions beside them.
        pairs = torch.stack([images[:shown].float(), reconstructions[:shown].float()], 1).flatten(
            0, 1
        )
        scalars = {
            "psnr": psnr(reconstructions, images),
            "perplexity": perplexity,
            "codes_used": used,
        }
        return scalars, {"reconstructions": make_grid(pairs, columns=8)}

    trainer.fit(step_fn, eval_fn)
    return trainer
