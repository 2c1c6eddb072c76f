"""The dVAE's likelihood terms and measures (Ramesh et al. 2021, section 2.1 and appendix A.3).

Pixels live in [eps, 1 - eps] (eps = 0.1) while the model sees them, because the logit-Laplace
density explodes at 0 and 1. The decoder predicts, per RGB channel, a location mu and a log-scale
ln b of a logit-Laplace distribution:

    p(x | mu, b) = 1 / (2 b x (1 - x)) * exp(-|logit(x) - mu| / b)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOGIT_LAPLACE_EPS = 0.1


def map_pixels(x: torch.Tensor, eps: float = LOGIT_LAPLACE_EPS) -> torch.Tensor:
    """[0, 1] -> [eps, 1 - eps]."""
    return x * (1 - 2 * eps) + eps


def unmap_pixels(x: torch.Tensor, eps: float = LOGIT_LAPLACE_EPS) -> torch.Tensor:
    """[eps, 1 - eps] -> [0, 1], clamped."""
    return ((x - eps) / (1 - 2 * eps)).clamp(0.0, 1.0)


def logit_laplace_nll(
    x: torch.Tensor, mu: torch.Tensor, log_b: torch.Tensor, eps: float = LOGIT_LAPLACE_EPS
) -> torch.Tensor:
    """Mean negative log-likelihood per sub-pixel, in nats.

    x: (B, 3, H, W) mapped pixels in [eps, 1 - eps]; mu, log_b: (B, 3, H, W) float.
    """
    x = x.float().clamp(eps, 1 - eps)
    mu, log_b = mu.float(), log_b.float()
    logit = torch.log(x) - torch.log1p(-x)
    nll = (
        math.log(2.0)
        + log_b
        + torch.log(x)
        + torch.log1p(-x)
        + (logit - mu).abs() * torch.exp(-log_b)
    )
    return nll.mean()


def gradient_mse(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """MSE between the horizontal and vertical pixel differences of two (B, 3, H, W) batches.

    Outlines are a small share of the pixels, so a plain pixel loss barely sees a blurred edge;
    this term is all edges.
    """
    images, reference = images.float(), reference.float()
    dx = F.mse_loss(images.diff(dim=-1), reference.diff(dim=-1))
    dy = F.mse_loss(images.diff(dim=-2), reference.diff(dim=-2))
    return dx + dy


def codebook_usage(codes: torch.Tensor, codebook_size: int) -> tuple[float, float]:
    """(perplexity, fraction of codes used) of a batch of hard codes (B, h, w) int64.

    Perplexity is exp(entropy) of the code histogram: K when all codes are used equally often.
    """
    counts = torch.bincount(codes.flatten(), minlength=codebook_size).float()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return float(entropy.exp()), float((counts > 0).float().mean())


def psnr(images: torch.Tensor, reference: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1]: (B, 3, H, W) each."""
    mse = F.mse_loss(images.float(), reference.float()).clamp_min(1e-10)
    return float(-10 * torch.log10(mse))


def ssim(images: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean structural similarity (Wang et al. 2004) of images in [0, 1]: (B, 3, H, W) each.

    The standard settings: an 11x11 Gaussian window of sigma 1.5 per channel, C1 = (0.01)^2,
    C2 = (0.03)^2, averaged over the valid window positions, channels and images. 1 for equal
    images.
    """
    x, y = images.float(), reference.float()
    coords = torch.arange(11, dtype=torch.float32, device=x.device) - 5
    gauss = torch.exp(-(coords**2) / (2 * 1.5**2))
    gauss = gauss / gauss.sum()
    window = (gauss[:, None] * gauss[None, :]).expand(x.shape[1], 1, 11, 11)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=x.shape[1])

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    value = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return float(value.mean())
