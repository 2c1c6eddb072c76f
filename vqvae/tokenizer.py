"""The image tokenizer seam: what the transformer, the token cache and sampling need of it.

Any model that turns a (B, 3, S, S) image in [0, 1] into a (B, h, w) grid of codes and back
serves: the paper's dVAE trained here (vqvae/model.py), and the tokenizers people already have,
converted by vqvae/convert.py: OpenAI's dVAE (vqvae/openai_dvae.py), taming's VQGAN and
LlamaGen's VQ (vqvae/vqgan.py). Consumers see only these five names and `load_image_tokenizer`,
which builds whichever class a folder records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from pretrained import load_pretrained
from vqvae.model import DiscreteVAE
from vqvae.openai_dvae import OpenAIDiscreteVAE
from vqvae.vqgan import VQGAN

# The classes load_image_tokenizer can build.
IMAGE_TOKENIZERS: list[type] = [DiscreteVAE, OpenAIDiscreteVAE, VQGAN]


@runtime_checkable
class ImageTokenizer(Protocol):
    image_size: int  # S: side of the square images it reads, pixels
    grid: int  # h = w: side of the code grid
    codebook_size: int  # K: codes per cell

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) float in [0, 1] -> (B, h, w) int64 codes."""
        ...

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) int codes -> (B, 3, S, S) float in [0, 1]."""
        ...


def load_image_tokenizer(path: str | Path, map_location: str = "cpu") -> ImageTokenizer:
    """The image tokenizer in a model folder or run folder (its newest checkpoint), in eval mode
    and frozen."""
    model = load_pretrained(path, IMAGE_TOKENIZERS, map_location)
    return model.eval().requires_grad_(False)
