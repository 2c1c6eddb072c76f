"""The DALL-E transformer: one decoder-only stream of text ids, then image codes.

    positions 0 .. T-1     text ids (BPE ids, or the per-position padding id vocab + p)
    position  T + i        image position i: the start-of-image token (i = 0) or the code of
                           cell i - 1; it predicts the code of cell i

Text positions get learned position embeddings; image position i gets the row and column
embeddings of the cell it predicts. Text positions predict the next text id (text head), image
positions the code of their cell (image head). The loss is the mean cross-entropy of each part,
weighted text_loss_weight : 1 - text_loss_weight (1/8 : 7/8 in the paper).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from dalle1.attention import PATHS, AttentionMasks, Block
from dalle1.kv_cache import KVCache
from dalle1.masks import StreamLayout, layer_masks
from pretrained import Pretrained


@dataclass
class DALLEConfig:
    """The paper's model: 256 text + 32x32 image tokens, 64 layers, 62 heads, d 3968."""

    text_length: int = 256  # T: text positions
    text_vocab_size: int = 16384  # BPE ids (the T padding ids come on top); 0: from the tokenizer
    grid: int = 32  # h = w: the image tokenizer's grid side; 0: from the image tokenizer
    codebook_size: int = 8192  # K: image codes; 0: from the image tokenizer
    width: int = 3968  # D: the residual stream's width
    depth: int = 64  # transformer blocks
    heads: int = 62  # attention heads per block (width / heads per head)
    mlp_ratio: int = 4  # the feed-forward layer's hidden width / width
    attention: str = "sparse"  # sparse: row / column / conv masks by layer; causal: plain
    conv_kernel: int = 11  # side of the last layer's causal neighbourhood
    # How sparse layers attend: auto (flex on CUDA, dense elsewhere), flex, banded or dense
    # (dalle1/attention.py)
    attention_impl: str = "auto"
    text_loss_weight: float = 0.125  # the text share of the loss (the paper's 1/8)
    activation_checkpointing: bool = False  # recompute blocks in backward to save memory

    def __post_init__(self) -> None:
        layer_masks(1, self.attention)  # checks the name
        if self.attention_impl not in ("auto", *PATHS):
            raise ValueError(
                f"attention_impl must be auto, flex, banded or dense, got {self.attention_impl!r}"
            )
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if not 0.0 <= self.text_loss_weight <= 1.0:
            raise ValueError(f"text_loss_weight must lie in [0, 1], got {self.text_loss_weight}")

    @property
    def layout(self) -> StreamLayout:
        return StreamLayout(self.text_length, self.grid, self.conv_kernel)

    @property
    def total_text_vocab(self) -> int:
        return self.text_vocab_size + self.text_length

    @property
    def head_width(self) -> int:
        return self.width // self.heads

    def resolved(self, text_vocab_size: int, grid: int, codebook_size: int) -> DALLEConfig:
        """A copy with the sizes that come from the tokenizers filled in where they are 0;
        a size given that disagrees raises a ValueError naming it."""
        sizes = {"text_vocab_size": text_vocab_size, "grid": grid, "codebook_size": codebook_size}
        for key, value in sizes.items():
            given = getattr(self, key)
            if given and given != value:
                raise ValueError(f"model.{key} is {given} but the tokenizers give {value}")
        return replace(self, **sizes)


class DALLEOutput(NamedTuple):
    loss: torch.Tensor  # weighted sum of the two cross-entropies
    text_loss: torch.Tensor
    image_loss: torch.Tensor


def attention_path(impl: str, device: torch.device) -> str:
    """auto: FlexAttention on CUDA, the dense path elsewhere. On the CPU FlexAttention has no
    backward, and the banded path, exact, was no faster than the dense one for a whole model at
    any length up to 1280 positions (bench/transformer_speed.py: crossover)."""
    if impl != "auto":
        return impl
    return "flex" if device.type == "cuda" else "dense"


