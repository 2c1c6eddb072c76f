"""KV-cache bytes per sampled candidate: a full cache against one that keeps only what each
layer's mask lets a later query see (computed from the masks, not run).

    python bench/kv_cache_size.py [--json runs/bench/kv_cache_size.json]

For each model: per layer, the keys its cache must hold (dalle1.masks.cache_length: the text plus
w + 1 cells for row layers, nearly everything for column layers, a band of rows for the conv
layer), times 2 (keys and values) x width x bytes per number. The text's keys are the same for
every candidate of one caption; the last column counts them once per caption instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dalle1.masks import StreamLayout, cache_length, layer_masks  # noqa: E402

MODELS = {  # name: (text positions, grid, conv kernel, width, depth)
    "paper 12B (configs/dalle_paper.yaml)": (256, 32, 11, 3968, 64),
    "gpu256 preset (configs/dalle_gpu256.yaml)": (256, 32, 11, 1024, 24),
    "demo (configs/dalle_shapes.yaml)": (24, 8, 5, 192, 4),
}


def sizes(text: int, grid: int, kernel: int, width: int, depth: int, bytes_per: int) -> dict:
    layout = StreamLayout(text, grid, kernel)
    per_position = 2 * width * bytes_per  # a key and a value
    lengths = {m: cache_length(layout, m) for m in set(layer_masks(depth, "sparse"))}
    windowed = sum(lengths[m] for m in layer_masks(depth, "sparse"))
    full = depth * layout.length
    return {
        "full_bytes": full * per_position,
        "windowed_bytes": windowed * per_position,
        "windowed_image_bytes": (windowed - depth * text) * per_position,
        "share": windowed / full,
        "positions_per_layer": lengths,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default="runs/bench/kv_cache_size.json")
    parser.add_argument("--bytes", type=int, default=2, help="per number (2: bf16)")
    args = parser.parse_args()
    rows = {name: sizes(*spec, args.bytes) for name, spec in MODELS.items()}
    print(f"{'model':<44} {'full':>10} {'windowed':>10} {'share':>6} {'image part':>11}")
    for name, row in rows.items():
        mib = {k: row[k] / 2**20 for k in ("full_bytes", "windowed_bytes", "windowed_image_bytes")}
        print(
            f"{name:<44} {mib['full_bytes']:>8.1f}Mi {mib['windowed_bytes']:>8.1f}Mi "
            f"{row['share']:>6.1%} {mib['windowed_image_bytes']:>9.1f}Mi"
        )
        print(f"{'':<44} keys per layer: {row['positions_per_layer']}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(
        json.dumps({"bytes_per_number": args.bytes, "models": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
