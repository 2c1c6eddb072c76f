"""The table of bench/gpu_icons.sh: each stage's time, throughput and peak memory (from the run's
report.json and metrics.jsonl), the judge's accuracy, and the icons benchmark.

    python bench/gpu_icons_table.py runs/gpu_icons
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from dalle1.icons.benchmark import report_table


def median(windows: list[dict], key: str) -> str:
    values = [w[key] for w in windows if key in w]
    return f"{torch.tensor(values).median().item():,.1f}" if values else "-"


def stage_rows(run: Path) -> list[str]:
    """One Markdown row per trained stage: seconds, images/s, tokens/s, peak GiB (medians of
    the logged windows after the first)."""
    seconds = json.loads((run / "report.json").read_text())["seconds"]
    rows = []
    for stage in ("vqvae", "clip", "dalle"):
        lines = (run / stage / "metrics.jsonl").read_text().splitlines()
        train = [json.loads(line) for line in lines if '"split": "train"' in line][1:] or [{}]
        rows.append(
            f"| {stage} | {seconds.get(stage, 0):.0f} | {median(train, 'images_per_s')} | "
            f"{median(train, 'tokens_per_s')} | {median(train, 'peak_memory_gib')} |"
        )
    return rows


def main(out: str) -> None:
    out = Path(out)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"## bench/gpu_icons.sh on {device}, torch {torch.__version__}\n")
    print("| stage | seconds | images/s | tokens/s | peak memory GiB |")
    print("|---|---|---|---|---|")
    print("\n".join(stage_rows(out / "run")))
    judge = json.loads((out / "data" / "judge" / "accuracy.json").read_text())
    print("\njudge on unseen renderings:", json.dumps(judge))
    print()
    print(report_table(json.loads((out / "eval.json").read_text())))
    print(f"\nsample grids: {out / 'grids'}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/gpu_icons")
