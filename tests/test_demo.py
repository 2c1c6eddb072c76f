"""`train.py demo` end to end at a tiny scale: every output is written, a rerun reuses it all."""

import json
import shutil
from pathlib import Path

import yaml

import dalle1.demo as demo
import dalle1.stages.run_all as run_all
from dalle1.shapes import SUITES

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_every_stage_then_reuses_them(tmp_path, monkeypatch, capsys):
    configs = tmp_path / "configs"
    configs.mkdir()
    for kind in ("vqvae", "clip", "dalle"):  # the tests' tiny models under the demo's names
        shutil.copy(ROOT / f"configs/{kind}_tiny.yaml", configs / f"{kind}_shapes.yaml")
    sizes = {"train": 48, "single": 4, "pair": 4, "novel": 4, "incontext": 4, "incontext_novel": 4}
    monkeypatch.setattr(demo, "SPLIT_SIZES", sizes)
    monkeypatch.setattr(run_all, "SAMPLES", 4)
    monkeypatch.setattr(run_all, "KEEP", 2)
    monkeypatch.setattr(demo, "EVAL_SCENES", 2)
    monkeypatch.setattr(demo, "EVAL_CANDIDATES", 3)
    monkeypatch.setattr(demo, "EVAL_KEEP", 2)
    out = tmp_path / "demo"

    report = demo.run_demo(
        out, size=32, holdout="green:square", configs=configs, seed=5, incontext_share=0.25
    )
    panels = [json.loads(p.read_text()) for p in (out / "data/train").glob("*.json")]
    assert 4 <= sum("transform" in spec for spec in panels) <= 20  # about 12 of 48
    for kind in ("vqvae", "clip", "dalle"):  # the seed reaches every training stage
        assert yaml.safe_load((out / kind / "config.yaml").read_text())["train"]["seed"] == 5
    for path in ("tokenizer.model", "samples/05.png", "completion.png", "cache/train/meta.json"):
        assert (out / path).is_file(), path
    assert all(
        report["data"][split]["judge_accuracy"] == 1.0 for split in sizes if split != "train"
    )
    for suite in SUITES:
        result = report["benchmark"][suite]
        assert (result["n"], result["candidates"], result["keep"]) == (2, 3, 2)
        # 2 scenes judged: each accuracy is a count of passes over 2, and CLIP's top-1 is
        # among the kept, so its share of passes is a mean over 2 of pass counts.
        for part in ("first", "reranked"):
            assert result[part]["accuracy"] in (0.0, 0.5, 1.0), (suite, result)
        assert "count" in result["reranked"]["per_attribute"]
    edit = report["benchmark"]["edit"]  # judged by judge_edit, ranked two ways
    assert "kept" in edit["first"]["per_attribute"] and edit["combined"]["accuracy"] in (0, 0.5, 1)
    stages = set(report["seconds"])
    assert stages == {
        "data",
        "split",
        "tokenizer",
        "vqvae",
        "token cache",
        "clip",
        "dalle",
        "samples",
        "eval",
    }
    novel = (out / "data" / "novel").glob("*.txt")
    assert all("green square" in p.read_text() for p in novel)
    capsys.readouterr()

    demo.run_demo(
        out, size=32, holdout="green:square", configs=configs, seed=5, incontext_share=0.25
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[all] ")]
    reused = [line for line in lines if "reused" in line]
    assert len(reused) == len(stages), lines
    assert lines[-1].startswith(f"[all] {out}: ") and "minutes (data " in lines[-1]
    table = demo.benchmark_table(report["benchmark"]).splitlines()
    assert len(table) == 2 + len(SUITES) and table[2].startswith("| single | ")
    assert f"| {report['benchmark']['pair']['reranked']['accuracy']:.0%} |" in table[3]
    assert json.loads((out / "report.json").read_text())["benchmark"] == report["benchmark"]
