"""The VQGAN family of image tokenizers (Esser et al. 2021), rebuilt: taming-transformers' VQGAN
(nearest-neighbour or Gumbel codes) and LlamaGen's VQ (an l2-normalised codebook of 8 dims).

Encoder: a 3x3 conv, then per level `res_blocks` residual blocks (GroupNorm(32), swish, 3x3
conv, twice) with self-attention at the sides in `attention_sides`, a stride-2 conv between
levels; a middle of block, attention, block; GroupNorm, swish and a 3x3 conv to z_channels; a
1x1 conv to embed_dim. The decoder mirrors it (res_blocks + 1 blocks per level, nearest 2x
upsampling and a conv). Images are read and drawn in [-1, 1]. Parameter names are
taming-transformers' (`encoder.down.0.block.1.norm1.weight`, `quantize.embedding.weight`);
vqvae/convert.py renames LlamaGen's into them.

Codes: `nearest`: the codebook vector closest to the encoder's output; `nearest_l2`: the same
after both are scaled to unit length (LlamaGen); `gumbel`: the argmax of a 1x1 conv's K logits
(taming's Gumbel VQGAN samples them at training; the argmax is its noise-free choice).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from pretrained import Pretrained

CODE_RULES = ("nearest", "nearest_l2", "gumbel")


@dataclass
class VQGANConfig:
    """Defaults: LlamaGen's VQ-16 (256 px -> 16x16 codes of 16384)."""

    image_size: int = 256
    channels: int = 128  # ch: the first level's width
    channel_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])  # per level
    res_blocks: int = 2  # per encoder level (the decoder has one more)
    attention_sides: list[int] = field(default_factory=lambda: [16])  # sides with attention
    z_channels: int = 256
    embed_dim: int = 8  # a codebook vector's width
    codebook_size: int = 16384
    code_rule: str = "nearest_l2"  # nearest, nearest_l2 or gumbel

    def __post_init__(self) -> None:
        if self.code_rule not in CODE_RULES:
            raise ValueError(f"code_rule must be one of {CODE_RULES}, got {self.code_rule!r}")
        if self.image_size % self.downsample:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by the downsampling factor "
                f"{self.downsample}"
            )
        widths = [self.channels * m for m in self.channel_mult] + [self.channels]
        if any(w % 32 for w in widths):
            raise ValueError(f"every width must be a multiple of 32 (GroupNorm), got {widths}")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


def conv3(n_in: int, n_out: int, stride: int = 1, padding: int = 1) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, stride, padding)


