"""Imports run one way: pretrained/ <- vqvae/ <- dalle1/ models, sampling and pipeline <- training
and stages <- train.py. Read from the source, so a new import that breaks the layering fails."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What a user needs to sample from a trained run: it must never pull in training code.
INFERENCE = [
    "dalle1/attention.py",
    "dalle1/clip.py",
    "dalle1/device.py",
    "dalle1/masks.py",
    "dalle1/pipeline.py",
    "dalle1/sampling.py",
    "dalle1/tokenizer.py",
    "dalle1/transformer.py",
    "dalle1/__main__.py",
    "dalle1/shapes/benchmark.py",
]
TRAINING = ("dalle1.training", "dalle1.stages", "dalle1.demo", "train")


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, by absolute dotted name."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def reaches(names: set[str], package: str) -> bool:
    return any(n == package or n.startswith(package + ".") for n in names)


@pytest.mark.parametrize("path", sorted((ROOT / "vqvae").glob("*.py")), ids=lambda p: p.name)
def test_vqvae_never_imports_dalle1(path):
    names = imported_modules(path)
    assert not reaches(names, "dalle1") and not reaches(names, "train"), sorted(names)


@pytest.mark.parametrize("path", sorted((ROOT / "pretrained").glob("*.py")), ids=lambda p: p.name)
def test_pretrained_imports_neither_package(path):
    names = imported_modules(path)
    assert not reaches(names, "dalle1") and not reaches(names, "vqvae"), sorted(names)


@pytest.mark.parametrize("name", INFERENCE)
def test_models_sampling_and_the_pipeline_never_import_training(name):
    names = imported_modules(ROOT / name)
    assert not any(reaches(names, package) for package in TRAINING), sorted(names)


def test_the_check_sees_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from dalle1.training.trainer import Trainer\nimport dalle1.stages.dalle\n")
    names = imported_modules(bad)
    assert reaches(names, "dalle1.training") and reaches(names, "dalle1.stages")
