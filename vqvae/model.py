"""The discrete VAE that turns an image into a grid of codes and back (Ramesh et al. 2021, 2.1).

Encoder: 7x7 conv, then `num_groups` groups of bottleneck residual blocks at widths n, 2n, 4n, 8n
with a 2x2 max-pool after every group but the last, then ReLU and a 1x1 conv to K logits per cell.
Decoder: a 1x1 conv from K one-hot channels to `embed_dim` (the codebook), groups at widths
8n, 4n, 2n, n with 2x nearest upsampling after every group but the last, then ReLU and a 1x1 conv
to 6 channels: a logit-Laplace location and log-scale per RGB channel. Every residual branch is
scaled by 1 / L^2 (L = groups x blocks) so that the deep stack starts close to the identity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vqvae.losses import map_pixels, unmap_pixels
from vqvae.pretrained import Pretrained
from vqvae.quantizer import gumbel_softmax, hard_codes


@dataclass
class DVAEConfig:
    """Shape of the dVAE. The paper's release: 256 px, n = 256, 4 groups of 2 blocks, K = 8192."""

    image_size: int = 256  # side of the square input, pixels
    base_width: int = 256  # n: the groups have widths n, 2n, 4n, 8n, ...
    num_groups: int = 4  # every group but the last halves the grid: factor 2^(groups - 1)
    blocks_per_group: int = 2  # residual blocks per group
    codebook_size: int = 8192  # K, codes per cell
    embed_dim: int = 128  # width of a codebook vector (the decoder's 1x1 conv from K channels)
    straight_through: bool = False  # decoder sees hard one-hot samples in training (soft gradients)
    # gumbel: the paper's relaxation, the encoder gives K logits per cell. vq: the encoder gives an
    # embed_dim vector per cell and takes the nearest codebook vector by cosine similarity
    # (straight-through gradients, as in VQ-VAE with l2-normalised codes); trains faster on CPU.
    quantizer: str = "gumbel"

    def __post_init__(self) -> None:
        for name in ("image_size", "base_width", "num_groups", "blocks_per_group", "embed_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be at least 2, got {self.codebook_size}")
        if self.quantizer not in ("gumbel", "vq"):
            raise ValueError(f"quantizer must be gumbel or vq, got {self.quantizer!r}")
        if self.image_size % self.downsample:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by the downsampling factor "
                f"{self.downsample} (2^(num_groups - 1))"
            )

    @property
    def residual_gain(self) -> float:
        """1 / L^2 with L = groups x blocks: the deep stack starts close to the identity."""
        return 1.0 / (self.num_groups * self.blocks_per_group) ** 2

    @property
    def downsample(self) -> int:
        return 2 ** (self.num_groups - 1)

    @property
    def grid_size(self) -> int:
        """Side of the code grid: image_size / 2^(num_groups - 1)."""
        return self.image_size // self.downsample

    @property
    def widths(self) -> list[int]:
        return [self.base_width * 2**g for g in range(self.num_groups)]


