"""The whole pipeline on real images nobody here made: Tux Paint's stamps (Debian's
tuxpaint-stamps-default, about 800 drawings of animals, food, vehicles, ... with an English
description each). Run through bench/real_images.sh, which installs the package when missing.

    python bench/real_images.py [--stamps /usr/share/tuxpaint/stamps] [--out runs/real_images]

1. Converts every PNG stamp that has a description into a captioned folder: laid on white,
   padded to a square, 128 px; the caption is the first line of its .txt. SVG-only stamps are
   counted and left out.
2. Runs `train.py all --preset cpu64` on it (5% held out, by name).
3. Reports on the held-out stamps: the dVAE's PSNR, SSIM and share of codes in use, CLIP's
   text -> image retrieval among them, and writes grids of reconstructions, reranked samples
   and completions. Prints a table and writes OUT/report.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dalle1.data import ImageFolderDataset  # noqa: E402
from dalle1.images import make_grid, save_image  # noqa: E402
from dalle1.pipeline import Pipeline  # noqa: E402
from vqvae.losses import codebook_usage, psnr, ssim  # noqa: E402

SIDE = 128  # the converted stamps; the preset crops them to its own size


def convert(stamps: Path, out: Path) -> dict:
    """Captioned 128 px squares on white from the PNG stamps; returns what was found."""
    out.mkdir(parents=True, exist_ok=True)
    made, svg_only, unreadable = 0, 0, 0
    for description in sorted(stamps.rglob("*.txt")):
        png = description.with_suffix(".png")
        if not png.is_file():
            svg_only += description.with_suffix(".svg").is_file()
            continue
        caption = description.read_text(encoding="utf-8", errors="replace").splitlines()[0]
        caption = caption.strip().rstrip(".").lower()
        try:
            stamp = Image.open(png).convert("RGBA")
        except OSError:
            unreadable += 1
            continue
        side = max(stamp.size)
        square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
        square.alpha_composite(stamp, ((side - stamp.width) // 2, (side - stamp.height) // 2))
        name = "_".join(png.relative_to(stamps).with_suffix("").parts)
        square.convert("RGB").resize((SIDE, SIDE), Image.LANCZOS).save(out / f"{name}.png")
        (out / f"{name}.txt").write_text(caption + "\n")
        made += 1
    return {"stamps": made, "svg_only": svg_only, "unreadable": unreadable}


def held_out_quality(pipe: Pipeline, folder: Path, out: Path) -> dict:
    """dVAE reconstructions and CLIP retrieval on the held-out stamps."""
    size = pipe.image_tokenizer.image_size
    dataset = ImageFolderDataset(folder, size, train=False)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))]).to(pipe.device)
    captions = [captions[0] for _, captions in dataset.items]
    codes = pipe.image_tokenizer.encode(images)
    reconstructions = pipe.image_tokenizer.decode(codes)
    _, used = codebook_usage(codes, pipe.image_tokenizer.codebook_size)
    pairs = torch.stack([images[:16], reconstructions[:16]], 1).flatten(0, 1)
    save_image(make_grid(pairs.cpu(), columns=8), out / "reconstructions.png")
    text = torch.stack([pipe.clip_tokenizer.encode(c) for c in captions]).to(pipe.device)
    with torch.no_grad():
        similarity = pipe.clip.encode_text(text) @ pipe.clip.encode_images(images).t()
    target = torch.arange(len(captions), device=similarity.device)
    top5 = similarity.topk(min(5, len(captions)), dim=1).indices
    return {
        "held_out": len(dataset),
        "psnr": psnr(reconstructions, images),
        "ssim": ssim(reconstructions, images),
        "codes_used": used,
        "clip_top1": float((similarity.argmax(1) == target).float().mean()),
        "clip_top5": float((top5 == target[:, None]).any(1).float().mean()),
        "chance_top1": 1 / len(captions),
    }


def completions(pipe: Pipeline, folder: Path, out: Path, count: int = 3) -> list[str]:
    """The top half of `count` held-out stamps kept, the rest drawn: one grid row each."""
    dataset = ImageFolderDataset(folder, pipe.image_tokenizer.image_size, train=False)
    rows, captions = [], []
    for i in range(min(count, len(dataset))):
        image, caption = dataset[i]
        drawn, _ = pipe.complete(image, pipe.dalle.config.grid // 2, caption, n=32, keep=7, seed=i)
        rows.append(torch.cat([image[None].cpu(), drawn.cpu()]))
        captions.append(caption)
    save_image(make_grid(torch.cat(rows), columns=8), out / "completions.png")
    return captions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stamps", default="/usr/share/tuxpaint/stamps")
    parser.add_argument("--out", default="runs/real_images")
    parser.add_argument("--preset", default="cpu64")
    parser.add_argument("overrides", nargs="*", help="STAGE.key=value, passed to train.py all")
    args = parser.parse_args()
    out = Path(args.out)
    found = convert(Path(args.stamps), out / "stamps")
    print(f"converted {found['stamps']} stamps ({found['svg_only']} SVG-only left out)")
    start = time.perf_counter()
    command = [sys.executable, str(ROOT / "train.py"), "all", "--data", str(out / "stamps")]
    command += ["--out", str(out / "run"), "--preset", args.preset, "--text-vocab", "2000"]
    subprocess.run([*command, *args.overrides], check=True)
    seconds = time.perf_counter() - start
    pipe = Pipeline.load(out / "run" / "dalle")
    quality = held_out_quality(pipe, out / "run" / "data" / "eval", out)
    completed = completions(pipe, out / "run" / "data" / "eval", out)
    report = {"machine": platform.processor() or platform.machine(), **found}
    report |= {"train_all_seconds": round(seconds), **quality, "completions": completed}
    report["stage_seconds"] = json.loads((out / "run" / "report.json").read_text())["seconds"]
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(f"train.py all: {seconds / 60:.1f} min; held-out stamps: {quality['held_out']}")
    print(
        f"dVAE: PSNR {quality['psnr']:.2f} dB, SSIM {quality['ssim']:.3f}, codes in use "
        f"{quality['codes_used']:.1%}"
    )
    print(
        f"CLIP text -> image among them: top-1 {quality['clip_top1']:.1%}, top-5 "
        f"{quality['clip_top5']:.1%} (chance {quality['chance_top1']:.1%})"
    )
    print(f"grids: {out}/reconstructions.png, {out}/completions.png, {out}/run/samples/*.png")


if __name__ == "__main__":
    main()
