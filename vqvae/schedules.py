"""Cosine schedules for the dVAE's KL weight, Gumbel temperature and learning rate."""

from __future__ import annotations

import math


def cosine_ramp(step: int, steps: int, start: float, end: float) -> float:
    """`start` at step 0, `end` from step `steps` on, a half cosine between."""
    if steps <= 0 or step >= steps:
        return end
    progress = max(step, 0) / steps
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))
