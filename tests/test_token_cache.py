"""The token cache: written by `train.py encode`, read back as codes and captions."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import train
from dalle1.config import load_config
from dalle1.data import ImageFolderDataset
from dalle1.data.token_cache import TokenCacheDataset
from dalle1.stages.encode import encode_dataset
from dalle1.stages.vqvae import VQVAERunConfig
from vqvae import DiscreteVAE

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture
def dvae_folder(tmp_path):
    torch.manual_seed(0)
    model = DiscreteVAE(load_config(VQVAERunConfig, CONFIGS / "vqvae_tiny.yaml").model)
    model.save_pretrained(tmp_path / "dvae")
    return tmp_path / "dvae"


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(5):
        Image.new("RGB", (20, 16), (i * 50, 100, 200)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"caption {i}\nsecond caption {i}\n")
    (folder / "broken.png").write_bytes(b"not a png")
    (folder / "broken.txt").write_text("broken\n")
    return folder


def test_cache_holds_the_dvae_codes_and_every_caption(tmp_path, dvae_folder, images):
    meta = encode_dataset(
        dvae_folder, str(images), tmp_path / "cache", batch_size=2, shard_size=2, progress=False
    )
    assert (
        meta["count"] == 5
        and meta["skipped"] == 1
        and meta["shards"] == ["00000", "00001", "00002"]
    )
    assert meta["dtype"] == "uint16" and meta["grid"] == 4
    cache = TokenCacheDataset(tmp_path / "cache", train=False)
    model = DiscreteVAE.from_pretrained(dvae_folder)
    expected = model.encode(
        torch.stack([image for image, _ in ImageFolderDataset(images, 16, train=False)])
    )
    assert torch.equal(torch.stack([codes for codes, _ in cache]), expected)
    assert cache[0][1] == "caption 0" and cache.captions[3] == ["caption 3", "second caption 3"]
    train_cache = TokenCacheDataset(tmp_path / "cache", train=True)
    drawn = set()
    for epoch in range(10):
        train_cache.set_epoch(epoch)
        drawn.add(train_cache[1][1])
    assert drawn == {"caption 1", "second caption 1"}


def test_encode_command(tmp_path, dvae_folder, images, capsys):
    argv = [
        "encode",
        "--vqvae",
        str(dvae_folder),
        "--data",
        str(images),
        "--out",
        str(tmp_path / "c"),
    ]
    assert train.main(argv) == 0
    assert "5 images as 4x4 codes in 1 shard(s), 1 skipped" in capsys.readouterr().out
    assert json.loads((tmp_path / "c" / "meta.json").read_text())["count"] == 5


def test_encode_names_a_missing_dvae(tmp_path, images, capsys):
    argv = [
        "encode",
        "--vqvae",
        str(tmp_path / "nothing"),
        "--data",
        str(images),
        "--out",
        str(tmp_path / "c"),
    ]
    assert train.main(argv) == 2
    assert "neither a model folder" in capsys.readouterr().err


def test_missing_cache_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a token cache"):
        TokenCacheDataset(tmp_path)


def test_mirror_adds_each_image_mirrored_with_its_captions(tmp_path, dvae_folder):
    folder = tmp_path / "drawings"
    folder.mkdir()
    for i in range(3):  # bright on the left, dark on the right: a mirror changes the codes
        pixels = torch.zeros(16, 16, 3, dtype=torch.uint8)
        pixels[:, : 4 + 2 * i] = 255
        Image.fromarray(pixels.numpy()).save(folder / f"d{i}.png")
        (folder / f"d{i}.txt").write_text(f"drawing {i}\n")
    meta = encode_dataset(dvae_folder, str(folder), tmp_path / "cache", mirror=True, progress=False)
    assert meta["count"] == 6 and meta["mirrored"] is True
    cache = TokenCacheDataset(tmp_path / "cache", train=False)
    model = DiscreteVAE.from_pretrained(dvae_folder)
    images = torch.stack([image for image, _ in ImageFolderDataset(folder, 16, train=False)])
    originals, mirrors = model.encode(images), model.encode(images.flip(-1))
    assert not torch.equal(originals, mirrors)
    assert torch.equal(cache.codes.long(), torch.cat([originals, mirrors]))  # one batch
    assert cache.captions[0] == cache.captions[3] == ["drawing 0"]
