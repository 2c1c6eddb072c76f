"""Saving and loading a model as a folder: model.safetensors + model_config.json.

Every model of the project (the dVAE, CLIP, the transformer) mixes in `Pretrained`, sets
`config_class` and `kind`, and takes its config dataclass as its one constructor argument.
Loading names what is wrong: a missing file, a config that does not parse, corrupt weights, or
weights of another config (the keys and shapes that differ).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"


class Pretrained:
    config_class: type  # the model's config dataclass
    kind: str  # what the messages call it: "dVAE", "CLIP", ...

    def save_pretrained(self, folder: str | Path, state: dict | None = None) -> None:
        """Write model.safetensors and model_config.json into `folder`.

        state: the weights to write when the module's own are sharded (see dalle1/distributed.py).
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if state is None:
            state = self.state_dict()
        state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        save_file(state, folder / WEIGHTS_FILE)
        (folder / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=1))

    @classmethod
    def from_pretrained(cls, folder: str | Path, map_location: str = "cpu"):
        """Rebuild the model from a folder written by save_pretrained (or a checkpoint)."""
        folder = Path(folder)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(
                    f"{str(folder)!r} is not a {cls.kind} checkpoint: {name} missing"
                )
        try:
            config = cls.config_class(**json.loads((folder / CONFIG_FILE).read_text()))
        except (json.JSONDecodeError, TypeError, ValueError) as err:
            raise ValueError(
                f"cannot read the {cls.kind} model: {str(folder / CONFIG_FILE)!r} is not a "
                f"valid config: {err}"
            ) from err
        try:
            state = load_file(folder / WEIGHTS_FILE, device=map_location)
        except Exception as err:  # safetensors raises several types for a damaged file
            raise ValueError(
                f"cannot read the {cls.kind} model: {str(folder / WEIGHTS_FILE)!r} is corrupt: "
                f"{err}"
            ) from err
        model = cls(config)
        load_matching(model, state, str(folder))
        return model


def load_matching(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """load_state_dict that names the keys and shapes that do not fit the model's config."""
    check_fits(model, state, where)
    model.load_state_dict(state)


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
