"""A captioned folder with every drawing twice: as it is, and as the image tokenizer rebuilds it.

    python bench/reconstructed_folder.py --vqvae runs/icons0/vqvae \
        --data data/icons/split_0/train --out runs/icons0/train_reconstructed
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vqvae import load_image_tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vqvae", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    tokenizer = load_image_tokenizer(args.vqvae)
    source, out = Path(args.data).resolve(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(p.stem for p in source.glob("*.png"))
    for name in names:
        for ext in ("png", "txt"):
            os.symlink(os.path.realpath(source / f"{name}.{ext}"), out / f"{name}.{ext}")
        os.symlink(os.path.realpath(source / f"{name}.txt"), out / f"{name}_rebuilt.txt")
    for first in range(0, len(names), 256):
        chunk = names[first : first + 256]
        arrays = [np.asarray(Image.open(source / f"{n}.png").convert("RGB")) for n in chunk]
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            rebuilt = tokenizer.decode(tokenizer.encode(images)).float().clamp(0, 1)
        for name, image in zip(chunk, rebuilt, strict=True):
            pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(pixels).save(out / f"{name}_rebuilt.png")
    print(f"{len(names)} drawings and their reconstructions in {out}")


if __name__ == "__main__":
    main()
