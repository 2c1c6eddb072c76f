"""The dVAE's training objective (Ramesh et al. 2021, section 2.1 and appendix A).

Loss per image = reconstruction + weight x the quantizer's term (+ edge_weight x edge MSE):
- reconstruction: the logit-Laplace NLL of the pixels (the paper), or the pixel MSE;
- the Gumbel quantizer's term is KL(q || uniform), weighted by beta (cosine ramp 0 -> kl_weight
  over kl_warmup_steps) per sub-pixel, so beta means what it means in the paper at any
  resolution; the Gumbel temperature anneals tau_start -> tau_end (cosine) over tau_steps;
- the vector quantizer's term is its codebook + commitment MSE, at full weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vqvae.losses import codebook_usage, gradient_mse, logit_laplace_nll, map_pixels, unmap_pixels
from vqvae.model import DiscreteVAE
from vqvae.schedules import cosine_ramp


@dataclass
class DVAELossConfig:
    """The loss terms and their schedules; scale the step counts to the run's length."""

    reconstruction: str = "logit_laplace"  # logit_laplace (the paper) or mse (pixels in [0, 1])
    kl_weight: float = 6.6  # beta after warm-up (larger beta: better codebook usage)
    kl_warmup_steps: int = 5000  # cosine ramp of beta from 0, in optimizer steps
    tau_start: float = 1.0  # Gumbel-softmax temperature at step 0
    tau_end: float = 0.0625  # ... reached at tau_steps (1/16)
    tau_steps: int = 150000  # optimizer steps of the temperature's cosine anneal
    restart_dead_codes_every: int = 0  # steps between restarts of unused codes; 0 = never
    edge_weight: float = 0.0  # weight of the MSE of pixel differences (sharper outlines); 0 = off

    def __post_init__(self) -> None:
        if self.reconstruction not in ("logit_laplace", "mse"):
            raise ValueError(
                f"reconstruction must be logit_laplace or mse, got {self.reconstruction!r}"
            )

    def beta(self, step: int) -> float:
        return cosine_ramp(step, self.kl_warmup_steps, 0.0, self.kl_weight)

    def tau(self, step: int) -> float:
        return cosine_ramp(step, self.tau_steps, self.tau_start, self.tau_end)


def dvae_loss(
    model: DiscreteVAE,
    images: torch.Tensor,
    step: int,
    loss: DVAELossConfig,
    seeds: list[int] | None = None,
) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """The loss of one batch at optimizer step `step`.

    model: the dVAE, or a wrapper (DDP) whose forward is the dVAE's; images: (B, 3, H, W) in
    [0, 1]; seeds: one per image for the Gumbel noise. Returns (loss, metrics, codes (B, h, w)).
    """
    dvae = getattr(model, "module", model)
    beta, tau = loss.beta(step), loss.tau(step)
    out = model(images, tau, seeds)
    reconstruction = unmap_pixels(torch.sigmoid(out.mu.float()))  # what decode() would show
    if loss.reconstruction == "mse":
        nll = F.mse_loss(reconstruction, images.float())
    else:
        nll = logit_laplace_nll(map_pixels(images), out.mu, out.log_b)
    cells_per_subpixel = out.codes[0].numel() / images[0].numel()  # (h w) / (3 H W)
    weight = dvae.quantizer.loss_weight(beta, cells_per_subpixel)
    total = nll + weight * out.quantizer_loss
    metrics = {"recon": nll.item(), "quantizer_loss": out.quantizer_loss.item()}
    metrics |= {"beta": beta, "tau": tau}
    if loss.edge_weight > 0:
        edge = gradient_mse(reconstruction, images)
        total = total + loss.edge_weight * edge
        metrics["edge"] = edge.item()
    metrics["perplexity"], _ = codebook_usage(out.codes, dvae.config.codebook_size)
    return total, metrics, out.codes
