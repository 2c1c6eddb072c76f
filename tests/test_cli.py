"""The command lines: the shapes stage, config errors, the judge, --help."""

import json
import subprocess
import sys
from pathlib import Path

import yaml
from PIL import Image

import train
from dalle1.__main__ import main as dalle1_main

ROOT = Path(__file__).resolve().parents[1]


def test_shapes_stage_writes_files_and_resolved_config(tmp_path):
    out = tmp_path / "novel"
    argv = ["shapes", "--out", str(out), "--n", "5", "--size", "32", "--split", "novel"]
    assert train.main(argv + ["--holdout", "green:square", "pair_fraction=0.25"]) == 0
    assert len(list(out.glob("novel_*.png"))) == 5
    config = yaml.safe_load((out / "novel_config.yaml").read_text())
    assert config["holdout"] == ["green:square"] and config["pair_fraction"] == 0.25
    for spec_path in out.glob("*.json"):
        spec = json.loads(spec_path.read_text())
        assert (spec["objects"][0]["colour"], spec["objects"][0]["shape"]) == ("green", "square")
        assert Image.open(spec_path.with_suffix(".png")).size == (32, 32)


def test_bad_config_stops_before_any_work(tmp_path, capsys):
    out = tmp_path / "never"
    assert train.main(["shapes", "--out", str(out), "--n", "5", "colour=red"]) == 2
    assert "unknown config key 'colour'" in capsys.readouterr().err
    assert train.main(["shapes", "--out", str(out), "--holdout", "red:cube"]) == 2
    assert "red:cube" in capsys.readouterr().err
    assert not out.exists()


def test_judge_command_reports_accuracy_and_reasons(tmp_path, capsys):
    train.main(["shapes", "--out", str(tmp_path), "--n", "6", "--split", "single"])
    # Break one picture: paint it all white, so its object goes missing.
    Image.new("RGB", (64, 64), "white").save(tmp_path / "single_000002.png")
    assert dalle1_main(["judge", str(tmp_path), "--quiet", "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads((tmp_path / "r.json").read_text())
    assert report["n"] == 6 and abs(report["accuracy"] - 5 / 6) < 1e-9
    assert list(report["failures"]) == ["single_000002"]
    assert "found 0" in report["failures"]["single_000002"]["count"]
    assert set(report["per_attribute"]) == {"count", "colour", "shape", "size", "position"}


def test_judge_command_names_a_missing_folder(tmp_path, capsys):
    assert dalle1_main(["judge", str(tmp_path / "absent"), "--quiet"]) == 2
    assert "absent" in capsys.readouterr().err


def test_help_explains_the_stages():
    result = subprocess.run(
        [sys.executable, "train.py", "shapes", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0 and "--holdout" in result.stdout and "key=value" in result.stdout


def test_stage_help_lists_every_config_key_with_its_type_default_and_meaning():
    result = subprocess.run(
        [sys.executable, "train.py", "dalle", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0
    assert "model.depth (int, default 64): transformer blocks" in result.stdout
    assert "train.parallel (str, default 'ddp'): under torchrun" in result.stdout
    assert "data.image_tokenizer (str, default 'runs/vqvae')" in result.stdout
    assert "--resume" in result.stdout and "--restart" in result.stdout
