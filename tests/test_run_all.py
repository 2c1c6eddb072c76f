"""`train.py all`: every stage from one folder, at the mission's scale (the gpu256 preset: 256 px
images as 32x32 codes, 256 text + 1024 image positions) at a tiny width, on the CPU."""

import json

import pytest
from safetensors.torch import load_file

import dalle1.stages.run_all as run_all
import train
from dalle1.pipeline import Pipeline
from dalle1.shapes.scenes import ShapesConfig, write_split

TINY_GPU256 = [
    # the preset's sizes that set the scale stay: 256 px, 32x32 codes, 256 text positions
    "vqvae.model.width=4",
    "vqvae.model.blocks_per_group=1",
    "vqvae.model.codebook_size=64",
    "vqvae.model.code_width=8",
    "vqvae.data.eval_images=2",
    "clip.model.patch_size=32",
    "clip.model.width=16",
    "clip.model.depth=1",
    "clip.model.heads=2",
    "clip.model.embed_width=8",
    "clip.data.eval_images=2",
    "dalle.model.width=16",
    "dalle.model.depth=2",
    "dalle.model.heads=2",
    "dalle.data.eval_samples=2",
    "dalle.train.eval_every=0",
]
for stage in ("vqvae", "clip", "dalle"):
    TINY_GPU256 += [f"{stage}.train.max_steps=2", f"{stage}.train.batch_size=4"]
    TINY_GPU256 += [f"{stage}.train.num_workers=0", f"{stage}.train.tensorboard=false"]


@pytest.fixture(scope="module")
def images_256(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images") / "mine"
    write_split(ShapesConfig(out=str(folder), n=12, size=256), progress=False)
    return folder


def test_every_stage_at_the_papers_scale_from_one_folder(images_256, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_all, "SAMPLES", 2)
    monkeypatch.setattr(run_all, "KEEP", 2)
    out = tmp_path / "run"
    overrides = [*TINY_GPU256, "dalle.data.mirror=true"]  # the cache holds the mirrors too
    run = run_all.AllStages(out, str(images_256), None, "gpu256", overrides, text_vocab=300)
    report = run.run(sample_captions=["a small red circle in the top left"])
    # A held-out share of the folder, as links, that every stage evaluates on.
    held = [p for p in (out / "data" / "eval").glob("*.png")]
    assert len(held) == 1 and held[0].is_symlink()
    assert len(list((out / "data" / "train").glob("*.png"))) == 11
    meta = json.loads((out / "cache" / "train" / "meta.json").read_text())
    assert (meta["count"], meta["grid"], meta["codebook_size"]) == (22, 32, 64)
    eval_meta = json.loads((out / "cache" / "eval" / "meta.json").read_text())
    assert meta["mirrored"] and not eval_meta["mirrored"]  # the held-out images stay as they are
    config = json.loads(
        (out / "dalle" / "checkpoints" / "step_0000002" / "model_config.json").read_text()
    )
    assert config["class"] == "DALLE"
    c = config["config"]
    assert (c["text_length"], c["grid"], c["attention"], c["conv_kernel"]) == (
        256,
        32,
        "sparse",
        11,
    )
    assert c["activation_checkpointing"] is True
    # 2 micro-batches of 2 per step (the preset's accumulation), the weights saved whole.
    assert "text_embedding.weight" in load_file(
        out / "dalle" / "checkpoints" / "step_0000002" / "model.safetensors"
    )
    assert set(report["seconds"]) == {
        "split",
        "tokenizer",
        "vqvae",
        "token cache",
        "clip",
        "dalle",
        "samples",
    }
    assert (out / "samples" / "00.png").is_file() and (out / "completion.png").is_file()
    pipe = Pipeline.load(out / "dalle")
    images, scores = pipe.sample("a blue square", n=2, keep=1)
    assert images.shape == (1, 3, 256, 256) and scores.shape == (1,)
    capsys.readouterr()
    run_all.AllStages(out, str(images_256), None, "gpu256", overrides, text_vocab=300).run(
        sample_captions=["a small red circle in the top left"]
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[all] ")]
    assert len(lines) == 7 and all("reused" in line for line in lines), lines


def test_all_checks_its_arguments_before_any_work(tmp_path, images_256, capsys):
    cases = [
        (["--preset", "huge"], "preset 'huge' is not one of"),
        (["train.max_steps=3"], "must start with a stage"),
        (["dalle.model.dept=3"], "did you mean 'model.depth'"),
    ]
    for extra, message in cases:
        argv = ["all", "--data", str(images_256), "--out", str(tmp_path / "never"), *extra]
        assert train.main(argv) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "never").exists()
