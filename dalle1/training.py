"""Training machinery shared by every stage: optimizer, schedule, EMA, loop, logs, checkpoints.

A stage builds its model and data set, then hands the Trainer a `step_fn` (a batch -> loss and
metrics) and an `eval_fn` (the inference model -> held-out scalars and image grids). The Trainer
knows nothing about the model. It gives every stage the same behaviour:

- a progress bar with loss and speed; metrics to the log and TensorBoard every `log_every` steps;
- checkpoints every `checkpoint_every` steps and at the end (see dalle1/checkpoint.py), and on
  Ctrl-C; `resume()` continues from the last one with the same step, schedules, RNG and data order;
- a NaN or inf loss stops the run with a message naming the step, before anything is saved.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from dalle1 import distributed
from dalle1.checkpoint import atomic_checkpoint, latest_checkpoint
from dalle1.config import save_config
from dalle1.distributed import distributed_context
from dalle1.images import save_image
from vqvae.pretrained import check_fits

logger = logging.getLogger(__name__)

TRAIN_WEIGHTS_FILE = "train_weights.safetensors"


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay."""

    lr: float = (
        1e-4  # peak learning rate after warm-up, per optimizer step (not scaled by world size)
    )
    final_lr: float = 1.25e-6  # learning rate reached at train.max_steps
    warmup_steps: int = 0  # linear warm-up from 0 over this many steps
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW beta1, beta2
    eps: float = 1e-8  # AdamW epsilon
    weight_decay: float = 1e-4  # decoupled decay, on weights of rank >= 2 only
    grad_clip: float = 0.0  # max global gradient norm; 0 turns clipping off

    def __post_init__(self) -> None:
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.lr <= 0 or self.final_lr < 0:
            raise ValueError(
                f"lr must be positive and final_lr non-negative, got {self.lr}, {self.final_lr}"
            )


