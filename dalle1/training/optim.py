"""AdamW (or Muon for the blocks' matrices) with decoupled weight decay on matrices, linear
warm-up then cosine decay, in one cycle or several (warm restarts)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from dalle1.training.muon import MuonAdamW, uses_muon


@dataclass
class OptimConfig:
    """AdamW (or Muon) with linear warm-up then cosine decay."""

    # adamw, or muon: Muon for the 2-D weights inside the transformer blocks, AdamW for the
    # rest, at the same lr and weight decay (dalle1/training/muon.py)
    optimizer: str = "adamw"
    lr: float = 1e-4  # peak learning rate after warm-up, per optimizer step, not scaled by world
    final_lr: float = 1.25e-6  # learning rate reached at train.max_steps
    warmup_steps: int = 0  # linear warm-up from 0 over this many optimizer steps
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW beta1, beta2
    eps: float = 1e-8  # AdamW epsilon
    weight_decay: float = 1e-4  # decoupled decay, on weights of rank >= 2 only
    grad_clip: float = 0.0  # max global gradient norm; 0 turns clipping off
    # warm restarts: train.max_steps is split into this many equal cycles, each a warm-up and a
    # cosine decay to final_lr (SGDR); a small set overfits late in one long decay
    cycles: int = 1

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamw", "muon"):
            raise ValueError(f"optimizer must be adamw or muon, got {self.optimizer!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.lr <= 0 or self.final_lr < 0:
            raise ValueError(
                f"lr must be positive and final_lr non-negative, got {self.lr}, {self.final_lr}"
            )
        if self.cycles < 1:
            raise ValueError(f"cycles must be at least 1, got {self.cycles}")


def lr_at(step: int, optim: OptimConfig, max_steps: int) -> float:
    """Linear warm-up to optim.lr, then half-cosine decay to optim.final_lr at the end of the
    cycle; max_steps holds optim.cycles equal cycles (the last one takes the remainder)."""
    cycle_length = max(max_steps // optim.cycles, 1)
    cycle = min(step // cycle_length, optim.cycles - 1)
    start = cycle * cycle_length
    end = max_steps if cycle == optim.cycles - 1 else start + cycle_length
    step, max_steps = step - start, end - start
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    span = max(max_steps - optim.warmup_steps, 1)
    progress = min((step - optim.warmup_steps) / span, 1.0)
    return optim.final_lr + (optim.lr - optim.final_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """Weight decay on matrices and conv kernels, none on biases, norms, gains."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    matrices = [(n, p) for n, p in named if p.ndim >= 2]
    rest = {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0}
    if optim.optimizer == "adamw":
        decayed = {"params": [p for _, p in matrices], "weight_decay": optim.weight_decay}
        return torch.optim.AdamW(
            [decayed, rest], lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps
        )
    muon = [p for n, p in matrices if uses_muon(n, p)]
    adamw = [p for n, p in matrices if not uses_muon(n, p)]
    groups = [
        {"params": muon, "muon": True, "weight_decay": optim.weight_decay},
        {"params": adamw, "weight_decay": optim.weight_decay},
        rest,
    ]
    return MuonAdamW(groups, optim.lr, optim.betas, optim.eps)


def clip_gradients(model: nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm to max_norm (0: no clipping); returns the norm before."""
    params = [p for p in model.parameters() if p.grad is not None]
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else math.inf))
