"""Fixtures shared by the tests: the repository's paths, tiny models and trained tiny parts.

Tiny sizes throughout (16 px images, 4x4 codes, width 32): every test runs on 2 CPU cores in
seconds. The tiny configs are configs/*_tiny.yaml, found from this file, not the working folder.
"""

import logging
from pathlib import Path

import pytest
import torch

import train
from dalle1.shapes.scenes import ShapesConfig, write_split
from dalle1.transformer import DALLE, DALLEConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


@pytest.fixture(autouse=True)
def _quiet_logs(caplog):
    caplog.set_level(logging.INFO)


def _tiny_dalle(attention: str = "sparse", impl: str = "dense", **overrides) -> DALLE:
    """A 5-layer transformer of width 32 over 6 text and 4x4 image positions, seeded."""
    torch.manual_seed(0)
    config = dict(
        text_length=6,
        text_vocab_size=20,
        grid=4,
        codebook_size=16,
        width=32,
        depth=5,
        heads=4,
        conv_kernel=3,
        attention=attention,
        attention_impl=impl,
    )
    return DALLE(DALLEConfig(**(config | overrides)))


def _random_batch(model: DALLE, size: int = 3, seed: int = 1):
    """((size, T) text ids, (size, h*w) codes) drawn with a seeded generator."""
    c = model.config
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(0, c.total_text_vocab, (size, c.text_length), generator=g)
    codes = torch.randint(0, c.codebook_size, (size, c.grid**2), generator=g)
    return text, codes


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory) -> Path:
    """48 tiny (32 px) shapes scenes with captions and specs."""
    data = tmp_path_factory.mktemp("shapes") / "train"
    write_split(ShapesConfig(out=str(data), n=48, size=32), progress=False)
    return data


@pytest.fixture(scope="session")
def parts(tmp_path_factory, shapes_data) -> Path:
    """Text tokenizer, dVAE, token cache and CLIP trained on the tiny scenes (root/data holds
    the scenes)."""
    root = tmp_path_factory.mktemp("parts")
    (root / "data").symlink_to(shapes_data)
    data = str(shapes_data)
    commands = [
        ["tokenizer", "--data", data, "--vocab", "300", "--out", str(root / "tok.model")],
        [
            "vqvae",
            "--config",
            str(CONFIGS / "vqvae_tiny.yaml"),
            f"train.run_dir={root / 'vqvae'}",
            f"data.source={data}",
            "train.max_steps=4",
        ],
        ["encode", "--vqvae", str(root / "vqvae"), "--data", data, "--out", str(root / "cache")],
        [
            "clip",
            "--config",
            str(CONFIGS / "clip_tiny.yaml"),
            f"train.run_dir={root / 'clip'}",
            f"data.source={data}",
            f"data.text_tokenizer={root / 'tok.model'}",
            "data.hard_negative_groups=[[red, green, blue], [left, right]]",
        ],
    ]
    for argv in commands:
        assert train.main(argv) == 0, argv
    return root


@pytest.fixture(scope="session")
def dalle_run(tmp_path_factory, parts) -> Path:
    """A tiny transformer run over the trained tiny parts (6 steps)."""
    run = tmp_path_factory.mktemp("dalle") / "dalle"
    assert train.main(_dalle_args(parts, run)) == 0
    return run


def _dalle_args(parts: Path, run_dir: Path, *overrides: str) -> list[str]:
    """`train.py dalle` on the tiny config with the trained tiny parts."""
    return [
        "dalle",
        "--config",
        str(CONFIGS / "dalle_tiny.yaml"),
        f"train.run_dir={run_dir}",
        f"data.source={parts / 'cache'}",
        f"data.image_tokenizer={parts / 'vqvae'}",
        f"data.text_tokenizer={parts / 'tok.model'}",
        f"data.clip={parts / 'clip'}",
        *overrides,
    ]


@pytest.fixture
def tiny_dalle():
    """tiny_dalle(attention="sparse", impl="dense", **config overrides) -> DALLE."""
    return _tiny_dalle


@pytest.fixture
def random_batch():
    """random_batch(model, size=3, seed=1) -> (text ids, codes)."""
    return _random_batch


@pytest.fixture
def dalle_args():
    """dalle_args(parts, run_dir, *overrides) -> the argv of a tiny transformer run."""
    return _dalle_args


@pytest.fixture
def configs() -> Path:
    """The repository's configs/ folder."""
    return CONFIGS
