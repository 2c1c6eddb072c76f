"""A small CLIP (Radford et al. 2021) for reranking samples: which image fits a caption best.

Image encoder: a conv stem that cuts the image into patch_size x patch_size patches, then a
transformer over the patches and a class token. Text encoder: a causal transformer over the
caption's ids (the same tokenizer as the DALL-E model, padding per position) with a class token
last. Both class tokens are projected into one embedding space; a learned temperature scales
their cosine similarities, and the loss is the symmetric cross-entropy of matching captions to
images in a batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dalle1.attention import Block
from dalle1.tokenizer import TextTokenizer
from vqvae.pretrained import Pretrained


@dataclass
class CLIPConfig:
    image_size: int = 64
    patch_size: int = 8  # a multiple of 4: two stride-2 convs, then one of stride patch / 4
    text_length: int = 32  # T: ids per caption
    text_vocab_size: int = 0  # BPE ids (padding ids on top); 0: taken from the tokenizer
    width: int = 128  # of both encoders
    layers: int = 4  # per encoder
    heads: int = 4
    embed_dim: int = 128  # the shared embedding space
    causal_text: bool = True  # causal text encoder read at its last token (see Encoder)

    def __post_init__(self) -> None:
        if self.patch_size % 4 or self.image_size % self.patch_size:
            raise ValueError(
                f"patch_size must be a multiple of 4 that divides image_size, got "
                f"{self.patch_size} for {self.image_size}"
            )
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")


class Encoder(nn.Module):
    """Transformer over (B, L, width) tokens with a class token -> (B, embed_dim).

    causal: each token attends to the ones before it and the class token comes last. Used for
    text (as CLIP does): without it the encoder starts out nearly blind to word order and learned
    "a red circle left of a blue square" = "a blue circle left of a red square" (README, CLIP).
    """

    def __init__(self, config: CLIPConfig, length: int, causal: bool = False) -> None:
        super().__init__()
        self.causal = causal
        self.class_token = nn.Parameter(torch.randn(config.width) * 0.02)
        self.positions = nn.Parameter(torch.randn(length + 1, config.width) * 0.02)
        kind = "causal" if causal else None
        self.blocks = nn.ModuleList(
            Block(config.width, config.heads, kind=kind) for _ in range(config.layers)
        )
        self.norm = nn.LayerNorm(config.width)
        self.proj = nn.Linear(config.width, config.embed_dim, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        cls = self.class_token.expand(tokens.shape[0], 1, -1)
        x = torch.cat([tokens, cls] if self.causal else [cls, tokens], dim=1) + self.positions
        for block in self.blocks:
            x = block(x)
        return self.proj(self.norm(x[:, -1] if self.causal else x[:, 0]))


class CLIP(Pretrained, nn.Module):
    config_class, kind = CLIPConfig, "CLIP"

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        if config.text_vocab_size < 1:
            raise ValueError("text_vocab_size must be set (from the tokenizer)")
        self.config = config
        w, p = config.width, config.patch_size
        self.stem = nn.Sequential(
            nn.Conv2d(3, w // 4, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(w // 4, w // 2, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(w // 2, w, p // 4, stride=p // 4),
        )
        patches = (config.image_size // p) ** 2
        self.image_encoder = Encoder(config, patches)
        self.token_embedding = nn.Embedding(config.text_vocab_size + config.text_length, w)
        self.text_encoder = Encoder(config, config.text_length, causal=config.causal_text)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] -> (B, embed_dim), unit length."""
        size = self.config.image_size
        if images.ndim != 4 or images.shape[1:] != (3, size, size):
            raise ValueError(f"expected images (B, 3, {size}, {size}), got {tuple(images.shape)}")
        patches = self.stem(images * 2 - 1).flatten(2).transpose(1, 2)  # (B, P, width)
        return F.normalize(self.image_encoder(patches).float(), dim=-1)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, embed_dim), unit length."""
        if text.ndim != 2 or text.shape[1] != self.config.text_length:
            raise ValueError(
                f"expected text ids (B, {self.config.text_length}), got {tuple(text.shape)}"
            )
        return F.normalize(self.text_encoder(self.token_embedding(text)).float(), dim=-1)

    def forward(
        self,
        images: torch.Tensor,
        text: torch.Tensor,
        negatives: torch.Tensor | None = None,
        has_negative: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict]:
        """Symmetric contrastive loss of a batch of B matching (image, caption) pairs.

        negatives: (B, T) ids of an altered caption per image (dalle1/caption_negatives.py),
        extra wrong answers for every image in the image -> text half; has_negative (B,) bool
        marks the rows that have one.
        """
        image_emb = self.encode_images(images)
        if negatives is None:
            text_emb = self.encode_text(text)
        else:  # one pass over the true and the altered captions
            text_emb, negative_emb = self.encode_text(torch.cat([text, negatives])).chunk(2)
        scale = self.log_scale.clamp(max=math.log(100)).exp()
        logits = scale * text_emb @ image_emb.t()  # (B captions, B images)
        labels = torch.arange(len(logits), device=logits.device)
        image_to_text = logits.t()  # (B images, B captions [+ B altered captions])
        metrics = {}
        if negatives is not None:
            negative_logits = scale * image_emb @ negative_emb.t()
            negative_logits = negative_logits.masked_fill(~has_negative[None, :], float("-inf"))
            image_to_text = torch.cat([image_to_text, negative_logits], dim=1)
            # how often an image prefers its own caption to the altered copy of it
            wins = logits.diagonal() > negative_logits.diagonal()
            metrics["negative_accuracy"] = wins[has_negative].float().mean().item()
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(image_to_text, labels)) / 2
        accuracy = (logits.argmax(1) == labels).float().mean()
        return loss, {"text_to_image_accuracy": accuracy.item(), "scale": scale.item(), **metrics}


@torch.no_grad()
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
    model.eval()
    device = next(model.parameters()).device
    text = tokenizer.encode(caption)[None].to(device)
    text_emb = model.encode_text(text)  # (1, E)
    scores = torch.cat(
        [
            (model.encode_images(images[i : i + batch_size].to(device).float()) @ text_emb.t())[
                :, 0
            ]
            for i in range(0, len(images), batch_size)
        ]
    )
    order = torch.sort(scores.cpu(), descending=True, stable=True).indices
    keep = len(order) if keep is None else min(keep, len(order))
    return order[:keep], scores.cpu()[order[:keep]]
