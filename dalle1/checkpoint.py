"""Training checkpoints: one folder per step, written atomically, the last N kept.

    RUN/checkpoints/step_0005000/
        model.safetensors, model_config.json   the weights for inference (EMA when enabled)
        train_weights.safetensors              the weights being optimised (when EMA is on)
        optimizer.pt, rng.pt                   loaded with weights_only=True
        state.json                             step, data position, metrics
        config.yaml                            the resolved run config

A checkpoint is written into a temporary folder that is renamed into place only once every file
is on disk, so a process killed at any moment leaves the previous checkpoint intact and never a
half-written one under a step name.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STEP_PATTERN = re.compile(r"^step_(\d{7,})$")
TEMP_PREFIX = ".tmp_"


def step_folder(root: str | Path, step: int) -> Path:
    return Path(root) / f"step_{step:07d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint folders under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_PATTERN.match(p.name)]
    return sorted(found, key=lambda p: int(STEP_PATTERN.match(p.name).group(1)))


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


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (-> its newest checkpoint). Raises FileNotFoundError."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    latest = latest_checkpoint(path / "checkpoints")
    if latest is None:
        raise FileNotFoundError(
            f"{str(path)!r} is neither a checkpoint folder (with model.safetensors) nor a run "
            "folder with checkpoints/step_*"
        )
    return latest
