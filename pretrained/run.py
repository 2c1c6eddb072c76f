"""A training run folder and an exported model: the one module that reads their files.

    RUN/config.yaml                    the resolved run config (the trainer writes it at start)
    RUN/checkpoints/step_NNNNNNN/      a model folder + state.json (step, data position) +
                                       config.yaml (training files: dalle1/training/checkpoint.py)
    RUN/best/                          the weights of the lowest held-out loss + state.json
    RUN/manifest.json                  a transformer run's parts, paths relative to RUN:
                                       {"image_tokenizer", "text_tokenizer", "clip", "eval_data"}

    EXPORT/manifest.json               the same keys, plus "transformer", "sampling", "step"
    EXPORT/transformer/, image_tokenizer/, clip/   model folders (model.safetensors + config)
    EXPORT/text_tokenizer.model        the BPE model
    EXPORT/examples/                   a few held-out pictures with captions (to complete, edit)
    EXPORT/README.md                   the model card: sizes, data, steps, benchmark figures

`run_parts(path)` reads either (or a run from before manifests, through its config.yaml) and
checks that every part it names is there; `export_run` writes an export. Paths in a manifest
are relative to it, so a run copied with its sibling runs, or an export copied anywhere, loads.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pretrained import (
    BEST_FOLDER,
    CONFIG_FILE,
    EXPORT_TRANSFORMER,
    WEIGHTS_FILE,
    read_model_config,
    resolve_model_folder,
    step_folders,
)

MANIFEST_FILE = "manifest.json"
STATE_FILE = "state.json"
RUN_CONFIG_FILE = "config.yaml"
CARD_FILE = "README.md"
EXAMPLES_FOLDER = "examples"
EXAMPLES = 12  # held-out pictures an export carries
PART_KEYS = ("image_tokenizer", "text_tokenizer", "clip", "eval_data")


def read_state(folder: str | Path) -> dict:
    """A checkpoint's (or best/'s) state.json: {"step", ...}."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no {STATE_FILE}: not a checkpoint")
    try:
        return dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise ValueError(f"{str(path)!r} is corrupt: {err}") from err


def latest_step(run_dir: str | Path) -> int | None:
    """The step of a run's newest checkpoint (None before its first)."""
    found = step_folders(Path(run_dir) / "checkpoints")
    return read_state(found[-1])["step"] if found else None


def read_run_config(path: str | Path) -> dict:
    """The resolved config (a dict) of a run folder or of one of its checkpoints."""
    folder = Path(path)
    config_file = folder / RUN_CONFIG_FILE
    if not config_file.is_file():
        config_file = resolve_model_folder(folder) / RUN_CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(f"{str(path)!r} has no {RUN_CONFIG_FILE}: not a training run")
    try:
        config = yaml.safe_load(config_file.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{str(config_file)!r} is not a run config: {err}") from err
    if not isinstance(config, dict) or not isinstance(config.get("data") or {}, dict):
        raise ValueError(f"{str(config_file)!r} is not a run config")
    return config


def run_root(model_folder: Path) -> Path:
    """The run (or export) folder a model folder belongs to."""
    if model_folder.parent.name == "checkpoints":
        return model_folder.parent.parent
    if model_folder.name in (BEST_FOLDER, EXPORT_TRANSFORMER):
        return model_folder.parent
    return model_folder


def _relative(path: str | Path | None, start: Path) -> str | None:
    return None if path is None else os.path.relpath(Path(path).resolve(), start.resolve())


def write_manifest(run_dir: str | Path, **parts: str | Path | None) -> Path:
    """RUN/manifest.json naming a transformer run's parts (PART_KEYS) relative to RUN."""
    run_dir = Path(run_dir)
    unknown = set(parts) - set(PART_KEYS)
    if unknown:
        raise ValueError(f"unknown manifest keys {sorted(unknown)}; known: {PART_KEYS}")
    record = {key: _relative(parts.get(key), run_dir) for key in PART_KEYS}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / MANIFEST_FILE).write_text(json.dumps(record, indent=1))
    return run_dir / MANIFEST_FILE


@dataclass
class RunParts:
    """What sampling from a transformer run needs, every path checked to exist."""

    transformer: Path  # its model folder (best/ or the newest checkpoint)
    image_tokenizer: Path  # a model or run folder
    text_tokenizer: Path  # a BPE .model file
    clip: Path | None = None  # a model or run folder; None: no reranking
    eval_data: Path | None = None  # held-out images (folder or token cache) to complete
    sampling: dict = field(default_factory=dict)  # the run's sampling settings
    step: int | None = None  # the transformer's training step


def _read_manifest(root: Path) -> dict:
    path = root / MANIFEST_FILE
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        return record
    except (json.JSONDecodeError, ValueError) as err:
        raise ValueError(f"{str(path)!r} is corrupt: {err}") from err