@dataclass
class TrainConfig:
    """The run: where it writes, how long, how it logs and saves."""

    run_dir: str = "runs/run"  # checkpoints/, tensorboard/, previews/ and config.yaml go here
    max_steps: int = 1000  # optimizer steps
    batch_size: int = 32  # images per optimizer step
    seed: int = 0  # seeds model init, noise, data order, crops and captions
    device: str = "auto"  # auto (cuda when available, else cpu), cpu, cuda, cuda:1, ...
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU), fp32 or bf16
    ema_decay: float = 0.0  # parameter EMA decay (e.g. 0.999); 0 turns EMA off
    log_every: int = 25  # steps between metric logs
    eval_every: int = 250  # steps between held-out metrics and preview grids; 0 = never
    checkpoint_every: int = 500  # steps between checkpoints (one is always written at the end)
    keep_checkpoints: int = 3  # newest checkpoints kept on disk
    num_workers: int = 0  # DataLoader worker processes
    tensorboard: bool = True  # write TensorBoard logs to run_dir/tensorboard
    # Under torchrun: ddp (a whole model per process) or fsdp (parameters, gradients and
    # optimizer state sharded across processes, for models that do not fit one device)
    parallel: str = "ddp"

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.parallel not in distributed.PARALLEL_MODES:
            raise ValueError(f"parallel must be ddp or fsdp, got {self.parallel!r}")
        if self.max_steps < 1 or self.batch_size < 1:
            raise ValueError("max_steps and batch_size must be at least 1")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.log_every < 1 or self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("log_every, checkpoint_every and keep_checkpoints must be at least 1")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def lr_at(step: int, optim: OptimConfig, max_steps: int) -> float:
    """Linear warm-up to optim.lr, then half-cosine decay to optim.final_lr at max_steps."""
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    span = max(max_steps - optim.warmup_steps, 1)
    progress = min((step - optim.warmup_steps) / span, 1.0)
    return optim.final_lr + (optim.lr - optim.final_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`, or None for plain fp32."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and conv kernels, none on biases, norms, gains."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps)


class ResumableSampler(Sampler[int]):
    """A fresh permutation per epoch, seeded by (seed, epoch), that can start mid-epoch.

    With world > 1 processes, each global batch of `global_batch` indices is cut into world
    equal parts and this rank yields its part, so that the ranks together see exactly the batches
    of a single-process run.
    """

    def __init__(
        self, size: int, seed: int, global_batch: int = 1, rank: int = 0, world: int = 1
    ) -> None:
        self.size, self.seed = size, seed
        self.global_batch, self.rank, self.world = global_batch, rank, world
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int) -> None:
        """start: the position in the epoch's permutation, counted in global samples."""
        self.epoch, self.start = epoch, start

    def _indices(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator)[self.start :]
        if self.world == 1:
            return order
        whole = len(order) // self.global_batch * self.global_batch
        return (
            order[:whole]
            .view(-1, self.world, self.global_batch // self.world)[:, self.rank]
            .flatten()
        )

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices().tolist())

    def __len__(self) -> int:
        return len(self._indices())


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
        self.config, self.optim_config, self.run_config = config, optim, run_config
        self.run_dir = Path(config.run_dir)
        self.rank, self.world = distributed_context()
        if config.batch_size % self.world:
            raise ValueError(
                f"batch_size {config.batch_size} is not divisible by the {self.world} processes"
            )
        self.local_batch = config.batch_size // self.world
        self.device = pick_device(config.device)
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = autocast_dtype(config.precision, self.device)
        self.ema_model = None
        if config.ema_decay > 0:
            self.ema_model = copy.deepcopy(model).eval().requires_grad_(False)
        self.sharded = self.world > 1 and config.parallel == "fsdp"
        if self.sharded:  # before moving: only each rank's shards go to its device
            for module in (model, self.ema_model):
                if module is not None:
                    distributed.shard(module)
        self.model = model.to(self.device)
        if self.ema_model is not None:
            self.ema_model.to(self.device)
        self.train_model = self.model  # what step_fn gets: the DDP wrapper under DDP
        if self.world > 1 and not self.sharded:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=ids)
        if self.world > 1 and self.rank == 0:
            mode = "FSDP, sharded" if self.sharded else "DDP"
            logger.info("training on %d processes (%s)", self.world, mode)
        self.optimizer = build_optimizer(self.model, optim)
        self.dataset = dataset
        self.sampler = None
        self.tokens_per_sample = 0  # set by a stage to log tokens per second
        if not isinstance(dataset, IterableDataset):
            if len(dataset) < config.batch_size:
                raise ValueError(
                    f"the data set has {len(dataset)} samples, fewer than one batch of "
                    f"{config.batch_size}"
                )
            self.sampler = ResumableSampler(
                len(dataset), config.seed, config.batch_size, self.rank, self.world
            )
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        # Tensors a stage keeps across steps (e.g. code usage counts); saved and resumed.
        self.stage_state: dict[str, torch.Tensor] = {}
        self._writer = None

    @property
    def inference_model(self) -> nn.Module:
        """The weights to evaluate and ship: the EMA copy when EMA is on."""
        return self.ema_model if self.ema_model is not None else self.model

    @property
    def checkpoint_root(self) -> Path:
        return self.run_dir / "checkpoints"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    # --- checkpoints -------------------------------------------------------------------------

    def save(self) -> Path | None:
        """Write a checkpoint: every rank gathers, rank 0 writes (the others return None)."""
        weights = distributed.model_state(self.model)
        inference = weights  # what model.safetensors holds: the EMA weights when EMA is on
        if self.ema_model is not None:
            inference = distributed.model_state(self.ema_model)
        optimizer = distributed.optimizer_state(self.model, self.optimizer)
        if self.rank != 0:
            return None
        with atomic_checkpoint(
            self.checkpoint_root, self.step, self.config.keep_checkpoints
        ) as folder:
            self.model.save_pretrained(folder, inference)
            if self.ema_model is not None:
                save_file(weights, folder / TRAIN_WEIGHTS_FILE)
            torch.save(optimizer, folder / "optimizer.pt")
            torch.save(self._rng_state(), folder / "rng.pt")
            torch.save(self.stage_state, folder / "stage_state.pt")
            state = {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}
            (folder / "state.json").write_text(json.dumps(state))
            save_config(self.run_config, folder / "config.yaml")
        final = self.checkpoint_root / f"step_{self.step:07d}"
        logger.info("saved checkpoint %s", final)
        return final

    def resume(self) -> bool:
        """Load the newest checkpoint of run_dir, if any. Returns whether one was loaded.

        Rank 0 reads the weights and optimizer state and sends each rank its part; every rank
        reads the small files (step, RNG), so run_dir must be on a file system they all see.
        """
        folder = latest_checkpoint(self.checkpoint_root)
        if folder is None:
            return False
        files, error = {}, None
        if self.rank == 0:
            try:
                files = self._read_weights(folder)
            except Exception as err:  # a corrupt file raises many kinds of errors
                error = err if isinstance(err, ValueError) else ValueError(str(err))
        if self.world > 1:  # the other ranks must not wait for weights that never come
            message = [str(error) if error else None]
            torch.distributed.broadcast_object_list(message, src=0)
            error = error or (ValueError(message[0]) if message[0] else None)
        if error is not None:
            raise ValueError(f"cannot resume from {str(folder)!r}: {error}") from error
        distributed.load_model_state(self.model, files.get("train", {}))
        if self.ema_model is not None:
            distributed.load_model_state(self.ema_model, files.get("inference", {}))
        distributed.load_optimizer_state(self.model, self.optimizer, files.get("optimizer", {}))
        try:
            rng = torch.load(folder / "rng.pt", weights_only=True)
            stage_state = torch.load(
                folder / "stage_state.pt", map_location=self.device, weights_only=True
            )
            state = json.loads((folder / "state.json").read_text())
        except Exception as err:
            raise ValueError(f"cannot resume from {str(folder)!r}: {err}") from err
        self._set_rng_state(rng)
        for key, value in stage_state.items():  # in place: the stage holds these tensors
            if key in self.stage_state:
                self.stage_state[key].copy_(value)
            else:
                self.stage_state[key] = value
        self.step, self.epoch = state["step"], state["epoch"]
        self.batch_in_epoch = state["batch_in_epoch"]
        logger.info("resumed from %s at step %d", folder, self.step)
        return True

    def _read_weights(self, folder: Path) -> dict[str, dict]:
        """The checkpoint's weights and optimizer state on the CPU, checked against the model."""
        inference = load_file(folder / "model.safetensors")
        files = {"inference": inference, "train": inference}
        if self.ema_model is not None:
            files["train"] = load_file(folder / TRAIN_WEIGHTS_FILE)
        for weights in files.values():
            check_fits(self.model, weights, str(folder))
        files["optimizer"] = torch.load(folder / "optimizer.pt", weights_only=True)
        return files

    def _rng_state(self) -> dict:
        state = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def _set_rng_state(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    # --- data ---------------------------------------------------------------------------------

    def _batches(self) -> Iterator[Any]:
        """Batches from the saved data position on, epoch after epoch."""
        while True:
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(self.epoch)
            skip = self.batch_in_epoch
            if self.sampler is not None:
                self.sampler.set_position(self.epoch, skip * self.config.batch_size)
                skip = 0
            loader = DataLoader(
                self.dataset,
                batch_size=self.local_batch,
                sampler=self.sampler,
                drop_last=True,
                num_workers=self.config.num_workers,
                pin_memory=self.device.type == "cuda",
                # Its own generator: a loader seeds its workers from the global RNG otherwise,
                # which would shift the training noise whenever a resume starts a new loader.
                generator=torch.Generator().manual_seed(self.config.seed * 100_003 + self.epoch),
            )
            for i, batch in enumerate(loader):
                if i >= skip:  # an iterable data set cannot seek: read past what was used
                    yield batch
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    # --- the loop -----------------------------------------------------------------------------

    def fit(
        self,
        step_fn: Callable[[nn.Module, Any, int], tuple[torch.Tensor, dict[str, float]]],
        eval_fn: Callable[[nn.Module, int], tuple[dict[str, float], dict[str, torch.Tensor]]]
        | None = None,
    ) -> dict[str, float]:
        """Train until max_steps. step_fn(model, batch, step) -> (loss, metrics);
        eval_fn(inference_model, step) -> (scalars, {name: (3, H, W) image grid})."""
        from tqdm import tqdm

        config = self.config
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.run_config, self.run_dir / "config.yaml")
        progress = tqdm(
            total=config.max_steps,
            initial=self.step,
            desc=self.run_dir.name,
            unit="step",
            # off when not a terminal (the metric log lines say the same) and off rank 0
            disable=None if self.rank == 0 else True,
        )
        sums: dict[str, float] = {}
        window_start, window_steps, last_saved = time.perf_counter(), 0, -1
        metrics: dict[str, float] = {}
        batches = self._batches()
        try:
            while self.step < config.max_steps:
                batch = next(batches)
                self.model.train()
                lr = lr_at(self.step, self.optim_config, config.max_steps)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                with self.autocast():
                    loss, step_metrics = step_fn(self.train_model, batch, self.step)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"loss is {loss.item()} at step {self.step}; stopped without saving. "
                        f"The last checkpoint is {latest_checkpoint(self.checkpoint_root)}."
                    )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = self._clip_gradients()
                self.optimizer.step()
                self._update_ema()
                self.step += 1
                self.batch_in_epoch += 1
                step_metrics = {
                    "loss": loss.item(),
                    "lr": lr,
                    "grad_norm": grad_norm,
                    **step_metrics,
                }
                for key, value in step_metrics.items():
                    sums[key] = sums.get(key, 0.0) + float(value)
                window_steps += 1
                progress.update(1)
                progress.set_postfix(loss=f"{loss.item():.4f}")
                if self.step % config.log_every == 0 or self.step == config.max_steps:
                    elapsed = time.perf_counter() - window_start
                    metrics = {k: v / window_steps for k, v in sums.items()}
                    metrics["images_per_s"] = window_steps * config.batch_size / elapsed
                    if self.tokens_per_sample:
                        metrics["tokens_per_s"] = metrics["images_per_s"] * self.tokens_per_sample
                    self._log("train", metrics)
                    sums, window_start, window_steps = {}, time.perf_counter(), 0
                if (
                    eval_fn
                    and (self.rank == 0 or self.sharded)  # sharded: every rank takes part
                    and config.eval_every
                    and (self.step % config.eval_every == 0 or self.step == config.max_steps)
                ):
                    self._evaluate(eval_fn)
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
            progress.close()
            if self._writer is not None:
                self._writer.flush()
        return metrics

    def _clip_gradients(self) -> float:
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.optim_config.grad_clip if self.optim_config.grad_clip > 0 else float("inf")
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema_model is None:
            return
        # Warm-up of the decay: early weights are forgotten fast. Depends on the step only, so a
        # resumed run continues the same averages.
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        for ema, live in zip(self.ema_model.parameters(), self.model.parameters(), strict=True):
            ema.lerp_(live, 1 - decay)
        for ema, live in zip(self.ema_model.buffers(), self.model.buffers(), strict=True):
            ema.copy_(live)

    def _evaluate(self, eval_fn: Callable) -> None:
        model = self.inference_model.eval()
        with torch.no_grad(), self.autocast(), distributed.gathered(model):
            scalars, images = eval_fn(model, self.step)
        self._log("eval", scalars)
        if self.rank != 0:
            return
        for name, grid in images.items():
            save_image(grid, self.run_dir / "previews" / f"{name}_{self.step:07d}.png")
            if self.writer is not None:
                self.writer.add_image(name, grid.float().clamp(0, 1), self.step)

    @property
    def writer(self):
        if self._writer is None and self.config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        return self._writer

    def _log(self, prefix: str, metrics: dict[str, float]) -> None:
        if self.rank != 0:
            return
        text = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        logger.info("step %d %s: %s", self.step, prefix, text)
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(f"{prefix}/{key}", value, self.step)
        with open(self.run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps({"step": self.step, "split": prefix, **metrics}) + "\n")
