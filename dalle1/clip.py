"""A small CLIP (Radford et al. 2021) for reranking samples: which image fits a caption best.

Image encoder (`image_encoder`): "patches", a conv stem that cuts the image into patch_size x
patch_size patches, then a transformer over the patches and a class token; or "conv", a small
CNN (as CLIP's ResNets), which learnt the icon grid's objects from 11,450 drawings far better
(docs/results.md). Text encoder: a causal transformer over the
caption's ids (the same tokenizer as the DALL-E model, padding per position) with a class token
last. Both class tokens are projected into one embedding space; a learned temperature scales
their cosine similarities, and the loss (`contrastive_loss`) is the symmetric cross-entropy of
matching captions to images in a batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from dalle1.attention import Block
from dalle1.tokenizer import TextTokenizer
from pretrained import Pretrained


@dataclass
class CLIPConfig:
    image_size: int = 64
    patch_size: int = 8  # a multiple of 4: two stride-2 convs, then one of stride patch / 4
    text_length: int = 32  # T: ids per caption
    text_vocab_size: int = 0  # BPE ids (padding ids on top); 0: taken from the tokenizer
    width: int = 128  # of both encoders
    depth: int = 4  # transformer blocks per encoder
    heads: int = 4  # attention heads per block
    embed_width: int = 128  # width of the shared image-text embedding space
    # "patches": a transformer over patches (ViT); "conv": a small CNN (ConvImageEncoder) of
    # conv_width channels at its first stage, for few images (the icon grid: docs/results.md)
    image_encoder: str = "patches"
    conv_width: int = 32

    def __post_init__(self) -> None:
        if self.patch_size % 4 or self.image_size % self.patch_size:
            raise ValueError(
                f"patch_size must be a multiple of 4 that divides image_size, got "
                f"{self.patch_size} for {self.image_size}"
            )
        if self.image_encoder not in ("patches", "conv"):
            raise ValueError(f"image_encoder must be patches or conv, got {self.image_encoder!r}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")


class Encoder(nn.Module):
    """Transformer over (B, L, width) tokens with a class token -> (B, embed_width).

    causal: each token attends to the ones before it and the class token comes last. Used for
    text (as CLIP does): an encoder that attends both ways learned "a red circle left of a blue
    square" = "a blue circle left of a red square" (docs/results.md, CLIP).
    """

    def __init__(self, config: CLIPConfig, length: int, causal: bool = False) -> None:
        super().__init__()
        self.causal = causal
        self.class_token = nn.Parameter(torch.randn(config.width) * 0.02)
        self.positions = nn.Parameter(torch.randn(length + 1, config.width) * 0.02)
        mask = "causal" if causal else None
        self.blocks = nn.ModuleList(
            Block(config.width, config.heads, mask=mask) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.width)
        self.proj = nn.Linear(config.width, config.embed_width, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, width) tokens -> (B, embed_width)."""
        cls = self.class_token.expand(tokens.shape[0], 1, -1)
        x = torch.cat([tokens, cls] if self.causal else [cls, tokens], dim=1) + self.positions
        for block in self.blocks:
            x = block(x)
        return self.proj(self.norm(x[:, -1] if self.causal else x[:, 0]))


def conv_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


def small_cnn(width: int) -> tuple[nn.Sequential, int]:
    """A 4x4 stride-2 stem, then 4 stages of two 3x3 convs (width x 1, 2, 4, 8 channels; stages
    2-4 halve the grid): (B, 3, S, S) -> (B, 8 width, S / 16, S / 16). Returns it and 8 width.
    The CLIP's conv image encoder and the icons' judge."""
    layers = [nn.Conv2d(3, width, 4, 2, 1), nn.ReLU(inplace=True)]
    channels = width
    for stage in range(4):
        out = width * 2**stage
        layers += [conv_block(channels, out, 1 if stage == 0 else 2), conv_block(out, out, 1)]
        channels = out
    return nn.Sequential(*layers), channels


