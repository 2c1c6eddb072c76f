"""The training loop every stage shares.

A stage builds its model and data set, then hands the Trainer a `step_fn` (a batch -> loss and
metrics) and an `eval_fn` (the inference model -> held-out scalars and image grids). The Trainer
knows nothing about the model; its parts sit beside it:

- distributed.py: the process group, DDP or FSDP, the EMA copy;
- checkpoint.py: checkpoints every `checkpoint_every` steps, at the end and on Ctrl-C, and
  `--resume` with the same step, schedules, RNG and data order (data_order.py); with
  `keep_best`, the weights of the evaluation with the best held-out loss in RUN/best (small
  folders overfit: the stamps' held-out loss was lowest at step 250 of 2,000);
- metrics.py: the progress bar, log lines, TensorBoard, metrics.jsonl and previews.

A NaN or inf loss stops the run with a message naming the step, before anything is saved.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset

from dalle1.config import save_config
from dalle1.device import autocast, autocast_dtype, pick_device
from dalle1.training import distributed
from dalle1.training.checkpoint import Checkpointer
from dalle1.training.data_order import DataOrder
from dalle1.training.metrics import MetricLogger
from dalle1.training.optim import OptimConfig, build_optimizer, clip_gradients, lr_at
from pretrained.run import RUN_CONFIG_FILE

logger = logging.getLogger(__name__)

StepFn = Callable[[nn.Module, Any, int], tuple[torch.Tensor, dict[str, float]]]
EvalFn = Callable[[nn.Module, int], tuple[dict[str, float], dict[str, torch.Tensor]]]
HELD_OUT_LOSS = "loss"  # the eval scalar that keep_best minimises


@dataclass
class TrainConfig:
    """The run: where it writes, how long, how it logs and saves."""

    run_dir: str = "runs/run"  # checkpoints/, tensorboard/, previews/ and config.yaml go here
    max_steps: int = 1000  # optimizer steps
    batch_size: int = 32  # images per optimizer step, over all processes together
    # micro-batches per optimizer step: each process holds batch_size / (processes x this)
    # images at a time, for large batches on small GPUs (CLIP then contrasts within each)
    grad_accum_steps: int = 1
    seed: int = 0  # seeds model init, noise, data order, crops and captions
    device: str = "auto"  # auto (cuda when available, else cpu), cpu, cuda, cuda:1, ...
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU), fp32 or bf16
    ema_decay: float = 0.0  # parameter EMA decay (e.g. 0.999); 0 turns EMA off
    log_every: int = 25  # steps between metric logs
    eval_every: int = 250  # steps between held-out metrics and preview grids; 0 = never
    checkpoint_every: int = 500  # steps between checkpoints (one is always written at the end)
    keep_checkpoints: int = 3  # newest checkpoints kept on disk
    # keep the weights of the evaluation with the lowest held-out loss in run_dir/best; a run
    # folder given to any reader (the next stage, sampling) then means those weights
    keep_best: bool = True
    num_workers: int = 0  # DataLoader worker processes
    tensorboard: bool = True  # write TensorBoard logs to run_dir/tensorboard
    # under torchrun: ddp (a whole model per process) or fsdp (parameters, gradients and
    # optimizer state sharded across processes, for models that do not fit one device)
    parallel: str = "ddp"

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.parallel not in distributed.PARALLEL_MODES:
            raise ValueError(f"parallel must be ddp or fsdp, got {self.parallel!r}")
        if self.max_steps < 1 or self.batch_size < 1 or self.grad_accum_steps < 1:
            raise ValueError("max_steps, batch_size and grad_accum_steps must be at least 1")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.log_every < 1 or self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("log_every, checkpoint_every and keep_checkpoints must be at least 1")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class Trainer:
    """Runs the optimisation loop of one stage; see the module docstring."""

    def __init__(
        self,
        config: TrainConfig,
        optim: OptimConfig,
        model: nn.Module,
        dataset: Dataset | IterableDataset,
        run_config: Any,
    ) -> None:
        distributed.init_distributed()
        self.config, self.optim_config, self.run_config = config, optim, run_config
        self.run_dir = Path(config.run_dir)
        self.rank, self.world = distributed.distributed_context()
        if optim.optimizer == "muon" and config.parallel == "fsdp" and self.world > 1:
            # Newton-Schulz needs each whole matrix; FSDP holds shards of it
            raise ValueError("optim.optimizer=muon needs whole matrices: use parallel=ddp")
        self.device = pick_device(config.device)
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = autocast_dtype(config.precision, self.device)
        self.parallel = distributed.wrap_for_training(
            model, config.parallel, config.ema_decay, self.device
        )
        self.model, self.train_model = self.parallel.model, self.parallel.train_model
        self.optimizer = build_optimizer(self.model, optim)
        self.data = DataOrder(
            dataset,
            config.batch_size,
            config.seed,
            config.num_workers,
            self.device.type == "cuda",
            self.rank,
            self.world,
            config.grad_accum_steps,
        )
        # The global index of the current micro-batch's first sample: stages seed per-sample
        # draws by it, so they do not depend on the number of processes or micro-batches.
        self.sample_offset = 0
        # Tensors a stage keeps across steps (e.g. code usage counts); saved and resumed.
        self.stage_state: dict[str, torch.Tensor] = {}
        self.checkpoints = Checkpointer(
            self.run_dir,
            config.keep_checkpoints,
            self.model,
            self.parallel.ema,
            self.optimizer,
            self.stage_state,
        )
        self.step, self._started = 0, False
        self.tokens_per_sample = 0  # set by a stage to log tokens per second

    @property
    def inference_model(self) -> nn.Module:
        """The weights to evaluate and ship: the EMA copy when EMA is on."""
        return self.parallel.ema if self.parallel.ema is not None else self.model

    def autocast(self):
        return autocast(self.dtype, self.device)

    def start(self, resume: bool = False, restart: bool = False, init_from: str | None = None):
        """Resume the newest checkpoint (resume), or start anew in a folder that has some
        (restart); a folder with checkpoints and neither flag raises RunExistsError.
        init_from: a run or model folder whose weights a new run starts from (fine-tuning)."""
        self._started = True
        if self.checkpoints.prepare(resume, restart):
            position = self.checkpoints.load(self.device)
            self.step, self.data.epoch = position["step"], position["epoch"]
            self.data.batch_in_epoch = position["batch_in_epoch"]
        elif init_from:
            self.checkpoints.load_weights(init_from)

    def save(self) -> Path | None:
        """Write a checkpoint: every rank gathers, rank 0 writes (the others return None)."""
        position = {"step": self.step, "epoch": self.data.epoch}
        position["batch_in_epoch"] = self.data.batch_in_epoch
        return self.checkpoints.save(position, self.run_config)

    def fit(self, step_fn: StepFn, eval_fn: EvalFn | None = None) -> dict[str, float]:
        """Train until max_steps. step_fn(train_model, batch, step) -> (loss, metrics);
        eval_fn(inference_model, step) -> (scalars, {name: (3, H, W) image grid})."""
        config = self.config
        if not self._started:  # never over an earlier run's checkpoints by accident
            self.start()
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.run_config, self.run_dir / RUN_CONFIG_FILE)
        metrics = MetricLogger(
            self.run_dir,
            config.max_steps,
            self.step,
            self.rank == 0,
            config.tensorboard,
            config.batch_size,
            self.tokens_per_sample,
        )
        window: dict[str, float] = {}
        last_saved = -1
        batches = iter(self.data)
        try:
            while self.step < config.max_steps:
                metrics.step(self._train_step(step_fn, batches))
                if self.step % config.log_every == 0 or self.step == config.max_steps:
                    window = metrics.flush_window(self.step)
                if eval_fn and self._eval_due():
                    self._evaluate(eval_fn, metrics)
                if self.step % config.checkpoint_every == 0:
                    self.save()
                    last_saved = self.step
            if last_saved != self.step:
                self.save()
        except KeyboardInterrupt:
            logger.warning("interrupted at step %d: saving a checkpoint", self.step)
            self.save()
            raise
        finally:
            metrics.close()
        return window

    def _train_step(self, step_fn: StepFn, batches) -> dict[str, float]:
        """One optimizer step over grad_accum_steps micro-batches; returns its mean metrics."""
        self.model.train()
        lr = lr_at(self.step, self.optim_config, self.config.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        accumulation, sums = self.data.accumulation, {}
        for micro in range(accumulation):
            self.sample_offset = self.rank * self.data.local_batch + micro * self.data.micro_batch
            with self.autocast(), self._sync_gradients(micro == accumulation - 1):
                loss, metrics = step_fn(self.train_model, next(batches), self.step)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"loss is {loss.item()} at step {self.step}; stopped without saving. "
                        f"The last checkpoint is {self.checkpoints.latest()}."
                    )
                (loss / accumulation).backward()  # the mean over the micro-batches
            for key, value in {"loss": loss.item(), **metrics}.items():
                sums[key] = sums.get(key, 0.0) + float(value) / accumulation
        grad_norm = clip_gradients(self.model, self.optim_config.grad_clip)
        self.optimizer.step()
        if self.parallel.ema is not None:
            distributed.update_ema(self.parallel.ema, self.model, self.config.ema_decay, self.step)
        self.step += 1
        self.data.advance()
        return {**sums, "lr": lr, "grad_norm": grad_norm}

    def _sync_gradients(self, last: bool):
        """DDP all-reduces gradients on the last micro-batch only (no_sync before it)."""
        if last or not hasattr(self.train_model, "no_sync"):
            return contextlib.nullcontext()
        return self.train_model.no_sync()

    def _eval_due(self) -> bool:
        every = self.config.eval_every
        on_step = every and (self.step % every == 0 or self.step == self.config.max_steps)
        return bool(on_step) and (self.rank == 0 or self.parallel.sharded)  # FSDP: every rank

    def _evaluate(self, eval_fn: EvalFn, metrics: MetricLogger) -> None:
        model = self.inference_model.eval()
        with torch.no_grad(), self.autocast(), distributed.gathered(model):
            scalars, images = eval_fn(model, self.step)
        metrics.log(self.step, "eval", scalars)
        metrics.images(self.step, images)
        if self.config.keep_best and HELD_OUT_LOSS in scalars:
            self.checkpoints.save_if_best(self.step, scalars[HELD_OUT_LOSS], self.run_config)
