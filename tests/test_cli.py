"""The command lines: the shapes stage, config errors, the judge, --help."""

import dataclasses
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


def test_every_stage_has_typed_flags_from_its_config(capsys):
    """One config system: each stage's flags are its dataclass's top-level keys, with help."""
    for name, command in train.STAGES.items():
        try:
            train.build_parser().parse_args([name, "--help"])
        except SystemExit as done:
            assert done.code == 0, name
        shown = capsys.readouterr().out
        if command.trains:  # a run config is all sections: every key is in the epilog
            assert "config keys (type, default: meaning)" in shown, name
            continue
        for f in dataclasses.fields(command.config_class):
            assert "--" + f.name.replace("_", "-") in shown, (name, f.name)
        assert "key=value" in shown, name


def test_flags_overrides_and_stage_overrides_reach_the_right_config(tmp_path, capsys):
    assert train.main(["tokenizer", "--data", str(tmp_path), "--out", "x.model", "vocabb=3"]) == 2
    assert "did you mean 'vocab'" in capsys.readouterr().err
    assert train.main(["tokenizer", "--out", "x.model"]) == 2  # a required key, named
    assert "--data" in capsys.readouterr().err
    base = ["all", "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    assert train.main([*base, "--preset", "nonesuch"]) == 2
    assert "nonesuch" in capsys.readouterr().err
    assert train.main([*base, "dalle.train.max_stepz=1"]) == 2  # given to the dalle stage
    assert "max_stepz" in capsys.readouterr().err
    assert train.main([*base, "text_vocabb=3"]) == 2  # given to `all` itself
    assert "did you mean 'text_vocab'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
