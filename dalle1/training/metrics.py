"""What a run reports: a progress bar, metric lines in the log, TensorBoard, metrics.jsonl and
preview images. Only rank 0 reports; the others hold a logger that does nothing."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from dalle1.images import save_image

logger = logging.getLogger(__name__)


class MetricLogger:
    """Averages step metrics over each logging window and writes them where they belong.

    RUN/metrics.jsonl   one JSON line per log: {"step", "split": train|eval, metrics...}
    RUN/tensorboard/    scalars as SPLIT/NAME, images by name (when tensorboard is on)
    RUN/previews/       NAME_STEP.png for every image grid
    """

    def __init__(
        self,
        run_dir: Path,
        total_steps: int,
        first_step: int,
        active: bool,
        tensorboard: bool,
        images_per_step: int,
        tokens_per_image: int = 0,
    ) -> None:
        from tqdm import tqdm

        self.run_dir, self.active = run_dir, active
        self.images_per_step, self.tokens_per_image = images_per_step, tokens_per_image
        self._writer = None
        if active and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(run_dir / "tensorboard"))
        # Off when not a terminal (the metric lines say the same) and off ranks other than 0.
        self.progress = tqdm(
            total=total_steps,
            initial=first_step,
            desc=run_dir.name,
            unit="step",
            disable=None if active else True,
        )
        self._sums: dict[str, float] = {}
        self._steps, self._start = 0, time.perf_counter()

    def step(self, metrics: dict[str, float]) -> None:
        """Add one step's metrics to the window."""
        for key, value in metrics.items():
            self._sums[key] = self._sums.get(key, 0.0) + float(value)
        self._steps += 1
        self.progress.update(1)
        self.progress.set_postfix(loss=f"{metrics['loss']:.4f}")

    def flush_window(self, step: int) -> dict[str, float]:
        """Log the window's means with images/s (and tokens/s, and on CUDA the peak memory
        allocated so far); returns them."""
        elapsed = time.perf_counter() - self._start
        means = {k: v / max(self._steps, 1) for k, v in self._sums.items()}
        means["images_per_s"] = self._steps * self.images_per_step / elapsed
        if self.tokens_per_image:
            means["tokens_per_s"] = means["images_per_s"] * self.tokens_per_image
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            means["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        self.log(step, "train", means)
        self._sums, self._steps, self._start = {}, 0, time.perf_counter()
        return means

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        if not self.active:
            return
        text = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        logger.info("step %d %s: %s", step, split, text)
        if self._writer is not None:
            for key, value in metrics.items():
                self._writer.add_scalar(f"{split}/{key}", value, step)
        with open(self.run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps({"step": step, "split": split, **metrics}) + "\n")

    def images(self, step: int, grids: dict[str, torch.Tensor]) -> None:
        """Each (3, H, W) grid in [0, 1] to previews/ and TensorBoard."""
        if not self.active:
            return
        for name, grid in grids.items():
            save_image(grid, self.run_dir / "previews" / f"{name}_{step:07d}.png")
            if self._writer is not None:
                self._writer.add_image(name, grid.float().clamp(0, 1), step)

    def close(self) -> None:
        self.progress.close()
        if self._writer is not None:
            self._writer.flush()
