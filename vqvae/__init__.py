"""The image tokenizer: the paper's discrete VAE (images <-> grids of codes) and its objective."""

from vqvae.model import DiscreteVAE, DVAEConfig
from vqvae.objective import DVAELossConfig, dvae_loss
from vqvae.quantizer import GumbelQuantizer, VectorQuantizer
from vqvae.tokenizer import ImageTokenizer, load_image_tokenizer

__all__ = [
    "DVAEConfig",
    "DVAELossConfig",
    "DiscreteVAE",
    "GumbelQuantizer",
    "ImageTokenizer",
    "VectorQuantizer",
    "dvae_loss",
    "load_image_tokenizer",
]
