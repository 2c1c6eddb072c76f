"""Muon for the transformer blocks' matrices, AdamW for everything else, in one optimizer.

Muon (Jordan et al. 2024) replaces a matrix's momentum by its nearest semi-orthogonal matrix
(five Newton-Schulz iterations), so every direction of the update moves at the same rate; on
small transformers it learns more per step than AdamW. Each update is scaled by
0.2 * sqrt(max(rows, columns)) to match AdamW's update size (Liu et al. 2025, "Muon is
scalable"), so both kinds of parameter share one learning rate and weight decay. Embeddings,
output heads, norms and biases take AdamW, as the method prescribes.
"""

from __future__ import annotations

import math

import torch
from torch import nn

NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)  # quintic coefficients of Jordan et al.


def orthogonalize(matrix: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """(A, B) -> (A, B), close to U V^T of the matrix's SVD (its singular values near 1)."""
    a, b, c = NEWTON_SCHULZ
    x = matrix / (matrix.norm() + 1e-7)
    wide = x.shape[0] <= x.shape[1]
    x = x if wide else x.T  # iterate on the (small, small) Gram matrix
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.T


def uses_muon(name: str, param: nn.Parameter) -> bool:
    """The 2-D weights inside the transformer blocks (`...blocks.N...`)."""
    return param.ndim == 2 and ".blocks." in f".{name}"


class MuonAdamW(torch.optim.Optimizer):
    """Param groups with `muon: True` take Muon (Nesterov momentum), the others AdamW."""

    def __init__(self, groups: list[dict], lr: float, betas, eps: float, momentum: float = 0.95):
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, momentum=momentum, muon=False, weight_decay=0.0
        )
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, decay = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.mul_(1 - lr * decay)
                if group["muon"]:
                    p.add_(self._muon_update(p, group), alpha=-lr)
                else:
                    self._adamw_update(p, group, lr)
        return loss

    def _muon_update(self, p: torch.Tensor, group: dict) -> torch.Tensor:
        state, momentum = self.state[p], group["momentum"]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
        buffer = state["momentum_buffer"].lerp_(p.grad, 1 - momentum)
        update = orthogonalize(p.grad.lerp(buffer, momentum))  # Nesterov
        return update * (0.2 * math.sqrt(max(p.shape)))

    def _adamw_update(self, p: torch.Tensor, group: dict, lr: float) -> None:
        state, (beta1, beta2) = self.state[p], group["betas"]
        if "step" not in state:
            state["step"] = torch.zeros(())
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
        state["step"] += 1
        step = float(state["step"])
        state["exp_avg"].lerp_(p.grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        denominator = (state["exp_avg_sq"] / (1 - beta2**step)).sqrt_().add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denominator, value=-lr / (1 - beta1**step))
