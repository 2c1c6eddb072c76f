"""How often the judge passes correct pictures: clean renders and Gaussian-blurred ones.

    python bench/judge_accuracy.py --n 1000 --size 64 --json runs/bench/judge_accuracy.json

Prints a table (split x blur radius -> accuracy, images/s) and writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from PIL import ImageFilter

from dalle1.shapes.judge import judge_image
from dalle1.shapes.scenes import SPLITS, make_scene, parse_pairs, render


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="scenes per split")
    parser.add_argument("--size", type=int, default=64, help="canvas side S")
    parser.add_argument("--blur", type=float, nargs="+", default=[0.0, 1.0], help="radii (px)")
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--json", default="runs/bench/judge_accuracy.json")
    args = parser.parse_args()
    holdout = parse_pairs("red:triangle,blue:circle")
    rows = []
    print(f"{'split':>7} {'blur':>5} {'accuracy':>9} {'images/s':>9}")
    for split in SPLITS:
        for radius in args.blur:
            start, passed = time.perf_counter(), 0
            for i in range(args.n):
                scene = make_scene(split, i, args.seed, holdout)
                image = render(scene, args.size)
                if radius:
                    image = image.filter(ImageFilter.GaussianBlur(radius))
                passed += judge_image(image, scene.spec(args.size))["pass"]
            rate = args.n / (time.perf_counter() - start)
            rows.append({"split": split, "blur": radius, "accuracy": passed / args.n, "n": args.n})
            print(f"{split:>7} {radius:>5.1f} {passed / args.n:>9.4f} {rate:>9.0f}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.processor() or platform.machine()}, {platform.system()}"
    out.write_text(json.dumps({"size": args.size, "machine": machine, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
