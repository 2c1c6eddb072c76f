"""OpenAI's released dVAE (the paper's own tokenizer: 256 px -> 32x32 codes, K = 8192), rebuilt.

The release is two pickles, encoder.pkl and decoder.pkl (`python -m dalle1 convert-tokenizer
--from openai-dvae`). Their module tree is mirrored here name for name, so that the weights load
as they are: convolutions hold `w` and `b`; every residual branch is scaled by 1 / L^2 (L = 4
groups x blocks). Encoder: 7x7 conv, four groups of blocks at widths n, 2n, 4n, 8n, a 2x2
max-pool after the first three, ReLU and a 1x1 conv to K logits; the code of a cell is their
argmax. Decoder: a 1x1 conv from the K one-hot channels, groups at 8n, 4n, 2n, n with 2x
nearest upsampling after the first three, ReLU and a 1x1 conv to 6 channels, of which the
sigmoid of the first 3 is the image. Pixels pass through map_pixels / unmap_pixels (eps 0.1).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pretrained import Pretrained
from vqvae.losses import map_pixels, unmap_pixels

GROUPS = 4


@dataclass
class OpenAIDVAEConfig:
    """The release: 256 px, n = 256, 2 blocks per group, K = 8192, 128 decoder input channels."""

    image_size: int = 256  # side of the square input; the grid is image_size / 8
    width: int = 256  # n_hid
    blocks_per_group: int = 2  # n_blk_per_group
    codebook_size: int = 8192  # vocab_size
    decoder_input_width: int = 128  # n_init: the decoder's first conv, from K one-hot channels

    def __post_init__(self) -> None:
        if self.image_size % 8 or self.image_size < 8:
            raise ValueError(f"image_size must be a positive multiple of 8, got {self.image_size}")
        for name in ("width", "blocks_per_group", "codebook_size", "decoder_input_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


class Conv(nn.Module):
    """A same-padded square convolution whose weights are called `w` and `b`, as released."""

    def __init__(self, n_in: int, n_out: int, kernel: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(n_out, n_in, kernel, kernel) / (n_in * kernel**2) ** 0.5)
        self.b = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.w, self.b, padding=(self.w.shape[-1] - 1) // 2)


class Block(nn.Module):
    """id_path(x) + gain * res_path(x): four ReLU-conv pairs through width n_out / 4."""

    def __init__(self, n_in: int, n_out: int, gain: float, kernels: tuple[int, ...]) -> None:
        super().__init__()
        hidden = n_out // 4
        self.gain = gain
        self.id_path = Conv(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        widths = [n_in, hidden, hidden, hidden, n_out]
        layers = []
        for i, kernel in enumerate(kernels):
            layers += [
                (f"relu_{i + 1}", nn.ReLU()),
                (f"conv_{i + 1}", Conv(*widths[i : i + 2], kernel)),
            ]
        self.res_path = nn.Sequential(OrderedDict(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.id_path(x) + self.gain * self.res_path(x)


def _group(blocks: list[Block], resample: nn.Module | None, name: str) -> nn.Sequential:
    layers = [(f"block_{i + 1}", block) for i, block in enumerate(blocks)]
    return nn.Sequential(OrderedDict(layers + ([(name, resample)] if resample else [])))


class OpenAIDiscreteVAE(nn.Module, Pretrained):
    """The released dVAE behind the ImageTokenizer protocol."""

    config_class = OpenAIDVAEConfig
    label = "OpenAI dVAE"

    def __init__(self, config: OpenAIDVAEConfig) -> None:
        super().__init__()
        self.config = c = config
        n, blocks, gain = c.width, c.blocks_per_group, 1.0 / (GROUPS * c.blocks_per_group) ** 2
        widths = [n, 2 * n, 4 * n, 8 * n]
        encoder = [("input", Conv(3, n, 7))]
        previous = n
        for g, width in enumerate(widths):
            group = [
                Block(previous if i == 0 else width, width, gain, (3, 3, 3, 1))
                for i in range(blocks)
            ]
            pool = nn.MaxPool2d(2) if g < GROUPS - 1 else None
            encoder.append((f"group_{g + 1}", _group(group, pool, "pool")))
            previous = width
        encoder.append(
            (
                "output",
                nn.Sequential(
                    OrderedDict([("relu", nn.ReLU()), ("conv", Conv(8 * n, c.codebook_size, 1))])
                ),
            )
        )
        self.encoder = nn.Module()
        self.encoder.blocks = nn.Sequential(OrderedDict(encoder))
        decoder = [("input", Conv(c.codebook_size, c.decoder_input_width, 1))]
        previous = c.decoder_input_width
        for g, width in enumerate(reversed(widths)):
            group = [
                Block(previous if i == 0 else width, width, gain, (1, 3, 3, 3))
                for i in range(blocks)
            ]
            upsample = nn.Upsample(scale_factor=2, mode="nearest") if g < GROUPS - 1 else None
            decoder.append((f"group_{g + 1}", _group(group, upsample, "upsample")))
            previous = width
        decoder.append(
            ("output", nn.Sequential(OrderedDict([("relu", nn.ReLU()), ("conv", Conv(n, 6, 1))])))
        )
        self.decoder = nn.Module()
        self.decoder.blocks = nn.Sequential(OrderedDict(decoder))

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def grid(self) -> int:
        return self.config.image_size // 8

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] -> (B, h, w) int64: the argmax of the encoder's K logits."""
        return self.encoder.blocks(map_pixels(images.float())).argmax(dim=1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) codes -> (B, 3, S, S) in [0, 1]."""
        one_hot = F.one_hot(codes.long(), self.codebook_size).permute(0, 3, 1, 2).float()
        statistics = self.decoder.blocks(one_hot)
        return unmap_pixels(torch.sigmoid(statistics[:, :3]))