class DALLE(Pretrained, nn.Module):
    config_class, label = DALLEConfig, "transformer"

    def __init__(self, config: DALLEConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.text_embedding = nn.Embedding(c.total_text_vocab, c.width)
        self.text_positions = nn.Parameter(torch.zeros(c.text_length, c.width))
        self.image_embedding = nn.Embedding(c.codebook_size + 1, c.width)  # last: start token
        self.row_embedding = nn.Parameter(torch.zeros(c.grid, c.width))
        self.column_embedding = nn.Parameter(torch.zeros(c.grid, c.width))
        self.blocks = nn.ModuleList(
            Block(c.width, c.heads, c.mlp_ratio, mask) for mask in layer_masks(c.depth, c.attention)
        )
        self.norm = nn.LayerNorm(c.width)
        self.text_head = nn.Linear(c.width, c.total_text_vocab, bias=False)
        self.image_head = nn.Linear(c.width, c.codebook_size, bias=False)
        self._masks: AttentionMasks | None = None
        self.apply(self._init_weights)
        for p in (self.text_positions, self.row_embedding, self.column_embedding):
            nn.init.normal_(p, std=0.02)
        for block in self.blocks:  # GPT-2: residual projections scaled by depth
            for linear in (block.attn.proj, block.mlp[-1]):
                nn.init.normal_(linear.weight, std=0.02 / (2 * c.depth) ** 0.5)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def start_token(self) -> int:
        return self.config.codebook_size

    def masks(self, device: torch.device) -> AttentionMasks:
        layout = self.config.layout
        if self._masks is None or self._masks.device != device:
            path = attention_path(self.config.attention_impl, device)
            self._masks = AttentionMasks(layout, device, path)
        return self._masks

    def embed(self, text: torch.Tensor, image_inputs: torch.Tensor) -> torch.Tensor:
        """Embeddings of the stream's first T + n positions: (B, T) text ids and (B, n)
        image-position inputs (the start token, then codes) -> (B, T + n, D)."""
        text_length, grid = self.config.text_length, self.config.grid
        if text.shape[1] != text_length:
            raise ValueError(f"expected text ids of shape (B, {text_length})")
        cells = torch.arange(image_inputs.shape[1], device=image_inputs.device)
        position = self.row_embedding[cells // grid] + self.column_embedding[cells % grid]
        image = self.image_embedding(image_inputs) + position
        return torch.cat([self.text_embedding(text) + self.text_positions, image], dim=1)

    def image_inputs(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, n) codes of cells 0..n-1 -> (B, n + 1) inputs: start token, then the codes."""
        start = codes.new_full((codes.shape[0], 1), self.start_token)
        return torch.cat([start, codes], dim=1)

    def embed_cell(self, code: torch.Tensor, cell: int | torch.Tensor) -> torch.Tensor:
        """(B, 1) input of image position `cell` (an int, or a (1,) long tensor when compiled):
        the code of cell - 1, or the start token -> (B, 1, D). One decode step's embedding."""
        grid = self.config.grid
        position = self.row_embedding[cell // grid] + self.column_embedding[cell % grid]
        return self.image_embedding(code) + position

    def run_blocks(self, x: torch.Tensor, cache: KVCache | None = None, cell=None):
        """(B, l, D) embeddings of the stream's first l positions -> (B, l, D) final-norm
        features; a cache given is filled. With `cell` (an int or a (1,) long tensor), x is
        (B, 1, D) of image position `cell` alone, attending to the cache."""
        masks = self.masks(x.device)
        for i, block in enumerate(self.blocks):
            if self.config.activation_checkpointing and self.training and cache is None:
                x = checkpoint(block, x, masks, use_reentrant=False)
            else:
                x = block(x, masks, cache, i, cell)
        return self.norm(x)

    def forward(self, text: torch.Tensor, codes: torch.Tensor) -> DALLEOutput:
        """Teacher-forced loss. text: (B, T) ids; codes: (B, h*w) image codes (raster order)."""
        c = self.config
        if text.ndim != 2 or text.shape[1] != c.text_length:
            raise ValueError(
                f"expected text of shape (B, {c.text_length}), got {tuple(text.shape)}"
            )
        if codes.shape != (text.shape[0], c.grid**2):
            raise ValueError(
                f"expected codes of shape ({text.shape[0]}, {c.grid**2}), got {tuple(codes.shape)}"
            )
        x = self.embed(text, self.image_inputs(codes[:, :-1]))
        h = self.run_blocks(x)
        text_logits = self.text_head(h[:, : c.text_length - 1])  # predicts text ids 1..T-1
        image_logits = self.image_head(h[:, c.text_length :])  # predicts cells 0..N-1
        text_loss = F.cross_entropy(
            rearrange(text_logits.float(), "b t v -> (b t) v"), text[:, 1:].flatten()
        )
        image_loss = F.cross_entropy(
            rearrange(image_logits.float(), "b n k -> (b n) k"), codes.flatten()
        )
        w = c.text_loss_weight
        return DALLEOutput(w * text_loss + (1 - w) * image_loss, text_loss, image_loss)

    def image_logits(self, text: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Logits of every cell without a cache: (B, T), (B, N) -> (B, N, K)."""
        x = self.embed(text, self.image_inputs(codes[:, :-1]))
        return self.image_head(self.run_blocks(x)[:, self.config.text_length :])

    def new_cache(self, rows: int, groups: int, device: torch.device) -> KVCache:
        """An empty decoding cache for `rows` rows in `groups` groups that share their text."""
        masks = layer_masks(self.config.depth, self.config.attention)
        return KVCache(self.config.layout, masks, rows, groups, device)