class ResidualBlock(nn.Module):
    """x + gain * branch(x), pre-activation bottleneck branch (hidden width = out / 4).

    kernels: the kernel sizes of the four convs of the branch, each after a ReLU.
    """

    def __init__(self, in_width: int, out_width: int, gain: float, kernels: tuple[int, ...]):
        super().__init__()
        hidden = max(out_width // 4, 1)
        widths = [in_width, hidden, hidden, hidden, out_width]
        layers: list[nn.Module] = []
        for k, (a, b) in zip(kernels, zip(widths[:-1], widths[1:], strict=True), strict=True):
            layers += [nn.ReLU(), nn.Conv2d(a, b, k, padding=k // 2)]
        self.branch = nn.Sequential(*layers)
        self.skip = nn.Identity() if in_width == out_width else nn.Conv2d(in_width, out_width, 1)
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.gain * self.branch(x)


class Encoder(nn.Module):
    """(B, 3, H, W) mapped pixels -> (B, K, h, w) logits (gumbel) or (B, E, h, w) vectors (vq)."""

    def __init__(self, config: DVAEConfig):
        super().__init__()
        gain = config.residual_gain
        layers: list[nn.Module] = [nn.Conv2d(3, config.base_width, 7, padding=3)]
        width = config.base_width
        for g, group_width in enumerate(config.widths):
            for _ in range(config.blocks_per_group):
                layers.append(ResidualBlock(width, group_width, gain, kernels=(3, 3, 3, 1)))
                width = group_width
            if g < config.num_groups - 1:
                layers.append(nn.MaxPool2d(2))
        out = config.codebook_size if config.quantizer == "gumbel" else config.embed_dim
        layers += [nn.ReLU(), nn.Conv2d(width, out, 1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Decoder(nn.Module):
    """(B, K, h, w) one-hot or relaxed codes -> (B, 6, H, W): mu and ln b per RGB channel."""

    def __init__(self, config: DVAEConfig):
        super().__init__()
        gain = config.residual_gain
        self.codebook = nn.Conv2d(config.codebook_size, config.embed_dim, 1)
        self.normalized = config.quantizer == "vq"
        layers: list[nn.Module] = []
        width = config.embed_dim
        for g, group_width in enumerate(reversed(config.widths)):
            for _ in range(config.blocks_per_group):
                layers.append(ResidualBlock(width, group_width, gain, kernels=(1, 3, 3, 3)))
                width = group_width
            if g < config.num_groups - 1:
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        layers += [nn.ReLU(), nn.Conv2d(width, 6, 1)]
        self.layers = nn.Sequential(*layers)

    def codebook_vectors(self) -> torch.Tensor:
        """(K, E): the vector of each code (unit length for the vq quantizer)."""
        table = self.codebook.weight[:, :, 0, 0].t()
        return F.normalize(table, dim=1) if self.normalized else table + self.codebook.bias

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) int64 -> (B, E, h, w): the 1x1 conv of a one-hot input, as a lookup."""
        return F.embedding(codes, self.codebook_vectors()).permute(0, 3, 1, 2)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(self.codebook(z))


class DVAEOutput(NamedTuple):
    logits: torch.Tensor  # (B, K, h, w) encoder logits (vq: cosine similarities)
    mu: torch.Tensor  # (B, 3, H, W) logit-Laplace location
    log_b: torch.Tensor  # (B, 3, H, W) logit-Laplace log-scale
    codes: torch.Tensor  # (B, h, w) int64 argmax codes
    vq_loss: torch.Tensor | None = None  # vq: codebook + 0.25 * commitment loss, else None


class DiscreteVAE(Pretrained, nn.Module):
    """The image tokenizer: encode (B, 3, H, W) in [0, 1] -> (B, h, w) codes, and decode back."""

    config_class, kind = DVAEConfig, "dVAE"

    def __init__(self, config: DVAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
                nn.init.normal_(module.weight, std=1.0 / math.sqrt(fan_in))
                nn.init.zeros_(module.bias)

    @torch.no_grad()
    def init_output_bias(self, images: torch.Tensor) -> None:
        """Start the decoder's output at the mean colour of `images` (B, 3, H, W) in [0, 1].

        A data-dependent init, like a classifier bias set to the log prior: otherwise the first
        updates all push every cell towards the mean colour (white on mostly-white images), the
        encoder's softmax saturates on one code, and its gradients vanish before it has learned
        anything.
        """
        mean = map_pixels(images.float().mean(dim=(0, 2, 3)))  # (3,)
        self.decoder.layers[-1].bias[:3] = torch.log(mean) - torch.log1p(-mean)

    def _check_images(self, images: torch.Tensor) -> None:
        size = self.config.image_size
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2:] != (size, size):
            raise ValueError(
                f"expected images of shape (B, 3, {size}, {size}), got {tuple(images.shape)}"
            )
        if not images.is_floating_point():
            raise ValueError(f"expected float images in [0, 1], got dtype {images.dtype}")

    def forward(
        self, images: torch.Tensor, tau: float, generator: torch.Generator | None = None
    ) -> DVAEOutput:
        """Training pass with the Gumbel-softmax relaxation at temperature tau.

        images: (B, 3, H, W) float in [0, 1].
        """
        self._check_images(images)
        if self.config.quantizer == "vq":
            return self._forward_vq(images)
        logits = self.encoder(map_pixels(images))
        z = gumbel_softmax(logits, tau, generator, self.config.straight_through)
        mu, log_b = self.decoder(z).chunk(2, dim=1)
        return DVAEOutput(logits, mu, log_b, hard_codes(logits))

    def _forward_vq(self, images: torch.Tensor) -> DVAEOutput:
        vectors = F.normalize(self.encoder(map_pixels(images)).float(), dim=1)  # (B, E, h, w)
        similarity = torch.einsum("behw,ke->bkhw", vectors, self.decoder.codebook_vectors())
        codes = hard_codes(similarity)
        quantized = self.decoder.embed_codes(codes)
        # Codebook term pulls codes to the encoder's vectors; commitment the other way, weaker.
        vq_loss = F.mse_loss(quantized, vectors.detach()) + 0.25 * F.mse_loss(
            vectors, quantized.detach()
        )
        straight_through = vectors + (quantized - vectors).detach()
        mu, log_b = self.decoder.layers(straight_through).chunk(2, dim=1)
        return DVAEOutput(similarity, mu, log_b, codes, vq_loss)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] -> (B, h, w) int64 codes (argmax, no noise)."""
        self._check_images(images)
        out = self.encoder(map_pixels(images))
        if self.config.quantizer == "vq":
            table = self.decoder.codebook_vectors()
            out = torch.einsum("behw,ke->bkhw", F.normalize(out.float(), dim=1), table.float())
        return hard_codes(out)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) int codes -> (B, 3, H, W) float images in [0, 1]."""
        grid, size = self.config.grid_size, self.config.codebook_size
        if codes.ndim != 3 or codes.shape[1:] != (grid, grid):
            raise ValueError(
                f"expected codes of shape (B, {grid}, {grid}), got {tuple(codes.shape)}"
            )
        if codes.is_floating_point() or codes.is_complex():
            raise ValueError(f"expected integer codes, got dtype {codes.dtype}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= size):
            raise ValueError(f"codes must lie in [0, {size}), got [{codes.min()}, {codes.max()}]")
        embedded = self.decoder.embed_codes(codes.long())
        mu = self.decoder.layers(embedded)[:, :3]
        return unmap_pixels(torch.sigmoid(mu.float()))
