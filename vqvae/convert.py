"""Image tokenizers people already have, read once into our model folders.

    openai-dvae  encoder.pkl + decoder.pkl          -> OpenAIDiscreteVAE (vqvae/openai_dvae.py)
    taming       model.ckpt + its model.yaml        -> VQGAN, nearest or Gumbel codes
    llamagen     vq_ds16_c2i.pt (VQ-16, VQ-8)       -> VQGAN, l2-normalised codebook

A checkpoint is a pickle, and a pickle can run code. Each file is read first with
`torch.load(weights_only=True)`, which builds only tensors and plain containers; a file that
needs more (OpenAI's pickles hold whole modules, training checkpoints hold argument objects) is
read with `SkeletonUnpickler`, which builds tensors and containers and, for every other class it
names, an inert `Skeleton` that only stores the attributes it is given: no class of the file is
imported and no function other than torch's tensor rebuilders is called. Only weights are kept.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from types import ModuleType

import torch
import yaml

from pretrained import check_fits
from vqvae.openai_dvae import OpenAIDiscreteVAE, OpenAIDVAEConfig
from vqvae.vqgan import VQGAN, VQGANConfig

SOURCES = ("openai-dvae", "taming", "llamagen")
# What a checkpoint may name and get for real: tensors, parameters, storages and containers.
ALLOWED = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "device"),
    ("torch", "Size"),
    ("torch", "float32"),
    ("torch", "float16"),
    ("torch", "bfloat16"),
}


class Skeleton:
    """Stands for any other class a checkpoint names: it keeps the attributes given to it."""

    def __init__(self, *args, **kwargs) -> None:
        self.args = args

    def __setstate__(self, state) -> None:
        if isinstance(state, tuple):  # (dict, slots) from objects with __slots__
            state = {k: v for part in state if isinstance(part, dict) for k, v in part.items()}
        if isinstance(state, dict):
            self.__dict__.update(state)


class SkeletonUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED or name.endswith("Storage") and module == "torch":
            return super().find_class(module, name)
        if (module, name) in (("copyreg", "_reconstructor"), ("builtins", "object")):
            return super().find_class(module, name)  # how plain objects are rebuilt
        return type(name, (Skeleton,), {"__module__": "skeleton." + module})


SKELETON_PICKLE = ModuleType("skeleton_pickle")  # what torch.load takes as its pickle module
SKELETON_PICKLE.Unpickler = SkeletonUnpickler
SKELETON_PICKLE.load = lambda file, **options: SkeletonUnpickler(file, **options).load()


def read_checkpoint(path: str | Path):
    """A pickled checkpoint on the CPU, read as narrowly as it allows (see above)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # names classes beyond tensors and containers, or is no checkpoint
        first = err
    try:
        return torch.load(
            path, map_location="cpu", weights_only=False, pickle_module=SKELETON_PICKLE
        )
    except Exception as err:
        raise ValueError(
            f"cannot read {str(path)!r} as a PyTorch checkpoint: {type(first).__name__}: {first}"
        ) from err


def module_weights(module, prefix: str = "") -> dict[str, torch.Tensor]:
    """The parameters and buffers of a pickled module tree (nn.Modules read as Skeletons)."""
    found = {}
    for store in ("_parameters", "_buffers"):
        for name, value in (getattr(module, store, None) or {}).items():
            if isinstance(value, torch.Tensor):
                found[prefix + name] = value.detach().float()
    for name, child in (getattr(module, "_modules", None) or {}).items():
        if child is not None:
            found |= module_weights(child, f"{prefix}{name}.")
    return found


def _build(model_class, config, state: dict[str, torch.Tensor], where: str):
    model = model_class(config)
    check_fits(model, state, where)
    model.load_state_dict(state)
    return model.eval()


def convert_openai_dvae(encoder: str | Path, decoder: str | Path, image_size: int = 256):
    """OpenAI's encoder.pkl and decoder.pkl -> OpenAIDiscreteVAE."""
    parts = {"encoder": read_checkpoint(encoder), "decoder": read_checkpoint(decoder)}
    state = {}
    for name, module in parts.items():
        weights = module_weights(module)
        if not weights:
            raise ValueError(f"the {name} file holds no module with weights: is it {name}.pkl?")
        state |= {f"{name}.{key}": value for key, value in weights.items()}
    enc, dec = parts["encoder"], parts["decoder"]
    config = OpenAIDVAEConfig(
        image_size=image_size,
        width=int(getattr(enc, "n_hid", 256)),
        blocks_per_group=int(getattr(enc, "n_blk_per_group", 2)),
        codebook_size=int(getattr(enc, "vocab_size", 8192)),
        decoder_input_width=int(getattr(dec, "n_init", 128)),
    )
    return _build(OpenAIDiscreteVAE, config, state, f"{encoder} + {decoder}")