class ResnetBlock(nn.Module):
    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = norm(n_in), conv3(n_in, n_out)
        self.norm2, self.conv2 = norm(n_out), conv3(n_out, n_out)
        if n_in != n_out:
            self.nin_shortcut = nn.Conv2d(n_in, n_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the cells, through 1x1 convs."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = norm(channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (f(y).reshape(b, c, h * w).transpose(1, 2) for f in (self.q, self.k, self.v))
        attended = F.scaled_dot_product_attention(q, k, v)  # (b, h*w, c)
        return x + self.proj_out(attended.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = conv3(channels, channels, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # taming's asymmetric padding


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = conv3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _level(blocks: list[nn.Module], attentions: list[nn.Module]) -> nn.Module:
    level = nn.Module()
    level.block, level.attn = nn.ModuleList(blocks), nn.ModuleList(attentions)
    return level


def _middle(channels: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1, mid.attn_1 = ResnetBlock(channels, channels), AttnBlock(channels)
    mid.block_2 = ResnetBlock(channels, channels)
    return mid


def _run_level(level: nn.Module, h: torch.Tensor) -> torch.Tensor:
    for i, block in enumerate(level.block):
        h = block(h)
        if len(level.attn):
            h = level.attn[i](h)
    return h


def _run_middle(mid: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h)))


class Encoder(nn.Module):
    def __init__(self, c: VQGANConfig) -> None:
        super().__init__()
        self.conv_in = conv3(3, c.channels)
        widths = [c.channels * m for m in c.channel_mult]
        self.down, side, previous = nn.ModuleList(), c.image_size, c.channels
        for i, width in enumerate(widths):
            blocks = [
                ResnetBlock(previous if j == 0 else width, width) for j in range(c.res_blocks)
            ]
            attentions = [AttnBlock(width) for _ in blocks] if side in c.attention_sides else []
            level = _level(blocks, attentions)
            if i < len(widths) - 1:
                level.downsample, side = Downsample(width), side // 2
            self.down.append(level)
            previous = width
        self.mid = _middle(previous)
        self.norm_out, self.conv_out = norm(previous), conv3(previous, c.z_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = _run_level(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = _run_middle(self.mid, h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, c: VQGANConfig) -> None:
        super().__init__()
        widths = [c.channels * m for m in c.channel_mult]
        previous, side = widths[-1], c.image_size // c.downsample
        self.conv_in = conv3(c.z_channels, previous)
        self.mid = _middle(previous)
        levels = []
        for i in reversed(range(len(widths))):  # lowest resolution first
            width = widths[i]
            blocks = [
                ResnetBlock(previous if j == 0 else width, width) for j in range(c.res_blocks + 1)
            ]
            attentions = [AttnBlock(width) for _ in blocks] if side in c.attention_sides else []
            level = _level(blocks, attentions)
            if i > 0:
                level.upsample, side = Upsample(width), side * 2
            levels.insert(0, level)  # up[i] is level i, as in taming
            previous = width
        self.up = nn.ModuleList(levels)
        self.norm_out, self.conv_out = norm(previous), conv3(previous, 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = _run_middle(self.mid, self.conv_in(z))
        for level in reversed(self.up):
            h = _run_level(level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Quantizer(nn.Module):
    """Codes <-> codebook vectors under one of CODE_RULES."""

    def __init__(self, c: VQGANConfig) -> None:
        super().__init__()
        self.rule = c.code_rule
        if self.rule == "gumbel":
            self.proj = nn.Conv2d(c.embed_dim, c.codebook_size, 1)
            self.embed = nn.Embedding(c.codebook_size, c.embed_dim)
        else:
            self.embedding = nn.Embedding(c.codebook_size, c.embed_dim)

    def codebook(self) -> torch.Tensor:
        """(K, embed_dim) vectors the decoder reads."""
        if self.rule == "gumbel":
            return self.embed.weight
        weight = self.embedding.weight
        return F.normalize(weight, dim=-1) if self.rule == "nearest_l2" else weight

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """(B, embed_dim, h, w) -> (B, h, w) int64."""
        if self.rule == "gumbel":
            return self.proj(z).argmax(dim=1)
        b, _, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(b * h * w, -1)
        if self.rule == "nearest_l2":
            flat = F.normalize(flat, dim=-1)
        book = self.codebook()
        # squared distances as the references compute them, so that near-ties break alike
        distance = flat.pow(2).sum(1, keepdim=True) + book.pow(2).sum(1) - 2 * flat @ book.T
        return distance.argmin(dim=1).reshape(b, h, w)


class VQGAN(nn.Module, Pretrained):
    """A VQGAN-family tokenizer behind the ImageTokenizer protocol."""

    config_class = VQGANConfig
    label = "VQGAN"

    def __init__(self, config: VQGANConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder, self.decoder = Encoder(config), Decoder(config)
        self.quantize = Quantizer(config)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def grid(self) -> int:
        return self.config.image_size // self.config.downsample

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] -> (B, h, w) int64."""
        return self.quantize.codes(self.quant_conv(self.encoder(images.float() * 2 - 1)))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) codes -> (B, 3, S, S) in [0, 1]."""
        vectors = self.quantize.codebook()[codes.long()].permute(0, 3, 1, 2)
        return ((self.decoder(self.post_quant_conv(vectors)) + 1) / 2).clamp(0, 1)
