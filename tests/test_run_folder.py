"""A transformer run and an exported model travel: copied elsewhere they load and sample the same
codes; a missing part or a corrupt file is named; only pretrained/run.py reads run files."""

import json
import shutil
from pathlib import Path

import pytest
import torch

import train
from dalle1.__main__ import main as dalle1_main
from dalle1.pipeline import Pipeline
from dalle1.sampling import sample_candidates
from pretrained import resolve_model_folder
from pretrained.run import CARD_FILE, MANIFEST_FILE, run_parts

ROOT = Path(__file__).resolve().parents[1]


def sampled_codes(run: Path) -> torch.Tensor:
    """(4, h*w) codes drawn from the run for one caption, seed 0."""
    pipe = Pipeline.load(run, device="cpu")
    text = pipe.tokenizer.encode_batch(["a red circle"])
    generator = torch.Generator().manual_seed(0)
    return sample_candidates(pipe.dalle, text, 4, pipe.sampling, None, generator)


@pytest.fixture(scope="module")
def trained(parts, tmp_path_factory):
    """A folder holding the tiny parts and a transformer run trained on them, side by side."""
    root = tmp_path_factory.mktemp("travel") / "runs"
    root.mkdir()
    for name in ("vqvae", "clip", "cache"):
        shutil.copytree(parts / name, root / name)
    shutil.copy(parts / "tok.model", root / "tok.model")
    config = ROOT / "configs" / "dalle_tiny.yaml"
    argv = ["dalle", "--config", str(config), f"train.run_dir={root / 'dalle'}"]
    argv += [f"data.source={root / 'cache'}", f"data.image_tokenizer={root / 'vqvae'}"]
    argv += [f"data.text_tokenizer={root / 'tok.model'}", f"data.clip={root / 'clip'}"]
    assert train.main([*argv, "train.max_steps=2"]) == 0
    return root


def test_a_run_moved_to_another_folder_samples_the_same_codes(trained, tmp_path):
    before = sampled_codes(trained / "dalle")
    moved = tmp_path / "elsewhere"
    shutil.copytree(trained, moved, symlinks=True)
    shutil.rmtree(moved / "cache")  # the training data need not travel
    original = trained.rename(trained.with_name("gone"))  # nothing may be read from the old place
    try:
        assert torch.equal(sampled_codes(moved / "dalle"), before)
        assert run_parts(moved / "dalle").clip.resolve() == (moved / "clip").resolve()
    finally:
        original.rename(trained)


def test_an_export_loads_anywhere_and_samples_the_same_codes(trained, tmp_path, capsys):
    before = sampled_codes(trained / "dalle")
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"benchmark": {"single": 0.5}}))
    out = tmp_path / "export"
    argv = ["export", str(trained / "dalle"), str(out), "--report", str(report)]
    assert dalle1_main(argv) == 0, capsys.readouterr().err
    card = (out / CARD_FILE).read_text()
    assert "step 2" in card and '"single": 0.5' in card
    shared = tmp_path / "shared"
    out.rename(shared)
    original = trained.rename(trained.with_name("gone"))
    try:
        assert torch.equal(sampled_codes(shared), before)
        pipe = Pipeline.load(shared, device="cpu")
        assert pipe.clip is not None and pipe.parts.step == 2
        assert pipe.parts.eval_data == shared / "examples"  # pictures to complete travel along
        assert sorted((shared / "examples").glob("*.txt"))
        assert resolve_model_folder(shared) == shared / "transformer"  # what --from reads
    finally:
        original.rename(trained)
    assert dalle1_main(["export", str(trained / "dalle"), str(shared)]) == 2  # never over one
    assert "not an empty folder" in capsys.readouterr().err


def test_a_missing_part_or_corrupt_file_is_named(trained, tmp_path, capsys):
    out = tmp_path / "export"
    assert dalle1_main(["export", str(trained / "dalle"), str(out)]) == 0
    broken = tmp_path / "broken"

    def fails(damage, message: str) -> None:
        shutil.rmtree(broken, ignore_errors=True)
        shutil.copytree(out, broken)
        damage(broken)
        assert dalle1_main(["sample", "--run", str(broken), "x"]) == 2
        err = capsys.readouterr().err
        assert message in err, err

    fails(lambda f: shutil.rmtree(f / "clip"), "the clip of")
    fails(lambda f: (f / "text_tokenizer.model").unlink(), "the text_tokenizer of")
    fails(lambda f: (f / "image_tokenizer/model.safetensors").write_bytes(b"junk"), "corrupt")
    fails(lambda f: (f / MANIFEST_FILE).write_text("{"), MANIFEST_FILE)
    fails(lambda f: (f / "text_tokenizer.model").write_bytes(b"junk"), "text_tokenizer.model")


def test_only_the_owner_reads_run_files():
    """state.json, config.yaml and meta.json are named only by their owners."""
    owners = {
        "state.json": {"pretrained/run.py"},
        "config.yaml": {"pretrained/run.py"},
        "meta.json": {"dalle1/data/token_cache.py"},
    }
    sources = [*ROOT.glob("dalle1/**/*.py"), *ROOT.glob("pretrained/*.py"), ROOT / "train.py"]
    sources += [*ROOT.glob("bench/*.py"), *ROOT.glob("vqvae/*.py")]
    for name, allowed in owners.items():
        readers = {str(p.relative_to(ROOT)) for p in sources if f'"{name}"' in p.read_text()}
        assert readers == allowed, name
