"""bench/gpu_check.sh, the prepared GPU check, at tiny sizes on the CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_at_tiny_sizes_and_its_paths_agree(tmp_path):
    env = {**os.environ, "TINY": "1", "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [row["path"] for row in report["train"]] == ["banded", "dense"]
    assert all(row["tokens_per_s"] > 0 for row in report["train"])
    assert report["sample"][0]["images_per_s"] > 0 and report["sample"][0]["x_flop_time"] > 1
    exact = report["exact"]
    assert exact["pass"] and exact["banded"]["codes_equal"] and exact["dense"]["codes_equal"]
    assert "| exact | against the CPU | pass |" in done.stdout
