"""The quantizers between the dVAE's encoder and decoder; each owns its codebook and loss term.

Both turn the encoder's (B, C, h, w) features into what the decoder reads, (B, E, h, w) code
vectors, and into (B, h, w) hard codes:

- `GumbelQuantizer` (the paper, section 2.1): a 1x1 conv gives K logits per cell; in training
  the decoder sees the codebook mix of softmax((logits + Gumbel noise) / tau), a relaxed one-hot,
  with tau annealed towards 1/16; at inference each cell takes its argmax code. Its loss term is
  KL(q || uniform prior) per cell.
- `VectorQuantizer` (VQ-VAE with l2-normalised codes, as in ViT-VQGAN / LlamaGen): a 1x1 conv
  gives an E-vector per cell and the cell takes the codebook vector of highest cosine similarity,
  with straight-through gradients. Its loss term is the codebook plus 0.25 x commitment MSE.
  It keeps its codebook in use on small CPU runs where the Gumbel relaxation collapsed.

Each can restart its dead codes (`restart_dead_codes`), the cure for codebook collapse.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class QuantizerOutput(NamedTuple):
    vectors: torch.Tensor  # (B, E, h, w) what the decoder reads
    scores: torch.Tensor  # (B, K, h, w) logits (gumbel) or cosine similarities (vq)
    codes: torch.Tensor  # (B, h, w) int64 argmax codes
    loss: torch.Tensor  # the quantizer's own loss term (scalar; see loss_weight)


def gumbel_softmax(
    logits: torch.Tensor, tau: float, seeds: list[int] | None = None
) -> torch.Tensor:
    """Relaxed one-hot samples over dim 1: (B, K, h, w) -> (B, K, h, w), summing to 1 over K.

    seeds: one per sample, so that a sample's noise does not depend on which process or batch
    it is in (None: the global RNG).
    """
    if seeds is None:
        uniform = torch.rand(logits.shape, device=logits.device)
    else:
        if len(seeds) != len(logits):
            raise ValueError(f"expected {len(logits)} noise seeds, got {len(seeds)}")
        uniform = torch.stack(
            [
                torch.rand(
                    logits.shape[1:],
                    generator=torch.Generator(logits.device).manual_seed(seed),
                    device=logits.device,
                )
                for seed in seeds
            ]
        )
    exponential = (-torch.log(uniform.clamp_min(1e-10))).clamp_min(1e-10)  # > 0
    gumbel = -torch.log(exponential)
    return F.softmax((logits.float() + gumbel) / tau, dim=1).to(logits.dtype)


def kl_to_uniform(logits: torch.Tensor) -> torch.Tensor:
    """Mean KL(q || uniform over K) per latent cell, in nats. logits: (B, K, h, w)."""
    log_q = F.log_softmax(logits.float(), dim=1)
    return (log_q.exp() * log_q).sum(1).mean() + math.log(logits.shape[1])


def _dead_codes(usage: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(usage <= 0).flatten()


def _copy_optimizer_rows(optimizer, param, dim: int, dead, donors) -> None:
    """Adam's moments of the dead rows from their donors: a dead row's near-zero second moment
    would otherwise turn its first real gradient into an outsized step."""
    if optimizer is None:
        return
    for value in optimizer.state.get(param, {}).values():
        if torch.is_tensor(value) and value.shape == param.shape:
            value.index_copy_(dim, dead, value.index_select(dim, donors))


class GumbelQuantizer(nn.Module):
    """(B, C, h, w) features -> K logits per cell -> relaxed one-hot -> (B, E, h, w) vectors."""

    restart_noise = 0.01  # of a restarted code's copied logit weights, relative to their std

    def __init__(self, in_width: int, codebook_size: int, code_width: int) -> None:
        super().__init__()
        self.to_logits = nn.Conv2d(in_width, codebook_size, 1)
        # The paper's decoder input: a 1x1 conv of the K one-hot channels, i.e. the codebook.
        self.codebook = nn.Conv2d(codebook_size, code_width, 1)

    def forward(
        self, features: torch.Tensor, tau: float = 1.0, seeds: list[int] | None = None
    ) -> QuantizerOutput:
        logits = self.to_logits(features)
        relaxed = gumbel_softmax(logits, tau, seeds)
        codes = logits.argmax(dim=1)
        return QuantizerOutput(self.codebook(relaxed), logits, codes, kl_to_uniform(logits))

    @staticmethod
    def loss_weight(beta: float, cells_per_subpixel: float) -> float:
        """The KL is per cell and the likelihood per sub-pixel: beta as the paper means it."""
        return beta * cells_per_subpixel

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, h, w) int64 argmax codes."""
        return self.to_logits(features).argmax(dim=1)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) int64 -> (B, E, h, w): the 1x1 conv of a one-hot input, as a lookup."""
        table = rearrange(self.codebook.weight, "e k 1 1 -> k e") + self.codebook.bias
        return rearrange(F.embedding(codes, table), "b h w e -> b e h w")

    @torch.no_grad()
    def restart_dead_codes(self, usage, features, optimizer=None, generator=None) -> int:
        """Give every unused code a copy of a used one, so that the two can split its inputs.

        A code whose probability is ~0 everywhere gets no gradient and stays dead. Each dead code
        takes the logit weights and codebook vector of a donor drawn by usage, plus a little
        noise, and the donor's logit bias drops by log 2, so the pair shares the donor's
        probability and training decides which wins where. usage: (K,) float recent use counts;
        features: unused (the signature is VectorQuantizer's); optimizer: its moments are copied
        too; generator: for the draws. Returns the number of codes restarted.
        """
        dead = _dead_codes(usage)
        if len(dead) == 0 or usage.sum() <= 0:
            return 0
        donors = torch.multinomial(
            usage.float().cpu(), len(dead), replacement=True, generator=generator
        ).to(usage.device)
        weight, bias = self.to_logits.weight, self.to_logits.bias  # (K, C, 1, 1), (K,)
        scale = self.restart_noise * weight[donors].std()
        jitter = torch.randn(weight[donors].shape, generator=generator).to(weight.device) * scale
        weight[dead] = weight[donors] + jitter
        bias[donors] -= math.log(2.0)
        bias[dead] = bias[donors]
        self.codebook.weight[:, dead] = self.codebook.weight[:, donors]
        for param, dim in ((weight, 0), (bias, 0), (self.codebook.weight, 1)):
            _copy_optimizer_rows(optimizer, param, dim, dead, donors)
        return len(dead)


class VectorQuantizer(nn.Module):
    """(B, C, h, w) features -> unit E-vectors -> nearest unit codebook vector (B, E, h, w)."""

    commitment = 0.25  # VQ-VAE's weight of pulling the encoder towards its codes

    def __init__(self, in_width: int, codebook_size: int, code_width: int) -> None:
        super().__init__()
        self.to_vector = nn.Conv2d(in_width, code_width, 1)
        self.codebook = nn.Parameter(torch.empty(codebook_size, code_width))

    def unit_codebook(self) -> torch.Tensor:
        """(K, E) unit-length code vectors."""
        return F.normalize(self.codebook, dim=1)

    def _similarity(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vectors = F.normalize(self.to_vector(features).float(), dim=1)  # (B, E, h, w)
        scores = torch.einsum("behw,ke->bkhw", vectors, self.unit_codebook().float())
        return vectors, scores

    def forward(self, features: torch.Tensor, tau: float = 1.0, seeds=None) -> QuantizerOutput:
        """tau and seeds are the Gumbel quantizer's; a nearest-neighbour lookup needs neither."""
        vectors, scores = self._similarity(features)
        codes = scores.argmax(dim=1)
        quantized = self.embed(codes)
        # The codebook term pulls codes to the encoder's vectors; commitment the other way.
        loss = F.mse_loss(quantized, vectors.detach()) + self.commitment * F.mse_loss(
            vectors, quantized.detach()
        )
        straight_through = vectors + (quantized - vectors).detach()
        return QuantizerOutput(straight_through, scores, codes, loss)

    @staticmethod
    def loss_weight(beta: float, cells_per_subpixel: float) -> float:
        """Codebook and commitment terms at full weight, as in VQ-VAE; no prior to schedule."""
        return 1.0

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        return self._similarity(features)[1].argmax(dim=1)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) int64 -> (B, E, h, w) unit vectors."""
        return rearrange(F.embedding(codes, self.unit_codebook()), "b h w e -> b e h w")

    @torch.no_grad()
    def restart_dead_codes(self, usage, features, optimizer=None, generator=None) -> int:
        """Move every unused code onto an encoder vector of a recent batch.

        A code nearest to no encoder vector gets no gradient; placed on a real vector it wins at
        least that cell at the next step. usage: (K,) float recent use counts; features:
        (B, C, h, w) encoder features; optimizer: the dead rows' moments are reset, as they
        belong to the code's old place; generator: for the draws. Returns the number restarted.
        """
        dead = _dead_codes(usage)
        if len(dead) == 0:
            return 0
        vectors, _ = self._similarity(features)
        pool = rearrange(vectors, "b e h w -> (b h w) e")
        picks = torch.randint(len(pool), (len(dead),), generator=generator).to(pool.device)
        self.codebook[dead] = pool[picks].to(self.codebook.dtype)
        if optimizer is not None:
            for value in optimizer.state.get(self.codebook, {}).values():
                if torch.is_tensor(value) and value.shape == self.codebook.shape:
                    value[dead] = 0
        return len(dead)


QUANTIZERS = {"gumbel": GumbelQuantizer, "vq": VectorQuantizer}
