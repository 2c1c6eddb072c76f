"""A model as a folder: model.safetensors + model_config.json, for every model of the project.

    model_config.json   {"class": "DiscreteVAE", "config": {...the model's config dataclass...}}
    model.safetensors   the weights (loading them runs no code)

A model class mixes in `Pretrained`, sets `config_class` and `label` (what messages call it) and
takes its config dataclass as its one constructor argument. `load_pretrained(path, classes)` reads
the class name a folder records and builds that class, so a consumer that accepts several classes
(e.g. any image tokenizer) needs no flag to say which. Loading names what is wrong: a missing
file, a config that does not parse, corrupt weights, or weights of another config.

`path` may also be a training run folder: its `best/` (the weights with the lowest held-out
loss, kept by `train.keep_best`) when it has one, else its newest `checkpoints/step_*`; or an
exported model: its `transformer/`. What else a run folder holds is read by pretrained/run.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"
STEP_PATTERN = re.compile(r"^step_(\d{7,})$")
BEST_FOLDER = "best"
EXPORT_TRANSFORMER = "transformer"  # an exported model's transformer folder

__all__ = [
    "BEST_FOLDER",
    "CONFIG_FILE",
    "EXPORT_TRANSFORMER",
    "WEIGHTS_FILE",
    "Pretrained",
    "check_fits",
    "load_pretrained",
    "read_model_config",
    "resolve_model_folder",
    "step_folders",
]


def step_folders(root: str | Path) -> list[Path]:
    """The complete step_NNNNNNN checkpoint folders under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_PATTERN.match(p.name)]
    return sorted(found, key=lambda p: int(STEP_PATTERN.match(p.name).group(1)))


def resolve_model_folder(path: str | Path) -> Path:
    """A model folder as is, or a run folder -> its best/ folder, else its newest
    checkpoints/step_* folder; an exported model -> its transformer/."""
    path = Path(path)
    if (path / WEIGHTS_FILE).is_file():
        return path
    if (path / BEST_FOLDER / WEIGHTS_FILE).is_file():
        return path / BEST_FOLDER
    steps = step_folders(path / "checkpoints")
    if not steps and (path / EXPORT_TRANSFORMER / WEIGHTS_FILE).is_file():
        return path / EXPORT_TRANSFORMER
    if not steps:
        raise FileNotFoundError(
            f"{str(path)!r} is neither a model folder (with {WEIGHTS_FILE}), a run folder "
            "with checkpoints/step_* nor an exported model"
        )
    return steps[-1]


def read_model_config(folder: str | Path) -> tuple[str, dict]:
    """(class name, config dict) recorded in a model folder."""
    folder = Path(folder)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{str(folder)!r} is not a model folder: {name} missing")
    try:
        record = json.loads((folder / CONFIG_FILE).read_text())
        return str(record["class"]), dict(record["config"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"{str(folder / CONFIG_FILE)!r} is not a model config ({{class, config}}): {err}"
        ) from err


def load_pretrained(path: str | Path, classes: list[type], map_location: str = "cpu") -> Any:
    """Build whichever of `classes` the folder (or run folder) at `path` records, with weights."""
    folder = resolve_model_folder(path)
    name, _ = read_model_config(folder)
    by_name = {cls.__name__: cls for cls in classes}
    if name not in by_name:
        labels = " or ".join(f"{c.label} ({c.__name__})" for c in classes)
        raise ValueError(f"{str(folder)!r} holds a {name}, not a {labels}")
    return by_name[name].from_pretrained(folder, map_location)


class Pretrained:
    config_class: type  # the model's config dataclass
    label: str  # what messages call it: "dVAE", "CLIP", ...

    def save_pretrained(self, folder: str | Path, state: dict | None = None) -> None:
        """Write model.safetensors and model_config.json into `folder`.

        state: the weights to write when the module's own are sharded (FSDP gathers them).
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if state is None:
            state = self.state_dict()
        state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        save_file(state, folder / WEIGHTS_FILE)
        record = {"class": type(self).__name__, "config": asdict(self.config)}
        (folder / CONFIG_FILE).write_text(json.dumps(record, indent=1))

    @classmethod
    def from_pretrained(cls, path: str | Path, map_location: str = "cpu"):
        """Rebuild the model from a folder written by save_pretrained, or a run folder."""
        folder = resolve_model_folder(path)
        name, fields = read_model_config(folder)
        if name != cls.__name__:
            raise ValueError(f"{str(folder)!r} holds a {name}, not a {cls.label} ({cls.__name__})")
        try:
            config = cls.config_class(**fields)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"cannot read the {cls.label}: {str(folder / CONFIG_FILE)!r} is not a valid "
                f"config: {err}"
            ) from err
        try:
            state = load_file(folder / WEIGHTS_FILE, device=map_location)
        except Exception as err:  # safetensors raises several types for a damaged file
            raise ValueError(
                f"cannot read the {cls.label}: {str(folder / WEIGHTS_FILE)!r} is corrupt: {err}"
            ) from err
        model = cls(config)
        check_fits(model, state, str(folder))
        model.load_state_dict(state)
        return model


def check_fits(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Raise a ValueError naming the keys and shapes of `state` that `model` does not have."""
    own = model.state_dict()  # under FSDP, sharded tensors that report their whole shape
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        details = [
            f"missing {missing[:3]}" * bool(missing),
            f"unexpected {unexpected[:3]}" * bool(unexpected),
        ]
        details += [
            f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
            for k in wrong[:3]
        ]
        raise ValueError(
            f"weights in {where!r} do not fit this model's config: "
            + "; ".join(d for d in details if d)
        )