def run_parts(path: str | Path) -> RunParts:
    """The parts of a transformer run folder (or checkpoint) or of an exported model."""
    transformer = resolve_model_folder(path)
    root = run_root(transformer)
    step = read_state(transformer)["step"] if (transformer / STATE_FILE).is_file() else None
    if (root / MANIFEST_FILE).is_file():
        record, where = _read_manifest(root), f"{str(root / MANIFEST_FILE)!r}"
        paths = {k: (root / record[k] if record.get(k) else None) for k in PART_KEYS}
        sampling, step = record.get("sampling"), record.get("step", step)  # an export's own
        if sampling is None:  # a run's: its config's
            sampling = read_run_config(transformer).get("sampling")
    else:  # a run from before manifests: its config's paths, as they were written
        config = read_run_config(transformer)
        where = f"the config.yaml of {str(path)!r} (a run without a manifest: paths as given"
        where += " to training, relative to the folder it ran in)"
        data = config.get("data") or {}
        data["eval_data"] = data.get("eval_source") or data.get("source")
        paths = {k: (Path(data[k]) if data.get(k) else None) for k in PART_KEYS}
        sampling = config.get("sampling")
    for key in ("image_tokenizer", "text_tokenizer"):
        if paths[key] is None:
            raise ValueError(f"{str(path)!r} is not a transformer run: {where} names no {key}")
    for key in ("image_tokenizer", "text_tokenizer", "clip"):
        if paths[key] is not None and not paths[key].exists():
            raise FileNotFoundError(
                f"the {key} of {str(path)!r} is missing: {where} names {str(paths[key])!r}"
            )
    eval_data = paths["eval_data"] if paths["eval_data"] and paths["eval_data"].exists() else None
    return RunParts(
        transformer,
        paths["image_tokenizer"],
        paths["text_tokenizer"],
        paths["clip"],
        eval_data,
        dict(sampling or {}),
        step,
    )


def _copy_model(source: Path, out: Path) -> dict:
    """Copy a model folder's two files; returns its (class, config)."""
    out.mkdir(parents=True)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        shutil.copy2(source / name, out / name)
    name, config = read_model_config(out)
    return {"class": name, "config": config}


def export_run(
    run: str | Path,
    out: str | Path,
    sampling: dict,
    examples: list[tuple[Path, str]] = (),
    report: dict | None = None,
) -> Path:
    """Write a transformer run as one self-contained folder (the layout above).

    sampling: the settings to record (the run's, resolved); examples: (picture, caption) pairs
    to carry; report: figures for the model card (e.g. the benchmark), as a dict.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{str(out)!r} exists and is not an empty folder: choose a new one")
    parts = run_parts(run)
    temp = out.with_name(f".tmp_{out.name}_{os.getpid()}")
    shutil.rmtree(temp, ignore_errors=True)
    models = {
        EXPORT_TRANSFORMER: _copy_model(parts.transformer, temp / EXPORT_TRANSFORMER),
        "image_tokenizer": _copy_model(
            resolve_model_folder(parts.image_tokenizer), temp / "image_tokenizer"
        ),
    }
    if parts.clip is not None:
        models["clip"] = _copy_model(resolve_model_folder(parts.clip), temp / "clip")
    shutil.copy2(parts.text_tokenizer, temp / "text_tokenizer.model")
    if examples:
        (temp / EXAMPLES_FOLDER).mkdir()
    for i, (picture, caption) in enumerate(examples[:EXAMPLES]):
        target = temp / EXAMPLES_FOLDER / f"{i:02d}{picture.suffix.lower()}"
        shutil.copy2(picture, target)
        target.with_suffix(".txt").write_text(caption + "\n")
    manifest = {
        "transformer": EXPORT_TRANSFORMER,
        "image_tokenizer": "image_tokenizer",
        "text_tokenizer": "text_tokenizer.model",
        "clip": "clip" if parts.clip is not None else None,
        "eval_data": EXAMPLES_FOLDER if examples else None,
        "sampling": sampling,
        "step": parts.step,
    }
    (temp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    (temp / CARD_FILE).write_text(model_card(Path(run), parts, models, sampling, report))
    if out.exists():
        out.rmdir()
    os.rename(temp, out)  # the folder appears whole or not at all
    return out


def model_card(
    run: Path, parts: RunParts, models: dict, sampling: dict, report: dict | None
) -> str:
    """A short Markdown card: what each part is, its sizes, the data and steps, the figures."""
    transformer = models[EXPORT_TRANSFORMER]["config"]
    tokenizer = models["image_tokenizer"]
    lines = [
        f"# {run.resolve().parent.name}/{run.name}: a DALL-E 1 style text-to-image model",
        "",
        "Load it with `Pipeline.load(FOLDER)`, or `python -m dalle1 sample --run FOLDER "
        '"a caption"`; `complete`, `edit` and `serve` take it the same way.',
        "",
        "| part | what |",
        "|---|---|",
        f"| transformer | step {parts.step}; " + _sizes(transformer) + " |",
        f"| image tokenizer | {tokenizer['class']}; " + _sizes(tokenizer["config"]) + " |",
        "| text tokenizer | BPE (sentencepiece) |",
        "| CLIP | "
        + (_sizes(models["clip"]["config"]) if "clip" in models else "none: no reranking")
        + " |",
        "",
        f"Sampling settings: `{json.dumps(sampling)}`.",
    ]
    if (parts.transformer / RUN_CONFIG_FILE).is_file():  # what it was trained on, and how long
        config = read_run_config(parts.transformer)
        data, train = config.get("data") or {}, config.get("train") or {}
        lines.append(
            f"Trained on `{data.get('source')}` (held out: `{data.get('eval_source')}`), "
            f"{train.get('max_steps')} steps of {train.get('batch_size')}."
        )
    if report:
        lines += ["", "Figures recorded with the run:", "", "```json", json.dumps(report, indent=1)]
        lines.append("```")
    return "\n".join(lines) + "\n"


def _sizes(config: dict) -> str:
    keys = ("width", "depth", "heads", "text_length", "grid", "image_size", "codebook_size")
    return ", ".join(f"{k} {config[k]}" for k in keys if k in config) or "see model_config.json"
