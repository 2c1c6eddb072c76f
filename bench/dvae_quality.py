"""How well a trained dVAE keeps what the judge checks: reconstructions from hard codes.

    python bench/dvae_quality.py --run runs/vqvae_shapes \
        --suites data/shapes/single data/shapes/pair

For each suite folder (shapes images with NAME.json specs): encodes every image to codes, decodes
them, and reports PSNR, codebook perplexity, the share of the codebook in use, and the judge's
accuracy on the reconstructions (the ceiling for every later stage). Writes the reconstructions
with their specs to --out and the table as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import torch

from dalle1.data import ImageFolderDataset
from dalle1.images import to_pil
from dalle1.shapes.judge import judge_folder
from pretrained import resolve_model_folder
from vqvae import load_image_tokenizer
from vqvae.losses import codebook_usage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="dVAE run or checkpoint folder")
    parser.add_argument("--suites", nargs="+", required=True, help="shapes suite folders")
    parser.add_argument("--out", default="runs/bench/dvae_quality", help="output folder")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    checkpoint = resolve_model_folder(args.run)
    model = load_image_tokenizer(checkpoint)
    size, codebook = model.image_size, model.codebook_size
    rows = []
    print(f"{'suite':>8} {'n':>5} {'psnr':>6} {'perplexity':>10} {'codes used':>10} {'judge':>6}")
    for suite in args.suites:
        dataset = ImageFolderDataset(suite, size, train=False)
        out = Path(args.out) / Path(suite).name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        squared_error, all_codes, start = 0.0, [], time.perf_counter()
        for first in range(0, len(dataset), args.batch_size):
            indices = range(first, min(first + args.batch_size, len(dataset)))
            images = torch.stack([dataset[i][0] for i in indices])
            codes = model.encode(images)
            reconstructions = model.decode(codes)
            squared_error += float(((reconstructions - images) ** 2).sum())
            all_codes.append(codes)
            for i, image in zip(indices, reconstructions, strict=True):
                path = dataset.items[i][0]
                to_pil(image).save(out / f"{path.stem}.png")
                shutil.copy(path.with_suffix(".json"), out / f"{path.stem}.json")
        mse = squared_error / (len(dataset) * 3 * size * size)
        perplexity, used = codebook_usage(torch.cat(all_codes), codebook)
        report = judge_folder(out, progress=False)
        row = {
            "suite": Path(suite).name,
            "n": len(dataset),
            "psnr": -10 * torch.log10(torch.tensor(mse)).item(),
            "perplexity": perplexity,
            "codes_used": used,
            "judge_accuracy": report["accuracy"],
            "judge_per_attribute": {k: v["accuracy"] for k, v in report["per_attribute"].items()},
            "seconds": time.perf_counter() - start,
        }
        rows.append(row)
        print(
            f"{row['suite']:>8} {row['n']:>5} {row['psnr']:>6.2f} {perplexity:>10.1f} "
            f"{used:>10.3f} {row['judge_accuracy']:>6.3f}"
        )
    result = {"checkpoint": str(checkpoint), "machine": platform.machine(), "rows": rows}
    (Path(args.out) / "dvae_quality.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
