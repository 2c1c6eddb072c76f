"""The discrete VAE that turns an image into a grid of codes and back (Ramesh et al. 2021, 2.1).

Encoder: 7x7 conv, then `num_groups` groups of bottleneck residual blocks at widths n, 2n, 4n, 8n
with a 2x2 max-pool after every group but the last, then ReLU. Quantizer (vqvae/quantizer.py): a
1x1 conv to K logits per cell and the codebook (the paper's 1x1 conv from K one-hot channels to
`code_width`), or nearest-neighbour VQ. Decoder: groups at widths 8n, 4n, 2n, n with 2x nearest
upsampling after every group but the last, then ReLU and a 1x1 conv to 6 channels: a
logit-Laplace location and log-scale per RGB channel. Every residual branch is
scaled by 1 / L^2 (L = groups x blocks) so that the deep stack starts close to the identity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from pretrained import Pretrained
from vqvae.losses import map_pixels, unmap_pixels
from vqvae.quantizer import QUANTIZERS, VectorQuantizer


@dataclass
class DVAEConfig:
    """Shape of the dVAE. The paper's release: 256 px, n = 256, 4 groups of 2 blocks, K = 8192."""

    image_size: int = 256  # side of the square input, pixels
    width: int = 256  # n: the groups have widths n, 2n, 4n, 8n, ...
    num_groups: int = 4  # every group but the last halves the grid: factor 2^(groups - 1)
    blocks_per_group: int = 2  # residual blocks per group
    codebook_size: int = 8192  # K, codes per cell
    code_width: int = 128  # E, width of a codebook vector (what the decoder reads per cell)
    # gumbel: the paper's relaxation (K logits per cell); vq: nearest unit-length codebook
    # vector by cosine similarity, straight-through gradients (see vqvae/quantizer.py)
    quantizer: str = "gumbel"

    def __post_init__(self) -> None:
        for name in ("image_size", "width", "num_groups", "blocks_per_group", "code_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be at least 2, got {self.codebook_size}")
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {list(QUANTIZERS)}, got {self.quantizer!r}")
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
    def grid(self) -> int:
        """Side of the code grid: image_size / 2^(num_groups - 1)."""
        return self.image_size // self.downsample

    @property
    def widths(self) -> list[int]:
        return [self.width * 2**g for g in range(self.num_groups)]


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
        return torch.add(self.skip(x), self.branch(x), alpha=self.gain)  # one pass over the sum


class Encoder(nn.Module):
    """(B, 3, H, W) mapped pixels -> (B, 8n, h, w) features (after the final ReLU); the
    quantizer's 1x1 conv turns them into logits or vectors."""

    def __init__(self, config: DVAEConfig):
        super().__init__()
        gain = config.residual_gain
        layers: list[nn.Module] = [nn.Conv2d(3, config.width, 7, padding=3)]
        width = config.width
        for g, group_width in enumerate(config.widths):
            for _ in range(config.blocks_per_group):
                layers.append(ResidualBlock(width, group_width, gain, kernels=(3, 3, 3, 1)))
                width = group_width
            if g < config.num_groups - 1:
                layers.append(nn.MaxPool2d(2))
        layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Decoder(nn.Module):
    """(B, E, h, w) code vectors -> (B, 6, H, W): mu and ln b per RGB channel."""

    def __init__(self, config: DVAEConfig):
        super().__init__()
        gain = config.residual_gain
        layers: list[nn.Module] = []
        width = config.code_width
        for g, group_width in enumerate(reversed(config.widths)):
            for _ in range(config.blocks_per_group):
                layers.append(ResidualBlock(width, group_width, gain, kernels=(1, 3, 3, 3)))
                width = group_width
            if g < config.num_groups - 1:
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        layers += [nn.ReLU(), nn.Conv2d(width, 6, 1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        return self.layers(vectors)


class DVAEOutput(NamedTuple):
    scores: torch.Tensor  # (B, K, h, w) encoder logits (vq: cosine similarities)
    mu: torch.Tensor  # (B, 3, H, W) logit-Laplace location
    log_b: torch.Tensor  # (B, 3, H, W) logit-Laplace log-scale
    codes: torch.Tensor  # (B, h, w) int64 argmax codes
    quantizer_loss: torch.Tensor  # the quantizer's term: KL to the prior, or codebook + commit


class DiscreteVAE(Pretrained, nn.Module):
    """The image tokenizer: encode (B, 3, H, W) in [0, 1] -> (B, h, w) codes, and decode back."""

    config_class, label = DVAEConfig, "dVAE"

    def __init__(self, config: DVAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = QUANTIZERS[config.quantizer](
            config.widths[-1], config.codebook_size, config.code_width
        )
        self.decoder = Decoder(config)
        self._init_weights()
        # Convolutions in channels-last (NHWC) layout run about 2x faster on the CPU (oneDNN)
        # and use tensor cores on CUDA; _pixels gives the encoder its input in that layout.
        self.to(memory_format=torch.channels_last)

    # The ImageTokenizer interface (vqvae/tokenizer.py).
    image_size = property(lambda self: self.config.image_size)
    grid = property(lambda self: self.config.grid)
    codebook_size = property(lambda self: self.config.codebook_size)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
                nn.init.normal_(module.weight, std=1.0 / math.sqrt(fan_in))
                nn.init.zeros_(module.bias)
        if isinstance(self.quantizer, VectorQuantizer):  # the scale of a 1x1 conv from K
            nn.init.normal_(self.quantizer.codebook, std=1.0 / math.sqrt(self.codebook_size))

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

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1], checked -> mapped pixels in channels-last layout."""
        self._check_images(images)
        return map_pixels(images).contiguous(memory_format=torch.channels_last)

    def forward(
        self, images: torch.Tensor, tau: float = 1.0, seeds: list[int] | None = None
    ) -> DVAEOutput:
        """Training pass. images: (B, 3, H, W) float in [0, 1]; tau: the Gumbel temperature;
        seeds: one per image for the Gumbel noise (see quantizer.gumbel_softmax)."""
        quantized = self.quantizer(self.encoder(self._pixels(images)), tau, seeds)
        mu, log_b = self.decoder(quantized.vectors).chunk(2, dim=1)
        return DVAEOutput(quantized.scores, mu, log_b, quantized.codes, quantized.loss)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] -> (B, h, w) int64 codes (argmax, no noise)."""
        return self.quantizer.encode(self.encoder(self._pixels(images)))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) int codes -> (B, 3, H, W) float images in [0, 1]."""
        grid, size = self.config.grid, self.config.codebook_size
        if codes.ndim != 3 or codes.shape[1:] != (grid, grid):
            raise ValueError(
                f"expected codes of shape (B, {grid}, {grid}), got {tuple(codes.shape)}"
            )
        if codes.is_floating_point() or codes.is_complex():
            raise ValueError(f"expected integer codes, got dtype {codes.dtype}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= size):
            raise ValueError(f"codes must lie in [0, {size}), got [{codes.min()}, {codes.max()}]")
        mu = self.decoder(self.quantizer.embed(codes.long()))[:, :3]
        return unmap_pixels(torch.sigmoid(mu.float()))
