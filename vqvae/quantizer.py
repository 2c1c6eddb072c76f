"""Gumbel-softmax relaxation of the dVAE's code distribution.

In training the decoder sees softmax((logits + Gumbel noise) / tau), a relaxed one-hot vector per
cell; tau is annealed from 1 towards 1/16 so that the relaxation approaches the hard codes used
at inference, where each cell takes its argmax code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gumbel_softmax(
    logits: torch.Tensor,
    tau: float,
    generator: torch.Generator | None = None,
    straight_through: bool = False,
) -> torch.Tensor:
    """Relaxed one-hot samples over dim 1.

    logits: (B, K, h, w) float -> (B, K, h, w) float, non-negative, summing to 1 over K.
    straight_through: the forward pass gives the one-hot argmax of the sample (what the decoder
    sees at inference), the backward pass the gradient of the relaxed sample.
    """
    uniform = torch.rand(logits.shape, generator=generator, device=logits.device)
    exponential = (-torch.log(uniform.clamp_min(1e-10))).clamp_min(1e-10)  # > 0
    gumbel = -torch.log(exponential)
    soft = F.softmax((logits.float() + gumbel) / tau, dim=1)
    if straight_through:
        hard = F.one_hot(soft.argmax(1), soft.shape[1]).permute(0, 3, 1, 2).to(soft.dtype)
        soft = hard + soft - soft.detach()
    return soft.to(logits.dtype)


def hard_codes(logits: torch.Tensor) -> torch.Tensor:
    """(B, K, h, w) logits -> (B, h, w) int64 argmax codes."""
    return logits.argmax(dim=1)


@torch.no_grad()
def restart_dead_codes(
    encoder_out: torch.nn.Conv2d,
    codebook: torch.nn.Conv2d,
    usage: torch.Tensor,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
    noise: float = 0.01,
) -> int:
    """Give every unused code a copy of a used one, so that the two can split its inputs.

    A Gumbel-softmax code whose probability is ~0 everywhere gets no gradient and stays dead
    (codebook collapse). Each dead code d takes the encoder logit weights and the codebook vector
    of a used code p drawn by usage, plus a little noise, and p's logit bias drops by log 2, so
    that the pair shares about p's probability and training decides which of the two wins where.

    encoder_out: the encoder's final 1x1 conv (width -> K logits); codebook: the decoder's 1x1
    conv (K -> embed_dim); usage: (K,) recent use counts; optimizer: its per-parameter state
    (Adam's moments) is copied from donor to dead rows too, since a dead row's near-zero second
    moment would otherwise turn its first real gradient into an outsized step.
    Returns the number of codes restarted.
    """
    dead = torch.nonzero(usage <= 0).flatten()
    if len(dead) == 0 or usage.sum() <= 0:
        return 0
    donors = torch.multinomial(
        usage.float().cpu(), len(dead), replacement=True, generator=generator
    )
    donors = donors.to(usage.device)
    weight, bias = encoder_out.weight, encoder_out.bias  # (K, C, 1, 1), (K,)
    scale = noise * weight[donors].std()
    jitter = torch.randn(weight[donors].shape, generator=generator).to(weight.device) * scale
    weight[dead] = weight[donors] + jitter
    bias[donors] -= math.log(2.0)
    bias[dead] = bias[donors]
    codebook.weight[:, dead] = codebook.weight[:, donors]
    if optimizer is not None:
        for param, dim in ((weight, 0), (bias, 0), (codebook.weight, 1)):
            for value in optimizer.state.get(param, {}).values():
                if torch.is_tensor(value) and value.shape == param.shape:
                    value.index_copy_(dim, dead, value.index_select(dim, donors))
    return len(dead)


@torch.no_grad()
def restart_dead_vectors(
    codebook: torch.nn.Conv2d,
    usage: torch.Tensor,
    vectors: torch.Tensor,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """vq quantizer: move every unused code onto an encoder vector drawn from a recent batch.

    A code nearest to no encoder vector gets no gradient and stays dead; placed on a real vector
    it wins at least that cell at the next step. codebook: the decoder's 1x1 conv (K -> E);
    usage: (K,) recent use counts; vectors: (B, E, h, w) encoder vectors of a batch. The dead
    columns' optimizer moments are reset, as they belong to the code's old place.
    Returns the number of codes restarted.
    """
    dead = torch.nonzero(usage <= 0).flatten()
    if len(dead) == 0:
        return 0
    pool = vectors.permute(0, 2, 3, 1).reshape(-1, vectors.shape[1])  # (N, E)
    picks = torch.randint(len(pool), (len(dead),), generator=generator).to(pool.device)
    weight = codebook.weight  # (E, K, 1, 1)
    weight[:, dead, 0, 0] = pool[picks].t().to(weight.dtype)
    if optimizer is not None:
        for value in optimizer.state.get(weight, {}).values():
            if torch.is_tensor(value) and value.shape == weight.shape:
                value[:, dead] = 0
    return len(dead)