def convert_taming(checkpoint: str | Path, config_file: str | Path):
    """A taming-transformers VQGAN: its .ckpt (a state_dict) and the .yaml it was trained with.
    VQModel gives nearest codes, GumbelVQ Gumbel codes; the loss.* weights are left out."""
    try:
        model = yaml.safe_load(Path(config_file).read_text())["model"]
        params, target = model["params"], str(model.get("target", ""))
        dd = params["ddconfig"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
        raise ValueError(f"{str(config_file)!r} is not a taming VQGAN config: {err}") from err
    if dd.get("double_z"):
        raise ValueError(f"{str(config_file)!r}: double_z models are not VQGANs")
    config = VQGANConfig(
        image_size=int(dd["resolution"]),
        channels=int(dd["ch"]),
        channel_mult=[int(m) for m in dd["ch_mult"]],
        res_blocks=int(dd["num_res_blocks"]),
        attention_sides=[int(s) for s in dd.get("attn_resolutions", [])],
        z_channels=int(dd["z_channels"]),
        embed_dim=int(params["embed_dim"]),
        codebook_size=int(params["n_embed"]),
        code_rule="gumbel" if "Gumbel" in target else "nearest",
    )
    record = read_checkpoint(checkpoint)
    state = record.get("state_dict", record) if isinstance(record, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{str(checkpoint)!r} holds no state_dict")
    state = {k: v.float() for k, v in state.items() if not k.startswith("loss.")}
    return _build(VQGAN, config, state, str(checkpoint))


LLAMAGEN_MIDDLE = {"0": "block_1", "1": "attn_1", "2": "block_2"}


def llamagen_keys(state: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """LlamaGen's parameter names -> taming's (what VQGAN uses)."""
    renamed = {}
    for key, value in state.items():
        if key == "quantize.codebook_used":  # a training statistic
            continue
        key = re.sub(r"\.mid\.(\d)\.", lambda m: f".mid.{LLAMAGEN_MIDDLE[m[1]]}.", key)
        key = re.sub(r"^encoder\.conv_blocks\.(\d+)\.res\.", r"encoder.down.\1.block.", key)
        key = re.sub(r"^encoder\.conv_blocks\.", "encoder.down.", key)
        match = re.match(r"^decoder\.conv_blocks\.(\d+)\.(.*)$", key)
        if match:  # LlamaGen lists the decoder's levels lowest resolution first
            rest = re.sub(r"^res\.", "block.", match[2])
            key = f"decoder.up.{levels - 1 - int(match[1])}.{rest}"
        renamed[key] = value.float()
    return renamed


def convert_llamagen(checkpoint: str | Path, image_size: int = 256):
    """A LlamaGen VQ checkpoint ({"model": ...}, or "ema"): sizes read from the weights."""
    record = read_checkpoint(checkpoint)
    state = None
    for key in ("ema", "model", "state_dict"):
        if isinstance(record, dict) and isinstance(record.get(key), dict):
            state = record[key]
            break
    if state is None:
        raise ValueError(
            f"{str(checkpoint)!r} holds no weights under 'ema', 'model' or 'state_dict'"
        )
    try:
        channels = state["encoder.conv_in.weight"].shape[0]
        levels = 1 + max(
            int(k.split(".")[2]) for k in state if k.startswith("encoder.conv_blocks.")
        )
        mult = [
            state[f"encoder.conv_blocks.{i}.res.0.conv1.weight"].shape[0] // channels
            for i in range(levels)
        ]
        res_blocks = len(
            {k.split(".")[4] for k in state if k.startswith("encoder.conv_blocks.0.res.")}
        )
        codebook_size, embed_dim = state["quantize.embedding.weight"].shape
        z_channels = state["encoder.conv_out.weight"].shape[0]
    except (KeyError, ValueError) as err:
        raise ValueError(f"{str(checkpoint)!r} is not a LlamaGen VQ model: {err}") from err
    config = VQGANConfig(
        image_size=image_size,
        channels=channels,
        channel_mult=mult,
        res_blocks=res_blocks,
        attention_sides=[image_size // 2 ** (levels - 1)],  # the lowest resolution only
        z_channels=z_channels,
        embed_dim=embed_dim,
        codebook_size=codebook_size,
        code_rule="nearest_l2",
    )
    return _build(VQGAN, config, llamagen_keys(state, levels), str(checkpoint))


def convert(source: str, files: list[str], image_size: int = 256):
    """The tokenizer in `files` from `source` (one of SOURCES), as our model."""
    wanted = {"openai-dvae": "encoder.pkl decoder.pkl", "taming": "MODEL.ckpt MODEL.yaml"}
    wanted["llamagen"] = "VQ.pt"
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if len(files) != len(wanted[source].split()):
        raise ValueError(f"--from {source} reads {wanted[source]}, got {len(files)} file(s)")
    if source == "openai-dvae":
        return convert_openai_dvae(*files, image_size=image_size)
    if source == "taming":
        return convert_taming(*files)
    return convert_llamagen(files[0], image_size)
