"""Training checkpoints: their layout, and saving and resuming a run with them.

    RUN/checkpoints/step_0005000/
        model.safetensors, model_config.json   the weights for inference (EMA when enabled)
        train_weights.safetensors              the weights being optimised (when EMA is on)
        optimizer.pt, rng.pt, stage_state.pt   loaded with weights_only=True
        state.json                             step and data position
        config.yaml                            the resolved run config
    RUN/best/                                  with train.keep_best: the inference weights of
        model.safetensors, model_config.json   the evaluation with the lowest held-out loss,
        state.json, config.yaml                {"step", "loss"}; readers of the run use it

A checkpoint is written into a temporary folder that is renamed into place only once every file
is on disk, so a process killed at any moment leaves the previous checkpoint intact and never a
half-written one under a step name.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dalle1.config import save_config
from dalle1.training import distributed
from pretrained import BEST_FOLDER, WEIGHTS_FILE, check_fits, resolve_model_folder, step_folders
from pretrained.run import RUN_CONFIG_FILE, STATE_FILE, read_state

logger = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp_"
TRAIN_WEIGHTS_FILE = "train_weights.safetensors"


class RunExistsError(ValueError):
    """A run folder with checkpoints was started neither with --resume nor with --restart."""


def step_folder(root: str | Path, step: int) -> Path:
    return Path(root) / f"step_{step:07d}"


list_checkpoints = step_folders  # complete checkpoint folders under a root, oldest first


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def atomic_checkpoint(root: str | Path, step: int, keep: int) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it becomes step_XXXXXXX and old ones go.

    keep: how many checkpoints to keep (the newest), at least 1.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f"{TEMP_PREFIX}*"):  # left by a process killed mid-save
        shutil.rmtree(stale, ignore_errors=True)
    temp = root / f"{TEMP_PREFIX}step_{step:07d}_{os.getpid()}"
    temp.mkdir()
    try:
        yield temp
        _fsync_tree(temp)
        final = step_folder(root, step)
        if final.exists():  # saving the same step again (e.g. final save after a periodic one)
            shutil.rmtree(final)
        os.rename(temp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    for old in list_checkpoints(root)[: -max(keep, 1)]:
        shutil.rmtree(old, ignore_errors=True)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """Saves and resumes one run: weights, EMA, optimizer, RNG, stage tensors, data position.

    Every rank takes part (FSDP gathers whole tensors); only rank 0 writes files. On resume
    rank 0 reads the weights and each rank gets its part; every rank reads the small files, so
    the run folder must be on a file system they all see.
    """

    def __init__(
        self,
        run_dir: str | Path,
        keep: int,
        model: nn.Module,
        ema: nn.Module | None,
        optimizer: torch.optim.Optimizer,
        stage_state: dict[str, torch.Tensor],
    ) -> None:
        """model, ema, optimizer, stage_state: what is saved, and restored in place."""
        self.root, self.keep = Path(run_dir) / "checkpoints", keep
        self.model, self.ema, self.optimizer, self.stage_state = model, ema, optimizer, stage_state
        self.rank = distributed.distributed_context()[0]

    def latest(self) -> Path | None:
        return latest_checkpoint(self.root)

    def prepare(self, resume: bool, restart: bool) -> bool:
        """Whether to resume. A run folder with checkpoints is never started over silently:
        `resume` continues it, `restart` moves its checkpoints aside, anything else stops."""
        latest = self.latest()
        best = self.root.parent / BEST_FOLDER
        if latest is None or resume:
            if resume and latest is None:
                logger.info("no checkpoint in %s: starting from scratch", self.root)
            if latest is None and best.is_dir() and self.rank == 0:  # of no run that is here
                shutil.rmtree(best)
            return latest is not None
        if not restart:
            raise RunExistsError(
                f"{str(self.root.parent)!r} already holds checkpoints (newest {latest.name}): "
                "pass --resume to continue it, or --restart to start anew (its checkpoints "
                "are moved to checkpoints_replaced_TIME/)"
            )
        if self.rank == 0:
            aside = self.root.with_name(f"checkpoints_replaced_{time.strftime('%Y%m%d-%H%M%S')}")
            self.root.rename(aside)
            if best.is_dir():
                best.rename(aside / BEST_FOLDER)
            logger.info("starting anew: the earlier checkpoints are in %s", aside)
        if distributed.distributed_context()[1] > 1:
            torch.distributed.barrier()  # no rank may see the old folder after this
        return False

    def save(self, position: dict[str, int], run_config: Any) -> Path | None:
        """Write checkpoints/step_{position['step']}; returns it on rank 0, None elsewhere.

        position: step, epoch, batch_in_epoch; run_config: the resolved config, as config.yaml.
        """
        weights = distributed.model_state(self.model)
        inference = weights if self.ema is None else distributed.model_state(self.ema)
        optimizer_state = distributed.optimizer_state(self.model, self.optimizer)
        if self.rank != 0:
            return None
        with atomic_checkpoint(self.root, position["step"], self.keep) as folder:
            self.model.save_pretrained(folder, inference)
            if self.ema is not None:
                save_file(weights, folder / TRAIN_WEIGHTS_FILE)
            torch.save(optimizer_state, folder / "optimizer.pt")
            torch.save(rng_state(), folder / "rng.pt")
            torch.save(self.stage_state, folder / "stage_state.pt")
            (folder / STATE_FILE).write_text(json.dumps(position))
            save_config(run_config, folder / RUN_CONFIG_FILE)
        final = step_folder(self.root, position["step"])
        logger.info("saved checkpoint %s", final)
        return final

    def best_loss(self) -> float:
        best = self.root.parent / BEST_FOLDER
        return read_state(best)["loss"] if (best / STATE_FILE).is_file() else float("inf")

    def save_if_best(self, step: int, loss: float, run_config: Any) -> bool:
        """Write the inference weights to RUN/best when `loss` (held out) is the lowest yet.
        Rank 0 only: under FSDP every rank must call it (the weights are gathered)."""
        if not loss < self.best_loss():
            return False
        inference = distributed.model_state(self.ema if self.ema is not None else self.model)
        if self.rank != 0:
            return True
        best = self.root.parent / BEST_FOLDER
        for stale in self.root.parent.glob(f"{TEMP_PREFIX}{BEST_FOLDER}_*"):  # a killed swap's
            shutil.rmtree(stale, ignore_errors=True)
        temp = self.root.parent / f"{TEMP_PREFIX}{BEST_FOLDER}_{os.getpid()}"
        self.model.save_pretrained(temp, inference)
        (temp / STATE_FILE).write_text(json.dumps({"step": step, "loss": loss}))
        save_config(run_config, temp / RUN_CONFIG_FILE)
        _fsync_tree(temp)
        if best.exists():  # the swap is two renames: a crash between them leaves no best/,
            old = best.with_name(f"{TEMP_PREFIX}{BEST_FOLDER}_old_{os.getpid()}")
            os.rename(best, old)  # and readers fall back to the newest checkpoint
            os.rename(temp, best)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(temp, best)
        logger.info("best held-out loss so far (%.4f at step %d): %s", loss, step, best)
        return True

    def load(self, device: torch.device) -> dict[str, int]:
        """Restore the newest checkpoint in place; returns its position (step, epoch,
        batch_in_epoch). device: where the stage's tensors live."""
        folder = self.latest()
        files, error = {}, None
        if self.rank == 0:
            try:
                files = self._read_weights(folder, self.model, self.ema is not None)
            except Exception as err:  # a corrupt file raises many kinds of errors
                error = err if isinstance(err, ValueError) else ValueError(str(err))
        if distributed.distributed_context()[1] > 1:  # the others must not wait for nothing
            message = [str(error) if error else None]
            torch.distributed.broadcast_object_list(message, src=0)
            error = error or (ValueError(message[0]) if message[0] else None)
        if error is not None:
            raise ValueError(f"cannot resume from {str(folder)!r}: {error}") from error
        distributed.load_model_state(self.model, files.get("train", {}))
        if self.ema is not None:
            distributed.load_model_state(self.ema, files.get("inference", {}))
        distributed.load_optimizer_state(self.model, self.optimizer, files.get("optimizer", {}))
        try:
            rng = torch.load(folder / "rng.pt", weights_only=True)
            saved = torch.load(folder / "stage_state.pt", map_location=device, weights_only=True)
            position = read_state(folder)
        except Exception as err:
            raise ValueError(f"cannot resume from {str(folder)!r}: {err}") from err
        set_rng_state(rng)
        for key, value in saved.items():  # in place: the stage holds these tensors
            if key in self.stage_state:
                self.stage_state[key].copy_(value)
            else:
                self.stage_state[key] = value
        logger.info("resumed from %s at step %d", folder, position["step"])
        return position

    def load_weights(self, path: str | Path) -> Path:
        """Fine-tuning: the model (and EMA) start from another run's weights for use; the
        optimizer, schedules and step start afresh. Returns the model folder read."""
        folder = resolve_model_folder(path)
        state, error = {}, None
        if self.rank == 0:
            try:
                state = load_file(folder / WEIGHTS_FILE)
                check_fits(self.model, state, str(folder))
            except Exception as err:
                error = err
        if distributed.distributed_context()[1] > 1:
            message = [str(error) if error else None]
            torch.distributed.broadcast_object_list(message, src=0)
            error = error or (ValueError(message[0]) if message[0] else None)
        if error is not None:
            raise ValueError(
                f"cannot start from {str(path)!r}: {error} (fine-tuning needs the same model "
                "sizes and vocabularies)"
            ) from error
        for module in (self.model, self.ema):
            if module is not None:
                distributed.load_model_state(module, state)
        logger.info("starting from the weights of %s", folder)
        return folder

    @staticmethod
    def _read_weights(folder: Path, model: nn.Module, has_ema: bool) -> dict[str, dict]:
        """The checkpoint's weights and optimizer state on the CPU, checked against the model."""
        inference = load_file(folder / WEIGHTS_FILE)
        files = {"inference": inference, "train": inference}
        if has_ema:
            files["train"] = load_file(folder / TRAIN_WEIGHTS_FILE)
        for weights in files.values():
            check_fits(model, weights, str(folder))
        files["optimizer"] = torch.load(folder / "optimizer.pt", weights_only=True)
        return files