class ConvImageEncoder(nn.Module):
    """(B, 3, S, S) in [-1, 1] -> (B, embed_width): small_cnn of conv_width, global average
    pooling and a projection."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.body, channels = small_cnn(config.conv_width)
        self.norm = nn.LayerNorm(channels)
        self.proj = nn.Linear(channels, config.embed_width, bias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(self.body(images).mean(dim=(2, 3))))


class CLIP(Pretrained, nn.Module):
    config_class, label = CLIPConfig, "CLIP"

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        if config.text_vocab_size < 1:
            raise ValueError("text_vocab_size must be set (from the tokenizer)")
        self.config = config
        w, p = config.width, config.patch_size
        if config.image_encoder == "conv":
            self.stem = None
            self.image_encoder = ConvImageEncoder(config)
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(3, w // 4, 3, stride=2, padding=1),
                nn.GELU(),
                nn.Conv2d(w // 4, w // 2, 3, stride=2, padding=1),
                nn.GELU(),
                nn.Conv2d(w // 2, w, p // 4, stride=p // 4),
            )
            self.image_encoder = Encoder(config, (config.image_size // p) ** 2)
        self.token_embedding = nn.Embedding(config.text_vocab_size + config.text_length, w)
        self.text_encoder = Encoder(config, config.text_length, causal=True)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] -> (B, E), unit length (E = embed_width)."""
        size = self.config.image_size
        if images.ndim != 4 or images.shape[1:] != (3, size, size):
            raise ValueError(f"expected images (B, 3, {size}, {size}), got {tuple(images.shape)}")
        x = images * 2 - 1
        if self.stem is not None:
            x = rearrange(self.stem(x), "b d h w -> b (h w) d")
        return F.normalize(self.image_encoder(x).float(), dim=-1)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, E), unit length."""
        if text.ndim != 2 or text.shape[1] != self.config.text_length:
            raise ValueError(
                f"expected text ids (B, {self.config.text_length}), got {tuple(text.shape)}"
            )
        return F.normalize(self.text_encoder(self.token_embedding(text)).float(), dim=-1)

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> CLIPEmbeddings:
        """(B, 3, S, S) images and (B', T) ids -> their unit embeddings and the logit scale."""
        scale = self.log_scale.clamp(max=math.log(100)).exp()
        return CLIPEmbeddings(self.encode_images(images), self.encode_text(text), scale)


class CLIPEmbeddings(NamedTuple):
    images: torch.Tensor  # (B, E) unit length
    text: torch.Tensor  # (B', E) unit length
    scale: torch.Tensor  # () the learned inverse temperature, at most 100


def contrastive_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    scale: torch.Tensor,
    negative_emb: torch.Tensor | None = None,
    has_negative: torch.Tensor | None = None,
    rows: slice | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Symmetric cross-entropy of matching B captions to B images, row i to column i.

    image_emb, text_emb: (B, E); negative_emb: (B, E) an altered caption per image
    (dalle1/caption_negatives.py), extra wrong answers in the image -> text half, where
    has_negative (B,) bool marks the rows that have one. rows: the rows this process computes
    (its own part of a global batch; default all); the loss is their sum over 2B, so the
    processes' losses add up to the loss of the whole batch.
    """
    rows = rows or slice(0, len(image_emb))
    labels = torch.arange(len(image_emb), device=image_emb.device)[rows]
    text_to_image = scale * text_emb[rows] @ image_emb.t()  # (b captions, B images)
    image_to_text = scale * image_emb[rows] @ text_emb.t()  # (b images, B captions)
    metrics = {}
    if negative_emb is not None:
        negative_logits = scale * image_emb[rows] @ negative_emb.t()  # (b, B altered captions)
        negative_logits = negative_logits.masked_fill(~has_negative[None, :], float("-inf"))
        image_to_text = torch.cat([image_to_text, negative_logits], dim=1)
        # how often an image prefers its own caption to the altered copy of it
        own = image_to_text.gather(1, labels[:, None])[:, 0]
        altered = negative_logits.gather(1, labels[:, None])[:, 0]
        wins = (own > altered)[has_negative[rows]]
        metrics["negative_accuracy"] = wins.float().mean().item() if len(wins) else 0.0
    loss = F.cross_entropy(text_to_image, labels, reduction="sum") + F.cross_entropy(
        image_to_text, labels, reduction="sum"
    )
    accuracy = (text_to_image.argmax(1) == labels).float().mean()
    metrics |= {"text_to_image_accuracy": accuracy.item(), "scale": scale.item()}
    return loss / (2 * len(image_emb)), metrics


@torch.no_grad()
def clip_scores(
    model: CLIP, tokenizer: TextTokenizer, images: torch.Tensor, caption: str, batch_size: int = 64
) -> torch.Tensor:
    """(N, 3, S, S) images in [0, 1] -> (N,) cosine similarities to the caption, on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    text_emb = model.encode_text(tokenizer.encode(caption)[None].to(device))  # (1, E)
    parts = [
        model.encode_images(images[i : i + batch_size].to(device).float()) @ text_emb.t()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(parts)[:, 0].cpu()


def rerank(
    model: CLIP,
    tokenizer: TextTokenizer,
    images: torch.Tensor,
    caption: str,
    keep: int | None = None,
    batch_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score (N, 3, S, S) images in [0, 1] against a caption; best first.

    Returns (indices (keep,), scores (keep,)): cosine similarities, ties kept in input order.
    """
    scores = clip_scores(model, tokenizer, images, caption, batch_size)
    order = torch.sort(scores, descending=True, stable=True).indices
    keep = len(order) if keep is None else min(keep, len(order))
    return order[:keep], scores[order[:keep]]
